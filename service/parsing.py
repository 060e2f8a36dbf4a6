"""Request bodies to frames and images, and the per-request limits: every route checks
its record count, ``k`` and top-feature count through :func:`check_limits`."""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import math
import operator
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

import numpy as np
import orjson
import pandas as pd
from fastapi import Request
from pydantic import BaseModel, ValidationError

from anomaly_vae.exceptions import SchemaError

from .errors import RequestError
from .schemas import ImageScoreRequest, ScoreRequest
from .settings import Settings

#: The table forms of MLflow's scoring protocol, as ``mlflow models serve`` takes them.
MLFLOW_FORMS = ("dataframe_split", "dataframe_records", "instances", "inputs")


def check_limits(
    settings: Settings,
    *,
    n: int | None = None,
    field: str | None = None,
    k: int | None = None,
    k_loc: tuple[str, ...] = ("body", "k"),
    top: int = 0,
    what: str = "records",
    allow_empty: bool = False,
) -> None:
    """The request limits from settings: 413 for more than ``max_records`` records (and
    422 for none) named at ``field``, 422 for ``k`` above ``max_k`` or ``top`` above
    ``max_contributions``. The cost limit (records x k) is :func:`check_cost`."""
    if n is not None:
        loc: list[str | int] = ["body", field] if field else ["body"]
        if n > settings.max_records:
            msg = f"{n} {what} is more than the limit of {settings.max_records}"
            raise RequestError(413, loc, msg)
        if n == 0 and not allow_empty:
            raise RequestError(422, loc, f"no {what} to score")
    if k is not None and k > settings.max_k:
        raise RequestError(422, list(k_loc), f"k={k} is above the limit of {settings.max_k}")
    if top > settings.max_contributions:
        raise RequestError(
            422,
            ["body", "contributions"],
            f"contributions={top} is above the limit of {settings.max_contributions}",
        )


def check_cost(
    settings: Settings,
    n: int,
    k: int,
    k_loc: tuple[str, ...] = ("body", "k"),
    what: str = "records",
) -> None:
    """413 when ``n`` records at ``k`` importance samples each exceed ``max_cost``: one
    such request would hold the scorer for long enough to stall every other."""
    if n * k > settings.max_cost:
        msg = (
            f"{n} {what} x k={k} = {n * k:,} importance samples is above the limit of "
            f"{settings.max_cost:,} per request (ANOMALY_VAE_MAX_COST): send fewer {what} "
            "per request or a smaller k"
        )
        raise RequestError(413, list(k_loc), msg, "too_costly")


@contextlib.contextmanager
def naming(container: tuple[str, ...], columnar: bool = False) -> Iterator[None]:
    """Turn the library's :class:`SchemaError` into a 422 whose ``loc`` names the field:
    ``container`` (e.g. ``("body", "records")``), then the row and the column
    (``columnar`` bodies, ``{"columns": {...}}``: the column, then the row); a column
    missing from every row or unexpected in all of them is named without a row."""
    try:
        yield
    except SchemaError as exc:
        loc: list[str | int] = list(container)
        if exc.columns:
            column, rows = exc.columns[0], list(exc.rows[:1])
            loc += [column, *rows] if columnar else [*rows, column]
        raise RequestError(422, loc, str(exc), "schema_error") from exc


def check_missing(
    settings: Settings, det: Any, arrays: Any, loc: tuple[str, ...] = ("body", "records")
) -> None:
    """422 naming the first record whose share of missing columns is above
    ``max_missing_share``, and its missing columns: such a record is judged on what
    little is left of it (one with nothing observed has no evidence at all)."""
    missing = det.missing_cells(arrays)
    if not missing.size:
        return
    share = missing.mean(1)
    over = np.flatnonzero(share > settings.max_missing_share)
    if over.size:
        i = int(over[0])
        names = [n for n, m in zip(det.feature_names_, missing[i], strict=True) if m]
        msg = (
            f"record {i} is missing {len(names)} of its {missing.shape[1]} columns "
            f"({', '.join(names)}), more than the limit of {settings.max_missing_share:.0%} "
            f"(ANOMALY_VAE_MAX_MISSING_SHARE); {over.size} record(s) in all"
        )
        raise RequestError(422, [*loc, i], msg, "too_much_missing")


