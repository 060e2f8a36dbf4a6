"""Thresholds from held-out scores: split-conformal p-values or a contamination rate.

Scores here are log-likelihoods (higher is more normal). For a new score s and n
reference scores r_i from rows the model never trained on,

    p(s) = (1 + #{i : r_i <= s}) / (n + 1),

and flagging p <= alpha keeps the false-positive rate on exchangeable normal data at or
below alpha, whatever the model. The threshold that implements it is the
(floor(alpha (n + 1)))-th smallest reference score: flag when s is strictly below it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from anomaly_vae.exceptions import CalibrationWarning

#: Reference scores kept in the bundle at most; larger sets keep evenly spaced order
#: statistics, which changes a p-value by at most 1 / MAX_REFERENCE.
MAX_REFERENCE = 20_000


@dataclass
class Calibration:
    """The fitted threshold state (travels in ``calibration.json``).

    Attributes:
        reference: sorted reference log-likelihoods [n_kept] (nats).
        n: how many reference rows there were (before any thinning).
        method: ``conformal`` (threshold at false-positive rate ``alpha``) or
            ``contamination`` (threshold at the ``contamination`` quantile).
        alpha, contamination: the asked rates.
        threshold: records with log-likelihood strictly below it are outliers.
    """

    reference: np.ndarray
    n: int
    method: Literal["conformal", "contamination"]
    alpha: float | None
    contamination: float | None
    threshold: float

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        scores: np.ndarray,
        *,
        alpha: float | None = 0.05,
        contamination: float | None = None,
    ) -> Calibration:
        """Fit on reference log-likelihoods [n] (finite).

        Exactly one of ``alpha`` (target false-positive rate, conformal) and
        ``contamination`` (expected outlier fraction in ``scores``) sets the threshold.
        Warns with :class:`CalibrationWarning` and falls back when the reference is too
        small for ``alpha`` or its scores are all identical.
        """
        scores = np.asarray(scores, dtype=np.float64).ravel()
        if scores.size == 0:
            msg = "calibration needs at least one reference score, got 0"
            raise ValueError(msg)
        if not np.all(np.isfinite(scores)):
            bad = np.flatnonzero(~np.isfinite(scores))[:5].tolist()
            msg = f"calibration scores must be finite; non-finite at positions {bad}"
            raise ValueError(msg)
        if (alpha is None) == (contamination is None):
            msg = "give exactly one of alpha (conformal) or contamination, not both or neither"
            raise ValueError(msg)
        if alpha is not None and not 0.0 < alpha < 1.0:
            msg = f"alpha must be in (0, 1), got {alpha!r}"
            raise ValueError(msg)
        if contamination is not None and not 0.0 < contamination < 0.5:
            msg = f"contamination must be in (0, 0.5), got {contamination!r}"
            raise ValueError(msg)
        ref = np.sort(scores)
        n = ref.size
        if n > 1 and ref[0] == ref[-1]:
            warnings.warn(
                f"all {n} calibration scores are identical ({ref[0]:.6g}); p-values cannot "
                "separate records, every record at or above it gets p = 1",
                CalibrationWarning,
                stacklevel=2,
            )
        if alpha is not None:
            m = math.floor(alpha * (n + 1)) - 1
            if m < 0:
                need = math.ceil(1.0 / alpha) - 1
                warnings.warn(
                    f"calibration set has {n} rows, too few for alpha={alpha} (needs at "
                    f"least {need}); falling back to flagging only records less likely than "
                    f"every reference row, a false-positive rate of at most {1 / (n + 1):.3g}",
                    CalibrationWarning,
                    stacklevel=2,
                )
                m = 0
            threshold = float(ref[m])
            method: Literal["conformal", "contamination"] = "conformal"
        else:
            assert contamination is not None
            threshold = float(np.quantile(ref, contamination, method="lower"))
            method = "contamination"
        kept = ref
        if n > MAX_REFERENCE:
            kept = ref[np.linspace(0, n - 1, MAX_REFERENCE).round().astype(np.int64)]
        return cls(kept, n, method, alpha, contamination, threshold)

    # ------------------------------------------------------------------ use
    def p_values(self, scores: np.ndarray) -> np.ndarray:
        """Conformal p-values of log-likelihoods [N] -> [N] in (0, 1]; NaN stays NaN."""
        scores = np.asarray(scores, dtype=np.float64)
        m = self.reference.size
        count = np.searchsorted(self.reference, scores, side="right") * (self.n / m)
        p = (1.0 + count) / (self.n + 1.0)
        return np.where(np.isnan(scores), np.nan, p)

    def smoothed_p_values(self, scores: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Smoothed conformal p-values [N] of log-likelihoods [N]: (#{ref < s} +
        u (#{ref == s} + 1)) / (n + 1), with ``u`` [N] uniform on (0, 1), so a record
        exchangeable with the calibration set gets a p-value uniform on (0, 1) (ties
        included), as a test martingale needs (:mod:`anomaly_vae.drift.martingale`).
        Counts on a kept subsample are scaled to n as in :meth:`p_values`. NaN stays NaN."""
        scores = np.asarray(scores, dtype=np.float64)
        scale = self.n / self.reference.size
        below = np.searchsorted(self.reference, scores, side="left")
        ties = np.searchsorted(self.reference, scores, side="right") - below
        p = (below * scale + np.asarray(u) * (ties * scale + 1.0)) / (self.n + 1.0)
        return np.where(np.isnan(scores), np.nan, p)

    def is_outlier(self, scores: np.ndarray) -> np.ndarray:
        """[N] bool: log-likelihood strictly below the threshold."""
        return np.asarray(scores, dtype=np.float64) < self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "alpha": self.alpha,
            "contamination": self.contamination,
            "threshold": self.threshold,
            "n": self.n,
            "reference": [float(v) for v in self.reference],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(
            reference=np.asarray(d["reference"], dtype=np.float64),
            n=int(d["n"]),
            method=d["method"],
            alpha=d.get("alpha"),
            contamination=d.get("contamination"),
            threshold=float(d["threshold"]),
        )

    def summary(self) -> dict[str, Any]:
        """The figures an operator wants: n, method, rate, threshold, reference quantiles."""
        q = np.quantile(self.reference, [0.01, 0.05, 0.5, 0.95]).tolist()
        return {
            "method": self.method,
            "alpha": self.alpha,
            "contamination": self.contamination,
            "threshold": self.threshold,
            "n": self.n,
            "reference_quantiles": dict(zip(["q01", "q05", "q50", "q95"], q, strict=True)),
        }


def bonferroni(p_values: np.ndarray) -> np.ndarray:
    """One p-value per record from C p-values each, [N, C] -> [N]: ``min(1, C min_c p_c)``.

    Valid whatever the dependence between the C tests: if each p_c is a valid p-value
    for normal records, P(combined <= a) <= sum_c P(p_c <= a / C) <= a. NaN in a row
    gives NaN."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 2:
        msg = f"bonferroni takes p-values of shape [N, C], got shape {p.shape}"
        raise ValueError(msg)
    return np.minimum(1.0, p.shape[1] * p.min(axis=1))
