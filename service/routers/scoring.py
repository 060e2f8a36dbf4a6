"""``POST /v1/score`` and ``POST /invocations``: tables scored through the batcher."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from anomaly_vae.data.preprocessing import TabularArrays
from anomaly_vae.detector import TabularDetector
from anomaly_vae.image_detector import ImageDetector
from anomaly_vae.scoring.iwae import ScoreResult

from .. import metrics
from ..deps import BatcherDep, Model, SettingsDep
from ..errors import RequestError
from ..model_store import LoadedModel
from ..parsing import (
    check_cost,
    check_limits,
    check_missing,
    columns_from_request,
    frame_from_request,
    naming,
    parse_invocations,
    parse_score_request,
    plain,
    plain_ids,
)
from ..schemas import ScoreRequest, ScoreResponse

router = APIRouter(tags=["scoring"])

#: Requests of at most this many records build their result objects on the event loop;
#: larger ones in the thread pool, so the loop keeps accepting requests meanwhile.
INLINE_ROWS = 64


def tabular(model: LoadedModel) -> TabularDetector:
    """The loaded tabular detector; 409 naming the image route when an image model is
    loaded."""
    det = model.detector
    if isinstance(det, ImageDetector):
        raise RequestError(
            409,
            ["model"],
            f"the loaded model {model.name!r} scores images; POST them to /v1/score/images",
            "wrong_model_kind",
        )
    return det


def model_ref(model: LoadedModel) -> dict[str, Any]:
    """The ``model`` object every scoring response carries."""
    return {"name": model.name, "version": model.version, "alias": model.alias}


def score_rows(
    det: TabularDetector,
    columns: Mapping[str, Sequence[Any]],
    res: ScoreResult,
    top: int,
    arrays: TabularArrays | None = None,
    cols: Mapping[str, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """``/v1/score``'s result objects from the library's result columns (``cols``, when
    the caller has them already): id (when the schema has one), log_likelihood, stderr
    (absent at K=1), ess, unreliable, score, p_value, is_outlier, and with ``top`` the
    most unusual features. Ids and feature values are the request's own (``columns``:
    {name: [N values]})."""
    if cols is None:
        cols = det.result_columns(res, arrays)
    sid = det.schema_.id_column
    ids = plain_ids(columns[sid]) if sid and sid in columns else None
    # columns to Python lists once (C loops), then one dict per record
    ll, pv, fl = (
        cols["log_likelihood"].tolist(),
        cols["p_value"].tolist(),
        cols["is_outlier"].tolist(),
    )
    sc = cols["score"].tolist()
    se = cols["stderr"].tolist()
    es, ur = cols["ess"].tolist(), cols["unreliable"].tolist()
    results: list[dict[str, Any]] = []
    for i in range(len(ll)):
        item: dict[str, Any] = {} if ids is None or ids[i] is None else {"id": ids[i]}
        item["log_likelihood"] = ll[i]
        if not math.isnan(se[i]):  # response_model_exclude_none, as declared in the schema
            item["stderr"] = se[i]
        item["ess"] = es[i]
        item["unreliable"] = ur[i]
        item["score"] = sc[i]
        item["p_value"] = pv[i]
        item["is_outlier"] = fl[i]
        results.append(item)
    if top:
        for item, named in zip(
            results, top_contributions(det, columns, res, top, arrays), strict=True
        ):
            item["contributions"] = named
    return results


def score_columns(
    det: TabularDetector,
    columns: Mapping[str, Sequence[Any]],
    res: ScoreResult,
    top: int,
    arrays: TabularArrays | None = None,
    cols: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """``orient: "columns"``: the fields of :func:`score_rows` as one list each
    (:class:`~..schemas.ScoreColumns`), the arrays written by orjson as they are."""
    if cols is None:
        cols = det.result_columns(res, arrays)
    out: dict[str, Any] = {}
    sid = det.schema_.id_column
    if sid and sid in columns:
        out["id"] = plain_ids(columns[sid])
    out["log_likelihood"] = cols["log_likelihood"]
    if not np.isnan(cols["stderr"]).all():  # absent at K=1, as in the records' layout
        out["stderr"] = cols["stderr"]
    for name in ("ess", "unreliable", "score", "p_value", "is_outlier"):
        out[name] = cols[name]
    if top:
        out["contributions"] = top_contributions(det, columns, res, top, arrays)
    return out


def drift_flags(
    det: TabularDetector, res: ScoreResult, arrays: TabularArrays, flags: np.ndarray
) -> np.ndarray:
    """The flags drift monitoring counts, [N]: the records' own ``flags`` unless the
    model has category channels, then log p(x)'s alone (see
    :meth:`TabularDetector.drift_flags`)."""
    if not getattr(det, "channels_", None):
        return flags
    return det.drift_flags(res.log_likelihood, arrays)


def top_contributions(
    det: TabularDetector,
    columns: Mapping[str, Sequence[Any]],
    res: ScoreResult,
    top: int,
    arrays: TabularArrays | None,
) -> list[list[dict[str, Any]]]:
    """Per record, its ``top`` most unusual features: name, the request's value,
    contribution and excess (nats)."""
    names = det.feature_names_
    order, excess = det.top_features(res, top, arrays)
    return [
        [
            {
                "feature": names[j],
                "value": plain(columns[names[j]][i]),
                "contribution": float(res.contributions[i, j]),
                "excess": float(excess[i, j]),
            }
            for j in row
        ]
        for i, row in enumerate(order)
    ]


async def calibrate_patterns(
    settings: Any,
    batcher: Any,
    model: LoadedModel,
    det: TabularDetector,
    arrays: TabularArrays,
    cost: int,
    loc: tuple[str, ...],
) -> None:
    """Calibrate the missingness patterns of ``arrays`` new to the model before its
    p-values are taken: each pattern's calibration rows (with the same cells missing)
    are scored through the batcher, so they take their lane like any request and count
    towards the request's cost (``cost``: its own records x k). A request whose new
    patterns would take it over ``max_cost`` gets a 413 naming ``loc``."""
    patterns = det.new_patterns(arrays)
    if not patterns:
        return
    rows = det.calibration_rows_
    assert rows is not None  # new_patterns is empty without calibration rows
    extra = len(patterns) * len(rows) * det.sampler_.k
    if cost + extra > settings.max_cost:
        msg = (
            f"{len(patterns)} missingness patterns new to this model need {extra:,} "
            f"importance samples to calibrate (a record with missing cells is compared "
            f"with calibration rows missing the same cells); with the records' {cost:,} "
            f"that is above the limit of {settings.max_cost:,} per request "
            "(ANOMALY_VAE_MAX_COST): send fewer distinct patterns of missing cells per "
            "request (a pattern, once calibrated, costs nothing more)"
        )
        raise RequestError(413, list(loc), msg, "too_costly")
    for pattern in patterns:
        masked = det.pattern_rows(pattern)
        assert masked is not None
        res = await batcher.score(model, masked, None, False)
        det.store_pattern_calibration(pattern, res.log_likelihood, res.contributions)


@router.post(
    "/v1/score",
    response_model=ScoreResponse,
    response_model_exclude_none=True,
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": ScoreRequest.model_json_schema()}},
            "required": True,
        }
    },
)
async def score(
    model: Model, request: Request, settings: SettingsDep, batcher: BatcherDep
) -> Response:
    """Score records: log-likelihood (nats) with its standard error, anomaly score,
    p-value, outlier flag and, on request, the features that made each record unusual.
    Every response names the model version that scored it.

    The body is a ``ScoreRequest``: ``{"records": [{column: value, ...}, ...]}`` or
    ``{"columns": {column: [values...]}}``, with optional ``k`` and ``contributions``.
    """
    with batcher.request():
        req = parse_score_request(await request.body(), request.headers.get("content-type"))
        columns, n = columns_from_request(req, settings)
        check_limits(settings, k=req.k, top=req.contributions)
        det = tabular(model)
        check_cost(settings, n, req.k or det.sampler_.k)
        container = ("body", "records" if req.records else "columns")
        with naming(container, columnar=not req.records):
            # plain JSON values straight to arrays; anything else (numeric strings, bad
            # values, missing columns) is read, or named, by the DataFrame path
            arrays = det.encode_columns(columns)
            if arrays is None:
                arrays = det.encode_rows(frame_from_request(req), allow_extra=False)
        check_missing(settings, det, arrays, container)
        k_eff = req.k or det.sampler_.k
        await calibrate_patterns(settings, batcher, model, det, arrays, n * k_eff, container)
        # a share of the requests is scored with contributions for drift monitoring
        monitor = request.app.state.monitor
        sampled = monitor.wants_contributions()
        res = await batcher.score(model, arrays, req.k, req.contributions > 0 or sampled)
        doc: dict[str, Any] = {"model": model_ref(model), "k": k_eff}
        cols = det.result_columns(res, arrays)
        flags, scores, p = cols["is_outlier"], cols["score"], cols["p_value"]
        if req.orient == "columns":
            # a few array operations: on the event loop, no thread hop
            doc["columns"] = score_columns(det, columns, res, req.contributions, arrays, cols)
        else:
            doc["results"] = (
                score_rows(det, columns, res, req.contributions, arrays, cols)
                if n <= INLINE_ROWS  # a thread hop would cost more than the work
                else await run_in_threadpool(
                    score_rows, det, columns, res, req.contributions, arrays, cols
                )
            )
        metrics.RECORDS.inc(len(res))
        metrics.OUTLIERS.inc(int(flags.sum()))
        metrics.observe_scores(-res.log_likelihood)
        metrics.observe_model(model, scores, p, flags)
        monitor.submit(
            model, arrays, res.log_likelihood, k=req.k, kl=res.kl, latent=res.latent_mean,
            contributions=res.contributions if sampled else None,
            flags=drift_flags(det, res, arrays, flags),
        )  # fmt: skip
    # serialized directly (the declared response_model documents the shape): pydantic
    # validation of 1000 result objects cost more than the JSON encoding itself
    body = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(content=body, media_type="application/json")


@router.post(
    "/invocations",
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {
                    "example": {
                        "dataframe_split": {
                            "columns": ["mean radius", "mean texture"],
                            "data": [[14.1, 19.3]],
                        }
                    }
                },
                "text/csv": {"example": "mean radius,mean texture\n14.1,19.3\n"},
            },
            "required": True,
        }
    },
)
async def invocations(
    model: Model, request: Request, settings: SettingsDep, batcher: BatcherDep
) -> dict[str, Any]:
    """MLflow's scoring protocol (``dataframe_split``, ``dataframe_records``,
    ``instances`` or ``inputs`` JSON, or CSV), so clients of ``mlflow models serve``
    work unchanged. Answers ``{"predictions": [...]}`` with the detector's columns, the
    same frame as the registered pyfunc model returns."""
    with batcher.request():
        ctype = request.headers.get("content-type")
        frame, params, container = parse_invocations(await request.body(), ctype)
        check_limits(settings, n=len(frame), allow_empty=True)
        k = params.get("k")
        if k is not None and (
            isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= settings.max_k
        ):
            raise RequestError(
                422,
                ["body", "params", "k"],
                f"k must be an integer in [1, {settings.max_k}], got {k!r}",
            )
        det = tabular(model)
        check_cost(settings, len(frame), k or det.sampler_.k, ("body", "params", "k"))
        with naming(container):
            arrays = det.encode_rows(frame, allow_extra=True)
        check_missing(settings, det, arrays, container)
        cost = len(frame) * (k or det.sampler_.k)
        await calibrate_patterns(settings, batcher, model, det, arrays, cost, container)
        monitor = request.app.state.monitor
        sampled = monitor.wants_contributions()
        res = await batcher.score(model, arrays, k, sampled)
        out = (await run_in_threadpool(det.result_frame, frame, res, arrays)).reset_index(drop=True)
        metrics.RECORDS.inc(len(res))
        metrics.OUTLIERS.inc(int(out["is_outlier"].sum()))
        metrics.observe_model(
            model, out["score"].to_numpy(), out["p_value"].to_numpy(), out["is_outlier"].to_numpy()
        )
        monitor.submit(
            model, arrays, res.log_likelihood, k=k, kl=res.kl, latent=res.latent_mean,
            contributions=res.contributions if sampled else None,
            flags=drift_flags(det, res, arrays, out["is_outlier"].to_numpy(dtype=bool)),
        )  # fmt: skip
        records = [{k2: plain(v) for k2, v in row.items()} for row in out.to_dict(orient="records")]
        return {"predictions": records}
