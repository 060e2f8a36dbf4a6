"""The statistics drift checks are built from, all on counts and samples that merge.

Every test here is two-sample: the reference is itself a finite sample, and a
goodness-of-fit test that took it as exact would, at large windows, alarm on the
reference's own sampling noise. Tests and distances come from scipy where it has them
(chi-square contingency, beta-binomial, the normal distribution, Jensen-Shannon, the
Kolmogorov-Smirnov distribution); what is written here (binned Wasserstein, the binned
KS statistic, PSI, MMD with its permutation p-value, Holm and Benjamini-Hochberg) is
tested against a direct computation in tests/drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Least expected window count per bin for the chi-square approximation; sparser
#: neighbouring bins are merged before the test.
MIN_EXPECTED = 5.0
#: Least expected count in every bin for the chi-square's asymptotic p-value to be
#: trusted in the far tail; sparser tables get an exact p-value (see chi2_two_sample).
ASYMPTOTIC_MIN_EXPECTED = 20.0


@dataclass(frozen=True)
class Test:
    """One test's outcome: the statistic, its p-value and the effect size."""

    statistic: float
    p_value: float
    effect: float


def merge_sparse_bins(
    ref: np.ndarray, win: np.ndarray, min_expected: float = MIN_EXPECTED
) -> tuple[np.ndarray, np.ndarray]:
    """Merge neighbouring bins (ordered bins) until every merged bin's expected window
    count under the pooled proportions is at least ``min_expected``; [B] -> [B'] each."""
    total_r, total_w = ref.sum(), win.sum()
    pooled = (ref + win) / max(total_r + total_w, 1)
    out_r: list[float] = []
    out_w: list[float] = []
    acc_r = acc_w = acc_p = 0.0
    for r, w, p in zip(ref.tolist(), win.tolist(), pooled.tolist(), strict=True):
        acc_r, acc_w, acc_p = acc_r + r, acc_w + w, acc_p + p
        if acc_p * min(total_r, total_w) >= min_expected:
            out_r.append(acc_r)
            out_w.append(acc_w)
            acc_r = acc_w = acc_p = 0.0
    if acc_r or acc_w:
        # the tail bins left over: a bin of their own while each sample expects at least
        # one record there (Cochran's relaxed rule), else merged into the last bin
        if out_r and acc_p * min(total_r, total_w) < 1.0:
            out_r[-1] += acc_r
            out_w[-1] += acc_w
        else:
            out_r.append(acc_r)
            out_w.append(acc_w)
    return np.asarray(out_r), np.asarray(out_w)


def pearson_chi2(table: np.ndarray) -> tuple[float, float, int, np.ndarray]:
    """Pearson's chi-square test of a 2 x B table with no empty row or column:
    (statistic, p-value, degrees of freedom, expected counts [2, B]), the same operations
    as ``scipy.stats.chi2_contingency(table, correction=False)`` and so the same bits
    (tested), without its argument handling: a 166-column window runs about 500 of these,
    and the handling was most of the check's CPU."""
    from scipy.special import chdtrc

    observed = np.asarray(table, dtype=np.float64)
    expected = observed.sum(1, keepdims=True) * observed.sum(0, keepdims=True) / observed.sum()
    if not (expected > 0).all():  # scipy refuses these too; a NaN would pass as "no drift"
        msg = "pearson_chi2 needs a table with no empty row or column (an expected count is 0)"
        raise ValueError(msg)
    terms = (observed - expected) ** 2 / expected
    stat = float(terms.sum())
    dof = int(observed.shape[1] - 1)
    return stat, float(chdtrc(dof, stat)), dof, expected


