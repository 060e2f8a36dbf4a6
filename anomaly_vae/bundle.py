"""The on-disk detector bundle: a directory of JSON files and safetensors weights.

Loading never unpickles: JSON is parsed, weights are read by safetensors, and every file
is checked against the sha256 recorded in ``manifest.json`` before it is used.

Checksums catch corruption, not tampering: whoever edits a file can recompute its
digest. A bundle can also be signed: ``signature.json`` holds an HMAC-SHA256 of the
manifest's bytes under a shared key (the manifest names every file's sha256, so the
signature covers them all). A loader given the key refuses a bundle that is unsigned or
whose signature does not verify.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
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
SIGNATURE = "signature.json"
#: Shortest signing key accepted (characters): an HMAC key should carry at least 128 bits.
MIN_KEY_LENGTH = 32


def _key_bytes(key: str | bytes) -> bytes:
    raw = key.encode() if isinstance(key, str) else bytes(key)
    if len(raw) < MIN_KEY_LENGTH:
        msg = f"a signing key needs at least {MIN_KEY_LENGTH} characters, got {len(raw)}"
        raise BundleError(msg)
    return raw


def _signature(manifest_bytes: bytes, key: str | bytes) -> str:
    return hmac.new(_key_bytes(key), manifest_bytes, hashlib.sha256).hexdigest()


def sign_bundle(path: str | Path, key: str | bytes) -> Path:
    """Sign the bundle at ``path`` (write ``signature.json``) with ``key``; returns the
    signature file. Re-signing replaces the signature."""
    root = Path(path)
    mpath = root / "manifest.json"
    if not mpath.exists():
        msg = f"{str(root)!r} is not a detector bundle: manifest.json is missing"
        raise BundleError(msg)
    doc = {"algorithm": "HMAC-SHA256", "signature": _signature(mpath.read_bytes(), key)}
    out = root / SIGNATURE
    out.write_text(json.dumps(doc, indent=1))
    return out


def verify_signature(path: str | Path, key: str | bytes) -> None:
    """Raise :class:`BundleError` unless the bundle at ``path`` carries a signature of
    its manifest under ``key``."""
    root = Path(path)
    spath = root / SIGNATURE
    if not spath.exists():
        msg = f"bundle {root.name!r} is not signed, and a signing key is configured: sign it with `anomaly-vae sign`"
        raise BundleError(msg)
    try:
        doc = json.loads(spath.read_text())
        given = str(doc["signature"])
    except (ValueError, KeyError, TypeError) as exc:
        msg = f"bundle {root.name!r}: {SIGNATURE} is not a signature document"
        raise BundleError(msg) from exc
    want = _signature((root / "manifest.json").read_bytes(), key)
    if doc.get("algorithm") != "HMAC-SHA256" or not hmac.compare_digest(given, want):
        msg = f"bundle {root.name!r}: its signature does not verify (edited after signing, or signed with another key)"
        raise BundleError(msg)


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_bundle(
    path: str | Path,
    kind: str,
    documents: dict[str, Any],
    weights: dict[str, torch.Tensor],
    signing_key: str | bytes | None = None,
) -> Path:
    """Write a bundle atomically: into a temporary sibling directory, then renamed.

    Args:
        path: the bundle directory (replaced if it exists).
        kind: ``tabular`` or ``image``.
        documents: JSON-able content keyed by file name (those in ``JSON_FILES``).
        weights: the state dict, saved with safetensors.
        signing_key: sign the bundle with it (see :func:`sign_bundle`).
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
        if signing_key is not None:
            sign_bundle(tmp, signing_key)
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
    path: str | Path, kind: str | None = None, signing_key: str | bytes | None = None
) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """Read and verify a bundle: (manifest, documents by file name, weights). With
    ``kind`` ("tabular", "image"), a bundle of another kind is a ``BundleError``; with
    ``signing_key``, so is one that is unsigned or whose signature does not verify."""
    root = Path(path)
    mpath = root / "manifest.json"
    if not root.is_dir():
        msg = f"no detector bundle at {str(root)!r} (not a directory)"
        raise BundleError(msg)
    if not mpath.exists():
        msg = f"{str(root)!r} is not a detector bundle: manifest.json is missing"
        raise BundleError(msg)
    if signing_key is not None:
        verify_signature(root, signing_key)
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
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        msg = f"bundle at {str(path)!r} is incomplete or inconsistent: {exc}"
        raise BundleError(msg) from exc
