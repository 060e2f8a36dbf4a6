"""score-batch: layouts, output, manifests, idempotency, errors and exit codes, kill safety."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from anomaly_vae.pipelines.partitions import discover, expand_dates

from anomaly_vae import TabularDetector
from anomaly_vae.bundle import sha256_file
from anomaly_vae.cli import main
from anomaly_vae.exceptions import InputNotFoundError, SchemaError
from tests.conftest import make_mixed
from tests.pipelines.conftest import DAYS, write_partitions


def _files(root: Path) -> dict[str, str]:
    """Every visible data file under root -> sha256."""
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*.parquet"))
        if not any(s.startswith((".", "_")) for s in p.relative_to(root).parts)
    }


def test_expand_dates() -> None:
    day = dt.date(2026, 3, 1)
    assert expand_dates("in/date={yesterday}/x", day) == "in/date=2026-02-28/x"
    assert expand_dates("{today}", day) == "2026-03-01"


def test_discover_layouts(tmp_path: Path) -> None:
    write_partitions(tmp_path / "in", 20)
    (tmp_path / "in" / "_ignored").mkdir()
    (tmp_path / "in" / "_ignored" / "x.csv").write_text("a\n1\n")
    root, parts = discover(str(tmp_path / "in"))
    assert root == tmp_path / "in"
    assert [p.rel for p in parts] == [f"date={d}" for d in DAYS]
    assert [f.name for f in parts[0].files] == ["a.csv", "b.parquet"]
    # a glob keeps the partition directories under its fixed prefix
    _, parts = discover(str(tmp_path / "in" / "date=*" / "*.csv"))
    assert [(p.rel, len(p.files)) for p in parts] == [(f"date={d}", 1) for d in DAYS]
    # a single file is its own partition at the output root
    _, parts = discover(str(tmp_path / "in" / f"date={DAYS[0]}" / "a.csv"))
    assert [(p.rel, len(p.files)) for p in parts] == [("", 1)]


def test_discover_errors(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match="does not exist"):
        discover(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFoundError, match="holds no CSV or Parquet files"):
        discover(str(tmp_path / "empty"))
    with pytest.raises(InputNotFoundError, match="holds no CSV"):
        discover(str(tmp_path / "empty" / "*.csv"))
    write_partitions(tmp_path / "mixed", 20, DAYS[:1])
    make_mixed(5, 0).to_csv(tmp_path / "mixed" / "top.csv", index=False)
    with pytest.raises(SchemaError, match="mixes data files at its top level"):
        discover(str(tmp_path / "mixed"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SchemaError, match="not a CSV or Parquet file"):
        discover(str(tmp_path / "notes.txt"))


def test_partitioned_run_matches_the_library(tmp_path: Path, bundle: Path) -> None:
    inp = write_partitions(tmp_path / "in", 700)
    out = tmp_path / "out"
    rc = main(["--quiet", "score-batch", "--model", str(bundle), "--input", str(inp),
               "--output", str(out), "--batch-rows", "256"])  # fmt: skip
    assert rc == 0
    det = TabularDetector.load(bundle)
    for day in DAYS:
        for i, name in enumerate(("a.csv", "b.parquet")):
            src = inp / f"date={day}" / name
            got = pq.read_table(out / f"date={day}" / f"part-{i:05d}-{Path(name).stem}.parquet")
            assert got.column_names == [
                "id",
                "log_likelihood",
                "stderr",
                "ess",
                "score",
                "p_value",
                "is_outlier",
                "unreliable",
            ]
            frame = pd.read_csv(src) if name.endswith(".csv") else pd.read_parquet(src)
            want = det.score(frame)
            got_df = got.to_pandas()
            assert got_df["id"].tolist() == frame["id"].tolist()  # order kept, nothing lost
            np.testing.assert_allclose(
                got_df["log_likelihood"], want["log_likelihood"], rtol=0, atol=1e-9
            )
            assert got_df["is_outlier"].tolist() == want["is_outlier"].tolist()
    # manifests: per partition and for the run, with checksums that match the files
    run = json.loads((out / "_manifest.json").read_text())
    assert run["rows_in"] == run["rows_out"] == 6 * 700
    assert run["partitions_scored"] == 3 and run["partitions_skipped"] == 0
    assert run["model"]["bundle"] == str(bundle.resolve())
    part = json.loads((out / f"date={DAYS[1]}" / "_partition.json").read_text())
    assert part["rows_in"] == part["rows_out"] == 1400
    assert part["outliers"] == sum(
        int(pq.read_table(out / e["path"])["is_outlier"].to_numpy().sum()) for e in part["outputs"]
    )
    for e in part["outputs"]:
        assert sha256_file(out / e["path"]) == e["sha256"]
    for e in part["inputs"]:
        assert sha256_file(inp / e["path"]) == e["sha256"]
    # the hive layout reads back as one table with the partition column
    table = ds.dataset(out, partitioning="hive").to_table()
    assert table.num_rows == 4200 and "date" in table.column_names


def test_rerun_skips_done_partitions_and_overwrite_is_identical(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inp = write_partitions(tmp_path / "in", 200)
    out = tmp_path / "out"
    args = [
        "--quiet",
        "score-batch",
        "--model",
        str(bundle),
        "--input",
        str(inp),
        "--output",
        str(out),
    ]
    assert main(args) == 0
    first = _files(out)
    capsys.readouterr()
    assert main(args) == 0
    assert "0 partition(s) scored, 3 already done" in capsys.readouterr().out
    assert main([*args, "--overwrite"]) == 0
    assert _files(out) == first  # the same command writes the same bytes
    run = json.loads((out / "_manifest.json").read_text())
    assert run["partitions_scored"] == 3


def test_other_batch_sizes_score_the_same_rows(tmp_path: Path, bundle: Path) -> None:
    """Other batch sizes: other row groups, the same rows, ids, flags and score bits."""
    inp = write_partitions(tmp_path / "in", 200)
    base = ["--quiet", "score-batch", "--model", str(bundle), "--input", str(inp)]
    assert main([*base, "--output", str(tmp_path / "a")]) == 0
    assert main([*base, "--output", str(tmp_path / "b"), "--batch-rows", "77"]) == 0
    for k in _files(tmp_path / "a"):
        if not k.endswith(".parquet"):
            continue
        want = pq.read_table(tmp_path / "a" / k).to_pandas()
        got = pq.read_table(tmp_path / "b" / k).to_pandas()
        assert got["id"].tolist() == want["id"].tolist()
        assert got["is_outlier"].tolist() == want["is_outlier"].tolist()
        assert (got["log_likelihood"].to_numpy() == want["log_likelihood"].to_numpy()).all()


def test_keep_columns_and_single_file(tmp_path: Path, bundle: Path) -> None:
    src = tmp_path / "one.parquet"
    make_mixed(50, 3).to_parquet(src, index=False)
    out = tmp_path / "out"
    assert main(["--quiet", "score-batch", "--model", str(bundle), "--input", str(src),
                 "--output", str(out), "--keep-columns"]) == 0  # fmt: skip
    got = pq.read_table(out / "part-00000-one.parquet")
    assert got.column_names[:6] == ["id", "a", "b", "c", "color", "flag"]
    assert got.schema.field("flag").type == "bool"  # Parquet types are carried through
    assert got.num_rows == 50


def test_bad_data_names_file_column_and_row(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = make_mixed(30, 4)
    frame["a"] = frame["a"].astype(str)
    frame.loc[17, "a"] = "twelve"
    (tmp_path / "in").mkdir()
    frame.to_csv(tmp_path / "in" / "bad.csv", index=False)
    out = tmp_path / "out"
    rc = main(["--quiet", "score-batch", "--model", str(bundle), "--input", str(tmp_path / "in"),
               "--output", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert "bad.csv" in err and "twelve" in err
    assert not out.exists() or not _files(out)
    # a missing model column is named
    make_mixed(30, 4).drop(columns=["c"]).to_parquet(tmp_path / "in" / "bad.csv.parquet")
    (tmp_path / "in" / "bad.csv").unlink()
    rc = main(["--quiet", "score-batch", "--model", str(bundle), "--input", str(tmp_path / "in"),
               "--output", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "'c'" in err and "bad.csv.parquet" in err


def test_exit_codes_tell_a_scheduler_what_went_wrong(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inp = write_partitions(tmp_path / "in", 20, DAYS[:1])
    base = ["--quiet", "score-batch", "--no-track"]
    # 3: the model cannot be resolved
    assert main([*base, "--model", str(tmp_path / "no-bundle"), "--input", str(inp),
                 "--output", str(tmp_path / "o")]) == 3  # fmt: skip
    assert main([*base, "--model", "models:/nope@champion", "--store", str(tmp_path / "mlruns"),
                 "--input", str(inp), "--output", str(tmp_path / "o")]) == 3  # fmt: skip
    assert "no version with alias 'champion'" in capsys.readouterr().err
    # 4: yesterday's partition has not landed
    assert main([*base, "--model", str(bundle), "--input", str(inp / "date={yesterday}"),
                 "--output", str(tmp_path / "o")]) == 4  # fmt: skip
    assert "does not exist" in capsys.readouterr().err
    # 5: output cannot be written (its parent is a file)
    (tmp_path / "file").write_text("x")
    assert main([*base, "--model", str(bundle), "--input", str(inp),
                 "--output", str(tmp_path / "file" / "out")]) == 5  # fmt: skip
    # 2: a bad flag value
    assert main([*base, "--model", str(bundle), "--input", str(inp), "--output",
                 str(tmp_path / "o"), "--batch-rows", "0"]) == 2  # fmt: skip


def test_manifest_logged_to_mlflow(tmp_path: Path, bundle: Path) -> None:
    import mlflow

    inp = write_partitions(tmp_path / "in", 30, DAYS[:2])
    store = tmp_path / "mlruns"
    assert main(["--quiet", "score-batch", "--model", str(bundle), "--input", str(inp),
                 "--output", str(tmp_path / "out"), "--store", str(store)]) == 0  # fmt: skip
    from anomaly_vae import registry

    registry.configure(store)
    runs = mlflow.search_runs(filter_string="tags.kind = 'batch-scoring'", output_format="list")
    assert len(runs) == 1
    assert runs[0].data.metrics["rows_out"] == 120
    path = mlflow.artifacts.download_artifacts(
        run_id=runs[0].info.run_id, artifact_path="manifest.json", dst_path=str(tmp_path)
    )
    assert json.loads(Path(path).read_text())["partitions_scored"] == 2


def test_sigkill_leaves_no_partial_output_and_rerun_is_identical(
    tmp_path: Path, bundle: Path
) -> None:
    days = tuple(f"2026-10-{d:02d}" for d in range(1, 7))
    inp = write_partitions(tmp_path / "in", 4000, days)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    cmd = [sys.executable, "-m", "anomaly_vae.cli", "--quiet", "score-batch", "--no-track",
           "--model", str(bundle), "--input", str(inp), "--k", "128", "--batch-rows", "500"]  # fmt: skip
    subprocess.run([*cmd, "--output", str(clean)], check=True, timeout=600)
    proc = subprocess.Popen([*cmd, "--output", str(killed)])
    try:
        deadline = time.monotonic() + 300
        while not (killed / f"date={days[0]}").exists():  # the first partition is committed
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)  # into the second partition's batches
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    done = sorted(p.name for p in killed.iterdir() if not p.name.startswith((".", "_")))
    assert 1 <= len(done) < len(days)
    # every visible partition is complete: its files equal the uninterrupted run's
    reference = _files(clean)
    partial = _files(killed)
    assert partial and all(reference[k] == v for k, v in partial.items())
    assert {k.split("/")[0] for k in partial} == set(done)
    assert not (killed / "_manifest.json").exists()  # the run never finished
    # a re-run completes the work and clears the killed run's temporary directory
    subprocess.run([*cmd, "--output", str(killed)], check=True, timeout=600)
    assert _files(killed) == reference
    assert not list(killed.glob(".*inprogress*"))
    run = json.loads((killed / "_manifest.json").read_text())
    assert run["partitions_skipped"] == len(done)
    assert run["rows_out"] == 2 * 4000 * len(days)


def test_drift_per_partition_and_for_the_run(tmp_path: Path, bundle: Path, capsys) -> None:
    """--drift: each partition's _drift.json (report and mergeable statistics), its
    summary in _partition.json, and the run manifest's verdict for all partitions."""
    inp = tmp_path / "in"  # like write_partitions, but rows like the training rows
    for i, day in enumerate(DAYS):
        (inp / f"date={day}").mkdir(parents=True)
        for j, name in enumerate(("a.csv", "b.parquet")):
            frame = make_mixed(400, seed=200 + 2 * i + j)
            frame["id"] = [f"{day}/{name}/{r}" for r in range(400)]
            if day == DAYS[1]:  # one day's column c moves by two of its units
                frame["c"] += 4.0
            if name.endswith(".csv"):
                frame.to_csv(inp / f"date={day}" / name, index=False)
            else:
                frame.to_parquet(inp / f"date={day}" / name, index=False)
    out = tmp_path / "out"
    args = ["--quiet", "score-batch", "--no-track", "--model", str(bundle), "--input", str(inp),
            "--output", str(out), "--drift"]  # fmt: skip
    assert main(args) == 0
    assert "1 of 3 partition(s) drifted" in capsys.readouterr().out
    for day in DAYS:
        doc = json.loads((out / f"date={day}" / "_drift.json").read_text())
        part = json.loads((out / f"date={day}" / "_partition.json").read_text())
        assert part["drift"] == doc["summary"]
        want = "drift" if day == DAYS[1] else "no_drift"
        assert doc["summary"]["verdict"] == want, (day, doc["summary"])
    assert (
        json.loads((out / f"date={DAYS[1]}" / "_drift.json").read_text())["summary"][
            "drifted_features"
        ][0]
        == "c"
    )
    run = json.loads((out / "_manifest.json").read_text())["drift"]
    assert run["partitions_drifted"] == 1
    assert run["all_partitions"]["verdict"] == "drift" and run["all_partitions"]["n"] == sum(
        json.loads((out / f"date={d}" / "_partition.json").read_text())["rows_in"] for d in DAYS
    )
    # the scores are those of a run without --drift
    plain = tmp_path / "plain"
    assert main([*args[:-2], str(plain)]) == 0
    for k in _files(plain):
        a, b = pq.read_table(plain / k).to_pandas(), pq.read_table(out / k).to_pandas()
        np.testing.assert_allclose(a["log_likelihood"], b["log_likelihood"], rtol=0, atol=1e-6)
        assert a["is_outlier"].tolist() == b["is_outlier"].tolist()


def test_an_unreachable_registry_gets_the_retry_exit_code(tmp_path, monkeypatch, capsys):
    """A tracking server that is down is transient: exit 75, which the CronJob retries,
    not 3 (final). A model that does not exist in a reachable store stays 3."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    inp = write_partitions(tmp_path / "in", 10)
    args = ["--quiet", "score-batch", "--model", "models:/fraud@champion", "--input", str(inp),
            "--output", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 75
    assert "unreachable" in capsys.readouterr().err
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert main([*args, "--store", str(tmp_path / "mlruns")]) == 3
