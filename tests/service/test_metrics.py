"""The service's bulk score observation matches prometheus-client's own, value by value."""

from __future__ import annotations

import numpy as np
from anomaly_vae.service import metrics
from prometheus_client import CollectorRegistry, Histogram


def _buckets(hist: Histogram) -> dict[str, float]:
    """Cumulative bucket counts by ``le``, the count, and the sum (which the exposition
    leaves out for histograms with negative buckets, so it is read from the cell)."""
    out = {
        s.labels.get("le", s.name[-6:]): s.value
        for fam in hist.collect()
        for s in fam.samples
        if s.name.endswith(("_bucket", "_count"))
    }
    return out | {"sum": hist._sum.get()}


def test_observe_scores_equals_observing_each_value() -> None:
    rng = np.random.default_rng(0)
    # values on bucket bounds, between them, beyond both ends, and a NaN (skipped)
    values = np.r_[rng.normal(5, 30, 500), metrics.SCORES._upper_bounds[:-1], -1e6, 1e6, np.nan]
    reference = Histogram(
        "reference_scores",
        "x",
        buckets=metrics.SCORES._upper_bounds[:-1],
        registry=CollectorRegistry(),
    )
    for v in values[~np.isnan(values)]:
        reference.observe(float(v))
    before = _buckets(metrics.SCORES)
    metrics.observe_scores(values)
    after = _buckets(metrics.SCORES)
    want = _buckets(reference)
    assert set(after) == set(want)
    for key in want:
        assert after[key] - before[key] == want[key] or np.isclose(
            after[key] - before[key], want[key]
        ), key


def test_bulk_threads_default_to_this_workers_share_of_the_cores(monkeypatch) -> None:
    import os

    from anomaly_vae.service.settings import Settings

    cores = len(os.sched_getaffinity(0))
    assert Settings(bundle_path="b").bulk_thread_count() == cores
    assert Settings(bundle_path="b", workers=cores * 2).bulk_thread_count() == 1
    monkeypatch.setenv("ANOMALY_VAE_BULK_THREADS", "3")
    assert Settings(bundle_path="b").bulk_thread_count() == 3
