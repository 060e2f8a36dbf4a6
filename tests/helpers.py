"""Shared test helpers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def edit_bundle_document(bundle: Path, name: str, edit: Callable[[dict[str, Any]], Any]) -> None:
    """Change the JSON document ``name`` of a bundle in place with ``edit`` and record its
    new sha256 in the manifest, so the checksums still agree (an older bundle, or an
    edit by whoever can write the files)."""
    doc = json.loads((bundle / name).read_text())
    edit(doc)
    (bundle / name).write_text(json.dumps(doc))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))


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