def chi2_two_sample(
    ref: np.ndarray,
    win: np.ndarray,
    *,
    ordered: bool = True,
    resamples: int = 0,
    screen: float = 1.0,
    seed: int | tuple[int, ...] = 0,
) -> tuple[float, float, int]:
    """Two-sample chi-square test of homogeneity on bin counts [B] (reference, window):
    (statistic, p-value, degrees of freedom). Sparse bins are merged first so every
    expected count is at least ``MIN_EXPECTED``: ordered bins (numeric) with their
    neighbours, unordered ones (levels) rarest together, after the levels neither sample
    has are dropped.

    The asymptotic p-value is anti-conservative in the far tail when expected counts
    are small (a binary column whose rare level a 100-row window expects 2.4 times gave
    p = 5e-5 where the exact test gives 1e-3), and a Holm family tests exactly there.
    So when ``resamples`` > 0, a table with an expected count below
    ``ASYMPTOTIC_MIN_EXPECTED`` whose asymptotic p-value is at most ``screen`` gets an
    exact conditional p-value instead: Fisher's exact test for two bins, else scipy's
    Monte Carlo over random tables with the same margins (``resamples`` tables, seeded).
    Tables the screen passes keep the asymptotic value: refining can only matter to a
    decision at p <= ``screen``, and the merge depends on the margins alone, so the
    conditional test is exact."""
    from scipy.stats import MonteCarloMethod, chi2_contingency, fisher_exact

    ref = np.asarray(ref, dtype=np.float64)
    win = np.asarray(win, dtype=np.float64)
    if not ordered:
        keep = (ref + win) > 0
        ref, win = ref[keep], win[keep]
        order = np.argsort(-(ref + win), kind="stable")  # rarest last, merged together
        ref, win = ref[order], win[order]
    ref, win = merge_sparse_bins(ref, win)
    if len(ref) < 2 or win.sum() == 0 or ref.sum() == 0:
        return 0.0, 1.0, 0
    table = np.vstack([ref, win])
    stat, p, dof, expected = pearson_chi2(table)
    if resamples > 0 and p <= screen and expected.min() < ASYMPTOTIC_MIN_EXPECTED:
        counts = np.rint(table).astype(np.int64)
        if counts.shape[1] == 2:
            p = float(fisher_exact(counts).pvalue)
        else:
            method = MonteCarloMethod(n_resamples=resamples, rng=np.random.default_rng(seed))
            p = float(chi2_contingency(counts, correction=False, method=method).pvalue)
    return stat, p, dof


