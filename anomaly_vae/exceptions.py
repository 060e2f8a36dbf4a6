"""Exceptions raised by anomaly_vae; each message names what was wrong."""

from __future__ import annotations

import functools
import sys


class AnomalyVAEError(Exception):
    """Base class of every error this library raises on purpose."""


class SchemaError(AnomalyVAEError, ValueError):
    """A frame does not match the schema: names the column(s) and the first rows.

    ``columns`` and ``rows`` (positions in the frame) say the same for programs: the
    service turns them into the error's ``loc``."""

    def __init__(
        self, msg: str, *, columns: tuple[str, ...] = (), rows: tuple[int, ...] = ()
    ) -> None:
        super().__init__(msg)
        self.columns, self.rows = tuple(columns), tuple(int(r) for r in rows)


class NotFittedError(AnomalyVAEError, ValueError, AttributeError):
    """A detector was used before ``fit``. It has the bases of scikit-learn's
    ``NotFittedError`` (ValueError, AttributeError) and, raised through
    :func:`not_fitted` while scikit-learn is loaded, is one of those too."""


@functools.cache
def _with_sklearn(sk_not_fitted: type[Exception]) -> type[NotFittedError]:
    return type("NotFittedError", (NotFittedError, sk_not_fitted), {"__module__": __name__})


def not_fitted(msg: str) -> NotFittedError:
    """A :class:`NotFittedError` to raise; also scikit-learn's ``NotFittedError`` when
    scikit-learn's exceptions are loaded. Importing scikit-learn only for a base class
    cost a third of the service's start-up, and code that catches scikit-learn's error
    has imported it already."""
    sk = sys.modules.get("sklearn.exceptions")
    cls = _with_sklearn(sk.NotFittedError) if sk is not None else NotFittedError
    return cls(msg)


class BundleError(AnomalyVAEError, ValueError):
    """A detector bundle on disk is missing a file, corrupt, or of an unknown version."""


class CalibrationWarning(UserWarning):
    """The calibration set is too small or degenerate for the asked false-positive rate."""


class ImageScaleWarning(UserWarning):
    """Images whose pixel values look as if they were on another scale than 0..255."""


class ModelUnavailableError(AnomalyVAEError, LookupError):
    """A model URI or bundle path could not be resolved or loaded (names the URI)."""


class RegistryUnreachableError(ModelUnavailableError):
    """The model registry could not be reached (connection refused, timeout, a 5xx): a
    retry later may work, so the CLI exits with a code a scheduler retries."""


class InputNotFoundError(AnomalyVAEError, FileNotFoundError):
    """No input files matched (names the path or pattern); a scheduler may retry later."""


class OutputError(AnomalyVAEError, OSError):
    """Output could not be written (names the path); nothing partial is left behind."""


class ImageError(AnomalyVAEError, ValueError):
    """Images that cannot be read or do not fit (shape, channels, value range); the message
    names the file or the image index."""
