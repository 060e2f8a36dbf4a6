"""The Spark engine of ``score-batch``: the same partitions, the same output columns and
the same atomic commit as the local engine, with the scoring spread over Spark executors.

Each partition is read by Spark (CSV with the same column typing as the local engine,
Parquet as stored), scored with ``mapInPandas`` over the detector bundle, and written as
Parquet into the hidden temporary directory that :func:`.partitions.commit_partition`
renames into place. The bundle travels to executors with ``SparkContext.addFile``, so
on a cluster only the driver needs the bundle (or the registry): submit with
``spark-submit --master spark://HOST:7077 $(which anomaly-vae) score-batch --engine spark
...`` with anomaly-vae installed on the executors' Python.

Output files are Spark's ``part-*.parquet`` (their number follows Spark's partitioning),
next to ``_partition.json``; readers see the same rows and columns as from the local
engine.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from anomaly_vae.detector import TabularDetector
from anomaly_vae.drift import WindowStats
from anomaly_vae.exceptions import OutputError, SchemaError

from . import drift_window as window
from .models import ModelRef
from .partitions import Partition, finish_partition, partition_manifest, staged
from .tables import SCORE_COLUMNS, SCORE_TYPES, carried_columns, csv_column_types, csv_header

_DETECTORS: dict[str, TabularDetector] = {}


def _executor_detector(bundle_name: str) -> TabularDetector:
    """The detector of a shipped bundle, loaded once per Python worker."""
    if bundle_name not in _DETECTORS:
        import torch
        from pyspark import SparkFiles

        torch.set_num_threads(1)  # one Python worker per core already
        _DETECTORS[bundle_name] = TabularDetector.load(SparkFiles.get(bundle_name))
    return _DETECTORS[bundle_name]


def _score_batches(
    bundle_name: str, k: int | None, columns: list[str]
) -> Any:  # returns the function mapInPandas calls
    def score(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        det = _executor_detector(bundle_name)
        for frame in frames:
            scored = det.score(frame, k=k, allow_extra=True, progress=False)
            out = frame.reset_index(drop=True)
            for name in SCORE_COLUMNS:
                out[name] = scored[name].to_numpy()
            yield out[columns]

    return score


def _drift_batches(bundle_name: str, k: int | None) -> Any:
    """The function mapInPandas calls for drift: one JSON row of window statistics per
    task, which merge exactly on the driver (records are sampled by content keys)."""

    def stats(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        det = _executor_detector(bundle_name)
        acc = window.new_stats(det)
        for frame in frames:
            window.add(acc, det.drift_outputs(frame, k=k, allow_extra=True))
        if acc.n:
            yield pd.DataFrame({"stats": [json.dumps(acc.to_dict())]})

    return stats


class SparkScorer:
    """A Spark session (local mode unless ``master`` or spark-submit says otherwise) that
    scores partitions; use as a context manager."""

    def __init__(self, ref: ModelRef, master: str | None = None) -> None:
        self.ref = ref
        self.master = master
        self.spark: Any = None
        self.bundle_name = Path(ref.bundle).name

    def __enter__(self) -> SparkScorer:
        # PySpark 4.x warns about pandas 3 on import; mapInPandas over Arrow works (tested)
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
        try:
            from pyspark.sql import SparkSession
        except ImportError as exc:
            msg = "--engine spark needs pyspark: pip install 'anomaly-vae[spark]'"
            raise SchemaError(msg) from exc
        # executors run the same Python as the driver unless the cluster says otherwise
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = SparkSession.builder.appName("anomaly-vae score-batch")
        if self.master or "SPARK_MASTER" not in os.environ:
            builder = builder.master(self.master or os.environ.get("SPARK_MASTER", "local[*]"))
        self.spark = (
            builder.config("spark.ui.enabled", "false")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.ui.showConsoleProgress", "false")
            .getOrCreate()
        )
        self.spark.sparkContext.setLogLevel("ERROR")
        self.spark.sparkContext.addFile(self.ref.bundle, recursive=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.spark is not None:
            self.spark.stop()
            self.spark = None

    def _read(self, detector: TabularDetector, files: tuple[Path, ...]) -> Any:
        from pyspark.sql import types as T

        paths = [str(f) for f in files]
        if files[0].suffix.lower() == ".csv":
            header = csv_header(files[0])
            for f in files[1:]:
                if csv_header(f) != header:
                    msg = f"{f}: header differs from {files[0]}'s; the Spark engine reads a partition's CSV files as one table"
                    raise SchemaError(msg)
            types = csv_column_types(detector, header)
            struct = T.StructType(
                [
                    T.StructField(
                        n, T.DoubleType() if str(types[n]) == "double" else T.StringType()
                    )
                    for n in header
                ]
            )
            return self.spark.read.csv(paths, header=True, schema=struct, mode="FAILFAST")
        return self.spark.read.parquet(*paths)

    def score_partition(
        self,
        detector: TabularDetector,
        part: Partition,
        root: Path,
        output: Path,
        *,
        k: int | None,
        keep_columns: bool,
        overwrite: bool,
        drift: bool = False,
    ) -> dict[str, Any]:
        """Score one partition with Spark and commit it atomically; returns its manifest.
        With ``drift``, a second pass gathers each task's drift statistics and merges
        them into the partition's ``_drift.json`` (the same figures as the local engine's,
        up to float summation order)."""
        t0 = time.perf_counter()
        target = part.target(output)
        target.parent.mkdir(parents=True, exist_ok=True)
        csvs = tuple(f for f in part.files if f.suffix.lower() == ".csv")
        others = tuple(f for f in part.files if f.suffix.lower() != ".csv")
        rows_in = 0
        stats = window.new_stats(detector) if drift else None
        with staged(target) as tmp:
            for group in (g for g in (csvs, others) if g):  # one Spark job per format
                rows_in += self._score_group(detector, group, tmp, k=k, keep_columns=keep_columns)
                if stats is not None:
                    stats.merge(self._drift_group(detector, group, k))
            manifest = self._manifest(detector, part, root, tmp, rows_in, t0, k)
            if stats is not None:
                manifest["drift"] = window.write_partition_drift(tmp, detector, stats)
            finish_partition(tmp, target, manifest, overwrite)
        return manifest

    def _score_group(
        self,
        detector: TabularDetector,
        files: tuple[Path, ...],
        tmp: Path,
        *,
        k: int | None,
        keep_columns: bool,
    ) -> int:
        """Score files of one format into ``tmp`` (appending); returns rows read."""
        from pyspark.sql import types as T

        df = self._read(detector, files)
        keep = carried_columns(detector, list(df.columns), keep_columns)
        carried = [f for f in df.schema.fields if f.name in keep]
        out_schema = T.StructType(
            [
                *carried,
                *[
                    T.StructField(n, T.BooleanType() if t == pa.bool_() else T.DoubleType())
                    for n, t in zip(SCORE_COLUMNS, SCORE_TYPES, strict=True)
                ],
            ]
        )
        columns = [f.name for f in out_schema.fields]
        scored = df.mapInPandas(_score_batches(self.bundle_name, k, columns), schema=out_schema)
        try:
            scored.write.mode("append").parquet(str(tmp))
        except Exception as exc:
            text = str(exc)
            if "SchemaError" in text or "Malformed" in text or "NumberFormat" in text:
                first = next((ln for ln in text.splitlines() if "Error" in ln), text[:500])
                msg = f"{files[0].parent}: {first.strip()}"
                raise SchemaError(msg) from exc
            msg = f"Spark could not score {files[0].parent}: {text[:2000]}"
            raise OutputError(msg) from exc
        return int(df.count())

    def _drift_group(
        self, detector: TabularDetector, files: tuple[Path, ...], k: int | None
    ) -> WindowStats:
        """Drift statistics of files of one format, merged over Spark's tasks."""
        df = self._read(detector, files)
        rows = df.mapInPandas(_drift_batches(self.bundle_name, k), schema="stats string").collect()
        merged = window.new_stats(detector)
        for row in rows:
            merged.merge(WindowStats.from_dict(merged.reference, json.loads(row["stats"])))
        return merged

    def _manifest(
        self,
        detector: TabularDetector,
        part: Partition,
        root: Path,
        tmp: Path,
        rows_in: int,
        t0: float,
        k: int | None,
    ) -> dict[str, Any]:
        """The partition manifest of Spark's output in ``tmp``; every row read must be
        written."""
        import pyarrow.parquet as pq

        outputs = sorted(tmp.glob("part-*.parquet"))
        rows_out = sum(pq.ParquetFile(f).metadata.num_rows for f in outputs)
        outliers = sum(
            int(pq.read_table(f, columns=["is_outlier"])["is_outlier"].to_numpy().sum())
            for f in outputs
        )
        manifest = partition_manifest(
            part, self.ref, k or detector.sampler_.k, (rows_in, rows_out, outliers), t0,
            root, tmp, outputs, engine="spark",
        )  # fmt: skip
        if manifest["rows_in"] != manifest["rows_out"]:
            msg = (
                f"partition {part.rel!r}: {manifest['rows_in']} rows in, {manifest['rows_out']} out"
            )
            raise OutputError(msg)
        return manifest
