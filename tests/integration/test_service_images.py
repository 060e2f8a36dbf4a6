"""The service scoring images over HTTP: a real uvicorn process serving an image bundle."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from anomaly_vae.image_detector import ImageDetector
from tests.integration.conftest import Server
from tests.test_image_detector import squares

pytestmark = pytest.mark.integration


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("svc-images")
    det = ImageDetector(max_epochs=8, k=16, latent_dim=8, width_mult=8).fit(squares(300, 0))
    det.save(root / "bundle")
    srv = Server(root, "unused", extra_env={"ANOMALY_VAE_BUNDLE_PATH": str(root / "bundle")})
    yield srv, det
    srv.stop()


def test_posting_pngs_multipart_and_base64(server) -> None:
    srv, det = server
    square = squares(1, 5)[0, 0]
    noise = np.random.default_rng(1).integers(0, 256, (16, 16)).astype(np.uint8)
    files = [
        ("files", ("square.png", png(square), "image/png")),
        ("files", ("noise.png", png(noise), "image/png")),
    ]
    r = httpx.post(srv.url + "/v1/score/images?heatmap=true", files=files, timeout=60)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model"]["name"] == "bundle"
    a, b = doc["results"]
    assert (a["id"], b["id"]) == ("square.png", "noise.png")
    for item in (a, b):
        assert {
            "log_likelihood",
            "stderr",
            "ess",
            "unreliable",
            "bits_per_dim",
            "score",
            "p_value",
            "is_outlier",
        } <= set(item)
        assert np.asarray(item["heatmap"]).shape == (1, 16, 16)
    assert b["score"] > a["score"] and b["is_outlier"]
    # the same numbers as the library on the same pixels
    want = det.score(np.stack([square, noise])[:, None])
    np.testing.assert_allclose(
        [a["log_likelihood"], b["log_likelihood"]], want["log_likelihood"], atol=1e-9
    )
    # JSON with base64 gives the same answer
    body = {"images": [base64.b64encode(png(square)).decode()], "k": 16}
    r = httpx.post(srv.url + "/v1/score/images", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["results"][0]["log_likelihood"] == pytest.approx(
        a["log_likelihood"]
    )
    assert httpx.get(srv.url + "/readyz").json()["ready"] is True
    loaded = httpx.get(srv.url + "/v1/models").json()["loaded"]
    assert loaded["image_shape"] == [1, 16, 16]
    assert loaded["score"] == "likelihood" and loaded["complexity_weight"] is None


@pytest.mark.parametrize(
    ("kwargs", "status", "needle"),
    [
        (
            {"files": [("files", ("big.png", png(np.zeros((20, 16), np.uint8)), "image/png"))]},
            422,
            "big.png: image is 16x20 pixels; the model takes 16x16",
        ),
        (
            {"files": [("files", ("junk.png", b"not an image", "image/png"))]},
            422,
            "junk.png: not a readable",
        ),
        ({"json": {"images": ["%%%"]}}, 422, "images[0]: not valid base64"),
        ({"json": {"images": []}}, 422, "images"),
        (
            {"content": b"x", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported content type",
        ),
    ],
)
def test_bad_image_requests_get_4xx(server, kwargs, status, needle) -> None:
    srv, _ = server
    r = httpx.post(srv.url + "/v1/score/images", timeout=60, **kwargs)
    assert r.status_code == status, r.text
    assert needle in r.text


def test_tabular_route_on_an_image_model_is_a_409(server) -> None:
    srv, _ = server
    r = httpx.post(srv.url + "/v1/score", json={"records": [{"a": 1}]}, timeout=30)
    assert r.status_code == 409 and "/v1/score/images" in r.text


def test_image_model_from_the_registry_is_served_by_alias(tmp_path, monkeypatch) -> None:
    """`images train --register` puts a version in the embedded store; the service,
    pointed at name@champion, loads it from MLflow and names that version per answer."""
    from anomaly_vae.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    np.save(tmp_path / "train.npy", squares(300, 0))
    store = tmp_path / "mlruns"
    args = ["--quiet", "images", "train", str(tmp_path / "train.npy"), "--out", str(tmp_path / "b")]
    args += ["--max-epochs", "4", "--latent-dim", "8", "--k", "16"]
    assert main([*args, "--register", "squares", "--alias", "champion", "--store", str(store)]) == 0
    srv = Server(store, "squares")
    try:
        r = httpx.post(
            srv.url + "/v1/score/images",
            files=[("files", ("sq.png", png(squares(1, 3)[0, 0]), "image/png"))],
            timeout=60,
        )
        assert r.status_code == 200, r.text
        model = r.json()["model"]
        assert (model["name"], model["version"], model["alias"]) == ("squares", 1, "champion")
        want = ImageDetector.load(tmp_path / "b").score(squares(1, 3))["log_likelihood"][0]
        # the same bits in any batch, but not across thread counts: the server's torch
        # threads need not be this process's, and convolution kernels round by them
        # (float32: 8e-6 nats of 166 seen on a 2-core machine)
        assert r.json()["results"][0]["log_likelihood"] == pytest.approx(want, rel=1e-6)
    finally:
        srv.stop()
