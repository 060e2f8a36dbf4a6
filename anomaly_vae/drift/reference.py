"""The drift reference a detector carries in its bundle (``reference.json``).

Written at ``fit`` (or recomputed by :func:`rebuild`), from rows the model never trained
on where the model's outputs are concerned, and from the training rows for the raw
features:

- ``scores``: the calibration scores themselves live in ``calibration.json``; here, the
  bin cuts at their ventiles and their standard deviation, the unit of the score
  effect;
- ``features`` (tables): per numeric column, cuts at the training rows' quantiles
  (standardized units) and the exact count of training rows in each bin, the same at
  the percentiles' values and just below them (``fine``, for the binned KS test, see
  :func:`atom_cuts`), the missing count, and the column's
  standard deviation; per categorical or boolean column, the
  count of every level, the unknown slot and missing;
- ``latent``: a capped, seeded sample of the calibration rows' posterior means mu(x), the
  kernel bandwidth for the MMD test, and their KL terms binned like the scores;
- ``contributions`` (tables): the same calibration rows' per-feature log-likelihood
  terms (nats), for the shift of what the model finds unusual, column by column.

Images get the score, latent and KL parts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from anomaly_vae.drift.stats import median_bandwidth

#: Format of the reference written by this library; older bundles have none (or format 1,
#: a summary nothing reads) and must be recomputed.
REFERENCE_FORMAT = 2
#: Calibration rows kept for the latent and contribution samples.
MAX_SAMPLE = 1000
#: Quantile bins of a numeric column and of the scores.
BINS = 20
#: Finer quantile bins of a numeric column for its binned KS test: a location shift
#: shows first in the CDF's middle, where 20 chi-square bins spread it thin.
FINE_BINS = 100
#: Decimals the reference keeps of latent means and contributions: a window's values are
#: rounded the same way before they are binned (drift.check), so a record equal to a
#: reference record falls in the same bin, bit for bit.
REFERENCE_DECIMALS = 6


def quantile_cuts(values: np.ndarray, bins: int = BINS) -> np.ndarray:
    """The inner bin edges ("cuts") at the ``bins``-quantiles of ``values``, each moved
    halfway to the next larger distinct value, with repeats kept once; the bins are
    (-inf, c_1], (c_1, c_2], ..., (c_{B-1}, inf).

    A cut never sits on a value: computed values (contributions, scores) that tie in the
    reference can differ from a window's in the last bits (a record's bits may depend on
    the batch it was scored in), and a cut on the tied value would send them to the other
    side of it."""
    v = np.unique(np.asarray(values, dtype=np.float64))
    if v.size < 2:
        return np.zeros(0)
    q = np.unique(
        np.quantile(np.asarray(values, dtype=np.float64), np.linspace(0, 1, bins + 1)[1:-1])
    )
    nxt = np.searchsorted(v, q, side="right")
    keep = nxt < v.size
    return np.unique((q[keep] + v[nxt[keep]]) / 2.0)


def atom_cuts(values: np.ndarray, bins: int = FINE_BINS) -> np.ndarray:
    """Cuts for a location test on raw feature values: at each ``bins``-quantile of
    ``values``, taken as a value that occurs (numpy's ``lower`` method), and just below
    it, so that value sits alone in its bin (``nextafter(q, -inf)``, ``q``]; repeats
    kept once.

    Unlike :func:`quantile_cuts`, a cut sits on a value: for a discrete column (atoms
    with gaps between them) a shift smaller than half a gap kept every value in its
    midpoint bin and was invisible, where the empirical CDF taken at the atoms, as the
    KS test takes it, sees the whole atom move. Safe for encoded features only: the same
    raw value gives the same bits in the reference and in any window."""
    v = np.asarray(values, dtype=np.float64)
    if np.unique(v).size < 2:
        return np.zeros(0)
    q = np.unique(np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1], method="lower"))
    return np.unique(np.concatenate([np.nextafter(q, -np.inf), q]))


def bin_counts(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Counts of ``values`` in the bins of ``cuts`` (:func:`quantile_cuts`), [len(cuts) + 1]."""
    cuts = np.asarray(cuts, dtype=np.float64)
    idx = np.searchsorted(cuts, np.asarray(values, dtype=np.float64), side="left")
    return np.bincount(idx, minlength=len(cuts) + 1).astype(np.int64)


def sorted_columns(values: np.ndarray, seen: np.ndarray | None = None) -> np.ndarray:
    """Each column of ``values`` [N, C] sorted, as rows [C, N], unseen entries (``seen``
    [N, C] False) as NaN, which sorts after every number: the input of
    :func:`sorted_bin_counts`."""
    v = np.asarray(values, dtype=np.float64)
    if seen is not None:
        v = np.where(seen, v, np.nan)
    return np.sort(v.T, axis=1)


def sorted_bin_counts(row: np.ndarray, n: int, cuts: np.ndarray) -> np.ndarray:
    """:func:`bin_counts` of the first ``n`` entries of a sorted ``row`` (what follows
    them is NaN), bin for bin: bin k holds the values in (cuts[k-1], cuts[k]], so its
    count is #(v <= cuts[k]) - #(v <= cuts[k-1]), one search per cut instead of one per
    value (a batch's columns are sorted once; searching each value was most of a wide
    table's window statistics). A seen NaN lands in the last bin, as it does there."""
    le = row.searchsorted(cuts, side="right")
    # np.diff(le, prepend=0, append=n) in two array operations: its concatenation and
    # broadcasting cost 12 of this function's 15 us, and a request calls it once per column
    edges = np.empty(le.size + 2, np.int64)
    edges[0], edges[1:-1], edges[-1] = 0, le, n
    return edges[1:] - edges[:-1]


def sample_rows(n: int, cap: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``cap`` of ``n`` rows, seeded."""
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


def _binned(values: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    cuts = quantile_cuts(values, bins)
    return {
        "cuts": cuts.tolist(),
        "counts": bin_counts(values, cuts).tolist(),
        "std": float(np.std(values)) if values.size else 0.0,
        "n": int(values.size),
    }


def project(values: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """values [N, L] @ directions [L, P] as a fixed sequence of elementwise products and
    sums (no BLAS: its blocking depends on N, and the reference's rows and a window's
    batch must give the same bits for the same record)."""
    out = np.zeros((len(values), directions.shape[1]))
    for j in range(directions.shape[0]):
        out += values[:, j : j + 1] * directions[j]
    return out


def projections(mu: np.ndarray) -> dict[str, Any]:
    """The latent test's reference: latent means [N, L] (rounded to
    ``REFERENCE_DECIMALS`` first, as a window's are) projected on ``directions`` [L, P]
    (the L axes, then L seeded random unit directions), each projection's ventile
    ``cuts`` [P, BINS - 1] (padded with +inf), its ``counts`` [P, BINS] and ``std`` [P].
    JSON-able."""
    mu = np.asarray(mu, dtype=np.float64).round(REFERENCE_DECIMALS)
    dim = mu.shape[1] if mu.ndim == 2 else 0
    rand = np.random.default_rng(20_261_202).standard_normal((dim, dim))
    rand /= np.maximum(np.linalg.norm(rand, axis=0, keepdims=True), 1e-12)
    directions = np.hstack([np.eye(dim), rand])
    proj = project(mu, directions)
    cuts = np.full((directions.shape[1], BINS - 1), np.inf)
    counts = np.zeros((directions.shape[1], BINS), np.int64)
    for j in range(directions.shape[1]):
        c = quantile_cuts(proj[:, j])
        cuts[j, : len(c)] = c
        counts[j] = bin_counts(proj[:, j], cuts[j])
    # +inf is not JSON: padding is written as null and read back as inf
    return {
        "directions": directions.tolist(),
        "cuts": [[v if np.isfinite(v) else None for v in row] for row in cuts.tolist()],
        "counts": counts.tolist(),
        "std": proj.std(0).tolist() if len(proj) else [0.0] * directions.shape[1],
    }


def model_part(normality: np.ndarray, mu: np.ndarray, kl: np.ndarray, seed: int) -> dict[str, Any]:
    """The parts every kind has: scores (the calibrated normality [N]), latent means
    [N, L] and KL terms [N] of the calibration records."""
    pick = sample_rows(len(mu), MAX_SAMPLE, seed)
    sample = np.asarray(mu, dtype=np.float64)[pick]
    return {
        "format": REFERENCE_FORMAT,
        "scores": _binned(np.asarray(normality, dtype=np.float64)),
        "latent": {
            "sample": sample.round(REFERENCE_DECIMALS).tolist(),
            # every calibration row, not the sample: the test's reference noise shrinks
            # with it (1,000 rows gave effects near the 0.05 margin by chance alone)
            "projections": projections(mu),
            "bandwidth": median_bandwidth(sample),
            "kl": _binned(np.asarray(kl, dtype=np.float64)),
        },
    }


def tabular_reference(
    detector: Any, train: Any, cal: Any, cal_result: Any, cal_mu: np.ndarray
) -> dict[str, Any]:
    """The reference of a tabular detector: ``train`` the encoded rows the feature
    statistics come from (at fit, every row given: they need no model) and ``cal`` the
    calibration rows (``TabularArrays``), ``cal_result`` the calibration
    rows' ``ScoreResult`` (with contributions) and ``cal_mu`` their latent means."""
    ref = model_part(cal_result.log_likelihood, cal_mu, cal_result.kl, detector.seed)
    schema = detector.schema_
    features: dict[str, Any] = {}
    for j, spec in enumerate(schema.of_kind("numeric")):
        seen = train.num_mask[:, j]
        values = train.num[seen, j].astype(np.float64)
        fine = atom_cuts(values)
        features[spec.name] = {
            "kind": "numeric",
            **_binned(values),
            "missing": int((~seen).sum()),
            "fine": {"cuts": fine.tolist(), "counts": bin_counts(values, fine).tolist()},
        }
    for j, spec in enumerate(schema.of_kind("categorical")):
        codes = train.cat[:, j]
        levels = len(spec.categories) + 1  # the unknown slot last
        features[spec.name] = {
            "kind": "categorical",
            "levels": [str(c) for c in spec.categories] + ["(unknown)"],
            "counts": np.bincount(codes[codes >= 0], minlength=levels).tolist(),
            "missing": int((codes < 0).sum()),
        }
    for j, spec in enumerate(schema.of_kind("boolean")):
        seen = train.bin_mask[:, j]
        ones = int(train.bin[seen, j].sum())
        features[spec.name] = {
            "kind": "boolean",
            "levels": ["false", "true"],
            "counts": [int(seen.sum()) - ones, ones],
            "missing": int((~seen).sum()),
        }
    pick = sample_rows(len(cal_mu), MAX_SAMPLE, detector.seed)
    ref["features"] = features
    ref["contributions"] = {
        "names": list(detector.feature_names_),
        "sample": np.asarray(cal_result.contributions)[pick].round(REFERENCE_DECIMALS).tolist(),
    }
    ref["n_train"] = len(train)  # the rows the feature statistics come from
    ref["n_calibration"] = len(cal_mu)
    return ref
