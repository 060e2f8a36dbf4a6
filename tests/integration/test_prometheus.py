"""A real Prometheus (Debian's package) scrapes the real service; metrics arrive via its API."""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest

from tests.integration.conftest import Server, free_port, records

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")


@pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus is not installed (.ci/run installs Debian's package)"
)
def test_prometheus_scrapes_request_and_score_metrics(store, tmp_path, mixed_test):
    root, _ = store
    srv = Server(root, "mixed")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: anomaly-vae\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{srv.port}']\n"
    )
    assert (
        subprocess.run(["promtool", "check", "config", str(config)], capture_output=True).returncode
        == 0
    )
    prom = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        frame, _ = mixed_test
        for _ in range(3):
            assert (
                httpx.post(
                    srv.url + "/v1/score", json={"records": records(frame.head(10))}, timeout=30
                ).status_code
                == 200
            )
        assert httpx.post(srv.url + "/v1/score", json={"records": "bad"}).status_code == 422

        def query(q: str) -> list[dict]:
            r = httpx.get(f"{api}/query", params={"query": q}, timeout=5)
            r.raise_for_status()
            return r.json()["data"]["result"]

        deadline = time.monotonic() + 60
        got_records = got_requests = got_scores = []
        while time.monotonic() < deadline:
            try:
                got_records = query("anomaly_vae_records_scored_total")
                got_requests = query('anomaly_vae_requests_total{route="/v1/score"}')
                got_scores = query("anomaly_vae_score_nats_count")
            except httpx.HTTPError:
                pass
            if (
                got_records
                and float(got_records[0]["value"][1]) >= 30
                and len(got_requests) >= 2
                and got_scores
            ):
                break
            time.sleep(1)
        assert got_records, "no anomaly_vae_records_scored_total in Prometheus"
        assert float(got_records[0]["value"][1]) == 30.0
        by_status = {r["metric"]["status"]: float(r["value"][1]) for r in got_requests}
        assert by_status == {"200": 3.0, "422": 1.0}
        assert float(got_scores[0]["value"][1]) == 30.0
        info = query("anomaly_vae_model_info == 1")
        assert info[0]["metric"]["version"] == "1"
    finally:
        prom.terminate()
        prom.wait(10)
        srv.stop()
