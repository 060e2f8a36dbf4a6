"""Each column on its own: how far into its own tail each cell of a record lies.

A statistic beside log p(x), not a likelihood. For a column j with n_j training values
and a cell x, with ``le = #{values <= x}`` and ``ge = #{values >= x}``, the cell's tail
surprise is

    t_j(x) = log(n_j + 1) - log(min(le, ge) + 1)      (nats, >= 0),

minus the log of the smaller of its two empirical tail probabilities (each counted with
the cell itself, as a conformal rank is, so it is finite beyond the training range). A
record's statistic is the sum over its observed cells: ECOD's (Li et al., 2022,
"ECOD: Unsupervised Outlier Detection Using Empirical Cumulative Distribution
Functions"), whose per-cell score is the larger of the two tails' -log. Missing cells
add nothing. The statistic only ranks; a p-value comes from calibrating it on held-out
rows (:class:`~anomaly_vae.scoring.calibration.Calibration`).

The empirical distributions are kept as sorted training values: every value up to
``MAX_ROWS`` rows, a seeded random subset of rows beyond that (and fewer rows for wide
tables, at most ``MAX_CELLS`` cells), so the state stays small in a bundle. A subset
changes a tail probability by the sampling error of ``MAX_ROWS`` rows, and the
statistic's calibration absorbs it: the reference rows are judged by the same subset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Rows of training values kept per column at most.
MAX_ROWS = 4096
#: Cells kept at most (rows x columns): a 784-column table keeps 1,337 rows.
MAX_CELLS = 2**20
#: Rows kept at least, whatever the width.
MIN_ROWS = 256


@dataclass
class MarginalTails:
    """Each column's sorted training values.

    Attributes:
        values: [M, D] float64, column j's observed kept values sorted ascending in its
            first ``counts[j]`` entries, NaN after them.
        counts: [D] int64, the observed kept values per column.
    """

    values: np.ndarray
    counts: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, *, seed: int = 0) -> MarginalTails:
        """From training rows ``x`` [N, D] (NaN: missing; any monotone encoding of a
        column gives the same statistic)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            msg = f"marginal tails take rows of shape [N, D], got shape {x.shape}"
            raise ValueError(msg)
        keep = min(len(x), MAX_ROWS, max(MIN_ROWS, MAX_CELLS // max(1, x.shape[1])))
        if keep < len(x):
            rows = np.sort(np.random.default_rng(seed).choice(len(x), keep, replace=False))
            x = x[rows]
        return cls(values=np.sort(x, axis=0), counts=(~np.isnan(x)).sum(axis=0).astype(np.int64))

    @property
    def n_columns(self) -> int:
        return int(self.values.shape[1])

    def tail_counts(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For rows ``x`` [N, D] (NaN: missing): ``le`` and ``ge`` [N, D] int64, each
        cell's kept training values at or below it and at or above it, and ``observed``
        [N, D] bool, whether the cell counts (present, in a column with training values;
        ``le`` and ``ge`` are 0 where it does not)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_columns:
            msg = f"expected rows of shape [N, {self.n_columns}], got shape {x.shape}"
            raise ValueError(msg)
        le = np.zeros(x.shape, dtype=np.int64)
        ge = np.zeros(x.shape, dtype=np.int64)
        observed = np.zeros(x.shape, dtype=bool)
        for j, n in enumerate(self.counts.tolist()):
            if n == 0:
                continue
            ref = self.values[:n, j]
            col = x[:, j]
            obs = ~np.isnan(col)
            le[obs, j] = np.searchsorted(ref, col[obs], side="right")
            ge[obs, j] = n - np.searchsorted(ref, col[obs], side="left")
            observed[:, j] = obs
        return le, ge, observed

    def cell_surprise(self, x: np.ndarray) -> np.ndarray:
        """[N, D] nats: each observed cell's tail surprise t_j(x) (0 where missing, and
        in a column with no training value)."""
        le, ge, observed = self.tail_counts(x)
        surprise = np.log(self.counts + 1) - np.log(np.minimum(le, ge) + 1)
        return np.where(observed, surprise, 0.0)

    def statistic(self, x: np.ndarray) -> np.ndarray:
        """[N] nats: the sum of a row's cell surprises; higher is more unusual."""
        return self.cell_surprise(x).sum(axis=1)

    def to_dict(self) -> dict[str, np.ndarray]:
        """The arrays, for a bundle's weights file."""
        return {"values": self.values, "counts": self.counts}

    @classmethod
    def from_dict(cls, d: dict[str, np.ndarray]) -> MarginalTails:
        values = np.asarray(d["values"], dtype=np.float64)
        counts = np.asarray(d["counts"], dtype=np.int64)
        if values.ndim != 2 or counts.shape != (values.shape[1],):
            msg = f"marginal tails: values {values.shape} and counts {counts.shape} disagree"
            raise ValueError(msg)
        return cls(values=values, counts=counts)
