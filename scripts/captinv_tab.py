# The one file the WebUI runs at start-up: it imports captinv while the WebUI has put the
# extension folder on sys.path, and registers the callbacks.
from modules import script_callbacks

from captinv.webui import api, perfusion_network, settings, tab

script_callbacks.on_ui_settings(settings.register)
script_callbacks.on_ui_tabs(tab.on_ui_tabs)
script_callbacks.on_app_started(api.on_app_started)
script_callbacks.on_before_ui(perfusion_network.register)
