"""Batch scoring at scale: flat memory from 600,000 to 10,000,000 rows, and the pipeline's
throughput against the library's bare scoring loop on the same rows.

    python benchmarks/batch.py                 # about 10 minutes on 2 cores
    python benchmarks/batch.py --large 2000000 # a quicker look

Each measurement runs in its own process; its peak resident set size is the kernel's
``ru_maxrss`` for that process (what ``/usr/bin/time -v`` reports as "Maximum resident
set size"), read with ``os.wait4``. Inputs are generated Parquet files (written in
chunks, so generating 10M rows is flat too) of a table with structure: 8 numeric columns
driven by 3 latent factors, a categorical and a boolean column, and an id.
The figures go into benchmarks/RESULTS.md and benchmarks/results/batch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.results_md import replace_section  # noqa: E402

HEADING = "## Batch scoring: flat memory at any size"


def make_rows(n: int, seed: int, start: int = 0) -> pd.DataFrame:
    """``n`` rows of the benchmark table; ids start at ``start``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3))
    mix = np.random.default_rng(12345).normal(size=(3, 8))  # fixed across chunks
    x = z @ mix + 0.3 * rng.normal(size=(n, 8))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(8)])
    frame.insert(0, "id", np.arange(start, start + n, dtype=np.int64))
    frame["segment"] = np.where(z[:, 0] > 0.5, "a", np.where(z[:, 0] < -0.5, "b", "c"))
    frame["flag"] = z[:, 1] + 0.3 * rng.normal(size=n) > 0
    return frame


