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
