"""Check a window of records against a detector's drift reference.

:class:`WindowStats` accumulates what the tests need, batch by batch, in memory that does
not grow with the window (bin counts, sums, a bottom-k sample of latent means keyed by a
hash of each record's content, for the report's view), and two of them merge exactly, so a window can be
streamed from a file of any size or gathered from partitions. :func:`evaluate` turns
them into a :class:`DriftReport`:

- scores: the window's calibrated scores against the calibration scores, a two-sample
  chi-square test on the reference's score ventiles (two-sided: out-of-distribution data
  can be *more* likely), with the shift in mean score (nats, or bits for the image
  complexity score) and its confidence interval; the outlier rate against its exact
  Beta-binomial null (:func:`~anomaly_vae.drift.stats.outlier_rate_test`);
- latent: the latent means' distribution, seen through one-dimensional projections
  (the L axes and L random directions, a sliced test): each projection's two-sample
  chi-square on the reference's ventiles, Bonferroni over the projections, the effect
  the largest binned Wasserstein distance in the projection's standard deviations; and
  the KL terms' distribution (content off the training manifold has large KL). The MMD
  of the two latent samples is reported beside it, descriptive only: its permutation
  p-value assumes distinct records, and tables with many identical rows (skin: RGB
  triples) put whole clusters of copies into a window's sample;
- features (tables): per column, a two-sample chi-square test on the reference's bins
  (numeric: quantile bins, with a binned KS test and a rank-sum test on the percentiles
  and the missing rate's test, Bonferroni over the parts; categorical and boolean:
  levels incl. unknown and missing),
  with PSI, Jensen-Shannon, total variation and, for numeric columns, the binned
  Wasserstein distance in the column's standard deviations; and per column the shift of
  its mean log-likelihood contribution in nats (what the model finds unusual, which sees
  a change in the dependence between columns that every marginal test misses).

An alarm needs both: the test's weighted Holm-adjusted p-value (over every test of the
window; each feature's own test weighs :data:`FEATURE_WEIGHT`, every other test 1) at
or below ``level``, and an effect at least its practical margin (:class:`Margins`), so a
huge window of unchanged data does not alarm on noise. Drifted features are listed by
their Benjamini-Hochberg q-value. A window under ``min_rows`` that raises no alarm is
reported as too small, never as drift-free.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from anomaly_vae.drift import stats as S
from anomaly_vae.drift.reference import (
    BINS,
    REFERENCE_DECIMALS,
    REFERENCE_FORMAT,
    bin_counts,
    project,
    projections,
    quantile_cuts,
    sample_rows,
    sorted_bin_counts,
    sorted_columns,
)
from anomaly_vae.exceptions import BundleError

#: Latent means kept from a window (and from the reference) for the report's latent view
#: and the descriptive MMD.
MMD_SAMPLE = 300
#: Permutations of the descriptive MMD, and the fewest Monte Carlo tables of an exact
#: chi-square p-value (see :func:`exact_resamples`).
MMD_PERMUTATIONS = 199
#: Most Monte Carlo tables (the cost grows with them).
MAX_RESAMPLES = 9999
#: Weight of each feature's own test in the alarm's weighted Holm family, where every
#: other test (the scores, outlier rate, latent, KL and each feature's contribution)
#: weighs 1. See benchmarks/RESULTS.md (Drift) for how it was chosen and confirmed.
FEATURE_WEIGHT = 2.0


def exact_resamples(n_tests: int, level: float) -> int:
    """Monte Carlo tables whose p-value floor is at most half the Holm threshold of the
    smallest p-value, level / n_tests: R + 1 >= 2 n_tests / level (else a test refined
    to an exact p-value could never alarm in a wide table)."""
    need = math.ceil(2 * n_tests / level) - 1
    return int(min(MAX_RESAMPLES, max(MMD_PERMUTATIONS, need)))


_PROJECTIONS: dict[int, tuple[dict[str, Any], dict[str, np.ndarray]]] = {}


def latent_projections(reference: dict[str, Any]) -> dict[str, np.ndarray]:
    """The latent test's projections (see :func:`~anomaly_vae.drift.reference.projections`),
    as arrays, once per reference: from the reference's own ``projections`` (every
    calibration row, written at fit time), else from its sample of latent means."""
    hit = _PROJECTIONS.get(id(reference))
    if hit is not None and hit[0] is reference:
        return hit[1]
    lref = reference["latent"]
    doc = lref.get("projections")
    if doc is None:
        doc = projections(np.asarray(lref["sample"], dtype=np.float64))
    out = {
        "directions": np.asarray(doc["directions"], dtype=np.float64).reshape(-1, len(doc["std"])),
        "cuts": np.array(
            [[np.inf if v is None else v for v in row] for row in doc["cuts"]], dtype=np.float64
        ).reshape(len(doc["std"]), -1),
        "counts": np.asarray(doc["counts"], dtype=np.int64).reshape(len(doc["std"]), -1),
        "std": np.asarray(doc["std"], dtype=np.float64),
    }
    _PROJECTIONS.clear()
    _PROJECTIONS[id(reference)] = (reference, out)
    return out


#: Fewest records a window needs before "no drift" is said of it.
MIN_ROWS = 100


@dataclass(frozen=True)
class Margins:
    """Practical margins: the least effect an alarm needs, per kind of test.

    Attributes:
        score: binned Wasserstein distance of the scores, in reference standard deviations.
        outlier_rate: realized outlier rate above the null's rate (absolute).
        numeric: binned Wasserstein distance of a numeric column, in its standard deviations.
        categorical: total-variation distance of a categorical or boolean column's levels.
        contribution: shift of a column's mean log-likelihood contribution, nats.
        kl: binned Wasserstein distance of the KL terms, in reference standard deviations.
        latent: the largest binned Wasserstein distance over the latent projections, in
            each projection's reference standard deviations.
    """

    score: float = 0.05
    outlier_rate: float = 0.01
    numeric: float = 0.05
    categorical: float = 0.02
    contribution: float = 0.05
    kl: float = 0.05
    latent: float = 0.05


_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on uint64 [N]: a bijection that scrambles every bit."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def record_keys(*columns: np.ndarray) -> np.ndarray:
    """A 64-bit key per record from its encoded values (arrays [N, ...] of any numeric
    dtype, e.g. a table's encoded columns or an image's pixels): the same record gets the
    same key in any batch, partition or engine, so bottom-k samples taken by key merge
    exactly."""
    n = len(columns[0])
    h = np.full(n, 0x243F6A8885A308D3, dtype=np.uint64)
    for col in columns:
        raw = np.ascontiguousarray(col).reshape(n, -1).view(np.uint8).reshape(n, -1)
        pad = (-raw.shape[1]) % 8
        if pad:
            raw = np.hstack([raw, np.zeros((n, pad), np.uint8)])
        words = raw.view(np.uint64)
        for j in range(words.shape[1]):
            h = _mix(h ^ words[:, j])
    return h


def _priority(seed: int, keys: np.ndarray) -> np.ndarray:
    """A uniform [0, 1) priority per record key, seeded."""
    with np.errstate(over="ignore"):
        x = _mix(keys.astype(np.uint64) ^ (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


_CUTS: dict[int, tuple[dict[str, Any], list[np.ndarray]]] = {}
_FEATURE_CUTS: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}


def reference_arrays(reference: dict[str, Any]) -> dict[str, Any]:
    """The reference's cut lists as arrays, once per reference (a stream updates window
    statistics batch after batch; turning the JSON lists into arrays each time cost as
    much as the counting): ``scores``, ``kl``, and per feature ``cuts``, ``fine`` and
    ``joint``."""
    hit = _FEATURE_CUTS.get(id(reference))
    if hit is None or hit[0] is not reference:
        feats = reference.get("features", {})
        cuts: dict[str, np.ndarray] = {
            k: np.asarray(f["cuts"], dtype=np.float64)
            for k, f in feats.items() if f["kind"] == "numeric"
        }  # fmt: skip
        fine: dict[str, np.ndarray] = {
            k: np.asarray(f["fine"]["cuts"], dtype=np.float64)
            for k, f in feats.items() if "fine" in f
        }  # fmt: skip
        doc: dict[str, Any] = {
            "scores": np.asarray(reference["scores"]["cuts"], dtype=np.float64),
            "kl": np.asarray(reference["latent"]["kl"]["cuts"], dtype=np.float64),
            "cuts": cuts,
            "fine": fine,
            # coarse and fine bins of a numeric column from one search (see _joint_cuts)
            "joint": {k: _joint_cuts(cuts[k], f) for k, f in fine.items() if k in cuts},
        }
        _FEATURE_CUTS.clear()
        _FEATURE_CUTS[id(reference)] = hit = (reference, doc)
    return hit[1]


def _joint_cuts(coarse: np.ndarray, fine: np.ndarray) -> tuple[np.ndarray, ...]:
    """One search for two sets of cuts: the sorted union U and, for each k, how many
    coarse (fine) cuts are among U[:k]. A value below exactly k cuts of U is below exactly
    ``to_coarse[k]`` coarse cuts (those cuts are the coarse ones among U[:k]), so
    ``to_coarse[searchsorted(U, v)]`` is :func:`bin_counts`' bin of v, bit for bit."""
    union = np.union1d(coarse, fine)
    zero = np.zeros(1, np.int64)
    to_coarse = np.concatenate([zero, np.cumsum(np.isin(union, coarse))])
    to_fine = np.concatenate([zero, np.cumsum(np.isin(union, fine))])
    return union, to_coarse, to_fine


