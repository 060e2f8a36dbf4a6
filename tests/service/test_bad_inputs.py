"""Inputs that used to get a 500 or pass as normal (issue 22's list): each now gets a
JSON 4xx naming the field, or a finite, flagged score."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pytest
from anomaly_vae.service.app import create_app
from anomaly_vae.service.settings import Settings
from fastapi.testclient import TestClient

from tests.conftest import make_mixed


@pytest.fixture(scope="module")
def client(fitted, tmp_path_factory):
    bundle = fitted.save(tmp_path_factory.mktemp("bad") / "bundle")
    app = create_app(Settings(bundle_path=bundle, poll_seconds=0, admin_token="tok-123456"))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _record() -> dict:
    row = make_mixed(1, seed=1).iloc[0]
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}


SPLIT_COLUMNS = ["id", "a", "a", "c", "color", "flag"]
CASES = [
    # (name, path, request kwargs, status, loc)
    ("params a list", "/invocations", {"json": {"dataframe_records": [_record()], "params": [1]}}, 422, ["body", "params"]),
    ("params a string", "/invocations", {"json": {"dataframe_records": [_record()], "params": "k"}}, 422, ["body", "params"]),
    ("params.k true", "/invocations", {"json": {"dataframe_records": [_record()], "params": {"k": True}}}, 422, ["body", "params", "k"]),
    ("duplicate columns", "/invocations", {"json": {"dataframe_split": {"columns": SPLIT_COLUMNS, "data": [["x", 1, 2, 3, "red", True]]}}}, 422, ["body", "dataframe_split"]),
    ("JSON nested 10,000 deep", "/invocations", {"content": b"[" * 10_000 + b"]" * 10_000, "headers": {"content-type": "application/json"}}, 400, ["body"]),
    ("k true", "/v1/score", {"json": {"records": [_record()], "k": True}}, 422, ["body", "k"]),
    ("contributions true", "/v1/score", {"json": {"records": [_record()], "contributions": True}}, 422, ["body", "contributions"]),
    ("a record mostly missing", "/v1/score", {"json": {"records": [_record(), {**_record(), "a": None, "b": None, "c": None}]}}, 422, ["body", "records", 1]),
    ("a record with nothing observed", "/invocations", {"json": {"dataframe_records": [{"id": "x", "a": None, "b": None, "c": None, "color": None, "flag": None}]}}, 422, ["body", "records", 0]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "path", "kwargs", "status", "loc"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_gets_a_json_4xx_naming_the_field(client, name, path, kwargs, status, loc):
    # a body generator is made afresh per call (a generator is spent once read)
    kwargs = {key: v() if callable(v) else v for key, v in kwargs.items()}
    r = client.post(path, **kwargs)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert detail[0]["loc"] == loc


def test_an_integer_of_400_digits_is_named(client):
    r = client.post("/v1/score", json={"records": [{**_record(), "a": 10**400}]})
    assert r.status_code == 422
    assert "column 'a' has infinite values" in r.json()["detail"][0]["msg"]


@pytest.mark.parametrize("value", [1e20, 1e300, -1e300])
def test_a_finite_extreme_value_is_scored_finite_and_flagged(client, value, monkeypatch):
    """Values of 1e20 and beyond made log p(x) NaN and the record pass as normal."""
    from anomaly_vae.service import metrics

    # the process-wide score histogram is not under test: a sum of 1e21 nats would
    # swamp what later tests add to it
    monkeypatch.setattr(metrics, "observe_scores", lambda scores: None)
    r = client.post("/v1/score", json={"records": [{**_record(), "a": value}]})
    assert r.status_code == 200
    res = r.json()["results"][0]
    assert math.isfinite(res["log_likelihood"]) and res["log_likelihood"] < -1e6
    assert res["is_outlier"] is True and res["p_value"] is not None
    inv = client.post("/invocations", json={"dataframe_records": [{**_record(), "a": value}]})
    assert inv.status_code == 200
    assert inv.json()["predictions"][0]["is_outlier"] is True


def test_a_non_ascii_authorization_header_is_401(client):
    r = client.post("/v1/models/reload", headers={"Authorization": b"Bearer t\xe9"})
    assert r.status_code == 401


def test_an_unscorable_record_is_never_normal(fitted):
    """The library's net under every route: a NaN log-likelihood is an outlier."""
    from anomaly_vae.scoring.iwae import ScoreResult

    nan = np.array([math.nan, -3.0])
    res = ScoreResult(nan, nan, nan, nan, np.zeros((2, 0)), nan, np.zeros(2, bool))
    cols = fitted.result_columns(res)
    assert cols["is_outlier"].tolist() == [True, False]


