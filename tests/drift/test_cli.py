"""``anomaly-vae drift`` and ``drift-reference``: the report files, exit codes, tracking."""

from __future__ import annotations

import json
import re

import pytest

from anomaly_vae.cli import EXIT_DRIFT, EXIT_MODEL_UNAVAILABLE, main
from tests.conftest import make_mixed


@pytest.fixture(scope="module")
def bundle(fitted, tmp_path_factory):
    return fitted.save(tmp_path_factory.mktemp("drift") / "bundle")


def test_no_drift_writes_a_self_contained_report(bundle, tmp_path, capsys):
    data = tmp_path / "same.csv"
    make_mixed(1500, seed=20).to_csv(data, index=False)
    assert main(["--quiet", "drift", str(bundle), str(data), "--out", str(tmp_path / "r")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["verdict"] == "no_drift" and summary["n"] == 1500
    page = (tmp_path / "r" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4
    assert not re.search(r"(src|href)=['\"]https?://", page)  # works offline
    doc = json.loads((tmp_path / "r" / "report.json").read_text())
    assert {"verdict", "signals", "features", "fired", "rule", "margins"} <= set(doc)
    assert {f["feature"] for f in doc["features"]} == {"a", "b", "c", "color", "flag"}


def test_drift_exits_7_and_names_the_feature(bundle, tmp_path, capsys):
    frame = make_mixed(1500, seed=21)
    frame["c"] += 2.0
    data = tmp_path / "shifted.parquet"
    frame.to_parquet(data)
    code = main(["--quiet", "drift", str(bundle), str(data), "--out", str(tmp_path / "r")])
    assert code == EXIT_DRIFT == 7
    summary = json.loads(capsys.readouterr().out)
    assert summary["drifted_features"][0] == "c"
    assert "feature:c" in summary["fired"]


def test_a_bundle_without_a_reference_is_exit_3_naming_the_fix(fitted, tmp_path, capsys):
    from anomaly_vae import TabularDetector

    old = TabularDetector.load(fitted.save(tmp_path / "b"))
    old.reference_ = {}
    old.save(tmp_path / "old")
    data = tmp_path / "rows.csv"
    make_mixed(300, seed=22).to_csv(data, index=False)
    code = main(
        ["--quiet", "drift", str(tmp_path / "old"), str(data), "--out", str(tmp_path / "r")]
    )
    assert code == EXIT_MODEL_UNAVAILABLE
    assert "anomaly-vae drift-reference BUNDLE DATA" in capsys.readouterr().err
    train = tmp_path / "train.csv"
    make_mixed(800, seed=0).to_csv(train, index=False)
    fixed = tmp_path / "fixed"
    assert main(["drift-reference", str(tmp_path / "old"), str(train), "--out", str(fixed)]) == 0
    code = main(["--quiet", "drift", str(fixed), str(data), "--out", str(tmp_path / "r")])
    assert code == 0


def test_wrong_columns_are_exit_2_naming_them(bundle, tmp_path, capsys):
    data = tmp_path / "bad.csv"
    make_mixed(300, seed=23).drop(columns=["b"]).to_csv(data, index=False)
    code = main(["--quiet", "drift", str(bundle), str(data), "--out", str(tmp_path / "r")])
    assert code == 2
    assert "missing columns: ['b']" in capsys.readouterr().err


def test_tracking_logs_a_drift_run_linked_to_the_model(bundle, tmp_path, capsys):
    """A real sqlite MLflow store: the report becomes a run tagged kind=drift."""
    store = tmp_path / "mlruns"
    assert (
        main(
            [
                "register",
                str(bundle),
                "--name",
                "mixed",
                "--alias",
                "champion",
                "--store",
                str(store),
            ]
        )
        == 0
    )
    capsys.readouterr()
    data = tmp_path / "rows.csv"
    make_mixed(500, seed=24).to_csv(data, index=False)
    out = tmp_path / "r"
    code = main(
        [
            "--quiet",
            "drift",
            "models:/mixed@champion",
            str(data),
            "--out",
            str(out),
            "--store",
            str(store),
        ]
    )
    assert code in (0, EXIT_DRIFT)
    run_id = json.loads(capsys.readouterr().out)["mlflow_run"]
    import mlflow

    from anomaly_vae import registry

    registry.configure(store)
    run = mlflow.get_run(run_id)
    assert run.data.tags["kind"] == "drift"
    assert run.data.tags["model_name"] == "mixed" and run.data.tags["model_version"] == "1"
    assert run.data.metrics["window_rows"] == 500
    files = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "drift")}
    assert files == {"drift/report.html", "drift/report.json"}
