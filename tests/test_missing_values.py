"""Records with missing cells: scored by marginalizing the cells, judged against
calibration rows missing the same cells, never explained by a missing cell, and a
boolean column with missing values stays boolean."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from anomaly_vae import TabularDetector
from anomaly_vae.data.schema import infer_schema
from tests.conftest import make_mixed


@pytest.fixture(scope="module")
def normal() -> pd.DataFrame:
    return make_mixed(3000, seed=31)


@pytest.mark.parametrize("column", ["a", "c"])
def test_p_values_of_incomplete_rows_are_calibrated_on_the_same_pattern(fitted, normal, column):
    """Normal rows with one column missing: against complete rows' scores the flag rate
    was far from alpha (``a`` missing: half of the normal rows flagged); against the
    calibration rows with the same cell removed it is near alpha = 0.05 (160
    calibration rows: its standard deviation is about 0.017)."""
    window = normal.assign(**{column: np.nan})
    out = fitted.score(window)
    assert 0.01 <= out["is_outlier"].mean() <= 0.11
    naive = fitted.calibration_.is_outlier(fitted.score_samples(window)).mean()
    if column == "a":
        assert naive > 0.3  # why: fewer terms, another scale of log p(x)
    np.testing.assert_array_equal(fitted.predict(window) == -1, out["is_outlier"].to_numpy())
    np.testing.assert_allclose(fitted.p_values(window), out["p_value"])
    complete = fitted.score(normal)
    np.testing.assert_allclose(complete["p_value"], joint_and_color_p(fitted, normal))


def joint_and_color_p(det: TabularDetector, frame: pd.DataFrame) -> np.ndarray:
    """Complete rows' p-values as the detector's channels define them: the weighted
    Bonferroni over log p(x)'s and the color's conformal p-values against the calibration
    rows (sharing 1 - w) and the marginal statistic's (w), at least the larger scaled
    floor."""
    ll = det.score_samples(frame)
    color = det.contributions(frame)["color"].to_numpy()
    p = np.column_stack([det.calibration_.p_values(ll), det.channels_["color"].p_values(color)])
    w = det.marginal_weight_
    stat = det.marginal_.statistic(det.marginal_cells(det.encode_rows(frame)))
    p_marginal = det.marginal_calibration_.p_values(-stat)
    combined = np.minimum(2 * p.min(1) / (1 - w), p_marginal / w)
    floor = max(2 / (1 - w), 1 / w) / (det.calibration_.n + 1)  # the larger scaled floor
    return np.minimum(1.0, np.maximum(combined, floor))


def test_a_missing_numeric_cell_recalibrates_the_category_channel_too(fitted, normal):
    """color follows a's sign: with a missing, the color's probability given the rest is
    another quantity. Against the complete rows' color reference 14% of these normal
    rows were flagged at alpha = 0.05 (measured); against the pattern's own, near 5%."""
    window = normal.assign(a=np.nan)
    out = fitted.score(window)
    assert 0.01 <= out["is_outlier"].mean() <= 0.11
    naive = joint_and_color_p(fitted, window)  # the complete rows' color reference
    assert (naive <= fitted.alpha).mean() > 0.09  # measured 0.14: well above alpha


def test_outliers_with_a_missing_cell_are_still_found(fitted, mixed_test):
    """With color missing, the joint outliers' log p(x) still ranks among the smallest
    of the calibration rows missing the same cell (p-values 1/161 to 4/161), so a
    missing cell does not hide them. Flagged: 15 of 15 when log p(x)'s test had half
    of alpha (4/161 * 2 <= 0.05), 4 of 15 at its 0.325 beside the color's test and the
    marginal one: the level given to the columns on their own is taken from the joint
    test, and 160 calibration rows cannot resolve p-values below 1/161."""
    frame, y = mixed_test
    holes = frame.assign(color=np.nan)
    out = fitted.score(holes)
    arrays = fitted.encode_rows(holes)
    p_joint = fitted._joint_calibrated(fitted.score_samples(holes), arrays)[0]
    assert (p_joint[y] <= 4 / 161 + 1e-12).all()
    assert roc_auc_score(y, -np.log(out["p_value"]) - 1e-6 * out["log_likelihood"]) > 0.95
    assert out.loc[y, "is_outlier"].mean() > 0.2


def test_a_row_with_nothing_observed_is_flagged(fitted):
    row = make_mixed(2, seed=3).astype({"flag": object})
    row.loc[0, ["a", "b", "c", "color", "flag"]] = None
    out = fitted.score(row)
    assert out["is_outlier"].tolist()[0] is True


def test_calibration_rows_round_trip_and_old_bundles_fall_back(fitted, normal, tmp_path):
    window = normal.head(300).assign(c=np.nan)
    want = fitted.score(window)
    loaded = TabularDetector.load(fitted.save(tmp_path / "b"))
    np.testing.assert_array_equal(loaded.score(window)["p_value"], want["p_value"])
    loaded.calibration_rows_ = None  # a bundle from before: complete rows' reference
    old = loaded.score(window)
    np.testing.assert_allclose(old["p_value"], joint_and_color_p(loaded, window))


def test_explain_never_names_a_missing_cell(fitted, mixed_test):
    frame, _ = mixed_test
    holes = frame.copy()
    holes.loc[holes.index[::2], "c"] = np.nan
    holes.loc[holes.index[1::2], "b"] = np.nan
    got = fitted.explain(holes, top=5)
    named = got.merge(holes.reset_index(names="row"), on="row")
    for col in ("b", "c"):
        assert not ((named["feature"] == col) & named[col].isna()).any()
    assert (got.groupby("row").size() == 4).all()  # five columns, one missing in each row


def test_a_boolean_column_with_missing_values_stays_boolean():
    frame = make_mixed(50, seed=4)
    frame["flag"] = frame["flag"].astype(object)
    frame.loc[[3, 7], "flag"] = None
    kinds = {c.name: c.kind for c in infer_schema(frame, id_column="id").columns}
    assert kinds["flag"] == "boolean"
    det = TabularDetector(id_column="id", max_epochs=2).fit(
        make_mixed(200, 5).assign(
            flag=lambda f: f["flag"].astype(object).where(f.index % 10 != 0, None)
        )
    )
    assert {c.name: c.kind for c in det.schema_.columns}["flag"] == "boolean"