def validate_json(model: type[BaseModel], body: bytes) -> Any:
    """Parse and validate a JSON body in one pass (pydantic-core's JSON parser: about 4x
    faster than ``json.loads`` followed by validation on 1000-record bodies). Errors
    become 422s in FastAPI's own shape, ``loc`` starting with ``body``."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        detail = [
            {"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        raise RequestError(422, ["body"], "invalid request", detail=detail) from exc


def _media(header: str | None, allowed: tuple[str, ...]) -> str:
    """The media type of a ``Content-Type`` header (JSON when absent), one of
    ``allowed``, else a 415 naming the header."""
    ctype = (header or "application/json").split(";")[0].strip().lower()
    if ctype not in allowed:
        raise RequestError(
            415,
            ["header", "content-type"],
            f"unsupported content type {ctype!r}; use {' or '.join(allowed)}",
            "unsupported",
        )
    return ctype


def parse_score_request(body: bytes, ctype: str | None = None) -> ScoreRequest:
    """A ``/v1/score`` body (``Content-Type`` header ``ctype``: JSON or absent) as a
    :class:`ScoreRequest`. A plainly valid body is read by orjson and checked field by
    field (:func:`plain_score_request`); anything else goes to pydantic
    (:func:`validate_json`), whose errors name what is wrong."""
    _media(ctype, ("application/json",))
    try:
        fast = plain_score_request(orjson.loads(body))
    except orjson.JSONDecodeError:  # NaN, 1e400, bad escapes: pydantic's reading and errors
        fast = None
    if fast is not None:
        return fast
    req: ScoreRequest = validate_json(ScoreRequest, body)
    return req


_SCORE_FIELDS = frozenset(ScoreRequest.model_fields)


def plain_score_request(doc: Any) -> ScoreRequest | None:
    """``doc`` (parsed JSON) as a :class:`ScoreRequest` when every field plainly has its
    declared type, without pydantic's second pass over each value (on a 1000-record body
    that pass cost more than the parse); None for anything pydantic should judge."""
    if type(doc) is not dict or not _SCORE_FIELDS.issuperset(doc):
        return None
    records, columns = doc.get("records"), doc.get("columns")
    if records is not None and not (
        type(records) is list and all(type(r) is dict for r in records)
    ):
        return None
    if columns is not None and not (
        type(columns) is dict and all(type(v) is list for v in columns.values())
    ):
        return None
    k, top = doc.get("k"), doc.get("contributions", 0)
    if k is not None and not (type(k) is int and k >= 1):  # strict: no bool, no 2.0
        return None
    if not (type(top) is int and top >= 0):
        return None
    if doc.get("orient", "records") not in ("records", "columns"):
        return None
    return ScoreRequest.model_construct(**doc)


def columns_from_request(
    req: ScoreRequest, settings: Settings
) -> tuple[dict[str, Sequence[Any]], int]:
    """The values of a ``/v1/score`` request column by column (``{name: [N values]}``)
    and N, within the record limit: a ``records`` body is checked for the same fields in
    every record and transposed, a ``columns`` body for equal lengths."""
    if (req.records is None) == (req.columns is None):
        raise RequestError(422, ["body"], "give exactly one of 'records' or 'columns'")
    if req.records is not None:
        records = req.records
        check_limits(settings, n=len(records), field="records")
        keys = list(records[0])
        n, width = len(records), len(keys)
        # equal sizes, and every key of record 0 found in each record below: the same fields
        if not all(len(r) == width for r in records):
            _name_the_different_record(records)
        try:
            if width <= 1:
                return {key: [r[key] for r in records] for key in keys}, n
            # C loops: one tuple per record, then one per column
            rows = list(map(operator.itemgetter(*keys), records))
        except KeyError:
            _name_the_different_record(records)
        return dict(zip(keys, zip(*rows, strict=True), strict=True)), n
    assert req.columns is not None
    lengths = {name: len(v) for name, v in req.columns.items()}
    if len(set(lengths.values())) > 1:
        raise RequestError(422, ["body", "columns"], f"columns have different lengths: {lengths}")
    n = next(iter(lengths.values()), 0)
    check_limits(settings, n=n, field="columns")
    return dict(req.columns), n


def _name_the_different_record(records: list[dict[str, Any]]) -> NoReturn:
    """422 naming the first record whose fields differ from record 0's."""
    keys = list(records[0])
    for i, rec in enumerate(records):
        if rec.keys() != records[0].keys():
            missing = sorted(set(keys) - set(rec))
            extra = sorted(set(rec) - set(keys))
            raise RequestError(
                422,
                ["body", "records", i],
                f"record {i} has different fields from record 0 (missing {missing}, extra {extra}); use null for a missing value",
            )
    msg = "no record differs from record 0"  # the caller found one
    raise AssertionError(msg)


