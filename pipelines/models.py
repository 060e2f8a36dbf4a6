"""Addressing a detector for pipelines: an MLflow model URI or a bundle path."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from anomaly_vae.detector import TabularDetector
from anomaly_vae.exceptions import BundleError, ModelUnavailableError, RegistryUnreachableError

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class ModelRef:
    """Which detector scored: the URI as given, and the registry name, version and alias
    it resolved to (None for a bundle path), and the local bundle directory."""

    uri: str
    name: str | None
    version: int | None
    alias: str | None
    bundle: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_model_uri(model: str) -> bool:
    return model.startswith("models:/")


_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "RESOURCE_EXHAUSTED"}
_TRANSIENT_TEXT = ("Max retries exceeded", "Connection refused", "timed out", "Read timed out")


def is_transient(exc: BaseException) -> bool:
    """Whether an error from the registry is one a retry may cure: the server unreachable
    or timing out (anywhere in the exception's chain), or MLflow's transient codes."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (ConnectionError, TimeoutError)):
            return True
        kind = type(seen).__name__
        if kind in {"ConnectionError", "Timeout", "ReadTimeout", "ConnectTimeout", "MaxRetryError"}:
            return True
        if getattr(seen, "error_code", None) in _TRANSIENT_CODES:
            return True
        if any(t in str(seen) for t in _TRANSIENT_TEXT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def resolve_model(model: str, store: str | Path | None = None) -> ModelRef:
    """Resolve ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a bundle directory.

    Registry URIs use the tracking store ``MLFLOW_TRACKING_URI`` or the embedded store in
    ``store``; the bundle is downloaded to a temporary directory.

    Raises:
        ModelUnavailableError: the URI is malformed, the model, alias or version does not
            exist, or the path holds no bundle; the message names it.
        RegistryUnreachableError: the registry could not be reached (a retry may work).
    """
    if not is_model_uri(model):
        path = Path(model)
        if not (path / "manifest.json").is_file():
            msg = f"model {model!r} is neither a models:/NAME@ALIAS URI nor a detector bundle directory"
            raise ModelUnavailableError(msg)
        return ModelRef(uri=model, name=None, version=None, alias=None, bundle=str(path.resolve()))
    m = _URI.match(model)
    if m is None:
        msg = f"model URI {model!r} is malformed; use models:/NAME@ALIAS or models:/NAME/VERSION"
        raise ModelUnavailableError(msg)
    from anomaly_vae import registry

    name, alias = m["name"], m["alias"]
    try:
        registry.configure(store)  # talks to a tracking server: inside, for its errors
        version = int(m["version"]) if m["version"] else registry.resolve(name, alias).version
        bundle = registry.download_bundle(name, version)
    except LookupError as exc:
        msg_0 = f"{model}: {exc.args[0]}"
        raise ModelUnavailableError(msg_0) from exc
    except Exception as exc:  # MlflowException: unknown name or version, unreachable server
        if is_transient(exc):
            msg_0 = (
                f"{model}: the model registry is unreachable ({type(exc).__name__}); retry later"
            )
            raise RegistryUnreachableError(msg_0) from exc
        msg_0 = f"{model}: {exc}"
        raise ModelUnavailableError(msg_0) from exc
    return ModelRef(uri=model, name=name, version=version, alias=alias, bundle=str(bundle))


def load_detector(ref: ModelRef) -> TabularDetector:
    """Load the bundle a :class:`ModelRef` points at (never unpickles)."""
    try:
        return TabularDetector.load(ref.bundle)
    except (BundleError, FileNotFoundError) as exc:
        msg = f"{ref.uri}: {exc}"
        raise ModelUnavailableError(msg) from exc
