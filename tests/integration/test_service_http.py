"""The service for real: uvicorn on loopback, a sqlite MLflow store, HTTP from the test."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from anomaly_vae import TabularDetector, registry
from tests.integration.conftest import TOKEN, Server, records

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(store) -> Iterator[Server]:
    srv = Server(store[0], "mixed")
    yield srv
    srv.stop()


def test_score_records_and_columns(server, store, mixed_test):
    _, det = store
    frame, _ = mixed_test
    expected = det.score(frame)
    r = httpx.post(
        server.url + "/v1/score", json={"records": records(frame), "contributions": 2}, timeout=30
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"name": "mixed", "version": 1, "alias": "champion"}
    assert len(body["results"]) == len(frame)
    got = np.array([x["log_likelihood"] for x in body["results"]])
    np.testing.assert_allclose(got, expected["log_likelihood"], rtol=0, atol=1e-9)
    first = body["results"][0]
    assert set(first) == {
        "id",
        "log_likelihood",
        "stderr",
        "ess",
        "unreliable",
        "score",
        "p_value",
        "is_outlier",
        "contributions",
    }
    assert 1.0 <= first["ess"] <= body["k"]
    assert first["id"] == "row0"
    assert len(first["contributions"]) == 2
    cols = {c: frame[c].tolist() for c in frame.columns}
    r2 = httpx.post(server.url + "/v1/score", json={"columns": cols}, timeout=30)
    assert r2.status_code == 200
    assert [x["log_likelihood"] for x in r2.json()["results"]] == [
        x["log_likelihood"] for x in body["results"]
    ]


def test_invocations_speaks_mlflow_protocol(server, store, mixed_test):
    _, det = store
    frame, _ = mixed_test
    expected = det.score(frame.head(20))["log_likelihood"].to_numpy()
    split = json.loads(frame.head(20).to_json(orient="split", index=False))
    for payload in ({"dataframe_split": split}, {"dataframe_records": records(frame.head(20))}):
        r = httpx.post(server.url + "/invocations", json=payload, timeout=30)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(
            [p["log_likelihood"] for p in r.json()["predictions"]], expected, atol=1e-9
        )
    r = httpx.post(
        server.url + "/invocations",
        content=frame.head(20).to_csv(index=False),
        headers={"content-type": "text/csv"},
    )
    assert r.status_code == 200
    np.testing.assert_allclose(
        [p["log_likelihood"] for p in r.json()["predictions"]], expected, atol=1e-9
    )


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/v1/score", b'{"records": [1, 2', 422, "json_invalid"),
        ("/v1/score", b'{"records": "abc"}', 422, '"records"'),
        ("/v1/score", b'{"records": [{"a": 1}], "bogus": 1}', 422, '"bogus"'),
        (
            "/v1/score",
            b'{"records": [{"id": "x", "a": 1, "b": 2, "c": 3, "color": "red"}]}',
            422,
            "missing columns: ['flag']",
        ),
        (
            "/v1/score",
            b'{"records": [{"id": "x", "a": 1, "b": 2, "c": 3, "color": "red", "flag": true, "zz": 0}]}',
            422,
            "unexpected columns: ['zz']",
        ),
        (
            "/v1/score",
            b'{"records": [{"id": "x", "a": "abc", "b": 2, "c": 3, "color": "red", "flag": true}]}',
            422,
            "column 'a' is numeric but has non-numeric values",
        ),
        (
            "/v1/score",
            b'{"records": [{"id": "x", "a": 1, "b": 2, "c": 3, "color": "red", "flag": true}], "k": 0}',
            422,
            '"k"',
        ),
        (
            "/v1/score",
            b'{"records": [{"id": "x", "a": 1, "b": 2, "c": 3, "color": "red", "flag": true}], "k": 999999}',
            422,
            "above the limit",
        ),
        (
            "/v1/score",
            b'{"records": [{"id": "x", "a": 1}, {"id": "y", "b": 1}]}',
            422,
            "record 1 has different fields",
        ),
        ("/v1/score", b'{"records": []}', 422, "no records"),
        ("/v1/score", b'{"columns": {"a": [1, 2], "b": [1]}}', 422, "different lengths"),
        ("/invocations", b"{not json", 400, "malformed JSON"),
        ("/invocations", b'{"dataframe_split": {"data": [[1]]}}', 400, "dataframe_split"),
        ("/invocations", b'{"foo": 1}', 400, "expected exactly one of"),
    ],
)
def test_bad_requests_get_4xx_naming_the_field(server, path, body, status, needle):
    r = httpx.post(
        server.url + path, content=body, headers={"content-type": "application/json"}, timeout=30
    )
    assert r.status_code == status, r.text
    assert needle in r.text


def test_too_many_records_and_wrong_content_type(server):
    rec = {"id": "x", "a": 1, "b": 2, "c": 3, "color": "red", "flag": True}
    r = httpx.post(server.url + "/v1/score", json={"records": [rec] * 10_001}, timeout=30)
    assert r.status_code == 413
    assert "limit of 10000" in r.text
    r = httpx.post(
        server.url + "/invocations", content=b"x", headers={"content-type": "text/plain"}
    )
    assert r.status_code == 415


def test_models_endpoint_and_reload_auth(server):
    r = httpx.get(server.url + "/v1/models")
    assert r.status_code == 200
    loaded = r.json()["loaded"]
    assert loaded["version"] == 1
    assert loaded["calibration"]["n"] > 0
    assert httpx.post(server.url + "/v1/models/reload").status_code == 401
    assert (
        httpx.post(
            server.url + "/v1/models/reload", headers={"authorization": "Bearer nope"}
        ).status_code
        == 401
    )
    assert httpx.get(server.url + "/readyz").json() == {"ready": True, "version": 1}
    assert "anomaly_vae_records_scored_total" in httpx.get(server.url + "/metrics").text


def test_readiness_before_and_after_a_model_exists(store, mixed_train):
    root, det = store
    srv = Server(root, "late", wait_ready=False)
    try:
        assert httpx.get(srv.url + "/healthz").status_code == 200
        r = httpx.get(srv.url + "/readyz")
        deadline = time.monotonic() + 60  # the first attempt runs in the background
        while r.json()["reason"] == "loading the model" and time.monotonic() < deadline:
            time.sleep(0.2)
            r = httpx.get(srv.url + "/readyz")
        assert r.status_code == 503
        assert "alias 'champion'" in r.json()["reason"]
        assert (
            httpx.post(
                srv.url + "/v1/score", json={"records": records(mixed_train.head(2))}
            ).status_code
            == 503
        )
        registry.log_detector(det, name="late", example=mixed_train, alias="champion")
        r = httpx.post(
            srv.url + "/v1/models/reload", headers={"authorization": f"Bearer {TOKEN}"}, timeout=60
        )
        assert r.status_code == 200, r.text
        # the background loader retries until a model exists (backoff from 0.5 s), so it
        # may have loaded the new version first: then this reload finds nothing changed
        assert r.json()["loaded"]["version"] == 1, r.text
        assert httpx.get(srv.url + "/readyz").json() == {"ready": True, "version": 1}
    finally:
        srv.stop()


def _artifact_bundle(name: str, version: int) -> Path:
    """The registry's own stored copy of a version's bundle (in the local artifact folder)."""
    from urllib.parse import urlparse

    uri = registry._client().get_model_version_download_uri(name, str(version))
    bundle = Path(urlparse(uri).path) / "artifacts" / "bundle"
    assert (bundle / "manifest.json").exists(), uri
    return bundle


def test_failed_load_keeps_old_model_and_alias_flip_loses_no_request(
    server, store, mixed_train, mixed_test
):
    root, det = store
    frame, _ = mixed_test
    auth = {"authorization": f"Bearer {TOKEN}"}
    # version 2: its bundle is corrupted in the artifact store after logging
    registry.log_detector(det, name="mixed", example=mixed_train)
    broken = _artifact_bundle("mixed", 2)
    (broken / "calibration.json").write_text(
        (broken / "calibration.json").read_text().replace("0", "1", 1)
    )
    registry.promote("mixed", 2, "champion")
    r = httpx.post(server.url + "/v1/models/reload", headers=auth, timeout=60)
    assert r.status_code == 409, r.text
    assert "still serving version 1" in r.text
    assert httpx.get(server.url + "/v1/models").json()["loaded"]["version"] == 1
    ok = httpx.post(server.url + "/v1/score", json={"records": records(frame.head(3))})
    assert ok.status_code == 200
    assert ok.json()["model"]["version"] == 1

    # version 3 is good: flip the alias while clients keep scoring
    det3 = TabularDetector(id_column="id", seed=1, k=16, max_epochs=4, min_sigma=0.05).fit(
        mixed_train
    )
    registry.log_detector(det3, name="mixed", example=mixed_train)
    registry.promote("mixed", 3, "champion")
    statuses: list[int] = []
    versions: set[int] = set()
    stop = threading.Event()
    payload = {"records": records(frame.head(5))}

    def client() -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                resp = c.post(server.url + "/v1/score", json=payload)
                statuses.append(resp.status_code)
                if resp.status_code == 200:
                    versions.add(resp.json()["model"]["version"])

    def answered(n: int) -> None:
        # by count, not by time: a busy machine answers fewer requests a second
        deadline = time.monotonic() + 120
        while len(statuses) < n and time.monotonic() < deadline:
            time.sleep(0.02)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    answered(10)
    r = httpx.post(server.url + "/v1/models/reload", headers=auth, timeout=60)
    answered(len(statuses) + 10)
    stop.set()
    for t in threads:
        t.join()
    assert r.status_code == 200, r.text
    assert len(statuses) >= 20
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert versions == {1, 3}
    expected3 = det3.score(frame.head(5))["log_likelihood"].to_numpy()
    last = httpx.post(server.url + "/v1/score", json=payload).json()
    assert last["model"]["version"] == 3
    np.testing.assert_allclose([x["log_likelihood"] for x in last["results"]], expected3, atol=1e-9)
