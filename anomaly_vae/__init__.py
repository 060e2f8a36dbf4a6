"""anomaly-vae: anomaly detection and density estimation with variational autoencoders.

The heavy modules (torch, Lightning) load on first use, so ``import anomaly_vae`` is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from anomaly_vae.detector import TabularDetector

__all__ = ["TabularDetector", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "TabularDetector":
        from anomaly_vae.detector import TabularDetector

        return TabularDetector
    msg = f"module 'anomaly_vae' has no attribute {name!r}"
    raise AttributeError(msg)
