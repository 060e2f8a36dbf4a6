"""Exceptions raised by anomaly_vae; each message names what was wrong."""

from __future__ import annotations

from sklearn.exceptions import NotFittedError as _SkNotFittedError


class AnomalyVAEError(Exception):
    """Base class of every error this library raises on purpose."""


class SchemaError(AnomalyVAEError, ValueError):
    """A frame does not match the schema: names the column(s) and the first rows."""


class NotFittedError(AnomalyVAEError, _SkNotFittedError):
    """A detector was used before ``fit`` (also an sklearn ``NotFittedError``)."""


class BundleError(AnomalyVAEError, ValueError):
    """A detector bundle on disk is missing a file, corrupt, or of an unknown version."""


class CalibrationWarning(UserWarning):
    """The calibration set is too small or degenerate for the asked false-positive rate."""


class ModelUnavailableError(AnomalyVAEError, LookupError):
    """A model URI or bundle path could not be resolved or loaded (names the URI)."""


class InputNotFoundError(AnomalyVAEError, FileNotFoundError):
    """No input files matched (names the path or pattern); a scheduler may retry later."""


class OutputError(AnomalyVAEError, OSError):
    """Output could not be written (names the path); nothing partial is left behind."""


class ImageError(AnomalyVAEError, ValueError):
    """Images that cannot be read or do not fit (shape, channels, value range); the message
    names the file or the image index."""
