"""Errors a user can act on.

Every failure the user can fix is a `CaptinvError` whose message says what to
do. The CLI prints it as one line, the WebUI renders it as a `gr.Error` or an
HTTP 4xx; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CaptinvError(Exception):
    """Base class: the message is shown to the user as it is."""

    http_status = 400


class ConfigError(CaptinvError):
    """An option is out of range or contradicts another."""


class ImageError(CaptinvError):
    """No image, an unreadable file or an image too small to use."""


class CaptionError(CaptinvError):
    """The init text is empty, too long, or could not be produced."""


class InvalidNameError(CaptinvError):
    """The embedding name is unusable (empty, unsafe)."""


class NameTakenError(CaptinvError):
    """An output name collides with an existing embedding."""

    http_status = 409


class ModelLoadError(CaptinvError):
    """A model could not be found, read or recognised."""


class UnsupportedModelError(CaptinvError):
    """The model family is not one captinv can train against."""


class NonFiniteLatentsError(CaptinvError):
    """The VAE encodes the training image to NaN/inf, at every precision the host can offer."""


class TrainingDivergedError(CaptinvError):
    """The loss stayed non-finite even after rolling back and lowering the rate."""

    http_status = 500


class Interrupted(CaptinvError):
    """The user stopped the run; nothing was written."""

    http_status = 409
