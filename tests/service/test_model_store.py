"""The model store against a real sqlite MLflow store: downloads are not left behind,
and ``anomaly-vae serve`` flags override the environment only when given."""

from __future__ import annotations

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
    for _ in range(20):
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
    finally:
        os.environ.clear()
        os.environ.update(saved)
