"""Distributed training with Lightning's own DDP strategy: 2 CPU processes over gloo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from anomaly_vae import TabularDetector
from tests.conftest import make_mixed


@pytest.mark.slow
def test_ddp_two_processes_train_a_detector_that_loads_and_scores(tmp_path: Path) -> None:
    make_mixed(3000, seed=0).to_csv(tmp_path / "train.csv", index=False)
    flags = ["--id-column", "id", "--min-sigma", "0.05", "--k", "32"]
    cmd = [sys.executable, "-m", "anomaly_vae.cli", "--quiet", "train", str(tmp_path / "train.csv")]

    def train(out: str, *extra: str) -> dict:
        proc = subprocess.run(
            [*cmd, "--out", out, *flags, *extra],
            cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count('"bundle"') == 1  # one summary: rank 0 writes, the other quits
        return json.loads(proc.stdout)

    ddp = train("ddp", "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu")
    single = train("single")
    assert ddp["world_size"] == 2 and single["world_size"] == 1

    test = make_mixed(600, seed=1, n_outliers=30)
    y = np.r_[np.zeros(570), np.ones(30)]
    det_ddp = TabularDetector.load(tmp_path / "ddp")
    det_one = TabularDetector.load(tmp_path / "single")
    assert det_ddp.schema_ == det_one.schema_
    assert det_ddp.net_.config() == det_one.net_.config()
    # it scores the way a one-process detector does: deterministic per record, whatever
    # the batch, with the same outputs, and it finds the same outliers
    full = det_ddp.score(test)
    parts = np.concatenate(
        [det_ddp.score(test.iloc[i : i + 97])["log_likelihood"] for i in range(0, 600, 97)]
    )
    np.testing.assert_allclose(parts, full["log_likelihood"], rtol=0, atol=1e-9)
    assert list(full.columns) == list(det_one.score(test).columns)
    auc_ddp = roc_auc_score(y, full["score"])
    auc_one = roc_auc_score(y, det_one.score(test)["score"])
    assert auc_ddp > 0.95 and abs(auc_ddp - auc_one) < 0.03
    assert abs(full["is_outlier"][:570].mean() - 0.05) < 0.04
