"""captinv: caption-initialised textual inversion."""

__version__ = "0.1.0"
