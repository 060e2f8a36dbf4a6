"""Hot reload by polling, several worker processes, and parity with `mlflow models serve`."""

from __future__ import annotations

import re
import time

import httpx
import numpy as np
import pytest

from anomaly_vae import TabularDetector, registry
from tests.integration.conftest import MlflowServe, Server, post_ready, records

pytestmark = pytest.mark.integration


def test_polling_picks_up_an_alias_flip(store, mixed_train, mixed_test):
    root, _ = store
    frame, _ = mixed_test
    srv = Server(root, "mixed", poll=1.0)
    try:
        before = httpx.post(srv.url + "/v1/score", json={"records": records(frame.head(3))}).json()
        det2 = TabularDetector(id_column="id", seed=2, k=16, max_epochs=3, min_sigma=0.05).fit(
            mixed_train
        )
        v = registry.log_detector(det2, name="mixed", example=mixed_train)
        registry.promote("mixed", v.version, "champion")
        deadline = time.monotonic() + 60
        version = before["model"]["version"]
        while time.monotonic() < deadline and version != v.version:
            time.sleep(0.5)
            version = httpx.get(srv.url + "/v1/models").json()["loaded"]["version"]
        assert version == v.version
        after = httpx.post(srv.url + "/v1/score", json={"records": records(frame.head(3))}).json()
        np.testing.assert_allclose(
            [r["log_likelihood"] for r in after["results"]],
            det2.score_samples(frame.head(3)),
            atol=1e-9,
        )
    finally:
        srv.stop()
        registry.rollback("mixed", "champion")


def test_two_workers_report_metrics_across_processes(store, mixed_test, tmp_path):
    root, _ = store
    frame, _ = mixed_test
    mp_dir = tmp_path / "prom"
    mp_dir.mkdir()
    srv = Server(root, "mixed", workers=2, extra_env={"PROMETHEUS_MULTIPROC_DIR": str(mp_dir)})
    try:
        scored = 0
        for _ in range(40):  # new connections spread over both workers
            r = post_ready(srv.url + "/v1/score", {"records": records(frame.head(2))})
            assert r.status_code == 200, r.text[:300]
            scored += 2
        with httpx.Client(timeout=30) as c:
            text = c.get(srv.url + "/metrics").text
        pids = {p.name.split("_")[-1] for p in mp_dir.glob("*.db")}
        total = float(re.search(r"^anomaly_vae_records_scored_total (\S+)$", text, re.M).group(1))
        assert total == scored  # the sum over processes, whichever answered /metrics
        assert len(pids) >= 2, f"only one worker wrote metrics: {sorted(pids)}"
    finally:
        srv.stop()


def test_mlflow_models_serve_gives_the_same_scores(store, mixed_test):
    root, det = store
    frame, _ = mixed_test
    theirs_server = MlflowServe(root, "models:/mixed/1")
    srv = Server(root, "mixed")
    try:
        url = theirs_server.url
        payload = {"dataframe_records": records(frame)}
        theirs = httpx.post(url + "/invocations", json=payload, timeout=60)
        assert theirs.status_code == 200, theirs.text[:500]
        ours = httpx.post(srv.url + "/invocations", json=payload, timeout=60)
        assert ours.status_code == 200
        a = np.array([p["log_likelihood"] for p in theirs.json()["predictions"]])
        b = np.array([p["log_likelihood"] for p in ours.json()["predictions"]])
        assert len(a) == len(frame)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
        assert [p["is_outlier"] for p in theirs.json()["predictions"]] == [
            p["is_outlier"] for p in ours.json()["predictions"]
        ]
    finally:
        theirs_server.stop()
        srv.stop()