def frame_from_request(req: ScoreRequest) -> pd.DataFrame:
    """The records of a ``/v1/score`` request (checked by :func:`columns_from_request`)
    as a frame: the path for values the DataFrame-free encoding hands back."""
    if req.records is not None:
        return pd.DataFrame.from_records(req.records, columns=list(req.records[0]))
    return pd.DataFrame(req.columns)


def parse_invocations(
    body: bytes, header: str | None
) -> tuple[pd.DataFrame, dict[str, Any], tuple[str, ...]]:
    """An ``/invocations`` body (MLflow's scoring protocol: JSON in one of
    :data:`MLFLOW_FORMS`, or CSV; ``header`` its ``Content-Type``) as (frame, params,
    the ``loc`` of its rows)."""
    content_type = _media(header, ("application/json", "text/csv"))
    if content_type == "text/csv":
        try:
            return pd.read_csv(io.BytesIO(body)), {}, ("body",)
        except (ValueError, pd.errors.ParserError) as exc:
            raise RequestError(400, ["body"], f"could not parse CSV: {exc}", "csv_invalid") from exc
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as exc:
        raise RequestError(400, ["body"], f"malformed JSON: {exc}", "json_invalid") from exc
    except RecursionError as exc:
        raise RequestError(400, ["body"], "JSON nested too deeply", "json_invalid") from exc
    if not isinstance(payload, dict):
        raise RequestError(
            400, ["body"], f"expected a JSON object with one of {', '.join(MLFLOW_FORMS)}"
        )
    params = payload.get("params") or {}
    if not isinstance(params, dict):
        raise RequestError(
            422, ["body", "params"], f"params must be an object, got {type(params).__name__}"
        )
    keys = [k for k in MLFLOW_FORMS if k in payload]
    if len(keys) != 1:
        raise RequestError(
            400,
            ["body"],
            f"expected exactly one of {', '.join(MLFLOW_FORMS)}; got {sorted(payload)}",
        )
    data = payload[keys[0]]
    try:
        if keys[0] == "dataframe_split":
            frame = pd.DataFrame(data["data"], columns=data["columns"])
        else:
            frame = pd.DataFrame(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise RequestError(
            400, ["body", keys[0]], f"cannot read {keys[0]} as a table: {exc}"
        ) from exc
    duplicated = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
    if duplicated:
        raise RequestError(422, ["body", keys[0]], f"duplicate column names: {duplicated}")
    return frame, params, ("body", keys[0])


async def read_image_request(
    request: Request, k: int | None, heatmap: bool, max_files: int = 256
) -> tuple[list[tuple[str, bytes]], int | None, bool, tuple[str, ...], tuple[str, ...]]:
    """The uploaded images of a ``/v1/score/images`` request as (label, bytes) pairs,
    with ``k`` and ``heatmap`` (a JSON body's own values win over the query's), where
    ``k`` came from and where the images did (``loc``s, for errors: ``("body",
    "files")`` or ``("body", "images")``); a multipart body holds at most ``max_files``
    files."""
    from starlette.exceptions import HTTPException as StarletteHTTPException

    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    blobs: list[tuple[str, bytes]] = []
    k_loc: tuple[str, ...] = ("query", "k")
    field: tuple[str, ...] = ("body", "files")
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=max_files, max_fields=max_files + 16)
        except StarletteHTTPException as exc:  # no boundary, too many files or fields
            status = 413 if "Too many" in str(exc.detail) else 400
            raise RequestError(
                status, ["body", "files"], f"multipart body: {exc.detail}", "multipart_error"
            ) from exc
        for item in form.getlist("files"):
            if isinstance(item, str):
                raise RequestError(422, ["body", "files"], "files must be uploaded files")
            blobs.append((item.filename or f"files[{len(blobs)}]", await item.read()))
        if not blobs:
            raise RequestError(422, ["body", "files"], "no files uploaded (field name: files)")
    elif ctype == "application/json":
        req: ImageScoreRequest = validate_json(ImageScoreRequest, await request.body())
        field = ("body", "images")
        if req.k is not None:
            k, k_loc = req.k, ("body", "k")
        heatmap = heatmap or req.heatmap
        for i, text in enumerate(req.images):
            try:
                blobs.append((f"images[{i}]", base64.b64decode(text, validate=True)))
            except (binascii.Error, ValueError) as exc:
                raise RequestError(
                    422, ["body", "images", i], f"images[{i}]: not valid base64"
                ) from exc
    else:
        raise RequestError(
            415, ["header", "content-type"],
            f"unsupported content type {ctype!r}; use multipart/form-data or application/json",
            "unsupported",
        )  # fmt: skip
    return blobs, k, heatmap, k_loc, field


