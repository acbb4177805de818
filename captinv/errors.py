"""Errors a user can act on, and how each front end words them.

Every failure the user can fix is a `CaptinvError` whose message says what to
do. A message that names an option writes `option("learning_rate")`, and each
front end renders that mention in its own terms: the CLI as `--learning-rate`,
the HTTP API and Python as `learning_rate`, the tab as its control's label,
"Learning rate". The CLI prints the result as one line and exits 2, the API
answers a 4xx, the tab shows it; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_MENTION = re.compile(r"\{option:([a-z0-9_]+)\}")

# The tab's controls whose labels are not their field name made readable, and the API's fields
# that differ from the Python names.
TAB_LABELS = {"text": "Caption", "init": "Init words from", "name": "Name"}
API_FIELDS = {"text": "caption", "init": "source"}


def option(field: str) -> str:
    """A mention of option `field` inside an error message, rendered per front end."""
    return f"{{option:{field}}}"


def cli_flag(field: str) -> str:
    return f"--{field.replace('_', '-')}"


def python_name(field: str) -> str:
    return field


def api_field(field: str) -> str:
    """The HTTP API's request field (its init text is `caption`)."""
    return API_FIELDS.get(field, field)


def tab_label(field: str) -> str:
    """The label the tab gives the control of `field` (also how the tab builds its labels)."""
    return TAB_LABELS.get(field, field.replace("_", " ").capitalize())


class CaptinvError(Exception):
    """Base class: the message is shown to the user as it is, with option mentions rendered.

    `field` names the option the error is about, when there is one, so a front end can point
    at its control.
    """

    http_status = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def render(self, name: Callable[[str], str] = python_name) -> str:
        """The message with each mention written by `name`: `cli_flag`, `api_field`, `tab_label` or
        (the default, for Python callers) `python_name`."""
        return _MENTION.sub(lambda found: name(found.group(1)), self.message)

    def __str__(self) -> str:
        return self.render()


class ConfigError(CaptinvError):
    """An option is out of range or contradicts another."""


class ImageError(CaptinvError):
    """No image, an unreadable file or an image too small or too large to use."""


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


class FileFormatError(CaptinvError):
    """A file given to read is missing, damaged, or not the kind of file asked for."""


class OutputError(CaptinvError):
    """The output folder cannot be created or written (a file in the way, no permission, a full disk)."""


class NonFiniteLatentsError(CaptinvError):
    """The VAE encodes the training image to NaN/inf, at every precision the host can offer."""


class TrainingDivergedError(CaptinvError):
    """The loss stayed non-finite even after rolling back and lowering the rate."""

    http_status = 500


class Interrupted(CaptinvError):
    """The user stopped the run; nothing was written."""

    http_status = 409
