"""The batcher's two lanes: a costly request is scored in slices, cheap ones between them.

The order of scoring passes is observed directly (no clock): the first slice of a costly
request is held until a cheap request is queued behind it, then released.
"""

from __future__ import annotations

import asyncio
import threading

import httpx
import numpy as np
import pytest
from anomaly_vae.service.app import create_app
from anomaly_vae.service.settings import Settings

from tests.integration.conftest import records


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, fitted):
    return fitted.save(tmp_path_factory.mktemp("lane") / "bundle")


def _hold_first_pass(app, calls, started, release):
    """Record every scoring pass's (records, k) in ``calls``; hold the first until
    ``release`` is set (``started`` says it began). Returns the detector."""
    det = app.state.store.current.detector
    real = det.score_encoded

    def observed(arrays, k=None, contributions=True):
        calls.append((len(arrays), k))
        if len(calls) == 1:
            started.set()
            release.wait(60)
        return real(arrays, k=k, contributions=contributions)

    det.score_encoded = observed
    return det


def test_a_cheap_request_is_scored_after_one_slice_of_a_costly_one(bundle, mixed_test):
    frame, _ = mixed_test
    big = frame.iloc[:300]  # 300 records x k=40: 12,000 samples, above lane_cost
    settings = Settings(bundle_path=bundle, poll_seconds=0, lane_cost=2_560, batch_window_ms=0)
    app = create_app(settings)
    calls: list[tuple[int, int | None]] = []
    started, release = threading.Event(), threading.Event()

    async def run() -> tuple[httpx.Response, httpx.Response, float]:
        async with app.router.lifespan_context(app):
            det = _hold_first_pass(app, calls, started, release)
            batcher = app.state.batcher
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                costly = asyncio.create_task(
                    client.post("/v1/score", json={"records": records(big), "k": 40})
                )
                while not started.is_set():
                    await asyncio.sleep(0.01)
                cheap = asyncio.create_task(
                    client.post("/v1/score", json={"records": records(frame.iloc[:1])})
                )
                while batcher.queue.empty():
                    await asyncio.sleep(0.01)
                release.set()
                a, b = await costly, await cheap
                return a, b, float(det.sampler_.row_chunk)

    r_costly, r_cheap, chunk = asyncio.run(run())
    assert r_costly.status_code == 200 and r_cheap.status_code == 200
    # slices of whole row chunks: 2,560 // (64 x 40) = 1 chunk of 64 rows each
    assert chunk == 64
    assert calls[0] == (64, 40)
    assert calls[1] == (1, None)  # the cheap request, right after the first slice
    assert calls[2:] == [(64, 40)] * 3 + [(300 - 4 * 64, 40)]
    # slicing does not change a record's bits: the same rows scored in one pass
    from anomaly_vae import TabularDetector

    det = TabularDetector.load(bundle)
    whole = det.score(big, k=40)
    got = np.array([r["log_likelihood"] for r in r_costly.json()["results"]])
    np.testing.assert_array_equal(got, whole.log_likelihood)


def test_a_cancelled_costly_request_stops_being_scored(bundle, mixed_test):
    frame, _ = mixed_test
    settings = Settings(bundle_path=bundle, poll_seconds=0, lane_cost=2_560, batch_window_ms=0)
    app = create_app(settings)
    calls: list[tuple[int, int | None]] = []
    started, release = threading.Event(), threading.Event()

    async def run() -> None:
        async with app.router.lifespan_context(app):
            _hold_first_pass(app, calls, started, release)
            batcher = app.state.batcher
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                task = asyncio.create_task(
                    client.post("/v1/score", json={"records": records(frame), "k": 40})
                )
                while not started.is_set():
                    await asyncio.sleep(0.01)
                task.cancel()  # the client goes away mid-request
                with pytest.raises(asyncio.CancelledError):
                    await task
                release.set()
                while batcher.costly:
                    await asyncio.sleep(0.01)
                # the service still answers
                ok = await client.post("/v1/score", json={"records": records(frame.iloc[:1])})
                assert ok.status_code == 200

    asyncio.run(run())
    assert [n for n, _ in calls] == [64, 1]  # no slice after the first, then the cheap one
