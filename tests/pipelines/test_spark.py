"""The Spark engine (real pyspark, local mode) against the local engine on the same input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from anomaly_vae.cli import main
from tests.pipelines.conftest import DAYS, write_partitions

pytestmark = [pytest.mark.spark, pytest.mark.integration]


def test_spark_engine_scores_equal_the_local_engine(tmp_path: Path, bundle: Path) -> None:
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("the Spark engine needs Java")
    inp = write_partitions(tmp_path / "in", 1500)
    base = ["--quiet", "score-batch", "--no-track", "--model", str(bundle), "--input", str(inp)]
    assert main([*base, "--output", str(tmp_path / "local")]) == 0
    assert main([*base, "--output", str(tmp_path / "spark"), "--engine", "spark",
                 "--spark-master", "local[2]"]) == 0  # fmt: skip

    def read(out: Path):
        frame = ds.dataset(out, partitioning="hive").to_table().to_pandas()
        return frame.sort_values("id").reset_index(drop=True)

    local, spark = read(tmp_path / "local"), read(tmp_path / "spark")
    assert len(local) == len(spark) == 6 * 1500
    assert list(spark.columns) == list(local.columns)
    assert spark["id"].tolist() == local["id"].tolist()
    assert spark["date"].tolist() == local["date"].tolist()  # same partition layout
    for col in ("log_likelihood", "stderr", "score", "p_value"):
        np.testing.assert_allclose(spark[col], local[col], rtol=0, atol=1e-6)
    assert spark["is_outlier"].tolist() == local["is_outlier"].tolist()
    run = json.loads((tmp_path / "spark" / "_manifest.json").read_text())
    assert run["engine"] == "spark" and run["rows_in"] == run["rows_out"] == 9000
    part = json.loads((tmp_path / "spark" / f"date={DAYS[0]}" / "_partition.json").read_text())
    assert part["engine"] == "spark" and part["outputs"]
    # re-running skips what is done, as the local engine does
    assert main([*base, "--output", str(tmp_path / "spark"), "--engine", "spark"]) == 0
    run = json.loads((tmp_path / "spark" / "_manifest.json").read_text())
    assert run["partitions_skipped"] == 3


def test_spark_drift_statistics_match_the_local_engine(tmp_path: Path, bundle: Path) -> None:
    """--drift on both engines: Spark's per-task statistics merge into the local
    engine's figures. Counts are equal; sums (and what is computed from them) agree to
    1e-6, since a record's last bits may depend on the batch it was scored in."""
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("the Spark engine needs Java")
    inp = write_partitions(tmp_path / "in", 700, days=DAYS[:2])
    base = ["--quiet", "score-batch", "--no-track", "--drift", "--model", str(bundle),
            "--input", str(inp)]  # fmt: skip
    assert main([*base, "--output", str(tmp_path / "local")]) == 0
    assert main([*base, "--output", str(tmp_path / "spark"), "--engine", "spark",
                 "--spark-master", "local[2]"]) == 0  # fmt: skip
    for day in DAYS[:2]:
        a = json.loads((tmp_path / "local" / f"date={day}" / "_drift.json").read_text())
        b = json.loads((tmp_path / "spark" / f"date={day}" / "_drift.json").read_text())
        assert a["summary"] == b["summary"]
        sa, sb = a["stats"], b["stats"]
        assert sa["n"] == sb["n"] == 1400 and sa["flagged"] == sb["flagged"]
        assert sa["score_counts"] == sb["score_counts"] and sa["kl_counts"] == sb["kl_counts"]
        assert sa["feature_counts"] == sb["feature_counts"]
        assert sa["feature_missing"] == sb["feature_missing"]
        assert sorted(sa["latent_priority"]) == sorted(sb["latent_priority"])  # same records
        np.testing.assert_allclose(sa["contrib_sum"], sb["contrib_sum"], rtol=1e-6, atol=1e-6)
        ra, rb = a["report"], b["report"]
        for name in ra["signals"]:
            np.testing.assert_allclose(
                ra["signals"][name]["p_value"], rb["signals"][name]["p_value"], rtol=1e-6, atol=1e-9
            )
        for fa, fb in zip(ra["features"], rb["features"], strict=True):
            assert fa["feature"] == fb["feature"] and fa["verdict"] == fb["verdict"]
            np.testing.assert_allclose(fa["p_value"], fb["p_value"], rtol=1e-6, atol=1e-12)
    run_a = json.loads((tmp_path / "local" / "_manifest.json").read_text())["drift"]
    run_b = json.loads((tmp_path / "spark" / "_manifest.json").read_text())["drift"]
    assert run_a == run_b
