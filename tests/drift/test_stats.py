"""The drift statistics against scipy or a direct computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from anomaly_vae.drift import stats as S
from anomaly_vae.drift.reference import atom_cuts, bin_counts, quantile_cuts


def test_chi2_two_sample_is_scipys_contingency_test():
    ref = np.array([50, 60, 40, 30, 20])
    win = np.array([10, 30, 20, 5, 35])
    chi, p, dof = S.chi2_two_sample(ref, win)
    want = sps.chi2_contingency(np.vstack([ref, win]), correction=False)
    assert chi == pytest.approx(want.statistic) and p == pytest.approx(want.pvalue)
    assert dof == 4


def test_pearson_chi2_is_scipys_contingency_test_bit_for_bit():
    # Same operations as chi2_contingency(correction=False), so the same bits: a window
    # check's verdicts must not depend on which of the two computed them.
    rng = np.random.default_rng(7)
    for trial in range(300):
        bins = int(rng.integers(2, 40))
        scale = 10.0 ** rng.uniform(0, 6)
        table = rng.poisson(scale * rng.dirichlet(np.ones(bins)), size=(2, bins)) + 1.0
        if trial % 3 == 0:
            table = table * rng.uniform(0.1, 3.0, size=table.shape)  # weighted counts
        stat, p, dof, expected = S.pearson_chi2(table)
        want = sps.chi2_contingency(table, correction=False)
        assert stat == want.statistic and p == want.pvalue and dof == want.dof
        assert np.array_equal(expected, want.expected_freq)
    with pytest.raises(ValueError, match="no empty row or column"):
        S.pearson_chi2(np.array([[3.0, 0.0, 2.0], [4.0, 0.0, 1.0]]))


def test_sparse_ordered_bins_merge_until_expected_counts_suffice():
    ref = np.array([100, 100, 1, 1, 100])
    win = np.array([10, 10, 0, 0, 10])
    r, w = S.merge_sparse_bins(ref, win)
    assert r.sum() == ref.sum() and w.sum() == win.sum()
    pooled = (r + w) / (r + w).sum()
    assert (pooled * w.sum() >= S.MIN_EXPECTED).all()


def test_psi_js_tvd_by_hand():
    ref, win = np.array([50, 50]), np.array([80, 20])
    assert S.psi(ref, win) == pytest.approx(
        (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    )
    assert S.total_variation(ref, win) == pytest.approx(0.3)
    m = np.array([0.65, 0.35])
    kl = lambda a, b: float(np.sum(a * np.log2(a / b)))  # noqa: E731
    js = math.sqrt(0.5 * kl(np.array([0.5, 0.5]), m) + 0.5 * kl(np.array([0.8, 0.2]), m))
    assert S.js_distance(ref, win) == pytest.approx(js)


def test_binned_wasserstein_approaches_the_exact_distance():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 200_000), rng.normal(0.5, 1, 200_000)
    cuts = quantile_cuts(a, bins=200)
    w = S.binned_wasserstein(bin_counts(a, cuts), bin_counts(b, cuts), cuts, 1.0)
    assert w == pytest.approx(sps.wasserstein_distance(a, b), abs=0.02)
    assert S.binned_wasserstein(bin_counts(a, cuts), bin_counts(a, cuts), cuts, 1.0) == 0.0


def test_mean_shift_is_welchs_test():
    rng = np.random.default_rng(1)
    ref, win = rng.normal(0, 1, 500), rng.normal(0.2, 2, 300)
    t = S.mean_shift(float(win.sum()), float((win * win).sum()), len(win), ref)
    want = sps.ttest_ind(win, ref, equal_var=False)
    assert t.statistic == pytest.approx(want.statistic, rel=1e-6)
    assert t.p_value == pytest.approx(want.pvalue, rel=0.01)  # normal vs t reference
    assert t.effect == pytest.approx(win.mean() - ref.mean())


def test_outlier_rate_null_is_exact_by_simulation():
    """The Beta-binomial null: over many reference draws, a window of exchangeable
    records alarms at most at its level, at a window size where a binomial test does not."""
    rng = np.random.default_rng(2)
    n_ref, n_win, alpha, level = 200, 5000, 0.05, 0.05
    alarms = binomial_alarms = 0
    trials = 400
    for _ in range(trials):
        ref = rng.normal(size=n_ref)
        m = math.floor(alpha * (n_ref + 1))
        threshold = np.sort(ref)[m - 1]
        flagged = int((rng.normal(size=n_win) < threshold).sum())
        alarms += S.outlier_rate_test(flagged, n_win, n_ref, alpha).p_value <= level
        binomial_alarms += (
            sps.binomtest(flagged, n_win, alpha, alternative="greater").pvalue <= level
        )
    assert alarms / trials <= level + 3 * math.sqrt(level * (1 - level) / trials)
    assert binomial_alarms / trials > 2 * level  # why the plain test is not used


def test_clopper_pearson_is_scipys():
    lo, hi = S.clopper_pearson(7, 50)
    want = sps.binomtest(7, 50).proportion_ci(0.95, method="exact")
    assert (lo, hi) == pytest.approx((want.low, want.high))


def test_mmd_against_a_direct_computation():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 3)), rng.normal(0.3, 1, size=(30, 3))
    h = 1.7
    k = lambda a, b: math.exp(-np.sum((a - b) ** 2) / (2 * h * h))  # noqa: E731
    sxx = sum(k(x[i], x[j]) for i in range(40) for j in range(40) if i != j) / (40 * 39)
    syy = sum(k(y[i], y[j]) for i in range(30) for j in range(30) if i != j) / (30 * 29)
    sxy = sum(k(a, b) for a in x for b in y) / (40 * 30)
    t = S.mmd_test(x, y, h, permutations=99, seed=0)
    assert t.statistic == pytest.approx(sxx + syy - 2 * sxy)
    assert 1 / 100 <= t.p_value <= 1.0


def test_mmd_permutation_p_value_is_uniform_under_the_null_and_small_under_a_shift():
    rng = np.random.default_rng(4)
    ps = [
        S.mmd_test(rng.normal(size=(50, 2)), rng.normal(size=(50, 2)), 1.0, 99, s).p_value
        for s in range(60)
    ]
    assert np.mean(np.array(ps) <= 0.1) <= 0.1 + 3 * math.sqrt(0.09 / 60)
    shifted = S.mmd_test(rng.normal(size=(100, 2)), rng.normal(1.0, 1, size=(100, 2)), 1.0, 199, 0)
    assert shifted.p_value == pytest.approx(1 / 200)


def test_holm_and_bh_against_statsmodels_formulas():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.5])
    # Holm: sorted p_(i) * (m - i + 1), running max, capped at 1
    order = np.argsort(p)
    m = len(p)
    holm = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p[i])
        holm[i] = min(running, 1.0)
    np.testing.assert_allclose(S.holm(p), holm)
    bh = np.empty(m)
    running = 1.0
    for rank in range(m - 1, -1, -1):
        i = order[rank]
        running = min(running, p[i] * m / (rank + 1))
        bh[i] = running
    np.testing.assert_allclose(S.benjamini_hochberg(p), bh)
    assert S.holm(np.array([])).size == 0


def test_weighted_holm_by_hand_and_its_family_wise_error():
    p = np.array([0.01, 0.04, 0.03])
    # order by p / w: 0.01, 0.02, 0.03; weight left 4, 3, 1 -> factors 4, 1.5, 1
    np.testing.assert_allclose(S.holm(p, np.array([1.0, 2.0, 1.0])), [0.04, 0.06, 0.06])
    q = np.array([0.01, 0.04, 0.03, 0.005, 0.5])
    np.testing.assert_allclose(S.holm(q, np.full(5, 3.0)), S.holm(q))  # equal = plain
    w = np.array([1.0, 2.0, 0.5, 4.0, 1.0])
    np.testing.assert_allclose(S.holm(q, w), S.holm(q, 10 * w))  # any scale
    with pytest.raises(ValueError, match="positive"):
        S.holm(q, np.array([1.0, 0.0, 1.0, 1.0, 1.0]))
    # under the global null the least adjusted p-value is at most alpha with at most
    # probability alpha, however skewed the weights
    rng = np.random.default_rng(0)
    trials, alpha = 20_000, 0.05
    skew = np.array([8.0, 4.0, 2.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.1])
    hits = sum(S.holm(rng.random(10), skew).min() <= alpha for _ in range(trials))
    assert hits / trials <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)


def test_exact_resamples_let_a_refined_test_alarm_after_holm():
    """Holm multiplies the smallest p-value by the number of tests: the Monte Carlo
    p-value's floor times that number must be below the level, for any table width."""
    from anomaly_vae.drift.check import MMD_PERMUTATIONS, exact_resamples

    assert exact_resamples(4, 0.05) == MMD_PERMUTATIONS
    for n_tests in (4, 10, 76, 130, 250):
        p = exact_resamples(n_tests, 0.05)
        assert n_tests / (1 + p) <= 0.05 / 2


