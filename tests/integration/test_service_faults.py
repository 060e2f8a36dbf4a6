"""Faults at start-up, against a real uvicorn server: the service listens and says why it
is not ready while its model store is down or empty, then recovers on its own."""

from __future__ import annotations

import time

import httpx

from anomaly_vae import registry
from tests.integration.conftest import Server, free_port


def _wait_ready(url: str, deadline_s: float = 90.0) -> httpx.Response:
    deadline = time.monotonic() + deadline_s
    r = httpx.get(url + "/readyz", timeout=10)
    while r.status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
        r = httpx.get(url + "/readyz", timeout=10)
    return r


def test_unreachable_tracking_server_does_not_stop_the_service_listening(tmp_path):
    """MLFLOW_TRACKING_URI names a server that is down: /healthz answers (the server
    helper waits for it) and /readyz is 503 with the reason; before, the process did
    not listen for 70-150 s while MLflow's client retried inside the first load."""
    down = f"http://127.0.0.1:{free_port()}"
    server = Server(tmp_path, "mixed", extra_env={"MLFLOW_TRACKING_URI": down}, wait_ready=False)
    try:
        r = httpx.get(server.url + "/readyz", timeout=10)
        assert r.status_code == 503
        assert r.json()["ready"] is False and r.json()["reason"]
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
    finally:
        server.stop()


def test_a_model_registered_after_start_is_served_without_a_restart(
    tmp_path, fitted, mixed_train, monkeypatch
):
    """An empty store at start: not ready, saying so; the champion appears; the
    start-up loader's backoff picks it up (no poll configured)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tmp_path / "mlruns"
    store.mkdir()
    registry.configure(store)
    server = Server(store, "late", poll=0.0, wait_ready=False)
    try:
        r = httpx.get(server.url + "/readyz", timeout=10)
        assert r.status_code == 503 and r.json()["reason"]
        registry.log_detector(fitted, name="late", example=mixed_train, alias=registry.CHAMPION)
        r = _wait_ready(server.url)
        assert r.status_code == 200 and r.json()["version"] == 1
        scored = httpx.post(
            server.url + "/v1/score",
            json={"records": mixed_train.head(2).to_dict(orient="records")},
            timeout=30,
        )
        assert scored.status_code == 200 and scored.json()["model"]["version"] == 1
    finally:
        server.stop()
