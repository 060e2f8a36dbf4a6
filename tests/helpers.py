"""Shared test helpers."""

from __future__ import annotations

import numpy as np
import torch


def assert_tensor_is_good(
    t: torch.Tensor | np.ndarray, shape: tuple[int, ...] | None = None
) -> None:
    """Assert a tensor/array has the given shape and only finite values."""
    arr = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    if shape is not None:
        assert arr.shape == shape, f"shape {arr.shape} != expected {shape}"
    assert np.isfinite(arr).all(), (
        f"non-finite values at {np.argwhere(~np.isfinite(arr))[:5].tolist()}"
    )