def test_chi_square_with_rare_levels_keeps_its_level_on_small_windows():
    """Levels a 100-row window expects less than once (a rare category, a rare
    contribution value) are merged before the test: without it the chi-square
    approximation alarmed on unchanged data far above its level."""
    rng = np.random.default_rng(5)
    probs = np.array([0.9, 0.05, 0.02, 0.01, 0.01, 0.005, 0.005])
    ref = rng.multinomial(1000, probs)
    trials, alarms = 600, 0
    for _ in range(trials):
        win = rng.multinomial(100, probs)
        alarms += S.chi2_two_sample(ref, win, ordered=False)[1] <= 0.05
    assert alarms / trials <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)


def test_sparse_tables_get_exact_p_values_in_the_far_tail():
    """A binary column whose rare level a 100-row window expects 1.1 times: the
    asymptotic chi-square rejects at about four times a Holm-sized level (0.001); the
    exact conditional p-value (Fisher's test) holds it."""
    rng = np.random.default_rng(11)
    probs = np.array([0.989, 0.011])
    ref = rng.multinomial(20_000, probs)
    trials, level = 4000, 0.001
    asymptotic = exact = 0
    for _ in range(trials):
        win = rng.multinomial(100, probs)
        asymptotic += S.chi2_two_sample(ref, win)[1] <= level
        exact += S.chi2_two_sample(ref, win, resamples=999, screen=level)[1] <= level
    bound = level + 3 * math.sqrt(level * (1 - level) / trials)
    assert exact / trials <= bound
    assert asymptotic / trials > 3 * level  # why the refinement exists


