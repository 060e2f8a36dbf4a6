"""The model store against a real sqlite MLflow store: downloads are not left behind,
and ``anomaly-vae serve`` flags override the environment only when given."""

from __future__ import annotations

import json
import os
import tempfile

import pytest

from anomaly_vae import registry


@pytest.fixture
def store(tmp_path, fitted, mixed_train, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    registry.configure(tmp_path / "mlruns")
    registry.log_detector(fitted, name="mixed", example=mixed_train, alias=registry.CHAMPION)
    return tmp_path / "mlruns"


def _downloads(root) -> list[str]:
    return sorted(p for p in os.listdir(root) if p.startswith("mixed-v"))


def test_loads_leave_no_temporary_folders(store, tmp_path, monkeypatch):
    from anomaly_vae.service.model_store import ModelStore
    from anomaly_vae.service.settings import Settings

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    settings = Settings(model_name="mixed", tracking_store=store, poll_seconds=0)
    for _ in range(5):  # a fresh store downloads every time
        changed, model = ModelStore(settings).reload()
        assert changed and model is not None and model.version == 1
    assert _downloads(scratch) == []
    # failed loads too: the version's bundle is broken in the artifact store
    broken = next(store.rglob("artifacts/bundle/calibration.json"))
    broken.write_text("{}")
    for _ in range(100):
        with pytest.raises(Exception, match="does not match its sha256"):
            ModelStore(settings).reload()
    assert _downloads(scratch) == []


def test_serve_flags_override_the_environment_only_when_given(tmp_path, fitted, monkeypatch):
    import uvicorn

    from anomaly_vae.cli import main

    bundle = fitted.save(tmp_path / "b")
    seen: dict[str, object] = {}

    def run(app: str, **kwargs: object) -> None:  # the server itself is not under test here
        seen.update(kwargs)
        seen["env"] = {k: v for k, v in os.environ.items() if k.startswith("ANOMALY_VAE_")}

    monkeypatch.setattr(uvicorn, "run", run)
    saved = dict(os.environ)  # serve writes ANOMALY_VAE_* into this process's environment
    try:
        for key in [k for k in os.environ if k.startswith("ANOMALY_VAE_")]:
            del os.environ[key]
        os.environ["ANOMALY_VAE_POLL_SECONDS"] = "1"
        os.environ["ANOMALY_VAE_MODEL_ALIAS"] = "canary"
        assert main(["serve", "--bundle", str(bundle)]) == 0
        env = seen["env"]
        assert env["ANOMALY_VAE_POLL_SECONDS"] == "1"
        assert env["ANOMALY_VAE_MODEL_ALIAS"] == "canary"
        assert seen["workers"] == 1
        assert (
            main(["serve", "--bundle", str(bundle), "--poll-seconds", "5", "--alias", "blue"]) == 0
        )
        env = seen["env"]
        assert env["ANOMALY_VAE_POLL_SECONDS"] == "5.0"
        assert env["ANOMALY_VAE_MODEL_ALIAS"] == "blue"
        # neither --model nor --bundle (the Docker image): the environment's model, and
        # the workers' number from ANOMALY_VAE_WORKERS
        os.environ["ANOMALY_VAE_BUNDLE_PATH"] = str(bundle)
        os.environ["ANOMALY_VAE_WORKERS"] = "2"
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
        (tmp_path / "metrics").mkdir()
        (tmp_path / "metrics" / "counter_7.db").write_bytes(b"old")
        assert main(["serve"]) == 0
        assert seen["workers"] == 2 and seen["env"]["ANOMALY_VAE_BUNDLE_PATH"] == str(bundle)
        assert not list((tmp_path / "metrics").glob("*.db"))  # a dead process's counts
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_signing_key_refuses_an_unsigned_bundle_and_serves_a_signed_one(fitted, tmp_path):
    from anomaly_vae.service.app import create_app
    from anomaly_vae.service.settings import Settings
    from fastapi.testclient import TestClient

    key = "a-service-signing-key-of-32-chars!"
    unsigned = fitted.save(tmp_path / "unsigned")
    app = create_app(Settings(bundle_path=unsigned, poll_seconds=0, signing_key=key))
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "not signed" in r.json()["reason"]
        assert str(tmp_path) not in r.text  # no server path in a response
    signed = fitted.save(tmp_path / "signed", signing_key=key)
    app = create_app(Settings(bundle_path=signed, poll_seconds=0, signing_key=key))
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.get("/readyz").status_code == 200


def test_readyz_reports_a_model_that_fails_to_load_as_degraded(fitted, tmp_path):
    """The bundle breaks under a serving model: reload answers 409 and keeps it; /readyz
    stays 200 (the old model serves) but says degraded, why, and since when; the gauge
    is 1 until a load works again. No response carries the server's paths."""
    import shutil

    from anomaly_vae.service.app import create_app
    from anomaly_vae.service.settings import Settings
    from fastapi.testclient import TestClient

    bundle = fitted.save(tmp_path / "served" / "bundle")
    app = create_app(Settings(bundle_path=bundle, poll_seconds=0, admin_token="a-long-admin-token"))
    auth = {"Authorization": "Bearer a-long-admin-token"}
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.get("/readyz").json() == {"ready": True, "version": None}
        (bundle / "weights.safetensors").write_bytes(b"corrupt")
        r = c.post("/v1/models/reload", headers=auth)
        assert r.status_code == 409
        ready = c.get("/readyz")
        assert ready.status_code == 200
        body = ready.json()
        assert body["degraded"] is True and "weights.safetensors" in body["reason"]
        assert body["failing_since"]
        assert "anomaly_vae_model_load_failing 1.0" in c.get("/metrics").text
        models = c.get("/v1/models").json()
        for text in (r.text, ready.text, json.dumps(models)):
            assert str(tmp_path) not in text
        shutil.rmtree(bundle)
        fitted.save(bundle)
        assert c.post("/v1/models/reload", headers=auth).status_code == 200
        assert "degraded" not in c.get("/readyz").json()
        assert c.get("/v1/models").json()["loaded"]["channel_columns"] == ["color"]
        assert c.get("/v1/models").json()["loaded"]["marginal_channel"] == 0.35
        assert "anomaly_vae_model_load_failing 0.0" in c.get("/metrics").text
