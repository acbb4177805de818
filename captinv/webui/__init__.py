"""The WebUI glue above the host seam: the tab, the HTTP API, the jobs they start, card files
and settings. It imports gradio and fastapi but never a WebUI's own modules: everything that
lives in the WebUI process comes through a `captinv.hosts.base.Host`."""
