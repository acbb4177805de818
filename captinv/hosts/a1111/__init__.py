"""AUTOMATIC1111's WebUI: ldm/sgm models, the hijack's shared embedding database."""