def test_exact_p_value_is_fishers_or_scipys_monte_carlo():
    ref, win = np.array([35_000, 870]), np.array([91, 9])
    _, p, _ = S.chi2_two_sample(ref, win, resamples=999)
    assert p == pytest.approx(sps.fisher_exact(np.vstack([ref, win])).pvalue)
    ref3, win3 = np.array([30_000, 1500, 1200]), np.array([360, 30, 10])
    _, p3, dof = S.chi2_two_sample(ref3, win3, resamples=999, seed=(0, 3))
    method = sps.MonteCarloMethod(n_resamples=999, rng=np.random.default_rng((0, 3)))
    want = sps.chi2_contingency(np.vstack([ref3, win3]), correction=False, method=method)
    assert p3 == pytest.approx(want.pvalue) and dof == 2
    # the screen: a table whose asymptotic p-value could not alarm keeps it
    _, p_screened, _ = S.chi2_two_sample(ref3, win3, resamples=999, screen=1e-9)
    assert p_screened == pytest.approx(
        sps.chi2_contingency(np.vstack([ref3, win3]), correction=False).pvalue
    )
    # a table with every expected count large keeps the asymptotic value
    big_r, big_w = np.array([5000, 5000, 5000]), np.array([900, 1000, 1100])
    _, p_big, _ = S.chi2_two_sample(big_r, big_w, resamples=999)
    assert p_big == pytest.approx(sps.chi2_contingency(np.vstack([big_r, big_w])).pvalue)


def test_binned_ks_is_scipys_ks_on_the_bin_indices():
    """The statistic and p-value equal ks_2samp's (asymptotic) on samples whose values
    are the bins' indices, and with fine bins D is close to the unbinned D."""
    rng = np.random.default_rng(7)
    ref, win = rng.normal(0, 1, 4000), rng.normal(0.2, 1, 300)
    cuts = quantile_cuts(ref, bins=100)
    rc, wc = bin_counts(ref, cuts), bin_counts(win, cuts)
    got = S.binned_ks(rc, wc)
    idx_r, idx_w = np.repeat(np.arange(rc.size), rc), np.repeat(np.arange(wc.size), wc)
    want = sps.ks_2samp(idx_r, idx_w, method="asymp")
    assert got.statistic == pytest.approx(want.statistic, abs=1e-12)
    assert got.p_value == pytest.approx(want.pvalue, rel=1e-9)
    assert got.statistic <= sps.ks_2samp(ref, win).statistic + 1e-12
    assert got.statistic == pytest.approx(sps.ks_2samp(ref, win).statistic, abs=0.02)
    assert S.binned_ks(rc, np.zeros_like(rc)).p_value == 1.0


