"""The batcher's two lanes: a costly request parks at its next yield point while cheap
requests are scored, then goes on.

What happened when is observed directly (no clock): the costly pass is held at its start
until a cheap request is queued on the torch thread behind it, then released; the log of pass starts and
ends shows the cheap pass inside the costly one.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import httpx
import numpy as np
import pytest
from anomaly_vae.service.app import create_app
from anomaly_vae.service.settings import Settings

from anomaly_vae.scoring.iwae import yield_point
from tests.integration.conftest import records


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, fitted):
    return fitted.save(tmp_path_factory.mktemp("lane") / "bundle")


def _log_passes(app, log: list[str], started: threading.Event, release: threading.Event):
    """Log every scoring pass's start and end as "start N" / "end N" (N records, or
    "stopped N" when it raised); hold
    the first pass, before it computes, until ``release`` is set. Returns the detector."""
    det = app.state.store.current.detector
    real = det.score_encoded

    def observed(arrays, k=None, contributions=True):
        log.append(f"start {len(arrays)}")
        if len(log) == 1:
            started.set()
            release.wait(60)
        try:
            out = real(arrays, k=k, contributions=contributions)
        except Exception:
            log.append(f"stopped {len(arrays)}")
            raise
        log.append(f"end {len(arrays)}")
        return out

    det.score_encoded = observed
    return det


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def _app(bundle):
    # 300 records x k=40 = 12,000 samples: costly above 2,560; 1 x k=32 is cheap
    return create_app(
        Settings(bundle_path=bundle, poll_seconds=0, lane_cost=2_560, batch_window_ms=0)
    )


@contextlib.asynccontextmanager
async def _costly_held(app, log: list[str], rows):
    """The app running and a costly request (``rows`` at k=40) sent, its scoring pass
    held at its start: yields (client, batcher, the request's task, the event that
    releases the pass)."""
    started, release = threading.Event(), threading.Event()
    async with app.router.lifespan_context(app):
        _log_passes(app, log, started, release)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            task = asyncio.create_task(
                client.post("/v1/score", json={"records": records(rows), "k": 40})
            )
            await _until(started.is_set)
            try:
                yield client, app.state.batcher, task, release
            finally:
                release.set()


def test_a_cheap_request_is_scored_inside_a_costly_one(bundle, mixed_test):
    frame, _ = mixed_test
    big = frame.iloc[:300]
    app = _app(bundle)
    log: list[str] = []

    async def run() -> tuple[httpx.Response, httpx.Response]:
        async with _costly_held(app, log, big) as (client, batcher, costly, release):
            cheap = asyncio.create_task(
                client.post("/v1/score", json={"records": records(frame.iloc[:1])})
            )
            await _until(lambda: batcher.torch.cheap_waiting > 0)
            release.set()
            return await costly, await cheap

    r_costly, r_cheap = asyncio.run(run())
    assert r_costly.status_code == 200 and r_cheap.status_code == 200
    # the cheap pass ran while the costly one was parked, not after it
    assert log == ["start 300", "start 1", "end 1", "end 300"]
    # parking does not change a record's bits: the same rows scored in one pass
    from anomaly_vae import TabularDetector

    whole = TabularDetector.load(bundle).score(big, k=40)
    got = np.array([r["log_likelihood"] for r in r_costly.json()["results"]])
    np.testing.assert_array_equal(got, whole.log_likelihood)


def test_a_cancelled_costly_request_stops_being_scored(bundle, mixed_test):
    frame, _ = mixed_test
    app = _app(bundle)
    log: list[str] = []

    async def run() -> None:
        async with _costly_held(app, log, frame) as (client, batcher, task, release):
            task.cancel()  # the client goes away mid-request
            with pytest.raises(asyncio.CancelledError):
                await task
            release.set()
            await _until(lambda: not batcher.costly)
            ok = await client.post("/v1/score", json={"records": records(frame.iloc[:1])})
            assert ok.status_code == 200

    asyncio.run(run())
    # stopped at its first yield point, before computing anything
    assert log == ["start 300", "stopped 300", "start 1", "end 1"]


def test_yield_point_calls_its_hook_per_sample_chunk_and_can_stop_scoring(fitted, mixed_test):
    frame, _ = mixed_test
    calls = [0]

    def hook() -> None:
        calls[0] += 1

    arrays = fitted.encode_rows(frame.iloc[:100])
    # once first: a short pass's first use runs the full pass beside it to compare bits
    want = fitted.score_encoded(arrays, k=100).log_likelihood
    with yield_point(hook):
        res = fitted.score_encoded(arrays, k=100)
    passes = -(-100 // fitted.sampler_.rows_per_pass(fitted.net_))
    assert calls[0] == passes * -(-100 // fitted.sampler_.sample_chunk)  # x 2 sample chunks
    np.testing.assert_array_equal(res.log_likelihood, want)

    def stop() -> None:
        raise KeyboardInterrupt

    with yield_point(stop), pytest.raises(KeyboardInterrupt):
        fitted.score_encoded(arrays, k=100)
    fitted.score_encoded(arrays, k=1)  # the hook is gone after the block
