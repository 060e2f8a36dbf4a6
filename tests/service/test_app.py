"""Service pieces in process: settings validation and the queue bound (503 + Retry-After)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from anomaly_vae.service.app import create_app
from anomaly_vae.service.settings import Settings
from pydantic import ValidationError


def test_settings_refuse_insecure_production_and_missing_model(tmp_path):
    for weak in ("change-me", "x", "s3cr3t-value"):  # a default, 1 character, 12 characters
        with pytest.raises(ValidationError, match="ADMIN_TOKEN must be a non-default secret"):
            Settings(environment="production", bundle_path=tmp_path, admin_token=weak)
    with pytest.raises(ValidationError, match="set ANOMALY_VAE_MODEL_NAME"):
        Settings()
    with pytest.raises(ValidationError, match="SIGNING_KEY must have at least 32"):
        Settings(bundle_path=tmp_path, signing_key="short")
    ok = Settings(environment="production", bundle_path=tmp_path, admin_token="s3cr3t-value-of-20c")
    assert ok.max_records == 10_000
    assert "s3cr3t" not in repr(Settings(bundle_path=tmp_path, signing_key="k" * 32).signing_key)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, fitted):
    return fitted.save(tmp_path_factory.mktemp("b") / "bundle")


def test_full_queue_answers_503_with_retry_after(bundle, mixed_test):
    frame, _ = mixed_test
    settings = Settings(bundle_path=bundle, poll_seconds=0, max_queue=1, batch_window_ms=0)
    app = create_app(settings)
    payload = {
        "records": [{k: (v.item() if hasattr(v, "item") else v) for k, v in frame.iloc[0].items()}]
    }

    async def run() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            det = app.state.store.current.detector
            real = det.score_encoded

            def slow(*args, **kwargs):  # hold the worker so requests pile up in the queue
                time.sleep(0.3)
                return real(*args, **kwargs)

            det.score_encoded = slow
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return list(
                    await asyncio.gather(
                        *(client.post("/v1/score", json=payload) for _ in range(6))
                    )
                )

    responses = asyncio.run(run())
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes
    assert 503 in codes
    assert set(codes) <= {200, 503}
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1"
    assert "queue is full" in busy.text
