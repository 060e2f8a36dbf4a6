"""Drift of batch-scored partitions: the same window statistics as ``anomaly-vae drift``
(:mod:`anomaly_vae.drift`), accumulated while a partition is scored (local engine) or in
a second pass over it (Spark: each task's statistics, which merge exactly), written as
``_drift.json`` beside ``_partition.json``, and summarized in the run manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anomaly_vae.drift import WindowStats
from anomaly_vae.drift.check import evaluate, require_reference

from .partitions import write_json

DRIFT_FILE = "_drift.json"


def new_stats(detector: Any) -> WindowStats:
    """Empty statistics against ``detector``'s reference (a clear error without one)."""
    return WindowStats(require_reference(detector))


def add(stats: WindowStats, out: dict[str, Any]) -> None:
    """Add a batch's :meth:`~anomaly_vae.TabularDetector.drift_outputs`."""
    stats.update(
        out["normality"], out["flags"], out["mu"], out["kl"], keys=out["keys"],
        arrays=out["arrays"], contributions=out["contributions"],
        feature_order=out["feature_order"],
    )  # fmt: skip


def write_partition_drift(tmp: Path, detector: Any, stats: WindowStats) -> dict[str, Any]:
    """Write ``_drift.json`` (the report and the mergeable statistics) into ``tmp``;
    returns the summary that goes into ``_partition.json``."""
    if stats.n == 0:
        summary: dict[str, Any] = {"verdict": "empty", "n": 0, "fired": [], "drifted_features": []}
        write_json(tmp / DRIFT_FILE, {"summary": summary})
        return summary
    report = evaluate(stats, detector.calibration_)
    summary = {
        "verdict": report.verdict,
        "n": report.n,
        "fired": [f["signal"] for f in report.fired],
        "drifted_features": report.drifted_features(),
    }
    write_json(
        tmp / DRIFT_FILE, {"summary": summary, "report": report.to_dict(), "stats": stats.to_dict()}
    )
    return summary


def run_summary(detector: Any, output: Path, partitions: list[dict[str, Any]]) -> dict[str, Any]:
    """The run manifest's drift section: each partition's verdict, and the verdict of
    every partition's records together (their statistics merged)."""
    reference = require_reference(detector)
    merged = WindowStats(reference)
    per: dict[str, str] = {}
    for part in partitions:
        target = output / part["partition"] if part["partition"] else output
        path = target / DRIFT_FILE
        if not path.is_file():
            per[part["partition"]] = "not checked"
            continue
        doc = json.loads(path.read_text())
        per[part["partition"]] = doc["summary"]["verdict"]
        if "stats" in doc:
            merged.merge(WindowStats.from_dict(reference, doc["stats"]))
    out: dict[str, Any] = {
        "partitions_drifted": sum(v == "drift" for v in per.values()),
        "per_partition": per,
    }
    if merged.n:
        report = evaluate(merged, detector.calibration_)
        out["all_partitions"] = {
            "verdict": report.verdict,
            "n": report.n,
            "fired": [f["signal"] for f in report.fired],
            "drifted_features": report.drifted_features(),
        }
    return out
