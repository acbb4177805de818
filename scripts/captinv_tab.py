# The one file the WebUI runs at start-up: it imports captinv while the WebUI has put the
# extension folder on sys.path, picks the host once, and registers the callbacks.
from modules import script_callbacks

from captinv.hosts.detect import detect_host
from captinv.webui import api, settings, tab

host = detect_host()
script_callbacks.on_ui_settings(lambda: host.add_settings(settings.SETTINGS))
script_callbacks.on_ui_tabs(lambda: tab.on_ui_tabs(host))
script_callbacks.on_app_started(lambda _demo, app: host.app_started(app))
script_callbacks.on_app_started(lambda _demo, app: api.add_routes(app, host))
script_callbacks.on_before_ui(host.register_extra_networks)
