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
COLUMNS = ["id", "a", "b", "c", "color", "flag"]
JSON = {"content-type": "application/json"}
R = _record()
WITHOUT_FLAG = {k: v for k, v in R.items() if k != "flag"}
CASES = [
    # (name, path, request kwargs, status, loc)
    # /v1/score: the body
    ("malformed JSON", "/v1/score", {"content": b'{"records": [1, 2', "headers": JSON}, 422, ["body"]),
    ("empty body", "/v1/score", {"content": b"", "headers": JSON}, 422, ["body"]),
    ("body a JSON array", "/v1/score", {"json": [R]}, 422, ["body"]),
    ("body JSON null", "/v1/score", {"content": b"null", "headers": JSON}, 422, ["body"]),
    ("neither records nor columns", "/v1/score", {"json": {}}, 422, ["body"]),
    ("both records and columns", "/v1/score", {"json": {"records": [R], "columns": {"a": [1]}}}, 422, ["body"]),
    ("an unknown field", "/v1/score", {"json": {"records": [R], "bogus": 1}}, 422, ["body", "bogus"]),
    ("records a string", "/v1/score", {"json": {"records": "abc"}}, 422, ["body", "records"]),
    ("records empty", "/v1/score", {"json": {"records": []}}, 422, ["body", "records"]),
    ("a record not an object", "/v1/score", {"json": {"records": [1, 2]}}, 422, ["body", "records", 0]),
    ("records with different fields", "/v1/score", {"json": {"records": [R, {"id": "y"}]}}, 422, ["body", "records", 1]),
    ("columns a list", "/v1/score", {"json": {"columns": [1, 2]}}, 422, ["body", "columns"]),
    ("columns of different lengths", "/v1/score", {"json": {"columns": {"a": [1, 2], "b": [1]}}}, 422, ["body", "columns"]),
    # /v1/score: parameters
    ("k zero", "/v1/score", {"json": {"records": [R], "k": 0}}, 422, ["body", "k"]),
    ("k above max_k", "/v1/score", {"json": {"records": [R], "k": 10**6}}, 422, ["body", "k"]),
    ("k a string", "/v1/score", {"json": {"records": [R], "k": "5"}}, 422, ["body", "k"]),
    ("k a fraction", "/v1/score", {"json": {"records": [R], "k": 2.5}}, 422, ["body", "k"]),
    ("k true", "/v1/score", {"json": {"records": [R], "k": True}}, 422, ["body", "k"]),
    ("contributions true", "/v1/score", {"json": {"records": [R], "contributions": True}}, 422, ["body", "contributions"]),
    ("contributions negative", "/v1/score", {"json": {"records": [R], "contributions": -1}}, 422, ["body", "contributions"]),
    ("contributions above the limit", "/v1/score", {"json": {"records": [R], "contributions": 99}}, 422, ["body", "contributions"]),
    # /v1/score: columns and values
    ("a missing column", "/v1/score", {"json": {"records": [WITHOUT_FLAG]}}, 422, ["body", "records", "flag"]),
    ("an unexpected column", "/v1/score", {"json": {"records": [{**R, "zz": 0}]}}, 422, ["body", "records", "zz"]),
    ("text in a numeric column", "/v1/score", {"json": {"records": [R, {**R, "a": "abc"}]}}, 422, ["body", "records", 1, "a"]),
    ("an object in a numeric column", "/v1/score", {"json": {"records": [{**R, "a": {"x": 1}}]}}, 422, ["body", "records", 0, "a"]),
    ("a list in a numeric column", "/v1/score", {"json": {"records": [{**R, "a": [1, 2]}]}}, 422, ["body", "records", 0, "a"]),
    ("an integer of 400 digits", "/v1/score", {"json": {"records": [{**R, "a": 10**400}]}}, 422, ["body", "records", 0, "a"]),
    ("a non-boolean in a boolean column", "/v1/score", {"json": {"records": [{**R, "flag": "maybe"}]}}, 422, ["body", "records", 0, "flag"]),
    ("text in a numeric column, columns form", "/v1/score", {"json": {"columns": {k: [v, v] for k, v in {**R, "c": "x"}.items()}}}, 422, ["body", "columns", "c", 0]),
    ("a record mostly missing", "/v1/score", {"json": {"records": [R, {**R, "a": None, "b": None, "c": None}]}}, 422, ["body", "records", 1]),
    ("a wrong content type", "/v1/score", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415, ["header", "content-type"]),
    # /invocations
    ("malformed JSON, MLflow", "/invocations", {"content": b"{not json", "headers": JSON}, 400, ["body"]),
    ("JSON nested 10,000 deep", "/invocations", {"content": b"[" * 10_000 + b"]" * 10_000, "headers": JSON}, 400, ["body"]),
    ("no MLflow form", "/invocations", {"json": {"foo": 1}}, 400, ["body"]),
    ("two MLflow forms", "/invocations", {"json": {"dataframe_split": {"columns": COLUMNS, "data": [list(R.values())]}, "dataframe_records": [R]}}, 400, ["body"]),
    ("dataframe_split without columns", "/invocations", {"json": {"dataframe_split": {"data": [[1]]}}}, 400, ["body", "dataframe_split"]),
    ("dataframe_split rows too short", "/invocations", {"json": {"dataframe_split": {"columns": COLUMNS, "data": [[1, 2]]}}}, 400, ["body", "dataframe_split"]),
    ("duplicate columns", "/invocations", {"json": {"dataframe_split": {"columns": SPLIT_COLUMNS, "data": [["x", 1, 2, 3, "red", True]]}}}, 422, ["body", "dataframe_split"]),
    ("instances a number", "/invocations", {"json": {"instances": 5}}, 400, ["body", "instances"]),
    ("inputs of different lengths", "/invocations", {"json": {"inputs": {"a": [1, 2], "b": [1]}}}, 400, ["body", "inputs"]),
    ("params a list", "/invocations", {"json": {"dataframe_records": [R], "params": [1]}}, 422, ["body", "params"]),
    ("params a string", "/invocations", {"json": {"dataframe_records": [R], "params": "k"}}, 422, ["body", "params"]),
    ("params.k true", "/invocations", {"json": {"dataframe_records": [R], "params": {"k": True}}}, 422, ["body", "params", "k"]),
    ("params.k zero", "/invocations", {"json": {"dataframe_records": [R], "params": {"k": 0}}}, 422, ["body", "params", "k"]),
    ("params.k a string", "/invocations", {"json": {"dataframe_records": [R], "params": {"k": "x"}}}, 422, ["body", "params", "k"]),
    ("a missing column, MLflow", "/invocations", {"json": {"dataframe_records": [WITHOUT_FLAG]}}, 422, ["body", "dataframe_records", "flag"]),
    ("text in a numeric column, MLflow", "/invocations", {"json": {"dataframe_records": [R, {**R, "b": "x"}]}}, 422, ["body", "dataframe_records", 1, "b"]),
    ("text in a numeric column, CSV", "/invocations", {"content": b"id,a,b,c,color,flag\nx,abc,1,2,red,true\n", "headers": {"content-type": "text/csv"}}, 422, ["body", 0, "a"]),
    ("an empty CSV", "/invocations", {"content": b"", "headers": {"content-type": "text/csv"}}, 400, ["body"]),
    ("an unsupported content type", "/invocations", {"content": b"<x/>", "headers": {"content-type": "application/xml"}}, 415, ["header", "content-type"]),
    ("a record with nothing observed", "/invocations", {"json": {"dataframe_records": [{"id": "x", "a": None, "b": None, "c": None, "color": None, "flag": None}]}}, 422, ["body", "dataframe_records", 0]),
    # the other routes
    ("an image request to a table model", "/v1/score/images", {"json": {"images": []}}, 409, ["model"]),
    ("reload without a token", "/v1/models/reload", {}, 401, ["header", "authorization"]),
    ("reload with a wrong token", "/v1/models/reload", {"headers": {"authorization": "Bearer wrong"}}, 401, ["header", "authorization"]),
    ("reload with another scheme", "/v1/models/reload", {"headers": {"authorization": "Basic dG9rOg=="}}, 401, ["header", "authorization"]),
    ("reload with a non-ASCII token", "/v1/models/reload", {"headers": {"authorization": b"Bearer t\xe9"}}, 401, ["header", "authorization"]),
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


def test_an_unscorable_record_is_never_normal(fitted):
    """The library's net under every route: a NaN log-likelihood is an outlier."""
    from anomaly_vae.scoring.iwae import ScoreResult

    nan = np.array([math.nan, -3.0])
    width = len(fitted.feature_names_)  # its color column's p-value needs contributions
    res = ScoreResult(
        nan, nan, nan, nan, np.zeros((2, width)), nan, np.zeros(2, bool), np.zeros((2, 0))
    )
    # the marginal channel judges the rows' cells: any two encoded rows
    cols = fitted.result_columns(res, fitted.calibration_rows_.take(slice(0, 2)))
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


def _files(n: int, data: bytes | None = None, name: str = "x.png") -> list:
    return [
        ("files", (f"{i}{name}", data if data is not None else _png(), "image/png"))
        for i in range(n)
    ]


def _b64(*blobs: bytes) -> list[str]:
    return [base64.b64encode(b).decode() for b in blobs]


def _png_of(h: int, w: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _huge_png() -> bytes:
    """A valid PNG header declaring 50000x50000 pixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


IMAGE_CASES = [
    # (name, request kwargs, status, loc) against an image model: 16x16, max_files 3,
    # max_cost 1000, max_k 600
    ("too many files", {"files": _files(4)}, 413, ["body", "files"]),
    ("a multipart body without a boundary", {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}}, 400, ["body", "files"]),
    ("a file that is not an image", {"files": _files(1, b"not an image", "junk.png")}, 422, ["body", "files", 0]),
    ("an image of the wrong size", {"files": _files(1, _png_of(20, 16))}, 422, ["body", "files", 0]),
    ("a PNG declaring 50000x50000 pixels", {"files": _files(1, _huge_png())}, 422, ["body", "files", 0]),
    ("the same PNG in base64", {"json": {"images": _b64(_huge_png())}}, 422, ["body", "images", 0]),
    ("base64 that is not base64", {"json": {"images": ["%%%"]}}, 422, ["body", "images", 0]),
    ("no images", {"json": {"images": []}}, 422, ["body", "images"]),
    ("images not a list", {"json": {"images": "abc"}}, 422, ["body", "images"]),
    ("an unknown JSON field", {"json": {"images": _b64(_png()), "zz": 1}}, 422, ["body", "zz"]),
    ("k in the query above max_k", {"files": _files(2), "params": {"k": 700}}, 422, ["query", "k"]),
    ("k in the query not a number", {"files": _files(1), "params": {"k": "abc"}}, 422, ["query", "k"]),
    ("heatmap in the query not a boolean", {"files": _files(1), "params": {"heatmap": "maybe"}}, 422, ["query", "heatmap"]),
    ("files x query k over the cost limit", {"files": _files(2), "params": {"k": 600}}, 413, ["query", "k"]),
    ("images x body k over the cost limit", {"json": {"images": _b64(_png(), _png()), "k": 600}}, 413, ["body", "k"]),
    ("body k true", {"json": {"images": _b64(_png()), "k": True}}, 422, ["body", "k"]),
    ("a text body", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415, ["header", "content-type"]),
    ("a table request to an image model", {"json": {"records": [_record()]}, "path": "/v1/score"}, 409, ["model"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "kwargs", "status", "loc"), IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES]
)
def test_bad_image_input_gets_a_json_4xx_naming_the_field(images_client, name, kwargs, status, loc):
    kwargs = dict(kwargs)
    path = kwargs.pop("path", "/v1/score/images")
    r = images_client.post(path, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["detail"][0]["loc"] == loc, r.text
    assert images_client.get("/healthz").status_code == 200


def test_image_route_within_the_limits_scores(images_client):
    r = images_client.post("/v1/score/images?k=8", files=_files(2))
    assert r.status_code == 200 and len(r.json()["results"]) == 2


# ------------------------------------------------------ missingness patterns and their cost
def test_a_new_missingness_pattern_is_calibrated_through_the_service(fitted, tmp_path):
    """A record with a missing cell gets the library's p-value (its pattern calibrated
    on calibration rows missing the same cell), and the pattern is kept."""
    from anomaly_vae import TabularDetector

    bundle = fitted.save(tmp_path / "bundle")
    settings = Settings(bundle_path=bundle, poll_seconds=0)
    rows = [{**_record(), "a": None}, {**_record(), "color": None}, _record()]
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        r = c.post("/v1/score", json={"records": rows})
        assert r.status_code == 200, r.text
        det = c.app.state.store.current.detector
        assert len(det.__dict__["_pattern_cache"]) == 2
    import pandas as pd

    want = TabularDetector.load(bundle).p_values(pd.DataFrame(rows))
    np.testing.assert_array_equal([x["p_value"] for x in r.json()["results"]], want)


def test_too_many_new_missingness_patterns_are_a_413_naming_the_records(fitted, tmp_path):
    """Each new pattern costs scoring the calibration rows once: a request of records
    with many distinct missing cells could hold the scorer far beyond MAX_COST."""
    bundle = fitted.save(tmp_path / "bundle")
    n_cal = len(fitted.calibration_rows_)
    one_pattern = n_cal * fitted.sampler_.k
    settings = Settings(bundle_path=bundle, poll_seconds=0, max_cost=2 * one_pattern + 100)
    three = [{**_record(), "a": None}, {**_record(), "b": None}, {**_record(), "c": None}]
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        r = c.post("/v1/score", json={"records": three})
        assert r.status_code == 413, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "records"]
        assert "3 missingness patterns new to this model" in r.text
        r = c.post("/invocations", json={"dataframe_records": three})
        assert r.status_code == 413 and r.json()["detail"][0]["loc"] == [
            "body",
            "dataframe_records",
        ]
        # two fit, and once calibrated they cost nothing more
        assert c.post("/v1/score", json={"records": three[:2]}).status_code == 200
        assert c.post("/v1/score", json={"records": three[:2]}).status_code == 200
        assert c.post("/v1/score", json={"records": three[2:]}).status_code == 200
