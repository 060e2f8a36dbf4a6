"""``GET /healthz``, ``GET /readyz`` and ``GET /metrics``: what an orchestrator and
Prometheus ask."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from anomaly_vae.image_detector import ImageDetector

from .. import metrics
from ..deps import BatcherDep, StoreDep

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(store: StoreDep, batcher: BatcherDep) -> JSONResponse:
    """A model is loaded and scores a record (a synthetic one it samples itself): 200,
    else 503 with the reason (still loading, the store unreachable, the load failed).
    Degraded: when the latest load failed while an earlier model still serves, the
    answer stays 200 (taking the instance out of rotation would serve nothing) with
    ``degraded: true``, the reason and since when; the gauge
    ``anomaly_vae_model_load_failing`` is 1 meanwhile."""
    model = store.current
    if model is None:
        return JSONResponse(
            status_code=503,
            content={"ready": False, "reason": store.last_error or "loading the model"},
        )
    det = model.detector
    # on the torch thread, as all torch work (service/compute.py says why)
    if isinstance(det, ImageDetector):
        scored = await batcher.torch.run(lambda: det.score(det.sample(1, seed=0), k=1))
        ll = scored["log_likelihood"].to_numpy()
    else:
        ll = await batcher.torch.run(lambda: det.score_samples(det.sample(1, seed=0), k=1))
    ok = bool(np.isfinite(ll).all())
    body: dict[str, object] = {"ready": ok, "version": model.version}
    if store.last_error is not None:
        body.update(degraded=True, reason=store.last_error, failing_since=store.failing_since)
    return JSONResponse(status_code=200 if ok else 503, content=body)


@router.get("/metrics", include_in_schema=True)
async def prometheus_metrics() -> Response:
    """Prometheus exposition format."""
    data, ctype = metrics.render()
    return Response(content=data, media_type=ctype)
