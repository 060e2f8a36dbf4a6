"""Reading images into one layout: uint8 arrays [N, C, H, W] (C = 1 grayscale, 3 RGB).

Sources: IDX files (MNIST's format, gzip or not), ``.npy``/``.npz`` arrays, folders of
PNG/JPEG files (read with Pillow, sorted by name), or an in-memory array. Every problem is
an :class:`~anomaly_vae.exceptions.ImageError` naming the file or the first bad image.
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_vae.exceptions import ImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_IDX_TYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (``*-ubyte``, optionally ``.gz``) as a numpy array of its own shape."""
    p = Path(path)
    if not p.is_file():
        msg = f"no such IDX file: {str(p)!r}"
        raise ImageError(msg)
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            msg = f"{p}: corrupt gzip stream: {exc}"
            raise ImageError(msg) from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        msg = f"{p}: not an IDX file (bad magic number {raw[:4].hex()!r})"
        raise ImageError(msg)
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        msg = f"{p}: truncated IDX header"
        raise ImageError(msg)
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    want = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != want:
        msg = f"{p}: IDX header says shape {dims} ({want} bytes) but the file holds {len(raw) - header}"
        raise ImageError(msg)
    return (
        np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))
    )


def as_images(array: Any, *, what: str = "images", channels: int | None = None) -> np.ndarray:
    """Validate and convert an array to uint8 [N, C, H, W].

    Accepts [N, H, W], [N, H, W, C] or [N, C, H, W] with C in {1, 3}; uint8 (or any
    integers in 0..255), or floats in [0, 1] (scaled by 255 and rounded).
    """
    a = np.asarray(array)
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4:
        if a.shape[1] not in (1, 3) and a.shape[3] in (1, 3):
            a = a.transpose(0, 3, 1, 2)
        if a.shape[1] not in (1, 3):
            msg = f"{what}: cannot tell the channel axis of shape {a.shape}; use [N, C, H, W] or [N, H, W, C] with C = 1 or 3"
            raise ImageError(msg)
    else:
        msg = f"{what}: expected [N, H, W] or [N, C, H, W] (C = 1 or 3), got shape {a.shape}"
        raise ImageError(msg)
    if a.shape[0] == 0:
        msg = f"{what}: no images"
        raise ImageError(msg)
    if channels is not None and a.shape[1] != channels:
        msg = f"{what}: {a.shape[1]} channel(s) but {channels} expected"
        raise ImageError(msg)
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if np.issubdtype(a.dtype, np.integer):
        bad = (a < 0) | (a > 255)
        if bad.any():
            i = int(np.flatnonzero(bad.reshape(len(a), -1).any(1))[0])
            msg = f"{what}: integer pixel values must be in 0..255; image {i} has {a[i][bad[i]].flat[0]}"
            raise ImageError(msg)
        return a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        flat = a.reshape(len(a), -1)
        bad = ~np.isfinite(flat) | (flat < 0) | (flat > 1)
        if bad.any():
            i = int(np.flatnonzero(bad.any(1))[0])
            msg = f"{what}: float pixel values must be finite and in [0, 1]; image {i} has {float(flat[i][bad[i]][0])!r}"
            raise ImageError(msg)
        return np.rint(a * 255.0).astype(np.uint8)
    msg = f"{what}: unsupported pixel dtype {a.dtype}"
    raise ImageError(msg)


def _read_folder(folder: Path, channels: int | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        msg = f"{folder}: no PNG or JPEG files"
        raise ImageError(msg)
    images: list[np.ndarray] = []
    shape: tuple[int, ...] | None = None
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                mode = im.mode
                if channels is None:
                    channels = 1 if mode in ("1", "L", "I", "I;16", "F", "LA") else 3
                arr = np.asarray(im.convert("L" if channels == 1 else "RGB"))
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            msg = f"{f}: not a readable image: {exc}"
            raise ImageError(msg) from exc
        if channels == 1 and mode not in ("1", "L", "I", "I;16", "F", "LA", "P"):
            msg = f"{f}: a {mode} image among grayscale ones; convert it or pass channels=3"
            raise ImageError(msg)
        if shape is None:
            shape = arr.shape
        elif arr.shape != shape:
            msg = f"{f}: size {arr.shape[:2]} differs from the first image's {shape[:2]}"
            raise ImageError(msg)
        images.append(arr)
    return as_images(np.stack(images), what=str(folder), channels=channels)


def load_images(source: Any, *, channels: int | None = None) -> np.ndarray:
    """Images from a path (IDX, .npy, .npz, folder of PNG/JPEG) or an array, as uint8
    [N, C, H, W]. ``channels`` (1 or 3) is checked when given; a folder converts
    palette images to it."""
    if channels is not None and channels not in (1, 3):
        msg = f"channels must be 1 or 3, got {channels!r}"
        raise ImageError(msg)
    if not isinstance(source, str | Path):
        return as_images(source, channels=channels)
    p = Path(source)
    if p.is_dir():
        return _read_folder(p, channels)
    if not p.exists():
        msg = f"no such image file or folder: {str(p)!r}"
        raise ImageError(msg)
    name = p.name.lower()
    if name.endswith(".npy"):
        try:
            arr = np.load(p, allow_pickle=False)
        except ValueError as exc:
            msg = f"{p}: not a plain numeric .npy array: {exc}"
            raise ImageError(msg) from exc
        return as_images(arr, what=str(p), channels=channels)
    if name.endswith(".npz"):
        with np.load(p, allow_pickle=False) as z:
            keys = [k for k in ("images", "x", "X") if k in z.files] or list(z.files)
            if len(keys) != 1 and not {"images", "x", "X"} & set(z.files):
                msg = f"{p}: holds arrays {z.files}; name the images 'images' or 'x'"
                raise ImageError(msg)
            return as_images(z[keys[0]], what=f"{p}[{keys[0]}]", channels=channels)
    if name.endswith(IMAGE_SUFFIXES):
        msg = f"{p}: a single image file; put images in a folder and pass the folder"
        raise ImageError(msg)
    return as_images(read_idx(p), what=str(p), channels=channels)


def save_grid(images: np.ndarray, path: str | Path, *, ncol: int = 8, pad: int = 2) -> Path:
    """Write images [N, C, H, W] (uint8, or floats in [0, 1]) as one PNG grid, ``ncol``
    per row, with ``pad`` pixels of black between them; returns the path."""
    from PIL import Image

    a = np.asarray(images)
    if a.dtype != np.uint8:
        a = np.rint(np.clip(a, 0.0, 1.0) * 255).astype(np.uint8)
    n, c, h, w = a.shape
    ncol = max(1, min(ncol, n))
    nrow = math.ceil(n / ncol)
    grid = np.zeros((c, nrow * (h + pad) + pad, ncol * (w + pad) + pad), np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, y : y + h, x : x + w] = a[i]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[0] if c == 1 else grid.transpose(1, 2, 0)).save(p)
    return p
