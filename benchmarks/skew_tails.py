"""A probe, not a detector's statistic: ECOD's rule for which tail of a column counts.

The marginal channel (:class:`anomaly_vae.scoring.marginal.MarginalTails`) scores each
cell by the smaller of its two empirical tails. ECOD (Li et al., 2022; PyOD's ``ECOD``)
takes, per column, the tail its skewness points to, and per cell the larger of that
tail's surprise and the mean of both:

    u_l = log(n + 1) - log(le + 1),   u_r = log(n + 1) - log(ge + 1)       (nats)
    u   = max(u_skew, (u_l + u_r) / 2),   u_skew = u_r if skew_j > 0, u_l if skew_j < 0,
                                                   u_l + u_r if skew_j == 0 (as PyOD)

and a row's statistic is the sum over its observed cells. With a fifth of the training
rows outliers in one tail of a column, that column's skewness points at them, and the
normal rows in the other tail are not scored as unusual; the two-sided rule scores both.
benchmarks/contamination.py and benchmarks/marginal_heldout.py report it beside the
built statistic, on the same fits, so a later change of the channel has its evidence.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy.stats import skew

from anomaly_vae.scoring.marginal import MarginalTails

#: The weight of the channel's test in the probe's combination: the default's.
WEIGHT = 0.35


def skew_tail_statistic(tails: MarginalTails, x: np.ndarray) -> np.ndarray:
    """[N] nats for rows ``x`` [N, D] (NaN missing) against ``tails``' sorted values."""
    le, ge, observed = tails.tail_counts(x)
    n = tails.counts
    u_l = np.log(n + 1) - np.log(le + 1)
    u_r = np.log(n + 1) - np.log(ge + 1)
    # each column's skewness sign, from its kept training values (0 for a constant column)
    signs = np.zeros(len(n))
    for j, count in enumerate(n.tolist()):
        if count > 2:
            sk = float(skew(tails.values[:count, j]))
            signs[j] = 0.0 if np.isnan(sk) else np.sign(sk)
    u_skew = -np.sign(signs - 1) * u_l + np.sign(signs + 1) * u_r
    cell = np.maximum(u_skew, (u_l + u_r) / 2)
    out = np.zeros(len(cell))
    for j in range(cell.shape[1]):  # column by column, the order the figures were taken in
        out += np.where(observed[:, j], cell[:, j], 0.0)
    return out


def rebuilt_channel(det: Any, x_fit: np.ndarray, seed: int) -> tuple[MarginalTails, np.ndarray]:
    """The fitted detector ``det``'s marginal tails rebuilt from the rows it was fitted
    on, ``x_fit`` [N, D], with its ``seed``: its own split (``split_rows``) and kept
    training rows, checked against its own channel where it has one. Returns the tails
    and the cells of its calibration rows [n_cal, D]."""
    from anomaly_vae.detector import split_rows

    cal_idx, _, train_idx = split_rows(
        len(x_fit), seed, det.calibration_fraction, det.validation_fraction
    )
    cells = det.marginal_cells(det.preprocessor_.transform_matrix(x_fit))
    tails = MarginalTails.fit(cells[train_idx], seed=seed)
    if det.marginal_ is not None:  # the same kept rows as the detector's own channel
        np.testing.assert_array_equal(det.marginal_.values, tails.values)
    return tails, cells[cal_idx]


def calibrated(statistic: np.ndarray, alpha: float) -> Any:
    """A conformal reference for a statistic (higher: more unusual) on calibration rows
    [n], as the detector builds its channel's, small-sample warning silenced."""
    from anomaly_vae.exceptions import CalibrationWarning
    from anomaly_vae.scoring.calibration import Calibration

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return Calibration.fit(-statistic, alpha=alpha)


def probe_scores(
    det: Any, tails: MarginalTails, cal_cells: np.ndarray, cells: np.ndarray, ll: np.ndarray
) -> dict[str, Any]:
    """For a fitted default detector ``det`` (no text column, no missing cell: ADBench),
    its rebuilt ``tails`` and calibration cells ``cal_cells`` (:func:`rebuilt_channel`),
    and test rows' ``cells`` [M, D] and log p(x) ``ll`` [M]: the skew-tail statistic
    alone and combined with log p(x) as the detector combines its channel (weighted
    Bonferroni at ``WEIGHT``, floored, ties by log p(x)), each [M], higher is more
    anomalous."""
    from benchmarks.tabular import ranked

    ref = calibrated(skew_tail_statistic(tails, cal_cells), det.alpha)
    stat = skew_tail_statistic(tails, cells)
    p_joint = det.calibration_.p_values(ll)
    p = np.minimum(1.0, np.minimum(p_joint / (1 - WEIGHT), ref.p_values(-stat) / WEIGHT))
    floor = max(1 / (1 - WEIGHT), 1 / WEIGHT) / (det.calibration_.n + 1)
    return {"alone": stat, "combined": ranked(np.maximum(p, floor), ll)}


def ecod_inductive(x_fit: np.ndarray, x_te: np.ndarray) -> np.ndarray:
    """[M] ECOD's statistic for rows ``x_te`` [M, D] against the empirical distributions
    of ``x_fit`` [N, D] alone (every row, no cap). PyOD's ``ECOD.decision_function`` is
    transductive: it refits its distributions on the training rows and the rows it
    scores together, so where the scored rows outnumber the training rows they, not the
    training rows, set its tails."""
    x_fit = np.asarray(x_fit, dtype=np.float64)
    tails = MarginalTails(
        values=np.sort(x_fit, axis=0), counts=(~np.isnan(x_fit)).sum(axis=0).astype(np.int64)
    )
    return skew_tail_statistic(tails, x_te)
