"""A record's log p(x) is the same bits whatever it is scored with: any batch size,
any batch composition, one or two threads, another process; and the calibration scores
a bundle stores are what the serving path computes for the same rows."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from anomaly_vae import ImageDetector, TabularDetector
from tests.conftest import make_mixed
from tests.test_image_detector import squares

FRESH = """
import json, sys
import numpy as np
from anomaly_vae import {cls}
det = {cls}.load(sys.argv[1])
rows = {load}
print(json.dumps([float(v).hex() for v in det.score_samples(rows)]))
"""


def _fresh_process(cls: str, bundle: Path, rows_path: Path, load: str) -> np.ndarray:
    """Scores from a new interpreter (own thread pool, own allocations), exactly."""
    code = FRESH.format(cls=cls, load=load)
    out = subprocess.run(
        [sys.executable, "-c", code, str(bundle), str(rows_path)],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    return np.array([float.fromhex(v) for v in json.loads(out.stdout.strip().splitlines()[-1])])


def _fresh_table_scores(bundle: Path, rows: pd.DataFrame, tmp_path: Path) -> np.ndarray:
    """``rows`` scored by the bundle in a new interpreter (via a CSV file)."""
    path = tmp_path / "rows.csv"
    rows.to_csv(path, index=False)
    return _fresh_process(
        "TabularDetector", bundle, path, "__import__('pandas').read_csv(sys.argv[2])"
    )


def _in_batches(score, rows, sizes: list[int]) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Scores of ``rows`` sent as consecutive batches of the given sizes (cycled)."""
    parts, start, i = [], 0, 0
    while start < len(rows):
        stop = start + sizes[i % len(sizes)]
        parts.append(score(rows[start:stop]))
        start, i = stop, i + 1
    return np.concatenate(parts)


def _cal_rows(n: int, seed: int, fraction: float, n_cal: int | None = None) -> np.ndarray:
    """The rows a fit held out for calibration (its seeded split, first part): ``n_cal``
    of them, or the fraction's share."""
    n_cal = max(1, round(fraction * n)) if n_cal is None else n_cal
    return np.random.default_rng(seed).permutation(n)[:n_cal]


def _assert_same_bits(got: np.ndarray, want: np.ndarray, what: str) -> None:
    differ = int(np.sum(got != want))
    worst = float(np.max(np.abs(got - want))) if len(got) else 0.0
    assert differ == 0, f"{what}: {differ} of {len(want)} scores differ, by up to {worst:.3g}"


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> tuple[TabularDetector, Path]:
    det = TabularDetector(id_column="id", seed=3, k=40, max_epochs=4).fit(make_mixed(500, 0))
    path = tmp_path_factory.mktemp("tab") / "bundle"
    det.save(path)
    return det, path


def test_tabular_scores_are_the_same_bits_in_any_batch(
    tabular: tuple[TabularDetector, Path], tmp_path: Path
) -> None:
    det, bundle = tabular
    rows = make_mixed(203, 7, n_outliers=10)  # not a multiple of any pass size
    want = det.score_samples(rows)

    def score(frame: pd.DataFrame) -> np.ndarray:
        return det.score_samples(frame.reset_index(drop=True))

    _assert_same_bits(_in_batches(score, rows, [1]), want, "one record at a time")
    _assert_same_bits(_in_batches(score, rows, [7, 77, 2, 130]), want, "mixed batch sizes")
    order = np.random.default_rng(0).permutation(len(rows))
    shuffled = np.empty(len(rows))
    shuffled[order] = score(rows.iloc[order])
    _assert_same_bits(shuffled, want, "other companions (shuffled)")
    doubled = score(pd.concat([rows, make_mixed(500, 8)]))[: len(rows)]
    _assert_same_bits(doubled, want, "with 500 other records")
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            _assert_same_bits(score(rows), want, f"{n} thread(s)")
    finally:
        torch.set_num_threads(threads)
    _assert_same_bits(_fresh_table_scores(bundle, rows, tmp_path), want, "a fresh process")


def test_tabular_stored_calibration_is_what_serving_computes(
    tabular: tuple[TabularDetector, Path], tmp_path: Path
) -> None:
    det, bundle = tabular
    train = make_mixed(500, 0)
    cal = train.iloc[_cal_rows(len(train), det.seed, det.calibration_fraction)]
    assert len(cal) == det.calibration_.n
    fresh = _fresh_table_scores(bundle, cal, tmp_path)
    _assert_same_bits(np.sort(fresh), det.calibration_.reference, "stored calibration scores")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageDetector, Path, np.ndarray]:
    images = squares(200, 0)
    det = ImageDetector(max_epochs=2, k=8, latent_dim=4, width_mult=8, seed=1).fit(images)
    path = tmp_path_factory.mktemp("img") / "bundle"
    det.save(path)
    return det, path, images


def test_image_scores_are_the_same_bits_in_any_batch_and_calibration_is_reproduced(
    image: tuple[ImageDetector, Path, np.ndarray], tmp_path: Path
) -> None:
    det, bundle, train = image
    rows = squares(37, 5)
    want = det.score_samples(rows)
    _assert_same_bits(_in_batches(det.score_samples, rows, [1, 5, 17]), want, "batch sizes")
    np.save(tmp_path / "rows.npy", rows)
    load = "np.load(sys.argv[2])"
    _assert_same_bits(
        _fresh_process("ImageDetector", bundle, tmp_path / "rows.npy", load),
        want,
        "a fresh process",
    )
    n_cal = det._split_sizes(len(train))[0]  # images hold out at least a floor
    cal = train[_cal_rows(len(train), det.seed, det.calibration_fraction, n_cal)]
    assert len(cal) == det.calibration_.n and math.isfinite(float(det.calibration_.threshold))
    np.save(tmp_path / "cal.npy", cal)
    fresh = _fresh_process("ImageDetector", bundle, tmp_path / "cal.npy", load)
    _assert_same_bits(np.sort(fresh), det.calibration_.reference, "stored calibration scores")
