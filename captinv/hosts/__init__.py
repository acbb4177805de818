"""The host layer: the only code that imports a WebUI's own modules.

`base.Host` is the seam the tab, the API and the job code (`captinv/webui/`) talk to;
`webui.WebUIHost` is what AUTOMATIC1111, Forge and reForge do alike; one folder per host
implements the rest; `detect.detect_host` picks one at start-up. Adding a host is adding a
folder here.
"""
