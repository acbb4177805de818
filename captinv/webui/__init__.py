"""The WebUI layer: the only code that imports the WebUI's `modules` (and gradio).

It adapts the WebUI's loaded model, embedding database, progress state and
queue to the core. `layout`, `schema` and `requirements` import neither the
WebUI nor torch-heavy code, so CI can test them without a WebUI.
"""
