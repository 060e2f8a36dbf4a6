"""anomaly-vae: anomaly detection and density estimation with variational autoencoders.

The heavy modules (torch, Lightning) load on first use, so ``import anomaly_vae`` is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from pathlib import Path

    from anomaly_vae.detector import TabularDetector
    from anomaly_vae.image_detector import ImageDetector

__all__ = ["ImageDetector", "TabularDetector", "__version__", "load_detector"]


def load_detector(
    path: str | Path, *, signing_key: str | bytes | None = None
) -> TabularDetector | ImageDetector:
    """Load any detector bundle, tabular or image, by the kind in its manifest (with
    ``signing_key``: only a bundle signed with it)."""
    import json
    from pathlib import Path

    from anomaly_vae.exceptions import BundleError

    manifest = Path(path) / "manifest.json"
    try:
        kind = json.loads(manifest.read_text()).get("kind")
    except (OSError, ValueError) as exc:
        msg = f"no readable detector bundle at {str(path)!r}: {exc}"
        raise BundleError(msg) from exc
    if kind == "image":
        from anomaly_vae.image_detector import ImageDetector

        return ImageDetector.load(path, signing_key=signing_key)
    from anomaly_vae.detector import TabularDetector

    return TabularDetector.load(path, signing_key=signing_key)


def __getattr__(name: str) -> Any:
    if name == "TabularDetector":
        from anomaly_vae.detector import TabularDetector

        return TabularDetector
    if name == "ImageDetector":
        from anomaly_vae.image_detector import ImageDetector

        return ImageDetector
    msg = f"module 'anomaly_vae' has no attribute {name!r}"
    raise AttributeError(msg)
