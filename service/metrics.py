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
    "anomaly score (-log p(x), nats) of scored records, all versions together (kept for "
    "old dashboards: anomaly_vae_score_decile_records_total is per version and unitless)",
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
FLAGGED = Counter(
    "anomaly_vae_flagged_records_total",
    "records flagged as outliers, by model version (with anomaly_vae_p_value_count, the "
    "version's outlier rate, to compare with its alpha)",
    ["name", "version"],
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
# ---------------------------------------------------------------- live drift
# Counters on the drift task's path add up across workers; the gauges below them are
# written by the one worker that runs the checks ("mostrecent": the latest write wins).
DRIFT_RECORDS = Counter(
    "anomaly_vae_drift_records_total",
    "records fed to the drift monitor (martingale and windows), by model version",
    ["name", "version"],
)
DRIFT_SKIPPED = Counter(
    "anomaly_vae_drift_skipped_records_total",
    "records not monitored: scored at another K than the model's own, or by a version "
    "swapped out before the drift task took them",
    ["name", "version"],
)
DRIFT_UNWINDOWED = Counter(
    "anomaly_vae_drift_unwindowed_records_total",
    "records the martingale took but the windows left out, to keep the drift task within "
    "drift_budget of a core (a share of the requests, chosen by time)",
    ["name", "version"],
)
DRIFT_CPU = Counter(
    "anomaly_vae_drift_cpu_seconds_total",
    "CPU seconds the drift task's thread spent (queue, ranks and bets, window statistics, "
    "checks): what monitoring costs, beside the process's own CPU",
)
DRIFT_DROPPED = Counter(
    "anomaly_vae_drift_dropped_records_total",
    "records dropped because the drift task's queue was full (drift_queue_records)",
    ["name", "version"],
)
_VW = ["name", "version", "window", "signal"]
DRIFT_STATISTIC = Gauge(
    "anomaly_vae_drift_statistic",
    "the latest window check's test statistic, per signal (scores, outlier_rate, latent, "
    "kl) and window (count, time)",
    _VW,
    multiprocess_mode="mostrecent",
)
DRIFT_P_VALUE = Gauge(
    "anomaly_vae_drift_p_value",
    "the latest window check's Holm-adjusted p-value, per signal and window",
    _VW,
    multiprocess_mode="mostrecent",
)
DRIFT_EFFECT = Gauge(
    "anomaly_vae_drift_effect",
    "the latest window check's effect size (the signal's own units, see GET /v1/drift)",
    _VW,
    multiprocess_mode="mostrecent",
)
DRIFT_THRESHOLD = Gauge(
    "anomaly_vae_drift_threshold",
    "the level the Holm-adjusted p-value is compared with (drift_window_level)",
    _VW,
    multiprocess_mode="mostrecent",
)
DRIFT_ALARM = Gauge(
    "anomaly_vae_drift_alarm",
    "1 while the latest window check finds drift in the signal (any: the window's "
    "verdict; features: any feature), else 0",
    _VW,
    multiprocess_mode="mostrecent",
)
DRIFT_WINDOW_RECORDS = Gauge(
    "anomaly_vae_drift_window_records",
    "records in the window of the latest check",
    ["name", "version", "window"],
    multiprocess_mode="mostrecent",
)
_VF = ["name", "version", "window", "feature"]
#: The feature label shared by the features past ``drift_max_features``.
OVERFLOW_FEATURE = "__other__"
FEATURE_Q_VALUE = Gauge(
    "anomaly_vae_drift_feature_q_value",
    "a feature's Benjamini-Hochberg q-value in the latest window check (features past "
    "drift_max_features share the label __other__: their least q-value)",
    _VF,
    multiprocess_mode="mostrecent",
)
FEATURE_EFFECT = Gauge(
    "anomaly_vae_drift_feature_effect",
    "a feature's drift effect (numeric: Wasserstein in its sd; else total variation)",
    _VF,
    multiprocess_mode="mostrecent",
)
FEATURE_CONTRIBUTION_SHIFT = Gauge(
    "anomaly_vae_drift_feature_contribution_shift_nats",
    "the shift of a feature's mean log-likelihood contribution against the calibration "
    "rows (absolute, nats)",
    _VF,
    multiprocess_mode="mostrecent",
)
FEATURE_ALARM = Gauge(
    "anomaly_vae_drift_feature_alarm",
    "1 while the latest window check finds the feature drifted, else 0",
    _VF,
    multiprocess_mode="mostrecent",
)
DRIFT_FEATURES_CAPPED = Gauge(
    "anomaly_vae_drift_features_capped",
    "1 when the model has more features than drift_max_features (the rest are __other__)",
    ["name", "version"],
    multiprocess_mode="mostrecent",
)
MARTINGALE_LOG = Gauge(
    "anomaly_vae_drift_martingale_log",
    "log of the conformal test martingale over every worker's records (run by the worker "
    "that runs the drift checks)",
    ["name", "version"],
    multiprocess_mode="mostrecent",
)
MARTINGALE_THRESHOLD = Gauge(
    "anomaly_vae_drift_martingale_threshold",
    "log(1 / drift_level): the martingale alarms when its log reaches this",
    ["name", "version"],
    multiprocess_mode="mostrecent",
)
MARTINGALE_ALARM = Gauge(
    "anomaly_vae_drift_martingale_alarm",
    "1 once the martingale has reached its threshold for this version (it stays), else 0",
    ["name", "version"],
    multiprocess_mode="mostrecent",
)
DRIFT_LAST_CHECK = Gauge(
    "anomaly_vae_drift_last_check_timestamp_seconds",
    "Unix time of the latest drift check of this version",
    ["name", "version"],
    multiprocess_mode="mostrecent",
)
DRIFT_REFERENCE = Gauge(
    "anomaly_vae_drift_reference_info",
    "1 while the drift monitor checks this version against its own reference (the label "
    "is the reference's fingerprint); 0 when it has none or is swapped out",
    ["name", "version", "reference"],
    multiprocess_mode="mostrecent",
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


def observe_model(model: Any, scores: Any, p_values: Any, flags: Any = None) -> None:
    """Per model version, the records' p-values on fixed edges and their scores on the
    deciles of that version's calibration scores: counters on the request path, which
    add up across worker processes and keep each version's distribution apart after a
    promotion; and the records ``flags`` [N] marks as outliers. ``scores`` [N] higher is
    more anomalous; NaN entries are skipped."""
    name, version = model.name, str(model.version)
    if flags is not None:
        flagged = int(np.asarray(flags, dtype=bool).sum())
        if flagged:
            FLAGGED.labels(name, version).inc(flagged)
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
