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

    def cell_surprise(self, x: np.ndarray) -> np.ndarray:
        """[N, D] nats: each observed cell's tail surprise t_j(x) (0 where missing, and
        in a column with no training value)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_columns:
            msg = f"expected rows of shape [N, {self.n_columns}], got shape {x.shape}"
            raise ValueError(msg)
        out = np.zeros(x.shape)
        for j, n in enumerate(self.counts.tolist()):
            if n == 0:
                continue
            ref = self.values[:n, j]
            col = x[:, j]
            obs = ~np.isnan(col)
            le = np.searchsorted(ref, col[obs], side="right")
            ge = n - np.searchsorted(ref, col[obs], side="left")
            out[obs, j] = np.log(n + 1) - np.log(np.minimum(le, ge) + 1)
        return out

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
