"""Faults at start-up, against a real uvicorn server: the service listens and says why it
is not ready while its model store is down or empty, then recovers on its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

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


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(c) for c in (task / "children").read_text().split()]
    return kids


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in state  # a zombie holds no socket


def _scored_requests(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("anomaly_vae_requests_total{") and 'route="/v1/score"' in line
    )


def test_sigkill_of_a_multi_worker_master_leaves_no_worker_and_no_stale_counts(
    tmp_path, fitted, mixed_train
):
    """`serve --workers 2` with a fixed PROMETHEUS_MULTIPROC_DIR (the Docker image's):
    after SIGKILL of the master its workers exit, a restart binds the same port, and
    the new totals do not carry the dead processes' counts."""
    bundle = fitted.save(tmp_path / "bundle")
    metrics_dir = tmp_path / "metrics"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "ANOMALY_VAE_ADMIN_TOKEN": "test-admin-token",
    }
    cmd = [os.path.join(os.path.dirname(sys.executable), "anomaly-vae"), "serve",
           "--bundle", str(bundle), "--port", str(port), "--workers", "2",
           "--poll-seconds", "0"]  # fmt: skip
    records = mixed_train.head(1).to_dict(orient="records")

    def start(log: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            cmd, env=env, stdout=(tmp_path / log).open("w"), stderr=subprocess.STDOUT
        )
        r = _wait_ready_listening(url, proc)
        assert r is not None and r.status_code == 200, (tmp_path / log).read_text()[-2000:]
        return proc

    first = start("first.log")
    try:
        for _ in range(6):
            assert httpx.post(url + "/v1/score", json={"records": records}).status_code == 200
        assert _scored_requests(url) == 6
        workers = [p for p in _children(first.pid) if not _gone(p)]
        first.kill()  # SIGKILL: the master cannot stop its workers
        first.wait(10)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(_gone(p) for p in workers):
            time.sleep(0.2)
        assert all(_gone(p) for p in workers), "workers outlived their master"
    finally:
        if first.poll() is None:
            first.kill()
    second = start("second.log")
    try:
        assert httpx.post(url + "/v1/score", json={"records": records}).status_code == 200
        assert _scored_requests(url) == 1  # not 7: the dead processes' files were cleared
    finally:
        second.terminate()
        second.wait(30)


def _wait_ready_listening(
    url: str, proc: subprocess.Popen[bytes], deadline_s: float = 90.0
) -> httpx.Response | None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            r = httpx.get(url + "/readyz", timeout=5)
            if r.status_code == 200:
                return r
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return None
