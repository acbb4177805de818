"""Perfusion failures a user can act on (all are `CaptinvError`s)."""

from __future__ import annotations

from captinv.errors import CaptinvError, FileFormatError


class PerfusionError(CaptinvError):
    """A Perfusion edit cannot be applied as asked (conflicting options, colliding concepts)."""


class ConceptFileError(PerfusionError, FileFormatError):
    """A concept file is unreadable, of another format, or was trained for another model."""


class CovarianceError(PerfusionError):
    """The text-encoding covariance is unusable: empty corpus, wrong width, not positive definite."""
