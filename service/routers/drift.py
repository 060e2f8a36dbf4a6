"""``GET /v1/drift`` (the live drift state) and ``GET /monitor`` (the built-in page)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from ..deps import Model
from ..monitor_page import PAGE
from ..schemas import DriftState

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


@router.get("/monitor", response_class=HTMLResponse, include_in_schema=True)
async def monitor_page() -> HTMLResponse:
    """The monitoring page: model and version, records and outlier rate against alpha,
    the score distribution against the reference, the martingale, the window verdicts
    and the top drifted features; refreshes every 5 s (``?refresh=SECONDS``); no
    external assets."""
    return HTMLResponse(PAGE)
