"""Prometheus metrics, named by Prometheus conventions (units in names, ``_total`` counters).

With ``PROMETHEUS_MULTIPROC_DIR`` set (several worker processes), every process writes its
samples there and ``/metrics`` aggregates them (prometheus-client multiprocess mode).
"""

from __future__ import annotations

import os
from typing import Any

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
#: Upper edges of the p-value buckets. On data like the calibration set a conformal
#: p-value is uniform, so each bucket's share of the records is its width.
P_VALUE_EDGES = (0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
P_VALUES = Histogram(
    "anomaly_vae_p_value",
    "conformal p-values of scored records by model version (uniform on data like the "
    "calibration set: a bucket's share is its width)",
    ["name", "version"],
    buckets=P_VALUE_EDGES,
)
SCORE_DECILES = Counter(
    "anomaly_vae_score_decile_records_total",
    "scored records by the decile of the model's own calibration scores they fall in "
    "(0: the most normal tenth, 9: the most anomalous), by model version: 10% each on "
    "data like the calibration set, whatever the model's units",
    ["name", "version", "decile"],
)
MODEL_ALPHA = Gauge(
    "anomaly_vae_model_alpha",
    "the loaded model's target false-positive rate (conformal alpha, or its contamination)",
    ["name", "version"],
    multiprocess_mode="livemax",
)
MODEL_THRESHOLD = Gauge(
    "anomaly_vae_model_score_threshold",
    "the loaded model's outlier threshold on the score (a complete record scoring above "
    "it is flagged; one with missing cells has its pattern's), in the score's units",
    ["name", "version"],
    multiprocess_mode="livemax",
)
COSTLY = Counter(
    "anomaly_vae_costly_requests_total",
    "requests costing more than lane_cost importance samples, scored in a lane of their "
    "own that pauses while cheap requests are scored",
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
    _bulk(SCORES, values)


def _bulk(histogram: Any, values: np.ndarray) -> None:
    """``histogram.observe`` for every value at once (see :func:`observe_scores`)."""
    bounds = np.asarray(histogram._upper_bounds, dtype=np.float64)
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    histogram._sum.inc(float(values.sum()))
    for i, c in enumerate(counts.tolist()):
        if c:
            histogram._buckets[i].inc(c)


def observe_model(model: Any, scores: Any, p_values: Any) -> None:
    """Per model version, the records' p-values on fixed edges and their scores on the
    deciles of that version's calibration scores: counters on the request path, which
    add up across worker processes and keep each version's distribution apart after a
    promotion. ``scores`` [N] higher is more anomalous; NaN entries are skipped."""
    name, version = model.name, str(model.version)
    p = np.asarray(p_values, dtype=np.float64)
    p = p[~np.isnan(p)]
    if p.size:
        _bulk(P_VALUES.labels(name, version), p)
    sc = np.asarray(scores, dtype=np.float64)
    sc = sc[~np.isnan(sc)]
    if sc.size:
        deciles = np.bincount(
            np.searchsorted(model.score_decile_cuts, sc, side="left"), minlength=10
        )
        for d, c in enumerate(deciles.tolist()):
            if c:
                SCORE_DECILES.labels(name, version, str(d)).inc(c)


def set_model(model: Any, loaded: bool) -> None:
    """The loaded model's alpha and score threshold (``loaded``), or their removal (0)
    when it is swapped out, so alert rules read alpha instead of assuming it."""
    cal = model.detector.calibration_
    alpha = cal.alpha if cal.alpha is not None else cal.contamination
    labels = (model.name, str(model.version))
    MODEL_ALPHA.labels(*labels).set(float(alpha) if loaded else 0.0)
    MODEL_THRESHOLD.labels(*labels).set(-float(cal.threshold) if loaded else 0.0)


def render() -> tuple[bytes, str]:
    """The exposition text and its content type, aggregated across processes if needed."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
