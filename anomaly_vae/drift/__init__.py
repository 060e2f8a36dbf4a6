"""Drift of what a detector sees against its own reference: the scores, the latent codes
and the features (tables). See :mod:`anomaly_vae.drift.check` for the tests and the
alarm rule, :mod:`anomaly_vae.drift.reference` for what the bundle keeps and
:mod:`anomaly_vae.drift.report` for the HTML report and its JSON twin.

    from anomaly_vae.drift import check_drift
    report = check_drift(detector, window_frame_or_path)   # or image arrays
    report.verdict, report.fired, report.drifted_features()
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from anomaly_vae.drift.check import (
    MIN_ROWS,
    DriftReport,
    Margins,
    WindowStats,
    evaluate,
    require_reference,
)

__all__ = ["DriftReport", "Margins", "WindowStats", "check_drift", "window_stats"]

#: Rows scored at once while a window streams through (memory stays flat beyond it).
BATCH_ROWS = 65_536


def _batches(detector: Any, window: Any, batch_rows: int) -> Iterator[Any]:
    """The window as batches: frames of at most ``batch_rows`` rows for a table (a
    DataFrame, an array, a CSV/Parquet path or several, or an iterable of frames),
    arrays of images for an image model."""
    import numpy as np
    import pandas as pd

    from anomaly_vae.data import io

    if detector.kind == "image":
        from anomaly_vae.data.images import load_images

        images = load_images(window)
        for start in range(0, len(images), batch_rows):
            yield images[start : start + batch_rows]
        return
    if isinstance(window, str | Path):
        window = [window]
    if isinstance(window, list) and window and all(isinstance(p, str | Path) for p in window):
        numeric = {c.name for c in detector.schema_.columns if c.kind == "numeric" or c.discrete}
        for path in window:
            p = Path(path)
            if not p.exists():
                msg = f"no such file: {str(p)!r}"
                raise FileNotFoundError(msg)
            yield from io.iter_frames(p, batch_rows, numeric)
        return
    if isinstance(window, pd.DataFrame | np.ndarray):
        for start in range(0, len(window), batch_rows):
            yield window[start : start + batch_rows]
        return
    if isinstance(window, Iterable):
        yield from window
        return
    msg = f"a drift window is a DataFrame, an array, a CSV/Parquet path or frames, got {type(window).__name__}"
    raise TypeError(msg)


def window_stats(
    detector: Any,
    window: Any,
    *,
    k: int | None = None,
    batch_rows: int = BATCH_ROWS,
    allow_extra: bool = False,
    seed: int = 0,
    progress: Any = None,
) -> WindowStats:
    """Stream ``window`` through ``detector`` into mergeable :class:`WindowStats`."""
    reference = require_reference(detector)
    stats = WindowStats(reference, seed=seed)
    image = detector.kind == "image"
    for batch in _batches(detector, window, batch_rows):
        if len(batch) == 0:
            continue
        out = (
            detector.drift_outputs(batch, k=k)
            if image
            else detector.drift_outputs(batch, k=k, allow_extra=allow_extra)
        )
        stats.update(
            out["normality"],
            out["flags"],
            out["mu"],
            out["kl"],
            keys=out.get("keys"),
            arrays=out.get("arrays"),
            contributions=out.get("contributions"),
            feature_order=out.get("feature_order"),
        )
        if progress is not None:
            progress(len(batch))
    return stats


def check_drift(
    detector: Any,
    window: Any,
    *,
    level: float = 0.05,
    margins: Margins | None = None,
    min_rows: int = MIN_ROWS,
    k: int | None = None,
    batch_rows: int = BATCH_ROWS,
    allow_extra: bool = False,
    seed: int = 0,
) -> DriftReport:
    """Check a window of records (a table or images) against ``detector``'s reference.

    Args:
        detector: a fitted ``TabularDetector`` or ``ImageDetector`` with a drift reference.
        window: the records (see :func:`_batches`); streamed, so a file of any size fits.
        level: the family-wise false-alarm level of the verdict (Holm over every test).
        margins: the practical margins an alarm's effect must reach (:class:`Margins`).
        min_rows: a window smaller than this that raises no alarm is ``too_few_rows``.
        k: importance samples (default: the detector's own, as calibrated).
        batch_rows: records scored at once.
        allow_extra: ignore columns the model does not know instead of refusing them.
        seed: seed of the latent sample and the MMD permutations.

    Raises:
        BundleError: the detector has no drift reference (the message names the fix).
        SchemaError: the window's columns do not fit the model (named).
        ValueError: the window is empty.
    """
    stats = window_stats(
        detector, window, k=k, batch_rows=batch_rows, allow_extra=allow_extra, seed=seed
    )
    report = evaluate(stats, detector.calibration_, level=level, margins=margins, min_rows=min_rows)
    report.model = {"kind": detector.kind, "k": k or detector.sampler_.k}
    return report
