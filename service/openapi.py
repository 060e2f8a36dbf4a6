"""The OpenAPI document, describing the loaded model: clients and fuzzers can build valid
requests from it. A table model's columns become the record schema of ``/v1/score`` and
``/invocations`` (numeric columns numbers, booleans booleans, categorical columns
strings with their known levels as examples, discrete columns integers), the limits
become the schema's bounds, and every route lists the error answers it can give."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from anomaly_vae.detector import TabularDetector
from anomaly_vae.image_detector import ImageDetector

from .model_store import ModelStore
from .settings import Settings

_ERROR = {
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["loc", "msg", "type"],
                "properties": {
                    "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        }
    },
}
_HTTP_ERROR = {"type": "object", "required": ["detail"], "properties": {"detail": {}}}
_ERRORS = {
    "400": "malformed body (not JSON, nested too deep, a multipart body without a boundary)",
    "409": "the loaded model is of the other kind (tables vs images)",
    "413": "too large: records, body bytes, records x k, or files",
    "415": "unsupported content type",
    "422": "invalid field, column or value; loc names it",
    "503": "no model loaded yet, or the scoring queue is full (Retry-After)",
}
_SCORING = ("/v1/score", "/invocations", "/v1/score/images")
_SCORING_PATH = "scoring"  # the key the scoring routes share in the table of errors
_RELOAD = {
    "401": "missing or wrong admin token",
    "403": "no admin token configured",
    "409": "the load failed; the old model serves",
}
_DRIFT = {"503": "no model loaded yet (Retry-After)"}
_DRIFT_RESET = {**_DRIFT, "401": _RELOAD["401"], "403": _RELOAD["403"]}


def _column_schema(spec: Any) -> dict[str, Any]:
    if spec.kind == "numeric":
        return {"type": "number"}
    if spec.kind == "boolean":
        return {"type": "boolean"}
    if spec.discrete:
        return {"type": "integer", "examples": [int(v) for v in spec.categories[:5]]}
    return {"type": "string", "examples": list(spec.categories[:5])}


def record_schema(det: TabularDetector) -> dict[str, Any]:
    """One record of the loaded table model: every column required; extra fields are
    refused by /v1/score (and ignored by /invocations)."""
    props = {c.name: _column_schema(c) for c in det.schema_.columns}
    sid = det.schema_.id_column
    if sid is not None:
        props[sid] = {"type": ["string", "integer"]}
    return {
        "type": "object",
        "properties": props,
        "required": [c.name for c in det.schema_.columns],
        "additionalProperties": False,
    }


def _describe_tables(doc: dict[str, Any], det: TabularDetector, settings: Settings) -> None:
    record = record_schema(det)
    doc.setdefault("components", {}).setdefault("schemas", {})["Record"] = record
    ref = {"$ref": "#/components/schemas/Record"}
    rows = {"type": "array", "items": ref, "minItems": 1, "maxItems": settings.max_records}
    k = {"type": "integer", "minimum": 1, "maximum": settings.max_k}
    score_body = {
        "type": "object",
        "additionalProperties": False,
        "required": ["records"],
        "properties": {
            "records": rows,
            "k": k,
            "contributions": {
                "type": "integer",
                "minimum": 0,
                "maximum": settings.max_contributions,
            },
        },
        "description": "records of the loaded model's columns; the columns form "
        '({"columns": {"col": [...]}}) is accepted too',
    }
    doc["paths"]["/v1/score"]["post"]["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": score_body}},
    }
    inv = doc["paths"]["/invocations"]["post"]
    content = inv.setdefault("requestBody", {"required": True}).setdefault("content", {})
    example = content.get("application/json", {}).get("example")
    content["application/json"] = {
        "schema": {
            "type": "object",
            "additionalProperties": False,
            "required": ["dataframe_records"],
            "properties": {
                "dataframe_records": {**rows, "minItems": 0},
                "params": {"type": "object", "additionalProperties": False, "properties": {"k": k}},
            },
            "description": "MLflow's scoring protocol; dataframe_split, instances, inputs "
            "and CSV bodies are accepted too",
        },
        **({"example": example} if example is not None else {}),
    }


def _png_base64(shape: tuple[int, int, int]) -> str:
    """A mid-grey PNG of the model's (C, H, W), base64: a request example that scores."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    c, h, w = shape
    pixels = np.full((h, w) if c == 1 else (h, w, 3), 128, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _describe_images(doc: dict[str, Any], det: ImageDetector, settings: Settings) -> None:
    """The image route's two bodies for the loaded image model, with an example (a
    mid-grey image of its size) that scores."""
    k = {"type": "integer", "minimum": 1, "maximum": settings.max_k}
    op = doc["paths"]["/v1/score/images"]["post"]
    op["requestBody"] = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["images"],
                    "properties": {
                        "images": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": settings.max_records,
                            "items": {"type": "string", "contentEncoding": "base64"},
                            "description": f"PNG or JPEG files of {det.shape_[2]}x"
                            f"{det.shape_[1]} pixels, {det.shape_[0]} channel(s), base64",
                        },
                        "k": k,
                        "heatmap": {"type": "boolean"},
                    },
                },
                "example": {"images": [_png_base64(det.shape_)], "k": min(8, settings.max_k)},
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "maxItems": settings.max_files,
                            "items": {"type": "string", "format": "binary"},
                        }
                    },
                }
            },
        },
    }


def install_openapi(app: FastAPI, store: ModelStore, settings: Settings) -> None:
    """Make ``/openapi.json`` describe the model loaded when it is asked for."""

    def openapi() -> dict[str, Any]:
        doc = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        model = store.current
        if model is not None and isinstance(model.detector, TabularDetector):
            _describe_tables(doc, model.detector, settings)
        elif model is not None and isinstance(model.detector, ImageDetector):
            _describe_images(doc, model.detector, settings)
        for path, item in doc["paths"].items():
            for op in item.values():
                responses = op.setdefault("responses", {})
                errors = {
                    _SCORING_PATH: (_ERRORS, _ERROR),
                    "/v1/models/reload": (_RELOAD, _HTTP_ERROR),
                    "/v1/drift": (_DRIFT, _HTTP_ERROR),
                    "/v1/drift/reset": (_DRIFT_RESET, _HTTP_ERROR),
                }
                listed, body = errors.get(_SCORING_PATH if path in _SCORING else path, ({}, {}))
                for code, what in listed.items():
                    responses.setdefault(
                        code,
                        {"description": what, "content": {"application/json": {"schema": body}}},
                    )
                if path == "/readyz":
                    responses.setdefault("503", {"description": "not ready, with the reason"})
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