def decode_images(
    blobs: list[tuple[str, bytes]],
    shape: tuple[int, int, int],
    field: tuple[str, ...] = ("body", "files"),
) -> np.ndarray:
    """PNG/JPEG bytes to uint8 [N, C, H, W] in the model's channels; a 422 naming the
    image that cannot be read or has the wrong size: ``loc`` is ``field`` and its
    position, the message names its file name or list index."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
    out = np.empty((len(blobs), c, h, w), np.uint8)
    for i, (label, data) in enumerate(blobs):
        try:
            with Image.open(io.BytesIO(data)) as im:
                # the size is in the header: refuse a wrong one before decoding any pixel
                # (a 274-byte PNG can declare 50000x50000 pixels)
                if im.size != (w, h):
                    raise RequestError(
                        422,
                        [*field, i],
                        f"{label}: image is {im.size[0]}x{im.size[1]} pixels; the model takes {w}x{h}",
                        "image_size",
                    )
                arr = np.asarray(im.convert("L" if c == 1 else "RGB"))
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise RequestError(
                422, [*field, i], f"{label}: not a readable PNG or JPEG image", "image_invalid"
            ) from exc
        if arr.shape[:2] != (h, w):
            raise RequestError(
                422,
                [*field, i],
                f"{label}: image is {arr.shape[1]}x{arr.shape[0]} pixels; the model takes {w}x{h}",
                "image_size",
            )
        out[i] = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    return out


def plain(v: Any) -> Any:
    """A value as JSON takes it: numpy scalars as Python ones, NaN as null, and an integer
    beyond 64 bits as the float the model read (orjson writes no wider integer: echoed
    back in an explanation, 2**70 in a numeric column was a 500)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    if type(v) is int and not _INT_MIN <= v <= _UINT_MAX:
        try:
            return float(v)
        except OverflowError:  # past float range too: such a value is refused before
            return str(v)
    return v


_INT_MIN, _UINT_MAX = -(2**63), 2**64 - 1


def plain_ids(values: Sequence[Any]) -> list[Any]:
    """A request's id column as JSON takes it (:func:`plain` on each value), in one
    check when every id is a string or an integer within 64 bits, as they mostly are."""
    kinds = set(map(type, values))
    if kinds <= {str} or (
        kinds <= {int, str} and all(_INT_MIN <= v <= _UINT_MAX for v in values if type(v) is int)
    ):
        return list(values)
    return [plain(v) for v in values]