@pytest.mark.parametrize("test", [S.binned_ks, S.binned_rank_sum])
@pytest.mark.parametrize("size", [30, 100, 1000])
def test_binned_tests_keep_their_level_on_ties_and_small_windows(size, test):
    """Discrete values (ties at the cuts) and small windows: the false-alarm rate on
    unchanged data stays within the binomial bound of the level."""
    rng = np.random.default_rng(size)
    values = np.round(rng.gamma(2.0, 1.0, 200_000), 1)  # many ties
    ref = values[:5000]
    cuts = atom_cuts(ref)
    rc = bin_counts(ref, cuts)
    trials = 400
    alarms = sum(
        test(rc, bin_counts(rng.choice(values[5000:], size), cuts)).p_value <= 0.05
        for _ in range(trials)
    )
    assert alarms / trials <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)


def test_atom_cuts_let_ks_see_a_shift_smaller_than_the_gaps_between_values():
    """A discrete column moved by 0.3 (its values are 1 apart): midpoint cuts keep every
    value in its bin and see nothing; cuts at the values and just below them see every
    atom move, in either direction."""
    rng = np.random.default_rng(3)
    probs = np.array([0.3, 0.25, 0.2, 0.1, 0.1, 0.05])
    ref = rng.choice(6, 5000, p=probs).astype(np.float64)
    win = rng.choice(6, 200, p=probs).astype(np.float64)
    mid = quantile_cuts(ref, bins=100)
    atoms = atom_cuts(ref)
    for delta in (0.3, -0.3):
        assert S.binned_ks(bin_counts(ref, mid), bin_counts(win + delta, mid)).p_value > 0.5
        assert S.binned_ks(bin_counts(ref, atoms), bin_counts(win + delta, atoms)).p_value < 1e-6
    # unshifted, the same window is not called different
    assert S.binned_ks(bin_counts(ref, atoms), bin_counts(win, atoms)).p_value > 0.05


@pytest.mark.parametrize(
    ("bins", "n_ref", "n_win", "shift"), [(100, 4000, 300, 0.2), (6, 50, 20, 0.0), (3, 10, 1, 1.0)]
)
def test_binned_rank_sum_is_scipys_mann_whitney_on_the_bin_indices(bins, n_ref, n_win, shift):
    """z, the p-value and the probability of superiority equal mannwhitneyu's
    (asymptotic, tie-corrected, with continuity correction) on samples whose values are
    the bins' indices, heavy ties included."""
    rng = np.random.default_rng(bins + n_win)
    ref = rng.normal(0, 1, n_ref)
    win = rng.normal(shift, 1, n_win)
    cuts = quantile_cuts(ref, bins=bins)
    rc, wc = bin_counts(ref, cuts), bin_counts(win, cuts)
    got = S.binned_rank_sum(rc, wc)
    idx_r, idx_w = np.repeat(np.arange(rc.size), rc), np.repeat(np.arange(wc.size), wc)
    want = sps.mannwhitneyu(idx_w, idx_r, method="asymptotic")
    assert got.p_value == pytest.approx(want.pvalue, rel=1e-9)
    assert got.effect == pytest.approx(want.statistic / (n_ref * n_win) - 0.5, abs=1e-12)
    assert np.sign(got.statistic) == np.sign(got.effect)


def test_binned_rank_sum_sees_the_direction_and_nothing_in_one_bin():
    ref = np.array([100, 100, 100, 100])
    assert S.binned_rank_sum(ref, np.array([0, 0, 10, 30])).statistic > 0
    assert S.binned_rank_sum(ref, np.array([30, 10, 0, 0])).statistic < 0
    assert S.binned_rank_sum(ref, np.zeros(4)).p_value == 1.0
    # everything tied: no ranks to compare
    assert S.binned_rank_sum(np.array([0, 50, 0]), np.array([0, 5, 0])).p_value == 1.0
