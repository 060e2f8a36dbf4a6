"""``GET /v1/models`` and ``POST /v1/models/reload``: what is served, and hot reload."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException
from starlette.concurrency import run_in_threadpool

from ..compute import one_thread
from ..deps import SettingsDep, StoreDep
from ..errors import RequestError

router = APIRouter(tags=["models"])


def check_admin(settings: Any, authorization: str | None, action: str) -> None:
    """403 when no admin token is configured, 401 when the request's is missing or wrong
    (both with ``loc`` ``header.authorization``)."""
    if not settings.admin_token:
        raise RequestError(
            403, ["header", "authorization"],
            f"{action} is disabled: no ANOMALY_VAE_ADMIN_TOKEN is configured", "forbidden",
        )  # fmt: skip
    # bytes: compare_digest refuses non-ASCII text, and a header may hold any byte
    given = (authorization or "").encode("utf-8", "surrogateescape")
    if not secrets.compare_digest(given, f"Bearer {settings.admin_token}".encode()):
        raise RequestError(
            401, ["header", "authorization"],
            "missing or wrong admin token (Authorization: Bearer <token>)", "unauthorized",
        )  # fmt: skip


@router.get("/v1/models")
async def models(settings: SettingsDep, store: StoreDep) -> dict[str, Any]:
    """What is loaded: name, version, alias, when, columns, calibration summary; and
    ``last_error`` / ``failing_since`` while the latest load attempt failed."""
    model = store.current
    return {
        "loaded": model.describe() if model else None,
        "last_error": store.last_error,
        "failing_since": store.failing_since,
        "target": {
            "name": settings.model_name,
            "alias": settings.model_alias,
            # the directory's name only: responses do not show the server's paths
            "bundle": settings.bundle_path.name if settings.bundle_path else None,
        },
        "poll_seconds": settings.poll_seconds,
    }


@router.post("/v1/models/reload")
async def reload(
    settings: SettingsDep,
    store: StoreDep,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """Load the version the alias points at now (admin token as ``Authorization:
    Bearer <token>``). A failed load keeps the current model and answers 409."""
    check_admin(settings, authorization, "reload")
    try:
        changed, model = await run_in_threadpool(one_thread(store.reload))
    except Exception as exc:
        current = store.current
        raise HTTPException(
            409,
            detail={
                "msg": f"load failed, still serving version {current.version if current else None}",
                "error": store.last_error,
            },
        ) from exc
    return {"changed": changed, "loaded": model.describe() if model else None}