def proportions(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    return counts / max(counts.sum(), 1.0)


def psi(ref: np.ndarray, win: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index of window against reference bin counts (both [B]):
    sum (w - r) ln(w / r) over proportions, each floored at ``eps``."""
    r = np.clip(proportions(ref), eps, None)
    w = np.clip(proportions(win), eps, None)
    return float(np.sum((w - r) * np.log(w / r)))


def js_distance(ref: np.ndarray, win: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between bin proportions."""
    from scipy.spatial.distance import jensenshannon

    r, w = proportions(ref), proportions(win)
    if r.sum() == 0 or w.sum() == 0:
        return 0.0
    return float(jensenshannon(r, w, base=2.0))


def total_variation(ref: np.ndarray, win: np.ndarray) -> float:
    """Total-variation distance between bin proportions, in [0, 1]."""
    return float(0.5 * np.abs(proportions(ref) - proportions(win)).sum())


def binned_ks(ref: np.ndarray, win: np.ndarray) -> Test:
    """Two-sample Kolmogorov-Smirnov test on counts [B] in the same ordered bins: the
    statistic D is the largest gap between the two CDFs at the bin edges, which is the
    KS statistic of samples whose values are the bins' indices, and the p-value is
    scipy's two-sided asymptotic one for that D (``kstwo`` at the effective size
    n m / (n + m), as ``ks_2samp(method="asymp")``). D at the edges is at most the
    unbinned D, so binning only makes the test conservative. The effect is D."""
    ref = np.asarray(ref, dtype=np.float64)
    win = np.asarray(win, dtype=np.float64)
    n, m = float(ref.sum()), float(win.sum())
    if n == 0 or m == 0 or ref.size < 2:
        return Test(0.0, 1.0, 0.0)
    from scipy.stats import kstwo

    # integer cumulative counts, divided once: the same bins give the same bits
    gaps = np.abs(np.cumsum(ref)[:-1] / n - np.cumsum(win)[:-1] / m)
    d = float(gaps.max()) if gaps.size else 0.0
    big, small = max(n, m), min(n, m)
    p = float(np.clip(kstwo.sf(d, np.round(big * small / (big + small))), 0.0, 1.0))
    return Test(d, p, d)


def binned_rank_sum(ref: np.ndarray, win: np.ndarray) -> Test:
    """Two-sided Wilcoxon-Mann-Whitney rank-sum test on counts [B] in the same ordered
    bins: every record of a bin shares the bin's midrank, so U, its tie-corrected
    variance and the normal p-value with continuity correction are exactly
    ``scipy.stats.mannwhitneyu(win_values, ref_values, method="asymptotic")`` on samples
    whose values are the bins' indices, computed from the counts in O(B). The statistic
    is z (positive: the window sits higher); the effect is the probability of
    superiority P(window > reference) + P(tie) / 2 minus 1/2, in [-1/2, 1/2].

    The test of a location shift: for one it is far more efficient than KS (asymptotic
    relative efficiency 3/pi against the t-test on normal data, where KS has about two
    thirds of it), which matters most on small windows."""
    ref = np.asarray(ref, dtype=np.float64)
    win = np.asarray(win, dtype=np.float64)
    n, m = float(ref.sum()), float(win.sum())
    big_n = n + m
    if n == 0 or m == 0 or big_n < 2:
        return Test(0.0, 1.0, 0.0)
    from scipy.stats import norm

    t = ref + win
    below = np.cumsum(t) - t  # records in lower bins
    midrank = below + (t + 1.0) / 2.0
    u = float(win @ midrank) - m * (m + 1.0) / 2.0
    mu = n * m / 2.0
    tie = float(np.sum(t**3 - t))
    var = n * m / 12.0 * ((big_n + 1.0) - tie / (big_n * (big_n - 1.0)))
    if var <= 0:  # every record in one bin: the ranks carry no information
        return Test(0.0, 1.0, 0.0)
    sd = math.sqrt(var)
    z = (u - mu) / sd
    p = float(min(1.0, 2.0 * norm.sf((abs(u - mu) - 0.5) / sd)))
    return Test(z, p, u / (n * m) - 0.5)


def binned_wasserstein(ref: np.ndarray, win: np.ndarray, cuts: np.ndarray, scale: float) -> float:
    """Wasserstein-1 distance between two binned distributions on the same bins (inner
    edges ``cuts`` [B - 1]; counts [B]), in units of ``scale``: the integral of
    |F_ref - F_win| between the first and last cut, the CDFs taken at each bin's left
    cut. Mass beyond the outer cuts counts at the cut, so a shift in the far tails is
    under-stated, never over-stated."""
    c = np.asarray(cuts, dtype=np.float64)
    if c.size < 2 or scale <= 0:
        return 0.0
    cdf_r = np.cumsum(proportions(ref))[: c.size]  # F at each cut
    cdf_w = np.cumsum(proportions(win))[: c.size]
    gaps = np.abs(cdf_r - cdf_w)[:-1]
    return float(np.sum(gaps * np.diff(c)) / scale)


def mean_shift(win_sum: float, win_sumsq: float, n_win: int, ref: np.ndarray) -> Test:
    """Welch z-test of a window mean (from its sum and sum of squares) against a
    reference sample [M]: statistic z, two-sided p-value, effect = window mean minus
    reference mean (the data's units)."""
    from scipy.stats import norm

    ref = np.asarray(ref, dtype=np.float64)
    if n_win < 2 or ref.size < 2:
        return Test(0.0, 1.0, 0.0)
    m_w = win_sum / n_win
    v_w = max(win_sumsq / n_win - m_w * m_w, 0.0) * n_win / (n_win - 1)
    m_r, v_r = float(ref.mean()), float(ref.var(ddof=1))
    se = math.sqrt(v_w / n_win + v_r / ref.size)
    shift = m_w - m_r
    if se == 0.0:
        return Test(0.0, 1.0 if shift == 0 else 0.0, shift)
    z = shift / se
    return Test(z, float(2 * norm.sf(abs(z))), shift)


def mean_shift_interval(
    win_sum: float, win_sumsq: float, n_win: int, ref: np.ndarray, level: float = 0.95
) -> tuple[float, float]:
    """A ``level`` confidence interval of the window mean minus the reference mean."""
    from scipy.stats import norm

    ref = np.asarray(ref, dtype=np.float64)
    if n_win < 2 or ref.size < 2:
        return (-math.inf, math.inf)
    m_w = win_sum / n_win
    v_w = max(win_sumsq / n_win - m_w * m_w, 0.0) * n_win / (n_win - 1)
    se = math.sqrt(v_w / n_win + float(ref.var(ddof=1)) / ref.size)
    z = float(norm.ppf(0.5 + level / 2))
    shift = m_w - float(ref.mean())
    return (shift - z * se, shift + z * se)


def outlier_rate_test(flagged: int, n_win: int, n_ref: int, alpha: float) -> Test:
    """Whether a window flags more records than a conformal threshold allows.

    Under exchangeability with ``n_ref`` calibration records, the threshold is the
    m-th smallest of them, m = floor(alpha (n_ref + 1)); given the reference, a record is
    flagged with probability F(t), and F(t) ~ Beta(m, n_ref + 1 - m). So the window's
    count is exactly Beta-binomial(n_win, m, n_ref + 1 - m): an exact one-sided p-value
    at any window size, which a plain binomial test against alpha is not (it ignores the
    reference's own noise and alarms on it at large windows). Effect: realized rate
    minus the null's mean rate m / (n_ref + 1) (at most alpha)."""
    from scipy.stats import betabinom

    m = math.floor(alpha * (n_ref + 1))
    if n_win == 0 or m < 1:
        return Test(0.0, 1.0, 0.0)
    dist = betabinom(n_win, m, n_ref + 1 - m)
    p = float(dist.sf(flagged - 1))
    return Test(float(flagged), min(1.0, p), flagged / n_win - m / (n_ref + 1))


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact binomial confidence interval of a rate k / n."""
    from scipy.stats import beta

    if n == 0:
        return (0.0, 1.0)
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return (lo, hi)


# ---------------------------------------------------------------------- MMD
def gaussian_gram(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    """exp(-|a_i - b_j|^2 / (2 h^2)), [len(a), len(b)]."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.exp(-np.clip(d2, 0.0, None) / (2.0 * bandwidth * bandwidth))


def median_bandwidth(x: np.ndarray, max_rows: int = 500) -> float:
    """The median heuristic: the median pairwise distance of (up to ``max_rows`` of) x."""
    x = np.asarray(x, dtype=np.float64)[:max_rows]
    d2 = (x * x).sum(1)[:, None] + (x * x).sum(1)[None, :] - 2.0 * x @ x.T
    d = np.sqrt(np.clip(d2[np.triu_indices(len(x), 1)], 0.0, None))
    med = float(np.median(d)) if d.size else 1.0
    return med if med > 0 else 1.0


def mmd2_unbiased(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Unbiased MMD^2 from the three Gram blocks (Gretton et al. 2012, eq. 3)."""
    m, n = len(k_xx), len(k_yy)
    sxx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    syy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * k_xy.mean())


def mmd_test(x: np.ndarray, y: np.ndarray, bandwidth: float, permutations: int, seed: int) -> Test:
    """Two-sample MMD test with a Gaussian kernel: (MMD^2 unbiased, permutation p-value,
    MMD = sqrt(max(MMD^2, 0))).

    The p-value is (1 + #{permuted >= observed}) / (1 + permutations), valid at any
    sample size; its floor is 1 / (1 + permutations). All permutations are evaluated at
    once: with v the 0/1 indicator of the first sample, 1_a' K 1_a = v' K v, so one
    matrix product [N, N] x [N, P] gives every permutation's block sums."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        return Test(0.0, 1.0, 0.0)
    gram = gaussian_gram(np.vstack([x, y]), np.vstack([x, y]), bandwidth)
    rng = np.random.default_rng(seed)
    first = np.zeros(m + n)
    first[:m] = 1.0
    # column 0 is the observed split; the others shuffle it (one vectorized draw)
    shuffled = rng.permuted(np.broadcast_to(first, (permutations, m + n)), axis=1)
    labels = np.concatenate([first[:, None], shuffled.T], axis=1)  # [N, P + 1]
    total = gram.sum()
    rows = gram.sum(1)
    s_aa = np.einsum("ij,ij->j", labels, gram @ labels)
    s_ab = labels.T @ rows - s_aa
    s_bb = total - s_aa - 2.0 * s_ab
    diag = np.diag(gram)
    tr_a = labels.T @ diag
    tr_b = diag.sum() - tr_a
    stats = (s_aa - tr_a) / (m * (m - 1)) + (s_bb - tr_b) / (n * (n - 1)) - 2.0 * s_ab / (m * n)
    observed = float(stats[0])
    exceed = int((stats[1:] >= observed).sum())
    p = (1 + exceed) / (1 + permutations)
    return Test(observed, p, math.sqrt(max(observed, 0.0)))


# ---------------------------------------------------------------------- multiple tests
def holm(p: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error), [M] -> [M]; with
    ``weights`` [M] (positive, any scale) the weighted Holm procedure (Holm 1979): tests
    in order of p / w, the j-th adjusted to p_(j) times the weight still in the family
    over its own weight, running maximum, capped at 1. Equal weights give plain Holm;
    the family-wise error is at most the level for any fixed weights."""
    p = np.asarray(p, dtype=np.float64)
    m = p.size
    if m == 0:
        return p
    if weights is None:
        order = np.argsort(p, kind="stable")
        factor = (m - np.arange(m)).astype(np.float64)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != p.shape or not np.all(w > 0):
            msg = f"holm weights must be positive, one per p-value; got {w.tolist()!r}"
            raise ValueError(msg)
        order = np.argsort(p / w, kind="stable")
        ws = w[order]
        factor = np.cumsum(ws[::-1])[::-1] / ws  # weight still in the family / own
    adj = np.maximum.accumulate(factor * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values (false-discovery rate), [M] -> [M]."""
    p = np.asarray(p, dtype=np.float64)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out