def test_a_png_declaring_a_huge_size_is_refused_from_its_header(tmp_path):
    """decode_images checks the header's size before decoding a pixel."""
    from anomaly_vae.service.errors import RequestError
    from anomaly_vae.service.parsing import decode_images
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (50, 40)).save(buf, format="PNG")
    with pytest.raises(RequestError, match="image is 50x40 pixels; the model takes 16x16"):
        decode_images([("big.png", buf.getvalue())], (1, 16, 16))
    assert base64  # (the route's base64 path decodes to the same bytes)


# ---------------------------------------------------------------- limits from settings
@pytest.fixture(scope="module")
def tight(fitted, tmp_path_factory):
    """A service with small limits: 10 kB bodies, 1,000 importance samples a request."""
    bundle = fitted.save(tmp_path_factory.mktemp("tight") / "bundle")
    settings = Settings(bundle_path=bundle, poll_seconds=0, max_body_bytes=10_000, max_cost=1000)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def _chunks(total: int, size: int = 4096):
    """A body without Content-Length (chunked): only counting the bytes can stop it."""
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


LIMIT_CASES = [
    ("body over the limit, declared", "/v1/score", {"content": b" " * 20_000, "headers": {"content-type": "application/json"}}, 413, ["body"]),
    ("body over the limit, streamed", "/v1/score", {"content": lambda: _chunks(50_000), "headers": {"content-type": "application/json"}}, 413, ["body"]),
    ("records x k over the cost limit", "/v1/score", {"json": {"records": [_record()] * 20, "k": 100}}, 413, ["body", "k"]),
    ("records x default k over the cost limit", "/v1/score", {"json": {"records": [_record()] * 40}}, 413, ["body", "k"]),
    ("invocations over the cost limit", "/invocations", {"json": {"dataframe_records": [_record()] * 20, "params": {"k": 100}}}, 413, ["body", "params", "k"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "path", "kwargs", "status", "loc"), LIMIT_CASES, ids=[c[0] for c in LIMIT_CASES]
)
def test_limits_get_a_json_413_naming_the_field(tight, name, path, kwargs, status, loc):
    test_bad_input_gets_a_json_4xx_naming_the_field(tight, name, path, kwargs, status, loc)
    assert tight.get("/healthz").status_code == 200


def test_within_the_limits_scores(tight):
    r = tight.post("/v1/score", json={"records": [_record()] * 3, "k": 100})
    assert r.status_code == 200 and len(r.json()["results"]) == 3


@pytest.fixture(scope="module")
def images_client(tmp_path_factory):
    from anomaly_vae import ImageDetector
    from tests.test_image_detector import squares

    det = ImageDetector(max_epochs=1, k=8, latent_dim=4, width_mult=8).fit(squares(120, 0))
    bundle = det.save(tmp_path_factory.mktemp("img") / "bundle")
    settings = Settings(bundle_path=bundle, poll_seconds=0, max_files=3, max_cost=1000, max_k=600)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_image_route_limits_name_the_field(images_client):
    files = [("files", (f"{i}.png", _png(), "image/png")) for i in range(4)]
    r = images_client.post("/v1/score/images", files=files)
    assert r.status_code == 413 and r.json()["detail"][0]["loc"] == ["body", "files"], r.text
    r = images_client.post(
        "/v1/score/images", content=b"--x\r\n", headers={"content-type": "multipart/form-data"}
    )
    assert r.status_code == 400 and r.json()["detail"][0]["loc"] == ["body", "files"], r.text
    two = files[:2]
    r = images_client.post("/v1/score/images?k=700", files=two)  # above max_k, from the query
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "k"], r.text
    r = images_client.post("/v1/score/images?k=600", files=two)  # 2 x 600 above max_cost
    assert r.status_code == 413 and r.json()["detail"][0]["loc"] == ["query", "k"], r.text
    body = {"images": [base64.b64encode(_png()).decode()] * 2, "k": 600}
    r = images_client.post("/v1/score/images", json=body)
    assert r.status_code == 413 and r.json()["detail"][0]["loc"] == ["body", "k"], r.text
    r = images_client.post("/v1/score/images?k=8", files=two)
    assert r.status_code == 200 and len(r.json()["results"]) == 2
