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
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from . import metrics
from .batching import Batcher
from .compute import one_thread
from .errors import error_response, install_handlers
from .model_store import ModelStore
from .monitor import DriftMonitor
from .openapi import install_openapi
from .routers import drift, images, models, ops, scoring
from .settings import Settings

log = logging.getLogger(__name__)

#: Longest wait for the first model load before the server listens anyway (seconds). A
#: store that refuses connections fails at once, so the server listens at once; one that
#: hangs delays listening by this much. Shorter (1.5 s was tried) let a worker of a
#: multi-worker server accept requests before its model had loaded on a busy machine
#: (the others ready, it 503): every worker should be ready when it accepts.
STARTUP_WAIT_S = 5.0
#: A worker whose master died shuts down gracefully, and is ended after this long.
MASTER_GONE_GRACE_S = 10.0


def watch_master() -> threading.Thread | None:
    """In a worker process of a multi-worker server (a child spawned by uvicorn's
    supervisor), end this process when the master dies: a SIGKILLed master leaves its
    workers holding the port, and the restart fails with "Address already in use".
    The parent's sentinel becomes ready the moment it exits; then SIGTERM starts the
    worker's graceful shutdown, and a shutdown that hangs is cut off after
    ``MASTER_GONE_GRACE_S``. In a single-process server (no parent): nothing."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return None
    sentinel = parent.sentinel

    def wait() -> None:
        multiprocessing.connection.wait([sentinel])
        log.warning("the master process (pid %s) is gone: shutting this worker down", parent.pid)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(MASTER_GONE_GRACE_S)
        os._exit(1)

    thread = threading.Thread(target=wait, name="watch-master", daemon=True)
    thread.start()
    return thread


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


class _BodyTooLarge(Exception):
    pass


class _LimitBody:
    """413 for a body above ``limit`` bytes, before any of it is parsed: at once from a
    larger Content-Length, else as soon as the streamed bytes pass the limit."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send, int(declared))
            return
        seen = [0]
        started = [False]

        async def counted() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > self.limit:
                    raise _BodyTooLarge
            return dict(message)

        async def tracked(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                started[0] = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _BodyTooLarge:
            if started[0]:
                raise
            await self._refuse(send, None)

    async def _refuse(self, send: Any, size: int | None) -> None:
        got = f"{size:,} bytes" if size is not None else "more"
        resp = error_response(
            413, ["body"],
            f"the request body ({got}) is larger than the limit of {self.limit:,} bytes "
            "(ANOMALY_VAE_MAX_BODY_BYTES)",
            "too_large",
        )  # fmt: skip
        await send({"type": "http.response.start", "status": 413, "headers": resp.raw_headers})
        await send({"type": "http.response.body", "body": resp.body})


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
    monitor = DriftMonitor(settings, current_model=lambda: store.current)

    async def first_load() -> None:
        """Load until a model is there, with backoff (0.5 s doubling to 30 s), then poll
        every ``poll_seconds``. In the background: the server listens, answers /healthz
        and says why it is not ready while the store is down."""
        delay = 0.5
        while store.current is None:
            try:
                await run_in_threadpool(one_thread(store.reload))
            except Exception:
                log.warning("no model yet: %s (retrying in %.1f s)", store.last_error, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, 30.0)
        while settings.poll_seconds > 0:
            await asyncio.sleep(settings.poll_seconds)
            with contextlib.suppress(Exception):
                await run_in_threadpool(one_thread(store.reload))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # one attempt before listening, so a worker whose store answers starts with its
        # model (every worker of a multi-worker server is then ready as it accepts); a
        # store that is down or slow gets STARTUP_WAIT_S, then the loader keeps trying
        watch_master()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(run_in_threadpool(one_thread(store.reload)), STARTUP_WAIT_S)
        batcher.start()
        monitor.start()
        loader = asyncio.get_running_loop().create_task(first_load())
        yield
        loader.cancel()
        await batcher.stop()
        await run_in_threadpool(monitor.stop)

    app = FastAPI(
        title="anomaly-vae",
        version="0.1.0",
        summary="Honest log-likelihoods, calibrated p-values and outlier flags from a VAE.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.batcher = batcher
    app.state.monitor = monitor
    app.add_middleware(_LimitBody, limit=settings.max_body_bytes)
    app.add_middleware(_Observe)
    install_handlers(app)
    for router in (scoring.router, images.router, models.router, ops.router, drift.router):
        app.include_router(router)
    install_openapi(app, store, settings)
    return app
