"""The service's error shape: every 4xx is JSON ``{"detail": [{"loc", "msg", "type"}]}``
with ``loc`` naming the field, as FastAPI's own validation errors are."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from anomaly_vae.exceptions import AnomalyVAEError

from .batching import QueueFull


def error_response(status: int, field: list[str | int], msg: str, kind: str) -> JSONResponse:
    """A JSON error naming ``field`` (FastAPI's ``loc``)."""
    return JSONResponse(
        status_code=status, content={"detail": [{"loc": field, "msg": msg, "type": kind}]}
    )


class RequestError(Exception):
    """A request problem found after parsing: answers ``status`` naming ``field``."""

    def __init__(
        self,
        status: int,
        field: list[str | int],
        msg: str,
        kind: str = "value_error",
        detail: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(msg)
        self.status, self.field, self.msg, self.kind = status, field, msg, kind
        self.detail = detail  # several errors in FastAPI's shape, when validation found them


def install_handlers(app: FastAPI) -> None:
    """Answer request errors, the library's input errors and a full queue as JSON 4xx/503."""

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        if exc.detail is not None:
            return JSONResponse(status_code=exc.status, content={"detail": exc.detail})
        return error_response(exc.status, exc.field, exc.msg, exc.kind)

    @app.exception_handler(AnomalyVAEError)
    async def _schema_error(request: Request, exc: AnomalyVAEError) -> JSONResponse:
        return error_response(422, ["body"], str(exc), "schema_error")

    @app.exception_handler(QueueFull)
    async def _queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        resp = error_response(503, [], "the scoring queue is full; retry shortly", "overloaded")
        resp.headers["Retry-After"] = "1"
        return resp
