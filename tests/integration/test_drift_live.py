"""Live drift end to end: a real two-worker uvicorn server and a real Prometheus scraping
it. Unchanged traffic raises no alarm; records with one feature shifted make the window
check and the martingale cross their thresholds and name the feature, seen through
Prometheus's query API; after a hot swap the new version's monitor starts from its own
reference, under its own version label."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import httpx
import pytest

from anomaly_vae import TabularDetector, registry
from tests.conftest import make_mixed
from tests.integration.conftest import Prometheus, Server, loaded_model, post_ready, records

pytestmark = pytest.mark.integration

DRIFT_ENV = {
    "ANOMALY_VAE_DRIFT_INTERVAL_SECONDS": "1",
    # every record in the windows however busy the machine: the counts below are exact
    # (the budget's arithmetic is tested in process, tests/service/test_monitor.py)
    "ANOMALY_VAE_DRIFT_BUDGET": "1",
    "ANOMALY_VAE_DRIFT_WINDOW_RECORDS": "300",
    "ANOMALY_VAE_DRIFT_BUCKET_RECORDS": "50",
    "ANOMALY_VAE_DRIFT_BUCKET_SECONDS": "1",
    # the run must not fail by chance: martingale and window levels of 1e-4 make a
    # false alarm on the unchanged traffic that unlikely
    "ANOMALY_VAE_DRIFT_LEVEL": "1e-4",
    "ANOMALY_VAE_DRIFT_WINDOW_LEVEL": "1e-4",
}
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"


def post(srv: Server, frame, chunk: int = 25) -> Counter[str]:
    """Score ``frame`` in requests of ``chunk`` records; returns how many records each
    model version scored (every response names its version)."""
    scored: Counter[str] = Counter()
    for start in range(0, len(frame), chunk):
        part = frame.iloc[start : start + chunk]
        r = post_ready(srv.url + "/v1/score", {"records": records(part)})
        assert r.status_code == 200, r.text
        scored[str(r.json()["model"]["version"])] += len(part)
    return scored


def value(result: list[dict]) -> float:
    return max(float(r["value"][1]) for r in result)


@pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="prometheus is not installed (.ci/run installs Debian's package)",
)
def test_live_drift_through_prometheus_across_a_hot_swap(store, mixed_train, tmp_path):
    root, _ = store
    mp_dir = tmp_path / "prom"
    mp_dir.mkdir()
    env = {**DRIFT_ENV, "PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}
    srv = Server(root, "mixed", poll=1.0, workers=2, extra_env=env)
    prom = Prometheus(tmp_path, [f"127.0.0.1:{srv.port}"], [RULES])
    promoted = False
    try:
        v1 = str(loaded_model(srv.url)["version"])
        sel = f'name="mixed",version="{v1}"'
        # unchanged traffic: rows from the training data's own generator
        post(srv, make_mixed(600, seed=21))
        seen = prom.wait_for(
            f'anomaly_vae_drift_window_records{{{sel},window="time"}}', lambda r: value(r) >= 600
        )
        assert seen and value(seen) == 600, seen
        assert value(prom.query(f"sum(anomaly_vae_drift_records_total{{{sel}}})")) == 600
        assert value(prom.query(f'anomaly_vae_drift_alarm{{{sel},signal="any"}}')) == 0
        assert value(prom.query(f"anomaly_vae_drift_martingale_alarm{{{sel}}}")) == 0
        assert value(prom.query(f"anomaly_vae_drift_reference_info{{{sel}}}")) == 1

        # column c shifted by 3 of its standard deviations
        drifted = make_mixed(400, seed=22)
        drifted["c"] = drifted["c"] + 6.0
        post(srv, drifted)
        alarm = prom.wait_for(
            f'anomaly_vae_drift_alarm{{{sel},window="count",signal="any"}}', lambda r: value(r) == 1
        )
        assert alarm and value(alarm) == 1
        crossed = prom.wait_for(
            f"anomaly_vae:drift_martingale_margin{{{sel}}}", lambda r: value(r) >= 0
        )
        assert crossed and value(crossed) >= 0, "the martingale did not reach its threshold"
        assert value(prom.query(f"anomaly_vae_drift_martingale_alarm{{{sel}}}")) == 1
        named = prom.query(f'anomaly_vae_drift_feature_alarm{{{sel},window="count"}} == 1')
        assert {r["metric"]["feature"] for r in named} >= {"c"}
        firing = prom.wait_for(
            'ALERTS{alertname="AnomalyVAEDriftMartingale",alertstate="firing"}', lambda r: True
        )
        assert firing and firing[0]["metric"]["version"] == v1
        # /v1/drift (whichever worker answers) says the same
        state = httpx.get(srv.url + "/v1/drift").json()
        assert state["martingale"]["alarm"] and state["windows"]["count"]["verdict"] == "drift"
        assert state["windows"]["count"]["features"][0]["feature"] == "c"

        # hot swap: a new version, promoted; both workers poll the alias
        det2 = TabularDetector(id_column="id", seed=3, k=16, max_epochs=3, min_sigma=0.05).fit(
            mixed_train
        )
        v2 = str(registry.log_detector(det2, name="mixed", example=mixed_train).version)
        registry.promote("mixed", int(v2), "champion")
        promoted = True
        sel2 = f'name="mixed",version="{v2}"'
        swapped = prom.wait_for(
            f"anomaly_vae_drift_reference_info{{{sel2}}}", lambda r: value(r) == 1
        )
        assert swapped, "the new version's monitor did not start"
        # each worker polls the alias on its own: a request answered by one that has not
        # yet swapped is scored by v1, and goes into v1's windows
        by_v2 = post(srv, make_mixed(300, seed=23))[v2]
        assert by_v2 > 0
        fresh = prom.wait_for(
            f'anomaly_vae_drift_window_records{{{sel2},window="time"}}',
            lambda r: value(r) >= by_v2,
        )
        # only the new version's records, none of the drifted ones scored by v1
        assert fresh and value(fresh) == by_v2, fresh
        assert value(prom.query(f"anomaly_vae_drift_martingale_alarm{{{sel2}}}")) == 0
        assert value(prom.query(f'anomaly_vae_drift_alarm{{{sel2},signal="any"}}')) == 0
        assert value(prom.query(f"anomaly_vae_drift_martingale_alarm{{{sel}}}")) == 0  # retired
        assert value(prom.query(f"anomaly_vae_drift_reference_info{{{sel}}}")) == 0
        info = prom.query("anomaly_vae_model_info == 1")
        assert {r["metric"]["version"] for r in info} == {v2}
    finally:
        prom.stop()
        srv.stop()
        if promoted:  # the module's other tests serve the first version
            registry.rollback("mixed", "champion")
