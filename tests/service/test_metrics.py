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


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        tuple(sorted(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name
    }


def test_p_values_and_reference_deciles_are_counted_per_model_version(fitted, tmp_path):
    """Each record's p-value lands on the fixed edges and its score in the decile of the
    model's own calibration scores, labelled by the version that scored it; alpha and the
    threshold are exported for alert rules. On fresh normal rows every decile holds
    about a tenth."""
    from anomaly_vae.service.app import create_app
    from anomaly_vae.service.settings import Settings
    from fastapi.testclient import TestClient

    from tests.conftest import make_mixed
    from tests.integration.conftest import records

    bundle = fitted.save(tmp_path / "deciles")
    rows = make_mixed(2000, seed=5)
    with TestClient(create_app(Settings(bundle_path=bundle, poll_seconds=0))) as c:
        model = c.app.state.store.current
        labels = (("name", model.name), ("version", "None"))
        before = _samples(c.get("/metrics").text, "anomaly_vae_score_decile_records_total")
        r = c.post("/v1/score", json={"records": records(rows)})
        assert r.status_code == 200
        text = c.get("/metrics").text
    scores = np.array([x["score"] for x in r.json()["results"]])
    cuts = np.quantile(-fitted.calibration_.reference, np.linspace(0.1, 0.9, 9))
    want = np.bincount(np.searchsorted(cuts, scores, side="left"), minlength=10)
    after = _samples(text, "anomaly_vae_score_decile_records_total")
    got = [
        after.get((("decile", str(d)), *labels), 0.0)
        - before.get((("decile", str(d)), *labels), 0.0)
        for d in range(10)
    ]
    assert got == want.tolist() and sum(got) == len(rows)
    assert all(0.03 <= g / len(rows) <= 0.2 for g in got), got  # about a tenth each
    count = _samples(text, "anomaly_vae_p_value_count")[labels]
    assert count >= len(rows)
    le_05 = _samples(text, "anomaly_vae_p_value_bucket")[(("le", "0.05"), *labels)]
    p = np.array([x["p_value"] for x in r.json()["results"]])
    assert le_05 >= int((p <= 0.05).sum())
    assert _samples(text, "anomaly_vae_model_alpha")[labels] == fitted.calibration_.alpha
    thr = _samples(text, "anomaly_vae_model_score_threshold")[labels]
    assert thr == -fitted.calibration_.threshold
