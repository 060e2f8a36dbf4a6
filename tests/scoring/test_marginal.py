"""The marginal channel's statistic: per-cell empirical tail surprise (ECOD's)."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_vae.scoring.marginal import MAX_CELLS, MAX_ROWS, MIN_ROWS, MarginalTails


def test_cell_surprise_counts_the_smaller_tail_with_the_cell_itself():
    tails = MarginalTails.fit(np.arange(1.0, 10.0)[:, None])  # n = 9
    x = np.array([[0.0], [1.0], [5.0], [9.0], [12.0]])
    # le = #{v <= x}, ge = #{v >= x}; surprise log(n + 1) - log(min(le, ge) + 1)
    le = np.array([0, 1, 5, 9, 9])
    ge = np.array([9, 9, 5, 1, 0])
    want = np.log(10) - np.log(np.minimum(le, ge) + 1)
    np.testing.assert_allclose(tails.cell_surprise(x)[:, 0], want)
    assert tails.cell_surprise(np.array([[5.0]]))[0, 0] == pytest.approx(np.log(10 / 6))


def test_tail_counts_per_cell_with_missing_cells_and_an_empty_column():
    train = np.array([[1.0, np.nan], [2.0, np.nan], [2.0, np.nan], [4.0, np.nan]])
    tails = MarginalTails.fit(train)
    x = np.array([[2.0, 1.0], [np.nan, 1.0], [0.0, np.nan], [9.0, 0.0]])
    le, ge, observed = tails.tail_counts(x)
    # column 0: values 1, 2, 2, 4; column 1 has none, so no cell of it counts
    np.testing.assert_array_equal(le[:, 0], [3, 0, 0, 4])
    np.testing.assert_array_equal(ge[:, 0], [3, 0, 4, 0])
    np.testing.assert_array_equal(
        observed, [[True, False], [False, False], [True, False], [True, False]]
    )
    assert le.dtype == ge.dtype == np.int64
    assert not le[:, 1].any() and not ge[:, 1].any()
    with pytest.raises(ValueError, match=r"expected rows of shape \[N, 2\], got shape \(3,\)"):
        tails.tail_counts(np.zeros(3))


def test_statistic_is_invariant_to_a_monotone_recoding():
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(300, 3)), rng.normal(size=(50, 3))
    a = MarginalTails.fit(train).statistic(test)
    b = MarginalTails.fit(np.exp(train) * 7 - 2).statistic(np.exp(test) * 7 - 2)
    np.testing.assert_allclose(a, b)


def test_ranks_a_shifted_row_first_and_ignores_missing_cells():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(500, 4))
    test = rng.normal(size=(20, 4))
    test[3, 2] = 6.0  # one column far out
    stat = MarginalTails.fit(train).statistic(test)
    assert int(np.argmax(stat)) == 3
    missing = test.copy()
    missing[3, 2] = np.nan
    cells = MarginalTails.fit(train).cell_surprise(missing)
    assert cells[3, 2] == 0.0
    np.testing.assert_allclose(cells[:, :2], MarginalTails.fit(train).cell_surprise(test)[:, :2])


def test_missing_training_cells_and_an_all_missing_column():
    train = np.array([[1.0, np.nan], [2.0, np.nan], [np.nan, np.nan], [3.0, np.nan]])
    tails = MarginalTails.fit(train)
    assert tails.counts.tolist() == [3, 0]
    out = tails.cell_surprise(np.array([[10.0, 4.0]]))
    assert out[0, 0] == pytest.approx(np.log(4))  # beyond all 3 values
    assert out[0, 1] == 0.0  # no evidence from a column never seen


def test_constant_column_gives_nothing_for_its_value_and_everything_off_it():
    tails = MarginalTails.fit(np.zeros((99, 1)))
    out = tails.cell_surprise(np.array([[0.0], [0.5]]))[:, 0]
    assert out[0] == 0.0
    assert out[1] == pytest.approx(np.log(100))


def test_large_and_wide_tables_keep_a_bounded_seeded_subset():
    rng = np.random.default_rng(2)
    tall = rng.normal(size=(MAX_ROWS + 500, 2))
    t = MarginalTails.fit(tall, seed=3)
    assert t.values.shape == (MAX_ROWS, 2)
    np.testing.assert_array_equal(t.values, MarginalTails.fit(tall, seed=3).values)
    wide = rng.normal(size=(3000, 2000))
    w = MarginalTails.fit(wide)
    assert w.values.shape[0] == max(MIN_ROWS, MAX_CELLS // 2000)
    assert w.values.size <= MAX_CELLS


def test_round_trip_and_bad_shapes():
    rng = np.random.default_rng(4)
    tails = MarginalTails.fit(rng.normal(size=(50, 3)))
    again = MarginalTails.from_dict(tails.to_dict())
    x = rng.normal(size=(10, 3))
    np.testing.assert_array_equal(again.statistic(x), tails.statistic(x))
    with pytest.raises(ValueError, match=r"shape \[N, 3\]"):
        tails.statistic(x[:, :2])
    with pytest.raises(ValueError, match="shape \\[N, D\\]"):
        MarginalTails.fit(np.zeros(5))
    with pytest.raises(ValueError, match="disagree"):
        MarginalTails.from_dict({"values": np.zeros((4, 3)), "counts": np.zeros(2)})
