"""``GET /healthz``, ``GET /readyz`` and ``GET /metrics``: what an orchestrator and
Prometheus ask."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from anomaly_vae.image_detector import ImageDetector

from .. import metrics
from ..deps import StoreDep

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(store: StoreDep) -> JSONResponse:
    """A model is loaded and scores a record (a synthetic one it samples itself)."""
    model = store.current
    if model is None:
        return JSONResponse(
            status_code=503,
            content={"ready": False, "reason": store.last_error or "no model loaded"},
        )
    det = model.detector
    if isinstance(det, ImageDetector):
        image = det.sample(1, seed=0)
        scored = await run_in_threadpool(det.score, image, k=1)
        ll = scored["log_likelihood"].to_numpy()
    else:
        row = det.sample(1, seed=0)
        ll = await run_in_threadpool(det.score_samples, row, k=1)
    ok = bool(np.isfinite(ll).all())
    return JSONResponse(
        status_code=200 if ok else 503, content={"ready": ok, "version": model.version}
    )


@router.get("/metrics", include_in_schema=True)
async def prometheus_metrics() -> Response:
    """Prometheus exposition format."""
    data, ctype = metrics.render()
    return Response(content=data, media_type=ctype)
