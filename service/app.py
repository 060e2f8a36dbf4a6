"""The FastAPI scoring service. Build it with :func:`create_app` (tests pass their own
settings); run it with ``anomaly-vae serve`` or
``uvicorn anomaly_vae.service.app:create_app --factory``.

Routes (``routers/``): ``POST /v1/score``, ``POST /invocations`` (MLflow's scoring
protocol), ``POST /v1/score/images``, ``GET /v1/models``, ``POST /v1/models/reload``,
``GET /healthz``, ``GET /readyz``, ``GET /metrics``. Bad requests get a 4xx JSON error
naming the field; never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from . import metrics
from .batching import Batcher
from .errors import install_handlers
from .model_store import ModelStore
from .routers import images, models, ops, scoring
from .settings import Settings

log = logging.getLogger(__name__)


class _Observe:
    """Requests by route, method and status, and latency by route, as a plain ASGI
    middleware (Starlette's ``BaseHTTPMiddleware`` cost about 0.4 ms per request)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_and_record(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            metrics.REQUESTS.labels(path, scope["method"], str(status[0])).inc()
            metrics.LATENCY.labels(path).observe(time.perf_counter() - start)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. ``settings`` default to the environment (``ANOMALY_VAE_*``)."""
    settings = settings or Settings()
    if settings.torch_threads:
        import torch

        # small scoring batches lose more to thread hand-offs than they gain, most of all
        # when several requests or workers already keep the cores busy; large batches
        # get ``bulk_threads`` (see .batching)
        torch.set_num_threads(settings.torch_threads)
    store = ModelStore(settings)
    batcher = Batcher(settings)

    async def poll() -> None:
        while True:
            await asyncio.sleep(settings.poll_seconds)
            with contextlib.suppress(Exception):
                await run_in_threadpool(store.reload)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await run_in_threadpool(store.reload)
        except Exception:
            log.warning("no model at start-up: %s (not ready; will keep trying)", store.last_error)
        batcher.start()
        poller = (
            asyncio.get_running_loop().create_task(poll()) if settings.poll_seconds > 0 else None
        )
        yield
        if poller is not None:
            poller.cancel()
        await batcher.stop()

    app = FastAPI(
        title="anomaly-vae",
        version="0.1.0",
        summary="Honest log-likelihoods, calibrated p-values and outlier flags from a VAE.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.batcher = batcher
    app.add_middleware(_Observe)
    install_handlers(app)
    for router in (scoring.router, images.router, models.router, ops.router):
        app.include_router(router)
    return app