def write_input(path: Path, rows: int, chunk: int = 500_000) -> None:
    """A Parquet file of ``rows`` rows, written ``chunk`` rows (one row group) at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    for i, start in enumerate(range(0, rows, chunk)):
        table = pa.Table.from_pandas(
            make_rows(min(chunk, rows - start), seed=1000 + i, start=start), preserve_index=False
        )
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    assert writer is not None
    writer.close()


def run_measured(cmd: list[str]) -> tuple[float, int, str]:
    """Run ``cmd``; returns (wall seconds, peak RSS in bytes, stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out = proc.stdout.read() if proc.stdout else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        msg = f"{cmd} exited with {proc.returncode}"
        raise RuntimeError(msg)
    return wall, int(usage.ru_maxrss) * 1024, out


BARE_LOOP = """
import json, sys, time
import pyarrow.parquet as pq
from anomaly_vae import TabularDetector
det = TabularDetector.load(sys.argv[1])
batch_rows = int(sys.argv[3])
frames = [b.to_pandas() for b in pq.ParquetFile(sys.argv[2]).iter_batches(batch_size=batch_rows)]
t0 = time.perf_counter()
n = 0
for frame in frames:
    n += len(det.score(frame, allow_extra=True, progress=False))
print(json.dumps({"rows": n, "seconds": time.perf_counter() - t0}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", type=int, default=600_000)
    ap.add_argument("--medium", type=int, default=2_000_000)
    ap.add_argument("--large", type=int, default=10_000_000)
    ap.add_argument("--batch-rows", type=int, default=65_536)
    ap.add_argument("--spark", action="store_true", help="also time the Spark engine (small input)")
    ap.add_argument("--workdir", help="keep inputs here (default: a temporary directory)")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "batch.json"))
    args = ap.parse_args()

    from anomaly_vae import TabularDetector

    work = Path(args.workdir or tempfile.mkdtemp(prefix="anomaly-vae-batch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = work / "bundle"
    if not bundle.exists():
        print("training the benchmark detector on 20,000 rows", flush=True)
        TabularDetector(id_column="id", seed=0).fit(make_rows(20_000, seed=1)).save(bundle)
    det = TabularDetector.load(bundle)
    exe = str(Path(sys.executable).with_name("anomaly-vae"))
    figures: dict[str, dict[str, float]] = {}
    sizes = (("small", args.small), ("medium", args.medium), ("large", args.large))
    for label, rows in sizes:
        src = work / f"in-{rows}" / "rows.parquet"
        if not src.exists():
            print(f"generating {rows:,} rows", flush=True)
            write_input(src, rows)
        out = work / f"out-{rows}"
        shutil.rmtree(out, ignore_errors=True)
        print(f"score-batch on {rows:,} rows", flush=True)
        wall, rss, _ = run_measured(
            [exe, "--quiet", "score-batch", "--no-track", "--model", str(bundle), "--input",
             str(src), "--output", str(out), "--batch-rows", str(args.batch_rows)]
        )  # fmt: skip
        manifest = json.loads((out / "_manifest.json").read_text())
        assert manifest["rows_out"] == rows
        figures[label] = {
            "rows": rows,
            "rss_mb": rss / 2**20,
            "wall_s": wall,
            "pipeline_s": manifest["duration_s"],
            "rows_per_s": rows / manifest["duration_s"],
            "input_mb": src.stat().st_size / 2**20,
        }
        print(json.dumps(figures[label]), flush=True)
        shutil.rmtree(out, ignore_errors=True)

    small_src = work / f"in-{args.small}" / "rows.parquet"
    print("bare scoring loop on the small input", flush=True)
    _, _, bare_out = run_measured(
        [sys.executable, "-c", BARE_LOOP, str(bundle), str(small_src), str(args.batch_rows)]
    )
    bare = json.loads(bare_out)
    bare_rate = bare["rows"] / bare["seconds"]
    spark_rate = None
    if args.spark:
        out = work / "out-spark"
        shutil.rmtree(out, ignore_errors=True)
        wall, _, _ = run_measured(
            [exe, "--quiet", "score-batch", "--no-track", "--engine", "spark", "--spark-master",
             "local[2]", "--model", str(bundle), "--input", str(small_src), "--output", str(out)]
        )  # fmt: skip
        spark_rate = args.small / json.loads((out / "_manifest.json").read_text())["duration_s"]
        shutil.rmtree(out, ignore_errors=True)

    s, lg = figures["small"], figures["large"]
    growth = lg["rss_mb"] / s["rss_mb"] - 1
    ratio = s["rows_per_s"] / bare_rate
    lines = [
        HEADING,
        "",
        f"`python benchmarks/batch.py{' --spark' if args.spark else ''}` (default sizes;"
        f" K={det.sampler_.k}, the K its fit sized;"
        f" --batch-rows {args.batch_rows}). Generated Parquet input: 8 numeric columns from 3"
        " latent factors, a categorical and a boolean column, an id. Peak RSS is the process's"
        " `ru_maxrss` (as `/usr/bin/time -v` reports), whole process: Python, torch, pyarrow."
        " Machine: 2 cores.",
        "",
        "| rows | input (MB) | peak RSS (MB) | rows/s (pipeline) | wall (s) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for f in (figures[label] for label, _ in sizes):
        lines.append(
            f"| {f['rows']:,} | {f['input_mb']:.0f} | {f['rss_mb']:.0f} | {f['rows_per_s']:,.0f} |"
            f" {f['wall_s']:.1f} |"
        )
    lines += [
        "",
        f"- Peak memory, {lg['rows']:,} rows against {s['rows']:,}: {growth:+.1%}"
        f" (target: under 20%).",
        f"- Pipeline against the library's bare scoring loop (`TabularDetector.score` over the"
        f" same {s['rows']:,} rows already in memory, same batch size, own process): "
        f"{s['rows_per_s']:,.0f} against {bare_rate:,.0f} rows/s, ratio {ratio:.2f}"
        f" (target: at least 0.80). The pipeline's figure includes reading, writing Parquet"
        f" and checksumming input and output.",
    ]
    if spark_rate is not None:
        lines.append(
            f"- Spark engine (`--engine spark`, local[2], same {s['rows']:,} rows, including"
            f" session start-up): {spark_rate:,.0f} rows/s."
        )
    lines.append("")
    section = "\n".join(lines) + "\n"
    replace_section(Path(args.results), HEADING, section)
    # the headline figures for a program to check, beside the section
    Path(args.json).write_text(
        json.dumps(
            {
                "k": det.sampler_.k,
                "batch_rows": args.batch_rows,
                "sizes": figures,
                "rss_growth_large_vs_small": growth,
                "bare_rows_per_s": bare_rate,
                "pipeline_vs_bare": ratio,
                "spark_rows_per_s": spark_rate,
            },
            indent=1,
        )
    )
    print(section)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
