"""Image loading: IDX (gzip or not), arrays, PNG/JPEG folders, and errors naming the file."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from anomaly_vae.data.images import load_images, read_idx
from anomaly_vae.exceptions import ImageError

DATA = Path(
    os.environ.get("ANOMALY_VAE_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")
)


def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def test_idx_plain_and_gzip(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 256, (5, 4, 8), dtype=np.uint8)
    (tmp_path / "a-ubyte").write_bytes(_idx(arr))
    (tmp_path / "a-ubyte.gz").write_bytes(gzip.compress(_idx(arr)))
    for name in ("a-ubyte", "a-ubyte.gz"):
        np.testing.assert_array_equal(read_idx(tmp_path / name), arr)
        assert load_images(tmp_path / name).shape == (5, 1, 4, 8)


def test_idx_errors_name_the_file(tmp_path: Path) -> None:
    arr = np.zeros((3, 4, 4), np.uint8)
    (tmp_path / "short-ubyte").write_bytes(_idx(arr)[:-5])
    with pytest.raises(ImageError, match=r"short-ubyte: IDX header says shape \(3, 4, 4\)"):
        read_idx(tmp_path / "short-ubyte")
    (tmp_path / "junk-ubyte").write_bytes(b"hello world")
    with pytest.raises(ImageError, match="junk-ubyte: not an IDX file"):
        load_images(tmp_path / "junk-ubyte")
    with pytest.raises(ImageError, match="no such image file or folder"):
        load_images(tmp_path / "missing")


@pytest.mark.skipif(not (DATA / "images" / "mnist").is_dir(), reason="../shared/data/images absent")
def test_real_mnist_idx() -> None:
    images = load_images(DATA / "images" / "mnist" / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(DATA / "images" / "mnist" / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10_000, 1, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10_000,) and set(np.unique(labels)) == set(range(10))


def test_arrays_layouts_and_ranges(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    assert load_images(hwc).shape == (4, 3, 8, 8)
    np.save(tmp_path / "x.npy", hwc.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(load_images(tmp_path / "x.npy"), hwc.transpose(0, 3, 1, 2))
    np.savez(tmp_path / "x.npz", images=hwc[..., 0])
    assert load_images(tmp_path / "x.npz").shape == (4, 1, 8, 8)
    bad = rng.random((4, 8, 8))
    bad[2, 3, 3] = 1.5
    with pytest.raises(
        ImageError, match=r"float pixel values must be finite and in \[0, 1\]; image 2 has 1.5"
    ):
        load_images(bad)
    with pytest.raises(ImageError, match="integer pixel values must be in 0..255; image 0 has 300"):
        load_images(np.full((2, 4, 4), 300))
    with pytest.raises(ImageError, match="cannot tell the channel axis"):
        load_images(np.zeros((2, 5, 8, 8), np.uint8))
    with pytest.raises(ImageError, match=r"3 channel\(s\) but 1 expected"):
        load_images(hwc, channels=1)


def test_png_folder_and_its_errors(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    got = load_images(folder)
    assert got.shape == (3, 1, 8, 8)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / "3.png")
    with pytest.raises(ImageError, match=r"3.png: a RGB image among grayscale ones"):
        load_images(folder)
    assert load_images(folder, channels=3).shape == (4, 3, 8, 8)  # converts the gray ones
    (folder / "3.png").unlink()
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(folder / "4.png")
    with pytest.raises(ImageError, match=r"4.png: size \(6, 8\) differs"):
        load_images(folder)
    (folder / "4.png").write_bytes(b"not a png")
    with pytest.raises(ImageError, match="4.png: not a readable image"):
        load_images(folder)
