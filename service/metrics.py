"""Prometheus metrics, named by Prometheus conventions (units in names, ``_total`` counters).

With ``PROMETHEUS_MULTIPROC_DIR`` set (several worker processes), every process writes its
samples there and ``/metrics`` aggregates them (prometheus-client multiprocess mode).
"""

from __future__ import annotations

import os

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter(
    "anomaly_vae_requests_total",
    "HTTP requests by route and status code",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "anomaly_vae_request_duration_seconds",
    "HTTP request latency by route",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECORDS = Counter("anomaly_vae_records_scored_total", "records scored")
OUTLIERS = Counter("anomaly_vae_outliers_flagged_total", "records flagged as outliers")
SCORES = Histogram(
    "anomaly_vae_score_nats",
    "anomaly score (-log p(x), nats) of scored records",
    buckets=(-100, -50, -20, -10, -5, 0, 5, 10, 20, 50, 100, 200, 500, 1000),
)
BATCH = Histogram(
    "anomaly_vae_batch_records",
    "records per scoring batch",
    buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 5000),
)
COSTLY = Counter(
    "anomaly_vae_costly_requests_total",
    "requests costing more than lane_cost importance samples, scored in slices between "
    "cheap requests",
)
LOADS = Counter("anomaly_vae_model_loads_total", "model load attempts by outcome", ["outcome"])
LOAD_FAILING = Gauge(
    "anomaly_vae_model_load_failing",
    "1 while the latest load attempt failed (the service is degraded: it serves the "
    "previous model, or none), else 0",
    multiprocess_mode="livemax",
)
MODEL_INFO = Gauge(
    "anomaly_vae_model_info",
    "the loaded model (value 1), by name, version and alias",
    ["name", "version", "alias"],
    multiprocess_mode="livemax",
)


def observe_scores(scores: np.ndarray) -> None:
    """``SCORES.observe`` for a whole batch: one increment per bucket instead of one
    locked update per record. Same result as observing each value (tested), using the
    histogram's own bucket bounds and value cells (prometheus-client keeps per-bucket,
    non-cumulative counts, ``+Inf`` last; its ``observe`` does exactly this per value)."""
    values = np.asarray(scores, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return
    bounds = np.asarray(SCORES._upper_bounds, dtype=np.float64)
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    SCORES._sum.inc(float(values.sum()))
    for i, c in enumerate(counts.tolist()):
        if c:
            SCORES._buckets[i].inc(c)


def render() -> tuple[bytes, str]:
    """The exposition text and its content type, aggregated across processes if needed."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
