"""``GET /v1/drift`` (the live drift state) and ``GET /monitor`` (the built-in page)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import HTMLResponse

from ..deps import Model, SettingsDep
from ..monitor_page import PAGE
from ..schemas import DriftState
from .models import check_admin

router = APIRouter(tags=["drift"])


@router.get("/v1/drift", response_model=DriftState)
async def drift(model: Model, request: Request) -> dict[str, Any]:
    """The loaded version's drift state, as of the latest check: the martingale (log
    value, threshold, alarm; every worker's records together) and, per window (``count``:
    the latest ``drift_window_records`` records; ``time``: those of the last
    ``drift_window_seconds``), each signal's statistic, Holm-adjusted p-value, effect,
    threshold and verdict, and the top features with their contribution shifts. A hot
    swap starts the new version's state from its own reference."""
    monitor = request.app.state.monitor
    state: dict[str, Any] = monitor.published(model)
    return state


@router.post("/v1/drift/reset")
async def reset(
    model: Model,
    request: Request,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """Start a fresh martingale for the loaded version (admin token as ``Authorization:
    Bearer <token>``), e.g. after an alarm was looked into: its ranks' reference goes back
    to the calibration scores and its capital to 1. A new test: its own chance of ever
    alarming on data like the calibration set is again at most ``drift_level`` (over R
    resets, at most R x drift_level). The windows are not reset (they slide on). Taken by
    the worker that runs the checks at its next step."""
    check_admin(settings, authorization, "drift reset")
    request.app.state.monitor.request_reset(model)
    return {"reset": True, "model": {"name": model.name, "version": model.version}}


@router.get("/monitor", response_class=HTMLResponse, include_in_schema=True)
async def monitor_page() -> HTMLResponse:
    """The monitoring page: model and version, records and outlier rate against alpha,
    the score distribution against the reference, the martingale, the window verdicts
    and the top drifted features; refreshes every 5 s (``?refresh=SECONDS``); no
    external assets."""
    return HTMLResponse(PAGE)
