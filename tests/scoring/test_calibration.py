"""Conformal p-values and thresholds; the false-positive rate on fresh normal data."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_vae.exceptions import CalibrationWarning
from anomaly_vae.scoring.calibration import MAX_REFERENCE, Calibration


def test_p_value_formula_and_threshold_agree():
    ref = np.arange(1.0, 100.0)  # n = 99
    cal = Calibration.fit(ref, alpha=0.05)
    # (1 + #{r <= s}) / (n + 1)
    np.testing.assert_allclose(
        cal.p_values(np.array([0.5, 1.0, 4.0, 4.5, 200.0])), [0.01, 0.02, 0.05, 0.05, 1.0]
    )
    s = np.linspace(-5, 120, 2001)
    np.testing.assert_array_equal(cal.is_outlier(s), cal.p_values(s) <= 0.05)


def test_contamination_threshold_is_the_quantile():
    ref = np.random.default_rng(0).normal(size=1000)
    cal = Calibration.fit(ref, alpha=None, contamination=0.1)
    assert cal.method == "contamination"
    assert abs(cal.is_outlier(ref).mean() - 0.1) < 0.002


def test_too_small_for_alpha_warns_and_falls_back():
    with pytest.warns(
        CalibrationWarning,
        match=r"calibration set has 10 rows, too few for alpha=0.05 \(needs at least 19\)",
    ):
        cal = Calibration.fit(np.arange(10.0), alpha=0.05)
    assert cal.threshold == 0.0  # only records below every reference row are flagged
    assert not cal.is_outlier(np.array([0.0]))[0] and cal.is_outlier(np.array([-0.1]))[0]


def test_identical_scores_warn():
    with pytest.warns(CalibrationWarning, match="all 50 calibration scores are identical"):
        Calibration.fit(np.full(50, 3.0), alpha=0.1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 0.0}, r"alpha must be in \(0, 1\)"),
        ({"alpha": None, "contamination": 0.7}, r"contamination must be in \(0, 0.5\)"),
        ({"alpha": 0.1, "contamination": 0.1}, "give exactly one of alpha"),
    ],
)
def test_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Calibration.fit(np.arange(100.0), **kwargs)


def test_non_finite_and_empty_reference_refused():
    with pytest.raises(ValueError, match=r"non-finite at positions \[2\]"):
        Calibration.fit(np.array([1.0, 2.0, np.nan]), alpha=0.1)
    with pytest.raises(ValueError, match="at least one reference score"):
        Calibration.fit(np.array([]), alpha=0.1)


def test_large_reference_is_thinned_but_p_values_barely_move():
    ref = np.random.default_rng(1).normal(size=5 * MAX_REFERENCE)
    cal = Calibration.fit(ref, alpha=0.01)
    assert cal.reference.size == MAX_REFERENCE and cal.n == ref.size
    s = np.linspace(-3, 3, 50)
    exact = (1 + np.searchsorted(np.sort(ref), s, side="right")) / (ref.size + 1)
    assert np.max(np.abs(cal.p_values(s) - exact)) < 2.0 / MAX_REFERENCE
    round_trip = Calibration.from_dict(cal.to_dict())
    np.testing.assert_array_equal(round_trip.p_values(s), cal.p_values(s))


def test_false_positive_rate_on_fresh_normal_data():
    """Flagged fraction of fresh rows from the training distribution, alpha = 0.05,
    averaged over seeds, within 0.015 of 0.05 (the conformal guarantee at work)."""
    from anomaly_vae import TabularDetector
    from tests.conftest import make_mixed

    rates = []
    for seed in range(3):
        train = make_mixed(2400, seed=100 + seed)
        det = TabularDetector(
            id_column="id", seed=seed, k=16, alpha=0.05, calibration_fraction=0.5, max_epochs=15
        )
        det.fit(train)
        fresh = make_mixed(4000, seed=200 + seed)
        rates.append(float(det.score(fresh)["is_outlier"].mean()))
    assert abs(np.mean(rates) - 0.05) <= 0.015, rates
