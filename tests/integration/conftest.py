"""Real components for integration tests: a uvicorn server process and a sqlite MLflow store."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from anomaly_vae import TabularDetector, registry

TOKEN = "test-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Process:
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Server(_Process):
    """``uvicorn anomaly_vae.service.app:create_app`` in a subprocess on a free loopback port."""

    def __init__(
        self,
        store: Path,
        model: str,
        poll: float = 0.0,
        workers: int = 1,
        extra_env: dict[str, str] | None = None,
        wait_ready: bool = True,
    ) -> None:
        """Started once /healthz answers and, with ``wait_ready``, once /readyz is 200
        (the service listens at once and loads its model in the background)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
            "ANOMALY_VAE_MODEL_NAME": model,
            "ANOMALY_VAE_TRACKING_STORE": str(store),
            "ANOMALY_VAE_ADMIN_TOKEN": TOKEN,
            "ANOMALY_VAE_POLL_SECONDS": str(poll),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            **(extra_env or {}),
        }
        self.log = store / f"server-{self.port}.log"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "anomaly_vae.service.app:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
            ],
            env=env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                probe = "/readyz" if wait_ready else "/healthz"
                if httpx.get(self.url + probe, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
            if self.proc.poll() is not None:
                break
        raise RuntimeError(f"server did not start: {self.log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def store(tmp_path_factory, mixed_train) -> Iterator[tuple[Path, TabularDetector]]:
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path_factory.mktemp("svc")
    registry.configure(root)
    det = TabularDetector(id_column="id", seed=0, k=16, max_epochs=4, min_sigma=0.05).fit(
        mixed_train
    )
    registry.log_detector(det, name="mixed", example=mixed_train, alias="champion")
    yield root, det
    mp.undo()


class MlflowServe(_Process):
    """``mlflow models serve`` for ``model_uri`` from the sqlite store in ``store``, on a
    free loopback port, with the local environment (no conda or virtualenv build)."""

    def __init__(self, store: Path, model_uri: str, timeout: float = 120.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = store / f"mlflow-serve-{self.port}.log"
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            # mlflow execs `uvicorn` by name: the venv's bin must be on PATH, activated or not
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        }
        mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
        cmd = [mlflow_bin, "models", "serve", "-m", model_uri, "--env-manager", "local"]
        self.proc = subprocess.Popen(
            [*cmd, "-h", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(self.url + "/ping", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow models serve did not start: {self.log.read_text()[-3000:]}")


def post_ready(url: str, json: Any, *, timeout: float = 60, wait: float = 60) -> httpx.Response:
    """POST, honouring a 503's Retry-After for up to ``wait`` seconds: with several
    workers, /readyz answered by one says nothing of the other, which on a busy machine
    can still be loading its model (and says so with 503 and Retry-After)."""
    deadline = time.monotonic() + wait
    while True:
        r = httpx.post(url, json=json, timeout=timeout)
        if r.status_code != 503 or time.monotonic() > deadline:
            return r
        time.sleep(min(float(r.headers.get("retry-after", 1)), 1.0))


def loaded_model(url: str, *, wait: float = 60) -> dict[str, Any]:
    """GET /v1/models until the answering worker has its model (``loaded``): with
    several workers, /readyz answered by one says nothing of the other, which on a busy
    machine can still be loading."""
    deadline = time.monotonic() + wait
    while True:
        loaded = httpx.get(url + "/v1/models", timeout=10).json()["loaded"]
        if loaded is not None:
            return dict(loaded)
        if time.monotonic() > deadline:
            raise AssertionError(f"no model loaded at {url} after {wait} s")
        time.sleep(0.2)


def records(frame) -> list[dict]:
    """The rows as JSON-ready dicts, floats exact and missing values None.

    ``DataFrame.to_json`` would round floats to 10 significant digits, so a request
    would score slightly different rows than the frame the test compares with."""
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


class Prometheus(_Process):
    """Debian's ``prometheus`` on a free loopback port, scraping ``targets`` every second
    with ``rule_files`` loaded; :meth:`query` asks its HTTP API."""

    def __init__(self, work: Path, targets: list[str], rule_files: list[Path] = ()) -> None:
        import shutil

        binary = shutil.which("prometheus")
        assert binary is not None
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api/v1"
        config = work / "prometheus.yml"
        rules = "".join(f"  - {p}\n" for p in rule_files)
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            + (f"rule_files:\n{rules}" if rule_files else "")
            + "scrape_configs:\n  - job_name: anomaly-vae\n"
            + f"    static_configs:\n      - targets: {targets!r}\n"
        )
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def query(self, q: str) -> list[dict]:
        """The instant vector of ``q`` now ([] while Prometheus is starting)."""
        try:
            r = httpx.get(f"{self.api}/query", params={"query": q}, timeout=5)
            r.raise_for_status()
        except httpx.HTTPError:
            return []
        return r.json()["data"]["result"]

    def wait_for(self, q: str, test, timeout: float = 90.0) -> list[dict]:
        """Poll ``q`` until ``test(result)`` holds; the last result either way."""
        deadline = time.monotonic() + timeout
        result: list[dict] = []
        while time.monotonic() < deadline:
            result = self.query(q)
            if result and test(result):
                return result
            time.sleep(0.5)
        return result
