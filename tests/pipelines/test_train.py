"""The gated training pipeline against a real sqlite MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from anomaly_vae.pipelines.train import PipelineConfig

from anomaly_vae.cli import main
from anomaly_vae.exceptions import SchemaError
from tests.conftest import make_mixed

pytestmark = pytest.mark.integration


def _data(tmp_path: Path) -> Path:
    frame = make_mixed(1500, seed=7, n_outliers=60)
    frame["label"] = np.r_[np.zeros(1440, int), np.ones(60, int)]
    frame = frame.sample(frac=1.0, random_state=0)  # outliers spread over both splits
    path = tmp_path / "table.parquet"
    frame.to_parquet(path, index=False)
    return path


def _config(tmp_path: Path, name: str, model: dict, **gate: object) -> Path:
    doc = {
        "data": {"path": "table.parquet", "label_column": "label", "holdout_fraction": 0.3},
        "model": {"id_column": "id", "min_sigma": 0.05, "k": 16, **model},
        "registry": {"name": "fraud", "store": "mlruns"},
        "gate": {"margin": 0.01, **gate},
        "seed": 0,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _run(config: Path, tmp_path: Path) -> tuple[int, dict]:
    report = tmp_path / f"{config.stem}-decision.json"
    rc = main(["--quiet", "pipeline", "train", str(config), "--report", str(report)])
    return rc, json.loads(report.read_text())


def test_gate_refuses_a_worse_model_and_accepts_a_better_one(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from anomaly_vae import registry

    _data(tmp_path)
    # v1: a short schedule, 7 epochs without early stopping (AUROC 0.63); no champion
    # yet: only calibration is checked
    rc, first = _run(_config(tmp_path, "v1", {"max_epochs": 7, "patience": 50}), tmp_path)
    assert rc == 0 and first["promoted"] and first["version"] == 1
    assert first["champion"] is None
    # v2: deliberately worse: a one-unit bottleneck that barely trains
    worse = {"hidden": [2], "latent_dim": 1, "lr": 1e-6, "max_epochs": 2}
    rc, second = _run(_config(tmp_path, "v2", worse), tmp_path)
    assert rc == 6 and not second["promoted"] and second["version"] == 2, (
        first["new"]["auroc"],
        second["new"]["auroc"],
    )
    assert second["new"]["auroc"] < second["champion"]["auroc"] - 0.01
    assert any(r.startswith("comparison FAILED") for r in second["reasons"])
    # v3: the default schedule (AUROC 0.998), better than v1
    rc, third = _run(_config(tmp_path, "v3", {}), tmp_path)
    assert rc == 0 and third["promoted"], third["reasons"]
    assert third["champion"]["version"] == 1
    assert third["new"]["auroc"] > third["champion"]["auroc"] + 0.1, (third, first)

    registry.configure(tmp_path / "mlruns")
    assert registry.resolve("fraud", "champion").version == 3
    # the decision and its reasons are on the runs and the versions
    client = MlflowClient()
    for doc, decision in ((second, "refused"), (third, "promoted")):
        run = client.get_run(doc["run_id"])
        assert run.data.tags["gate.decision"] == decision
        assert "comparison" in run.data.tags["gate.reasons"]
        assert run.data.metrics["holdout_auroc"] == pytest.approx(doc["new"]["auroc"])
        logged = json.loads(
            Path(client.download_artifacts(doc["run_id"], "gate.json", str(tmp_path))).read_text()
        )
        assert logged["reasons"] == doc["reasons"]
    assert registry.get_version("fraud", 2).tags["gate"] == "refused"
    assert registry.get_version("fraud", 3).tags["gate"] == "passed"


def test_log_likelihood_gate_without_labels(tmp_path: Path) -> None:
    _data(tmp_path)
    cfg = _config(tmp_path, "v1", {"max_epochs": 7, "patience": 50})
    doc = yaml.safe_load(cfg.read_text())
    doc["data"]["drop"] = ["label"]
    del doc["data"]["label_column"]
    cfg.write_text(yaml.safe_dump(doc))
    rc, first = _run(cfg, tmp_path)
    assert rc == 0 and first["gate_metric"] == "mean_log_likelihood"
    doc["model"].update({"hidden": [2], "latent_dim": 1, "lr": 1e-6, "max_epochs": 2})
    cfg.write_text(yaml.safe_dump(doc))
    rc, second = _run(cfg, tmp_path)
    assert rc == 6
    assert second["new"]["mean_log_likelihood"] < second["champion"]["mean_log_likelihood"]


def test_calibration_check(tmp_path: Path) -> None:
    from anomaly_vae.pipelines.train import decide

    cfg = PipelineConfig(data_path=tmp_path, name="m")
    base = {"target_fpr": 0.05, "n_normal": 400.0, "mean_log_likelihood": -3.0}
    # auto tolerance: 3 binomial standard errors at n=400 is 0.0327
    assert decide(cfg, {**base, "fpr": 0.08}, None)["passed"]
    refused = decide(cfg, {**base, "fpr": 0.09}, None)
    assert not refused["passed"]
    assert refused["reasons"][0].startswith(
        "calibration FAILED: held-out false-positive rate 0.0900"
    )
    # too few flags pass the default upper bound, not a two-sided one
    assert decide(cfg, {**base, "fpr": 0.0}, None)["passed"]
    cfg.fpr_bound = "both"
    assert not decide(cfg, {**base, "fpr": 0.0}, None)["passed"]
    cfg.fpr_tolerance = 0.06
    assert decide(cfg, {**base, "fpr": 0.0}, None)["passed"]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"data": {"path": "t.csv"}}, "section 'registry' must be a mapping and is required"),
        (
            {"data": {"path": "t.csv"}, "registry": {"name": "m"}, "modle": {}},
            "unknown key(s) ['modle']",
        ),
        (
            {"data": {"path": "t.csv"}, "registry": {"name": "m"}, "model": {"hiden": [4]}},
            "['model.hiden']",
        ),
        (
            {"data": {"path": "t.csv"}, "registry": {"name": "m"}, "gate": {"margin": "x"}},
            "gate.margin must be a number",
        ),
        (
            {"data": {"path": "t.csv"}, "registry": {"name": "m"}, "gate": {"metric": "auroc"}},
            "auroc needs data.label_column",
        ),
        ({"data": {}, "registry": {"name": "m"}}, "data.path is required"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, doc: dict, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(SchemaError) as err:
        PipelineConfig.from_yaml(path)
    assert message in str(err.value)


@pytest.mark.slow
def test_pipeline_with_ddp_registers_once(tmp_path: Path) -> None:
    """model.strategy ddp: Lightning re-runs the command per process; only rank 0
    evaluates, registers and decides."""
    import subprocess
    import sys

    from anomaly_vae import registry

    _data(tmp_path)
    cfg = _config(tmp_path, "ddp", {"devices": 2, "strategy": "ddp"})
    proc = subprocess.run(
        [sys.executable, "-m", "anomaly_vae.cli", "--quiet", "pipeline", "train", str(cfg)],
        cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["promoted"]
    registry.configure(tmp_path / "mlruns")
    assert [v.version for v in registry.list_versions("fraud")] == [1]
    run = registry.get_version("fraud", 1)
    from mlflow import MlflowClient

    assert MlflowClient().get_run(run.run_id).data.params["world_size"] == "2"