def contribution_cuts(reference: dict[str, Any]) -> list[np.ndarray]:
    """Per column, the quantile cuts (at most ``BINS - 1``) of the reference's
    contribution sample, computed once per reference: the bins the contribution test
    counts in."""
    hit = _CUTS.get(id(reference))
    if hit is None or hit[0] is not reference:
        sample = np.asarray(reference.get("contributions", {}).get("sample", []), np.float64)
        cuts = [quantile_cuts(sample[:, j]) for j in range(sample.shape[1])] if sample.size else []
        _CUTS.clear()  # one reference at a time is the common case
        _CUTS[id(reference)] = hit = (reference, cuts)
    return hit[1]


def require_reference(detector: Any) -> dict[str, Any]:
    """The detector's drift reference, or a ``BundleError`` that names the fix."""
    ref = getattr(detector, "reference_", None) or {}
    if ref.get("format") != REFERENCE_FORMAT:
        msg = (
            "this detector has no drift reference (its bundle predates drift monitoring); "
            "recompute it from rows like the training data: anomaly-vae drift-reference "
            "BUNDLE DATA --out NEW_BUNDLE (or detector.rebuild_reference(X))"
        )
        raise BundleError(msg)
    return ref


@dataclass
class WindowStats:
    """Sufficient statistics of a window, mergeable (see the module docstring)."""

    reference: dict[str, Any] = field(repr=False)
    seed: int = 0
    n: int = 0
    flagged: int = 0
    score_sum: float = 0.0
    score_sumsq: float = 0.0
    score_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    kl_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    latent_counts: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    latent_priority: np.ndarray = field(default_factory=lambda: np.zeros(0))
    latent_sample: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    feature_counts: dict[str, np.ndarray] = field(default_factory=dict)
    feature_missing: dict[str, int] = field(default_factory=dict)
    feature_fine: dict[str, np.ndarray] = field(default_factory=dict)
    contrib_sum: np.ndarray = field(default_factory=lambda: np.zeros(0))
    contrib_sumsq: np.ndarray = field(default_factory=lambda: np.zeros(0))
    contrib_counts: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    #: records whose contributions were added (a live monitor takes them from a share
    #: of the requests only; a batch check from every record)
    contrib_n: int = 0

    def __post_init__(self) -> None:
        ref = self.reference
        if not self.score_counts.size:
            self.score_counts = np.zeros(len(ref["scores"]["counts"]), np.int64)
            self.kl_counts = np.zeros(len(ref["latent"]["kl"]["counts"]), np.int64)
            dim = len(ref["latent"]["sample"][0]) if ref["latent"]["sample"] else 0
            self.latent_sample = np.zeros((0, dim))
            self.latent_counts = np.zeros_like(latent_projections(ref)["counts"])
            for name, f in ref.get("features", {}).items():
                self.feature_counts[name] = np.zeros(len(f["counts"]), np.int64)
                self.feature_missing[name] = 0
                if "fine" in f:
                    self.feature_fine[name] = np.zeros(len(f["fine"]["counts"]), np.int64)
            n_f = len(ref.get("contributions", {}).get("names", []))
            self.contrib_sum, self.contrib_sumsq = np.zeros(n_f), np.zeros(n_f)
            self.contrib_counts = np.zeros((n_f, BINS), np.int64)

    # ------------------------------------------------------------------ updating
    def update(
        self,
        normality: np.ndarray,
        flags: np.ndarray,
        mu: np.ndarray,
        kl: np.ndarray,
        *,
        keys: np.ndarray | None = None,
        arrays: Any = None,
        contributions: np.ndarray | None = None,
        feature_order: tuple[list[str], list[str], list[str]] | None = None,
    ) -> None:
        """Add a batch: calibrated normality [N], outlier flags [N], latent means
        [N, L], KL terms [N] and, for tables, the encoded rows (``TabularArrays``), the
        contributions [N, F] and the (numeric, categorical, boolean) column names.
        ``keys`` [N] (:func:`record_keys`) choose the latent sample; without them, the
        records' positions in the window do."""
        ref = self.reference
        n = len(normality)
        if keys is None:
            keys = np.arange(self.n, self.n + n, dtype=np.uint64)
        self.n += n
        self.flagged += int(np.asarray(flags).sum())
        normality = np.asarray(normality, dtype=np.float64)
        self.score_sum += float(normality.sum())
        self.score_sumsq += float((normality * normality).sum())
        cuts = reference_arrays(ref)
        self.score_counts += bin_counts(normality, cuts["scores"])
        self.kl_counts += bin_counts(np.asarray(kl), cuts["kl"])
        mu = np.asarray(mu, dtype=np.float64)
        self._keep_latent(_priority(self.seed, keys), mu)
        proj = latent_projections(ref)
        if proj["directions"].size:
            # rounded as the reference sample is: with ties (repeated or discrete rows)
            # a difference in the last digits moved whole groups of rows across a cut
            values = sorted_columns(project(mu.round(REFERENCE_DECIMALS), proj["directions"]))
            for j in range(len(values)):
                self.latent_counts[j] += sorted_bin_counts(values[j], n, proj["cuts"][j])
        if arrays is None or feature_order is None:
            return
        numeric, categorical, boolean = feature_order
        feats = ref["features"]
        if numeric:
            mask = np.asarray(arrays.num_mask, dtype=bool)
            seen_n = mask.sum(0)
            columns = sorted_columns(arrays.num, mask)  # once for all columns
        for j, name in enumerate(numeric):
            n_j = int(seen_n[j])
            self.feature_missing[name] += n - n_j
            joint = cuts["joint"].get(name)  # a column with fine bins has them
            if joint is not None:
                # the coarse and the fine bins from one count over their union (the same
                # bins, see _joint_cuts): the counting was most of a request's statistics
                union, to_coarse, to_fine = joint
                at = sorted_bin_counts(columns[j], n_j, union)
                counts, fine = self.feature_counts[name], self.feature_fine[name]
                counts += np.bincount(to_coarse, at, counts.size).astype(np.int64)
                fine += np.bincount(to_fine, at, fine.size).astype(np.int64)
                continue
            self.feature_counts[name] += sorted_bin_counts(columns[j], n_j, cuts["cuts"][name])
            if name in self.feature_fine:
                self.feature_fine[name] += sorted_bin_counts(columns[j], n_j, cuts["fine"][name])
        for j, name in enumerate(categorical):
            codes = arrays.cat[:, j]
            levels = len(feats[name]["counts"])
            self.feature_counts[name] += np.bincount(codes[codes >= 0], minlength=levels)[:levels]
            self.feature_missing[name] += int((codes < 0).sum())
        for j, name in enumerate(boolean):
            seen = arrays.bin_mask[:, j]
            ones = int(arrays.bin[seen, j].sum())
            self.feature_counts[name] += np.array([int(seen.sum()) - ones, ones])
            self.feature_missing[name] += int((~seen).sum())
        if contributions is not None and contributions.size:
            c = np.asarray(contributions, dtype=np.float64)
            self.contrib_n += len(c)
            self.contrib_sum += c.sum(0)
            self.contrib_sumsq += (c * c).sum(0)
            c_ref = sorted_columns(c.round(REFERENCE_DECIMALS))  # rounded as the reference
            for j, c_cuts in enumerate(contribution_cuts(ref)):
                counts = sorted_bin_counts(c_ref[j], len(c), c_cuts)
                self.contrib_counts[j, : len(counts)] += counts

    def _keep_latent(self, priority: np.ndarray, mu: np.ndarray) -> None:
        pr = np.concatenate([self.latent_priority, priority])
        rows = np.vstack([self.latent_sample, mu]) if self.latent_sample.size else mu
        keep = np.argsort(pr, kind="stable")[:MMD_SAMPLE]
        self.latent_priority, self.latent_sample = pr[keep], rows[keep]

    def merge(self, other: WindowStats) -> WindowStats:
        """Add another window's statistics (another partition or batch); returns self.
        With record keys the result is the same as one pass over both."""
        self.n += other.n
        self.flagged += other.flagged
        self.score_sum += other.score_sum
        self.score_sumsq += other.score_sumsq
        self.score_counts = self.score_counts + other.score_counts
        self.kl_counts = self.kl_counts + other.kl_counts
        self.latent_counts = self.latent_counts + other.latent_counts
        self._keep_latent(other.latent_priority, other.latent_sample)
        for name in self.feature_counts:
            self.feature_counts[name] = self.feature_counts[name] + other.feature_counts[name]
            self.feature_missing[name] += other.feature_missing[name]
        for name in self.feature_fine:
            self.feature_fine[name] = self.feature_fine[name] + other.feature_fine[name]
        self.contrib_sum = self.contrib_sum + other.contrib_sum
        self.contrib_sumsq = self.contrib_sumsq + other.contrib_sumsq
        self.contrib_counts = self.contrib_counts + other.contrib_counts
        self.contrib_n += other.contrib_n
        return self

    _ARRAYS = ("score_counts", "kl_counts", "latent_counts", "latent_priority", "latent_sample",
               "contrib_sum", "contrib_sumsq", "contrib_counts")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """Everything but the reference, as JSON-able lists (to ship from executors)."""
        doc: dict[str, Any] = {
            "seed": self.seed, "n": self.n, "flagged": self.flagged, "contrib_n": self.contrib_n,
            "score_sum": self.score_sum, "score_sumsq": self.score_sumsq,
            "feature_missing": dict(self.feature_missing),
            "feature_counts": {k: v.tolist() for k, v in self.feature_counts.items()},
            "feature_fine": {k: v.tolist() for k, v in self.feature_fine.items()},
        }  # fmt: skip
        doc |= {name: getattr(self, name).tolist() for name in self._ARRAYS}
        return doc

    @classmethod
    def from_dict(cls, reference: dict[str, Any], doc: dict[str, Any]) -> WindowStats:
        stats = cls(reference, seed=int(doc["seed"]))
        stats.n, stats.flagged = int(doc["n"]), int(doc["flagged"])
        # older dumps had contributions for every record
        stats.contrib_n = int(doc.get("contrib_n", doc["n"] if doc["contrib_sum"] else 0))
        stats.score_sum, stats.score_sumsq = float(doc["score_sum"]), float(doc["score_sumsq"])
        stats.feature_missing = {k: int(v) for k, v in doc["feature_missing"].items()}
        stats.feature_counts = {
            k: np.asarray(v, np.int64) for k, v in doc["feature_counts"].items()
        }
        stats.feature_fine = {k: np.asarray(v, np.int64) for k, v in doc["feature_fine"].items()}
        for name in cls._ARRAYS:
            dtype = np.int64 if name.endswith("counts") else np.float64
            value = np.asarray(doc[name], dtype=dtype)
            if name == "latent_sample":
                value = value.reshape(len(doc["latent_priority"]), -1)
            if name == "contrib_counts":
                value = value.reshape(len(doc["contrib_sum"]), -1)
            if name == "latent_counts":
                value = value.reshape(stats.latent_counts.shape)
            setattr(stats, name, value)
        return stats


