"""The marginal channel: each column judged on its own (ECOD's statistic, calibrated on
the calibration rows) beside log p(x), the record's p-value their weighted Bonferroni."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from anomaly_vae import TabularDetector
from anomaly_vae.detector import split_rows
from anomaly_vae.exceptions import BundleError, CalibrationWarning
from anomaly_vae.scoring.marginal import MarginalTails
from tests.helpers import edit_bundle_document


def correlated(n: int, seed: int) -> pd.DataFrame:
    """Four numeric columns that move together (one factor plus a little noise), a
    boolean and an integer-coded column with 3 levels."""
    rng = np.random.default_rng(seed)
    f = rng.normal(size=n)
    cols = {f"x{j}": f + rng.normal(0, 0.3, n) for j in range(4)}
    cols["flag"] = rng.random(n) < 0.3
    cols["level"] = rng.integers(0, 3, n)
    return pd.DataFrame(cols)


@pytest.fixture(scope="module")
def det() -> TabularDetector:
    return TabularDetector(seed=0, max_epochs=30).fit(correlated(600, 0))


def hand_p_values(det: TabularDetector, frame: pd.DataFrame) -> np.ndarray:
    arrays = det.encode_rows(frame)
    ll = det.score_encoded(arrays).log_likelihood
    p_joint = det.calibration_.p_values(ll)
    assert det.marginal_ is not None and det.marginal_calibration_ is not None
    stat = det.marginal_.statistic(det.marginal_cells(arrays))
    p_marginal = det.marginal_calibration_.p_values(-stat)
    w = det.marginal_weight_
    p = np.minimum(p_joint / (1 - w), p_marginal / w)
    # below what both tests resolve, a tie: the larger scaled floor
    floor = max(1 / (1 - w), 1 / w) / (det.calibration_.n + 1)
    return np.minimum(1.0, np.maximum(p, floor))


def test_p_value_is_the_weighted_bonferroni_of_the_two_tests(det):
    frame = correlated(300, 1)
    assert det.marginal_weight_ == 0.35
    out = det.score(frame)
    np.testing.assert_allclose(out["p_value"].to_numpy(), hand_p_values(det, frame), rtol=1e-12)
    np.testing.assert_array_equal(out["is_outlier"].to_numpy(), out["p_value"].to_numpy() <= 0.05)
    decision = det.decision_function(frame)
    np.testing.assert_array_equal(decision < 0, out["is_outlier"].to_numpy())
    # log p(x) itself is untouched
    np.testing.assert_array_equal(out["log_likelihood"].to_numpy(), det.score_samples(frame))


def test_rows_beyond_what_both_tests_resolve_tie_and_flags_do_not_move(det):
    """Far out in every column and off the joint pattern: both tests at their floors. The
    combined p-value stops at the larger scaled floor for all of them, so log p(x) orders
    them (the benchmarks' ranking), and flags are the unfloored p-value's at alpha."""
    frame = correlated(300, 12)
    frame.loc[:4, "x0"] = [8.0, 9.0, 10.0, 11.0, 12.0]
    frame.loc[:4, "x3"] = -8.0
    out = det.score(frame)
    floor = (1 / det.marginal_weight_) / (det.calibration_.n + 1)
    np.testing.assert_allclose(out["p_value"].iloc[:5], floor, rtol=1e-12)
    assert (out["p_value"] >= floor * (1 - 1e-12)).all()
    assert out["is_outlier"].iloc[:5].all()
    arrays = det.encode_rows(frame)
    res = det.score_encoded(arrays, contributions=True)
    p_all = det._channel_p_values(det.calibration_.p_values(res.log_likelihood), None, [], arrays)
    unfloored = (p_all * det._channel_scale()).min(axis=1)
    np.testing.assert_array_equal(out["is_outlier"].to_numpy(), unfloored <= det.alpha)


def test_fitted_on_the_training_rows_and_calibrated_on_the_calibration_rows(det):
    frame = correlated(600, 0)
    cal, _, train = split_rows(600, 0, det.calibration_fraction, det.validation_fraction)
    cells = det.marginal_cells(det.encode_rows(frame))
    assert cells.shape == (600, 6)  # 4 numeric, the integer-coded column, the boolean
    want = MarginalTails.fit(cells[train], seed=0)
    np.testing.assert_array_equal(det.marginal_.values, want.values)
    assert det.marginal_calibration_.n == len(cal)
    np.testing.assert_array_equal(
        det.marginal_calibration_.reference, np.sort(-want.statistic(cells[cal]))
    )


def test_rows_far_out_in_every_column_but_consistent_are_found_by_it(det):
    """The columns move together, so a row at +3.5 in all four fits the joint pattern; the
    marginal test ranks it first among normal rows."""
    frame = correlated(200, 2)
    frame.loc[0, ["x0", "x1", "x2", "x3"]] = 3.5
    arrays = det.encode_rows(frame)
    stat = det.marginal_.statistic(det.marginal_cells(arrays))
    assert int(np.argmax(stat)) == 0
    assert det.score(frame.iloc[[0]])["p_value"].iloc[0] <= hand_p_values(det, frame)[0] + 1e-15


def test_turned_off_the_p_value_is_log_p_alone():
    frame = correlated(300, 3)
    off = TabularDetector(seed=0, max_epochs=5, marginal_channel=0).fit(frame)
    assert off.marginal_ is None and off.marginal_calibration_ is None
    out = off.score(frame)
    np.testing.assert_array_equal(
        out["p_value"], off.calibration_.p_values(out["log_likelihood"].to_numpy())
    )


@pytest.mark.parametrize("bad", [1.0, -0.1, True, "0.3", None])
def test_bad_weight_is_refused(bad):
    with pytest.raises(ValueError, match=r"marginal_channel must be a number in \[0, 1\)"):
        TabularDetector(marginal_channel=bad).fit(correlated(100, 0))


def test_a_row_with_missing_cells_is_judged_against_rows_missing_the_same(det):
    frame = correlated(50, 4)
    frame.loc[:9, "x2"] = np.nan
    got = det.score(frame)["p_value"].to_numpy()
    ref = det.__dict__["_pattern_marginal"][(2,)]
    rows = det.pattern_rows((2,))
    want_ref = det.marginal_calibration_.__class__.fit(
        -det.marginal_.statistic(det.marginal_cells(rows)), alpha=0.05
    )
    np.testing.assert_array_equal(ref.reference, want_ref.reference)
    arrays = det.encode_rows(frame.iloc[:10])
    stat = det.marginal_.statistic(det.marginal_cells(arrays))
    p_marginal = ref.p_values(-stat)
    assert (got[:10] <= p_marginal / det.marginal_weight_ + 1e-15).all()


def test_explain_names_the_deepest_cell_of_a_row_flagged_by_it_alone(det):
    """Rows moved together along the factor (2.0 to 2.8, x1 0.8 further): the joint
    pattern holds, so some are flagged by the marginal test alone (5 of the 20 planted,
    and 2 normal rows, with these seeds), and explain names the cell deepest in its
    column's tail first, x1 for the planted ones, though the nats may point elsewhere."""
    frame = correlated(400, 5)
    frame.loc[:19, ["x0", "x1", "x2", "x3"]] = np.repeat(np.linspace(2.0, 2.8, 20)[:, None], 4, 1)
    frame.loc[:19, "x1"] += 0.8
    arrays = det.encode_rows(frame)
    res = det.score_encoded(arrays, contributions=True)
    p_joint = det.calibration_.p_values(res.log_likelihood)
    p_all = det._channel_p_values(p_joint, res.contributions, [], arrays)
    scaled = p_all * det._channel_scale()
    alone = (scaled[:, 1] <= 0.05) & (scaled[:, 0] > 0.05)
    planted = np.arange(400) < 20
    assert (alone & planted).sum() >= 3, "some planted rows must be flagged by it alone"
    first = det.explain(frame, top=1).set_index("row")["feature"].to_numpy()
    cells = det.marginal_.cell_surprise(det.marginal_cells(arrays))
    deepest = np.array(det.feature_names_)[det.marginal_features()[cells.argmax(1)]]
    np.testing.assert_array_equal(first[alone], deepest[alone])
    assert set(first[alone & planted]) == {"x1"}


def test_recalibrate_moves_the_marginal_reference_too():
    fresh = correlated(400, 6)
    again = TabularDetector(seed=0, max_epochs=5).fit(correlated(600, 0))
    again.recalibrate(fresh, alpha=0.05)
    assert again.marginal_calibration_.n == 400
    stat = again.marginal_.statistic(again.marginal_cells(again.encode_rows(fresh)))
    np.testing.assert_array_equal(again.marginal_calibration_.reference, np.sort(-stat))


def test_contamination_mode_cuts_the_combined_p_value():
    det = TabularDetector(seed=1, max_epochs=10, contamination=0.1).fit(correlated(600, 7))
    assert det.channel_cut_ is not None
    out = det.score(correlated(600, 7))
    np.testing.assert_array_equal(
        out["is_outlier"].to_numpy(), np.log(out["p_value"].to_numpy()) < det.channel_cut_
    )


def test_too_few_calibration_rows_warn_and_flag_by_log_p():
    """40 calibration rows: the marginal test's smallest p-value over its share,
    (1 / 41) / 0.35 = 0.07, cannot reach alpha 0.05."""
    with pytest.warns(CalibrationWarning, match="the columns on their own"):
        det = TabularDetector(seed=0, max_epochs=5).fit(correlated(200, 8))
    out = det.score(correlated(100, 9))
    ll = out["log_likelihood"].to_numpy()
    np.testing.assert_array_equal(out["is_outlier"].to_numpy(), ll < det.offset_)


def test_survives_the_bundle_and_an_older_bundle_judges_by_log_p(det, tmp_path):
    frame = correlated(200, 10)
    want = det.score(frame)
    bundle = det.save(tmp_path / "b")
    loaded = TabularDetector.load(bundle)
    pd.testing.assert_frame_equal(loaded.score(frame), want)
    assert loaded.marginal_weight_ == 0.35
    edit_bundle_document(bundle, "calibration.json", lambda cal: cal.pop("marginal"))
    with pytest.raises(BundleError, match="marginal channel is incomplete"):
        TabularDetector.load(bundle)


def test_an_older_bundle_without_the_channel_loads_and_judges_by_log_p(tmp_path):
    frame = correlated(300, 11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        old = TabularDetector(seed=0, max_epochs=5, marginal_channel=0).fit(frame)
    loaded = TabularDetector.load(old.save(tmp_path / "b"))
    assert loaded.marginal_ is None
    pd.testing.assert_frame_equal(loaded.score(frame), old.score(frame))
