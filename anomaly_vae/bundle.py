"""The on-disk detector bundle: a directory of JSON files and safetensors weights.

Loading never unpickles: JSON is parsed, weights are read by safetensors, and every file
is checked against the sha256 recorded in ``manifest.json`` before it is used.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from anomaly_vae import __version__
from anomaly_vae.exceptions import BundleError

FORMAT_VERSION = 1
JSON_FILES = (
    "config.json",
    "schema.json",
    "preprocessing.json",
    "calibration.json",
    "reference.json",
)
WEIGHTS = "weights.safetensors"


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_bundle(
    path: str | Path, kind: str, documents: dict[str, Any], weights: dict[str, torch.Tensor]
) -> Path:
    """Write a bundle atomically: into a temporary sibling directory, then renamed.

    Args:
        path: the bundle directory (replaced if it exists).
        kind: ``tabular`` or ``image``.
        documents: JSON-able content keyed by file name (those in ``JSON_FILES``).
        weights: the state dict, saved with safetensors.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name, doc in documents.items():
            if name not in JSON_FILES:
                msg = f"unknown bundle document {name!r}; expected one of {JSON_FILES}"
                raise BundleError(msg)
            (tmp / name).write_text(json.dumps(doc, indent=1, allow_nan=False))
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, tmp / WEIGHTS)
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "library_version": __version__,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "files": {p.name: sha256_file(p) for p in sorted(tmp.iterdir())},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_bundle(
    path: str | Path, kind: str | None = None
) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """Read and verify a bundle: (manifest, documents by file name, weights). With
    ``kind`` ("tabular", "image"), a bundle of another kind is a ``BundleError``."""
    root = Path(path)
    mpath = root / "manifest.json"
    if not root.is_dir():
        msg = f"no detector bundle at {str(root)!r} (not a directory)"
        raise BundleError(msg)
    if not mpath.exists():
        msg = f"{str(root)!r} is not a detector bundle: manifest.json is missing"
        raise BundleError(msg)
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        msg = f"manifest.json in {str(root)!r} is not valid JSON: {exc}"
        raise BundleError(msg) from exc
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        msg = f"bundle format version {version!r} is not supported (this library reads {FORMAT_VERSION})"
        raise BundleError(msg)
    files: dict[str, str] = manifest.get("files", {})
    for name, digest in files.items():
        p = root / name
        if not p.exists():
            msg = f"bundle {str(root)!r} is missing {name}"
            raise BundleError(msg)
        if sha256_file(p) != digest:
            msg = f"bundle {str(root)!r}: {name} does not match its sha256 in manifest.json (corrupt or edited)"
            raise BundleError(msg)
    if WEIGHTS not in files:
        msg = f"bundle {str(root)!r} lists no {WEIGHTS}"
        raise BundleError(msg)
    if kind is not None and manifest.get("kind") != kind:
        msg = f"bundle at {str(path)!r} holds a {manifest.get('kind')!r} detector, not {kind}"
        raise BundleError(msg)
    docs = {name: json.loads((root / name).read_text()) for name in JSON_FILES if name in files}
    return manifest, docs, load_file(root / WEIGHTS)


@contextlib.contextmanager
def inconsistent_bundle(path: str | Path) -> Iterator[None]:
    """Turns the errors of rebuilding a detector from verified documents (a missing key,
    a wrong type, weights that do not fit the model) into a ``BundleError`` naming
    ``path``."""
    try:
        yield
    except (KeyError, TypeError, RuntimeError) as exc:
        msg = f"bundle at {str(path)!r} is incomplete or inconsistent: {exc}"
        raise BundleError(msg) from exc
