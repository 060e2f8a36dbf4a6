"""``POST /v1/score/images``: PNG/JPEG images scored by an image model."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from anomaly_vae.image_detector import ImageDetector

from .. import metrics
from ..deps import BatcherDep, Model, SettingsDep
from ..errors import RequestError
from ..parsing import check_cost, check_limits, decode_images, plain, read_image_request
from .scoring import model_ref

router = APIRouter(tags=["scoring"])


@router.post("/v1/score/images")
async def score_images(
    model: Model,
    request: Request,
    settings: SettingsDep,
    batcher: BatcherDep,
    k: Annotated[int | None, Query(ge=1, description="importance samples")] = None,
    heatmap: Annotated[bool, Query(description="per-pixel contributions (nats)")] = False,
) -> dict[str, Any]:
    """Score images: multipart/form-data with one or more ``files`` (PNG or JPEG), or
    JSON ``{"images": [base64, ...], "k": ..., "heatmap": ...}``. Per image: the file
    name (multipart) or index, log_likelihood (nats) and its stderr, bits_per_dim,
    score, p_value, is_outlier and, with ``heatmap``, a [C][H][W] array of per-pixel
    log-likelihood terms (nats; low = unusual). Names the model version that scored."""
    det = model.detector
    if not isinstance(det, ImageDetector):
        raise RequestError(
            409, ["model"], f"the loaded model {model.name!r} scores tables; use /v1/score",
            "wrong_model_kind",
        )  # fmt: skip
    blobs, k, heatmap, k_loc, field = await read_image_request(
        request, k, heatmap, settings.max_files
    )
    check_limits(settings, n=len(blobs), k=k, k_loc=k_loc, what="images")
    check_cost(settings, len(blobs), k or det.sampler_.k, k_loc, "images")
    # decoding is CPU work: off the event loop, so /healthz and other requests go on
    images = await run_in_threadpool(decode_images, blobs, det.shape_, field)
    # on the torch thread, as all torch work (service/compute.py says why)
    scored = await batcher.torch.run(lambda: det.score(images, k=k), threads=batcher.bulk_threads)
    heat = (
        await batcher.torch.run(lambda: det.heatmap(images, k=k), threads=batcher.bulk_threads)
        if heatmap
        else None
    )
    metrics.RECORDS.inc(len(scored))
    metrics.OUTLIERS.inc(int(scored["is_outlier"].sum()))
    metrics.observe_scores(scored["score"].to_numpy())
    metrics.observe_model(
        model, scored["score"].to_numpy(), scored["p_value"].to_numpy(),
        scored["is_outlier"].to_numpy(),
    )  # fmt: skip
    request.app.state.monitor.submit(
        model, images, -scored["score"].to_numpy(), k=k,
        flags=scored["is_outlier"].to_numpy(dtype=bool),
    )  # fmt: skip
    results: list[dict[str, Any]] = []
    for i, row in enumerate(scored.to_dict(orient="records")):
        entry: dict[str, Any] = {"id": blobs[i][0]}
        entry.update({key: plain(v) for key, v in row.items()})
        if heat is not None:
            entry["heatmap"] = heat[i].tolist()
        results.append(entry)
    return {"model": model_ref(model), "k": k or det.sampler_.k, "results": results}