# ---------------------------------------------------------------------- the report
@dataclass
class DriftReport:
    """The outcome of a drift check. ``verdict`` is ``drift``, ``no_drift`` or
    ``too_few_rows``; ``fired`` lists the tests that alarmed and the rule; ``signals``
    holds the score, outlier-rate, latent and KL tests; ``features`` one row per
    column (tables), sorted by q-value. Every test row has the statistic, p-value,
    Holm-adjusted p-value, effect, margin, threshold (= level) and verdict."""

    verdict: str
    n: int
    level: float
    min_rows: int
    rule: str
    fired: list[dict[str, Any]]
    signals: dict[str, dict[str, Any]]
    features: list[dict[str, Any]]
    margins: dict[str, float]
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def drifted(self) -> bool:
        return self.verdict == "drift"

    def drifted_features(self) -> list[str]:
        """Columns whose distribution or contribution drifted (q <= level and effect at
        least its margin), most significant first."""
        return [f["feature"] for f in self.features if f["verdict"] == "drift"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _row(outcome: S.Test, margin: float, **extra: Any) -> dict[str, Any]:
    return {
        "statistic": outcome.statistic,
        "p_value": outcome.p_value,
        "effect": outcome.effect,
        "margin": margin,
        **extra,
    }


def evaluate(
    stats: WindowStats,
    calibration: Any,
    *,
    level: float = 0.05,
    margins: Margins | None = None,
    min_rows: int = MIN_ROWS,
) -> DriftReport:
    """The report of a window's statistics against their reference. ``calibration`` is
    the detector's :class:`~anomaly_vae.scoring.calibration.Calibration` (reference
    scores, n, alpha)."""
    if not 0.0 < level < 1.0:
        msg = f"level must be in (0, 1), got {level!r}"
        raise ValueError(msg)
    if stats.n == 0:
        msg = "the window is empty: no records to check"
        raise ValueError(msg)
    margins = margins or Margins()
    ref = stats.reference
    tests: list[tuple[str, dict[str, Any]]] = []
    feats = ref.get("features", {})
    n_contrib = len(ref.get("contributions", {}).get("names", []))
    # the Holm family's weights (a feature's own test FEATURE_WEIGHT, every other 1): the
    # smallest share of the level any test gets is 1 / (total weight)
    permutations = exact_resamples(math.ceil(4 + FEATURE_WEIGHT * len(feats) + n_contrib), level)
    serial = iter(range(1 << 30))

    def chi2(r: np.ndarray, w: np.ndarray, ordered: bool = True) -> tuple[float, float, int]:
        # sparse tables get an exact p-value where a decision could hang on it
        return S.chi2_two_sample(
            r, w, ordered=ordered, resamples=permutations, screen=level,
            seed=(stats.seed, next(serial)),
        )  # fmt: skip

    # scores
    sref = ref["scores"]
    r_counts = np.asarray(sref["counts"])
    chi, p, dof = chi2(r_counts, stats.score_counts)
    w1 = S.binned_wasserstein(r_counts, stats.score_counts, np.asarray(sref["cuts"]), sref["std"])
    ref_scores = calibration.reference
    shift = S.mean_shift(stats.score_sum, stats.score_sumsq, stats.n, ref_scores)
    lo, hi = S.mean_shift_interval(stats.score_sum, stats.score_sumsq, stats.n, ref_scores)
    scores = _row(
        S.Test(chi, p, w1),
        margins.score,
        test="two-sample chi-square on the reference's score ventiles",
        effect_unit="Wasserstein distance in reference standard deviations",
        dof=dof,
        mean_shift=shift.effect,
        mean_shift_ci95=[lo, hi],
        psi=S.psi(r_counts, stats.score_counts),
        reference_counts=r_counts.tolist(),
        window_counts=stats.score_counts.tolist(),
        cuts=sref["cuts"],
    )
    tests.append(("scores", scores))

    # outlier rate
    alpha = calibration.alpha if calibration.alpha is not None else calibration.contamination
    rate = S.outlier_rate_test(stats.flagged, stats.n, calibration.n, float(alpha))
    ci = S.clopper_pearson(stats.flagged, stats.n)
    outliers = _row(
        rate,
        margins.outlier_rate,
        test="exact Beta-binomial null of the conformal flag count (one-sided)",
        effect_unit="rate above the null's rate",
        flagged=stats.flagged,
        rate=stats.flagged / stats.n,
        rate_ci95=list(ci),
        alpha=alpha,
    )
    tests.append(("outlier_rate", outliers))

    # latent: a sliced test over one-dimensional projections of the latent means
    lref = ref["latent"]
    proj = latent_projections(ref)
    p_proj: list[float] = []
    w_proj: list[float] = []
    for j in range(proj["directions"].shape[1]):
        nb = int(np.isfinite(proj["cuts"][j]).sum()) + 1
        _, pj, _ = chi2(proj["counts"][j, :nb], stats.latent_counts[j, :nb])
        p_proj.append(pj)
        w_proj.append(
            S.binned_wasserstein(
                proj["counts"][j, :nb], stats.latent_counts[j, :nb],
                proj["cuts"][j, : nb - 1], float(proj["std"][j]),
            )
        )  # fmt: skip
    n_proj = len(p_proj)
    p_latent = min(1.0, n_proj * min(p_proj)) if p_proj else 1.0
    ref_sample = np.asarray(lref["sample"], dtype=np.float64)
    if len(ref_sample) > MMD_SAMPLE:
        ref_sample = ref_sample[sample_rows(len(ref_sample), MMD_SAMPLE, stats.seed)]
    mmd = S.mmd_test(
        stats.latent_sample, ref_sample, lref["bandwidth"], MMD_PERMUTATIONS, stats.seed
    )
    tests.append(
        (
            "latent",
            _row(
                S.Test(float(min(p_proj, default=1.0)), p_latent, max(w_proj, default=0.0)),
                margins.latent,
                test=f"two-sample chi-square on the reference ventiles of {n_proj} projections "
                "of the latent means (the axes and as many random directions), Bonferroni "
                "over them",
                effect_unit="largest binned Wasserstein distance, in the projection's "
                "reference standard deviations",
                statistic_is="the least projection p-value before Bonferroni",
                projection_p_values=p_proj,
                projection_effects=w_proj,
                mmd=mmd.statistic,
                mmd_p_value_descriptive=mmd.p_value,
                window_sample=len(stats.latent_sample),
                reference_sample=len(ref_sample),
            ),
        )
    )
    kref = lref["kl"]
    k_counts = np.asarray(kref["counts"])
    kchi, kp, kdof = chi2(k_counts, stats.kl_counts)
    kw = S.binned_wasserstein(k_counts, stats.kl_counts, np.asarray(kref["cuts"]), kref["std"])
    tests.append(
        (
            "kl",
            _row(
                S.Test(kchi, kp, kw),
                margins.kl,
                test="two-sample chi-square on the reference's KL ventiles",
                effect_unit="Wasserstein distance in reference standard deviations",
                dof=kdof,
            ),
        )
    )

    # features
    feature_rows: list[dict[str, Any]] = []
    contrib = ref.get("contributions", {})
    c_names = contrib.get("names", [])
    c_sample = np.asarray(contrib.get("sample", []), dtype=np.float64)
    for name, f in feats.items():
        r = np.asarray(f["counts"], dtype=np.float64)
        w = stats.feature_counts[name].astype(np.float64)
        # missing values are a level of their own: a change in the missing rate is drift
        r_all, w_all = np.append(r, f["missing"]), np.append(w, stats.feature_missing[name])
        numeric = f["kind"] == "numeric"
        chi, p, dof = chi2(r_all, w_all, ordered=False) if not numeric else chi2(r, w)
        extra: dict[str, Any] = {}
        if numeric:
            # the column is one test at its level: the least of its parts' p-values,
            # Bonferroni over the parts (the bins' chi-square sees changes of shape, the
            # percentiles' KS any change of the distribution function, their rank-sum
            # test a shift of location, where it is the most efficient of the three; the
            # missing rate's test the missing)
            parts = [p]
            fine = f.get("fine")
            if fine is not None:
                fine_ref = np.asarray(fine["counts"])
                ks = S.binned_ks(fine_ref, stats.feature_fine[name])
                rs = S.binned_rank_sum(fine_ref, stats.feature_fine[name])
                parts += [ks.p_value, rs.p_value]
                extra = {
                    "ks_statistic": ks.statistic, "ks_p_value": ks.p_value,
                    "rank_sum_z": rs.statistic, "rank_sum_p_value": rs.p_value,
                    "superiority": rs.effect,
                }  # fmt: skip
            missing_chi = chi2(
                np.array([r.sum(), f["missing"]]),
                np.array([w.sum(), stats.feature_missing[name]]),
                ordered=False,
            )
            if missing_chi[2] > 0:
                parts.append(missing_chi[1])
                extra["missing_p_value"] = missing_chi[1]
                if missing_chi[1] < min(parts[:-1]):
                    chi, dof = missing_chi[0], missing_chi[2]
            extra["chi2_p_value"] = p
            p = min(1.0, len(parts) * min(parts))
            if fine is not None:  # the finer bins measure the distance closer to the truth
                effect = S.binned_wasserstein(
                    np.asarray(fine["counts"]), stats.feature_fine[name],
                    np.asarray(fine["cuts"]), f["std"] or 1.0,
                )  # fmt: skip
            else:
                effect = S.binned_wasserstein(r, w, np.asarray(f["cuts"]), f["std"] or 1.0)
            margin, unit = (
                margins.numeric,
                "Wasserstein distance in the column's standard deviations",
            )
        else:
            effect = S.total_variation(r_all, w_all)
            margin, unit = margins.categorical, "total-variation distance"
        row = _row(
            S.Test(chi, p, effect),
            margin,
            feature=name,
            kind=f["kind"],
            test=(
                "two-sample chi-square on the reference's quantile bins, KS and "
                "Wilcoxon-Mann-Whitney rank-sum on its percentiles (and the missing "
                "rate's test), Bonferroni over them"
                if numeric
                else "two-sample chi-square on the reference's levels (with unknown and missing)"
            ),
            effect_unit=unit,
            dof=dof,
            psi=S.psi(r_all, w_all),
            js_distance=S.js_distance(r_all, w_all),
            missing_rate=stats.feature_missing[name] / stats.n,
            reference_missing_rate=f["missing"] / max(r.sum() + f["missing"], 1),
            reference_counts=r.tolist(),
            window_counts=w.tolist(),
            cuts=f.get("cuts"),
            levels=f.get("levels"),
            **extra,
        )
        if name in c_names and c_sample.size and stats.contrib_n:
            j = c_names.index(name)
            rc = bin_counts(c_sample[:, j], contribution_cuts(ref)[j])
            cchi, cp, _ = chi2(rc, stats.contrib_counts[j, : len(rc)])
            # the effect is the shift of the mean term (nats); the test is on its whole
            # distribution, binned: a mean test on these skewed, often near-constant terms
            # was anti-conservative on small windows
            c_shift = float(stats.contrib_sum[j] / stats.contrib_n - c_sample[:, j].mean())
            row["contribution"] = _row(
                S.Test(cchi, cp, c_shift),
                margins.contribution,
                test="two-sample chi-square on the calibration contributions' quantile bins",
                effect_unit="shift of the mean contribution, nats",
            )
        feature_rows.append(row)

    # multiple testing: Holm over every test (the alarm), BH over the features (the list)
    family: list[dict[str, Any]] = [row for _, row in tests]
    for row in feature_rows:
        family.append(row)
        if "contribution" in row:
            family.append(row["contribution"])
    weights = np.array([FEATURE_WEIGHT if "feature" in t else 1.0 for t in family])
    adjusted = S.holm(np.array([t["p_value"] for t in family]), weights)
    for t, pa in zip(family, adjusted.tolist(), strict=True):
        t["p_holm"] = pa
        t["threshold"] = level
        t["verdict"] = "drift" if pa <= level and abs(t["effect"]) >= t["margin"] else "no_drift"
    feature_p = [
        min(fr["p_value"], fr.get("contribution", {}).get("p_value", 1.0)) for fr in feature_rows
    ]
    for fr, q in zip(feature_rows, S.benjamini_hochberg(np.array(feature_p)).tolist(), strict=True):
        fr["q_value"] = q
        shifted = fr["verdict"] == "drift" or fr.get("contribution", {}).get("verdict") == "drift"
        fr["verdict"] = "drift" if shifted else "no_drift"
    feature_rows.sort(key=lambda fr: (fr["q_value"], -abs(fr["effect"])))

    fired = [{"signal": name, "p_holm": row["p_holm"], "effect": row["effect"], "margin": row["margin"]}
             for name, row in tests if row["verdict"] == "drift"]  # fmt: skip
    for fr in feature_rows:
        if fr["verdict"] != "drift":
            continue
        own = fr["p_holm"] <= level and abs(fr["effect"]) >= fr["margin"]
        src = fr if own else fr["contribution"]
        fired.append({"signal": f"{'feature' if own else 'contribution'}:{fr['feature']}",
                      "p_holm": src["p_holm"], "effect": src["effect"], "margin": src["margin"]})  # fmt: skip
    if fired:
        verdict = "drift"
    elif stats.n < min_rows:
        verdict = "too_few_rows"
    else:
        verdict = "no_drift"
    rule = (
        f"a test alarms when its weighted Holm-adjusted p-value (over all {len(family)} "
        f"tests, each feature's own test of weight {FEATURE_WEIGHT:g}, every other 1) is at "
        f"most {level} and its effect is at least its margin; features are listed by "
        "Benjamini-Hochberg q-value; a chi-square table with an expected count below "
        f"{S.ASYMPTOTIC_MIN_EXPECTED:g} that could alarm gets an exact p-value (Fisher's "
        f"test for two bins, else Monte Carlo over {permutations} tables with its margins)"
    )
    return DriftReport(
        verdict=verdict,
        n=stats.n,
        level=level,
        min_rows=min_rows,
        rule=rule,
        fired=fired,
        signals=dict(tests),
        features=feature_rows,
        margins=asdict(margins),
    )
