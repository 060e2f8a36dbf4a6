"""Drift checks end to end on tiny seeded data: the reference, the verdicts, the rules
against noise at large windows, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anomaly_vae import ImageDetector, TabularDetector
from anomaly_vae.drift import check_drift, window_stats
from anomaly_vae.drift.check import evaluate
from anomaly_vae.drift.reference import (
    REFERENCE_FORMAT,
    bin_counts,
    sorted_bin_counts,
    sorted_columns,
)
from anomaly_vae.exceptions import BundleError, SchemaError
from tests.conftest import make_mixed
from tests.test_image_detector import squares


def test_reference_is_in_the_bundle_and_round_trips(fitted, tmp_path):
    ref = fitted.reference_
    assert ref["format"] == REFERENCE_FORMAT
    assert set(ref["features"]) == {"a", "b", "c", "color", "flag"}
    a = ref["features"]["a"]
    # the features' statistics take every row given (no model needed); "a" has no NaN
    assert a["kind"] == "numeric" and sum(a["counts"]) == fitted.training_["n_rows"]
    assert a["missing"] == 0 and ref["n_train"] == fitted.training_["n_rows"]
    assert len(a["counts"]) == len(a["cuts"]) + 1
    color = ref["features"]["color"]
    assert color["levels"][-1] == "(unknown)" and len(color["counts"]) == len(color["levels"])
    assert ref["features"]["flag"]["levels"] == ["false", "true"]
    assert len(ref["latent"]["sample"]) == min(1000, fitted.training_["n_calibration"])
    assert ref["contributions"]["names"] == fitted.feature_names_
    loaded = TabularDetector.load(fitted.save(tmp_path / "b"))
    assert loaded.reference_ == json.loads(json.dumps(ref))


@pytest.fixture(scope="module")
def images_fitted():
    small = {"max_epochs": 6, "k": 8, "latent_dim": 4, "width_mult": 8, "batch_size": 64}
    return ImageDetector(**small).fit(squares(300, 0))


def test_image_reference_round_trips_and_sees_other_images(images_fitted, tmp_path):
    ref = images_fitted.reference_
    assert ref["format"] == REFERENCE_FORMAT and "features" not in ref
    assert len(ref["latent"]["sample"][0]) == 4
    loaded = ImageDetector.load(images_fitted.save(tmp_path / "b"))
    assert loaded.reference_ == json.loads(json.dumps(ref))
    same = check_drift(loaded, squares(200, 9))
    assert same.verdict == "no_drift", same.fired
    noise = np.random.default_rng(1).integers(0, 256, (200, 1, 16, 16)).astype(np.uint8)
    other = check_drift(loaded, noise)
    assert other.verdict == "drift"
    assert {f["signal"] for f in other.fired} >= {"scores", "outlier_rate"}


def test_unchanged_data_does_not_alarm_at_a_large_window(fitted):
    """20,000 fresh rows of the training distribution: every test is significant only by
    chance, and the margins keep tiny effects from alarming."""
    report = check_drift(fitted, make_mixed(20_000, seed=5))
    assert report.verdict == "no_drift", report.fired
    assert report.n == 20_000
    assert all(f["verdict"] == "no_drift" for f in report.features)


def test_small_window_is_never_called_drift_free(fitted):
    report = check_drift(fitted, make_mixed(40, seed=6))
    assert report.verdict == "too_few_rows"
    assert report.fired == []


def test_a_shifted_column_is_named(fitted):
    frame = make_mixed(2000, seed=7)
    frame["c"] += 1.0  # half the column's standard deviation
    report = check_drift(fitted, frame)
    assert report.verdict == "drift"
    assert report.drifted_features()[0] == "c"
    assert "feature:c" in {f["signal"] for f in report.fired}
    row = report.features[0]
    assert row["q_value"] <= 0.05 and row["effect"] >= row["margin"]


def test_the_alarm_is_weighted_holm_over_every_test_with_the_rank_sum_part(fitted):
    """Each row's p_holm is the weighted Holm adjustment of all the window's p-values,
    each feature's own test at FEATURE_WEIGHT and every other test at 1, recomputed here
    by hand; a numeric column's p-value is Bonferroni over its parts, rank-sum included."""
    from anomaly_vae.drift.check import FEATURE_WEIGHT

    frame = make_mixed(400, seed=11)
    frame["c"] += 0.3
    report = check_drift(fitted, frame)
    rows = [*report.signals.values()]
    for f in report.features:
        rows.append(f)
        if "contribution" in f:
            rows.append(f["contribution"])
    p = np.array([r["p_value"] for r in rows])
    w = np.array([FEATURE_WEIGHT if "feature" in r else 1.0 for r in rows])
    order = sorted(range(len(p)), key=lambda i: p[i] / w[i])
    want, running = np.empty(len(p)), 0.0
    for k, i in enumerate(order):
        left = sum(w[j] for j in order[k:])
        running = max(running, p[i] * left / w[i])
        want[i] = min(running, 1.0)
    np.testing.assert_allclose([r["p_holm"] for r in rows], want, rtol=1e-12)
    c = next(f for f in report.features if f["feature"] == "c")
    parts = [c["chi2_p_value"], c["ks_p_value"], c["rank_sum_p_value"]]
    parts += [c["missing_p_value"]] if "missing_p_value" in c else []
    assert c["p_value"] == pytest.approx(min(1.0, len(parts) * min(parts)), rel=1e-12)
    assert c["superiority"] > 0 and c["rank_sum_z"] > 0  # the column moved up
    assert f"weight {FEATURE_WEIGHT:g}" in report.rule


def test_a_dependence_change_with_every_marginal_kept_is_seen(fitted):
    """b shuffled among rows: its marginal is untouched, its relation to a is gone. The
    marginal test cannot see it; the contribution of b (in nats) can."""
    frame = make_mixed(2000, seed=8)
    frame["b"] = frame["b"].sample(frac=1.0, random_state=0).to_numpy()
    report = check_drift(fitted, frame)
    assert report.verdict == "drift"
    b = next(f for f in report.features if f["feature"] == "b")
    assert b["p_value"] > 0.05  # the marginal test alone would miss it
    assert b["contribution"]["verdict"] == "drift" and b["contribution"]["effect"] < -1.0


def test_a_category_mix_change_is_seen(fitted):
    frame = make_mixed(2000, seed=9)
    frame.loc[frame.index[:400], "color"] = "blue"
    report = check_drift(fitted, frame)
    assert "color" in report.drifted_features()


def test_streamed_halves_merge_to_the_whole(fitted):
    frame = make_mixed(3000, seed=10)
    whole = window_stats(fitted, frame, batch_rows=3000)
    halves = window_stats(fitted, frame, batch_rows=1000)
    assert halves.n == whole.n == 3000
    np.testing.assert_array_equal(halves.score_counts, whole.score_counts)
    for name in whole.feature_counts:
        np.testing.assert_array_equal(halves.feature_counts[name], whole.feature_counts[name])
    np.testing.assert_array_equal(halves.latent_priority, whole.latent_priority)
    a = window_stats(fitted, frame.iloc[:1200])
    b = window_stats(fitted, frame.iloc[1200:])
    merged = a.merge(b)
    np.testing.assert_array_equal(merged.score_counts, whole.score_counts)
    assert merged.flagged == whole.flagged


def test_a_file_window_streams(fitted, tmp_path):
    path = tmp_path / "w.parquet"
    make_mixed(500, seed=11).to_parquet(path)
    report = check_drift(fitted, path, batch_rows=128, allow_extra=True)
    assert report.n == 500 and report.verdict in ("no_drift", "drift")


def test_bad_windows_name_what_is_wrong(fitted):
    frame = make_mixed(200, seed=12).drop(columns=["c"])
    with pytest.raises(SchemaError, match=r"missing columns: \['c'\]"):
        check_drift(fitted, frame)
    with pytest.raises(ValueError, match="the window is empty"):
        check_drift(fitted, make_mixed(200, seed=12).iloc[:0])
    with pytest.raises(FileNotFoundError, match="no such file"):
        check_drift(fitted, "/nonexistent/window.csv")


def test_a_bundle_without_a_reference_names_the_fix(fitted, tmp_path):
    old = TabularDetector.load(fitted.save(tmp_path / "b"))
    old.reference_ = {"score_histogram": {}}  # what bundles before drift monitoring held
    with pytest.raises(BundleError, match="anomaly-vae drift-reference BUNDLE DATA"):
        check_drift(old, make_mixed(200, seed=13))
    old.rebuild_reference(make_mixed(800, seed=0))
    assert check_drift(old, make_mixed(500, seed=14)).verdict == "no_drift"


def test_evaluate_checks_its_level(fitted):
    stats = window_stats(fitted, make_mixed(200, seed=15))
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\), got 2"):
        evaluate(stats, fitted.calibration_, level=2)


def test_a_table_of_repeated_rows_does_not_alarm_on_its_latent_codes():
    """skin's failure mode: a population of few distinct rows, each repeated, so a large
    window holds many copies of each. A sample of latent means taken by record content
    then holds whole clusters of copies (its MMD p-value was below 1e-3 on unchanged
    windows); the latent test counts every row's projections instead."""
    population = make_mixed(300, seed=21).drop(columns="id")
    rng = np.random.default_rng(22)
    train = population.iloc[rng.integers(0, 300, 3000)].reset_index(drop=True)
    det = TabularDetector(seed=0, k=8, max_epochs=8).fit(train)
    for seed in range(3):
        draw = np.random.default_rng(100 + seed).integers(0, 300, 30_000)
        report = check_drift(det, population.iloc[draw].reset_index(drop=True))
        latent = report.signals["latent"]
        assert latent["verdict"] == "no_drift", latent
        assert report.verdict == "no_drift", report.fired
    assert latent["mmd_p_value_descriptive"] < 0.01  # why the MMD is not in the verdict


def test_contributions_of_a_share_of_the_records_are_tested_on_that_share(fitted):
    """A live monitor adds contributions for some requests only: the contribution test
    and its mean shift use those records, the other tests every record."""
    from anomaly_vae.drift import WindowStats

    frame = make_mixed(600, seed=19)
    frame["c"] = frame["c"] + 3.0
    out = fitted.drift_outputs(frame)
    keys = ("normality", "flags", "mu", "kl")

    def add(stats, rows, with_contributions):
        stats.update(
            *(out[k][rows] for k in keys), keys=out["keys"][rows],
            arrays=out["arrays"].take(rows), feature_order=out["feature_order"],
            contributions=out["contributions"][rows] if with_contributions else None,
        )  # fmt: skip

    part, only = WindowStats(fitted.reference_), WindowStats(fitted.reference_)
    add(part, np.arange(0, 200), True)
    add(part, np.arange(200, 600), False)
    add(only, np.arange(0, 200), True)
    assert part.n == 600 and part.contrib_n == 200
    shift = {
        f["feature"]: f["contribution"]["effect"]
        for f in evaluate(part, fitted.calibration_).features
    }
    shift_only = {
        f["feature"]: f["contribution"]["effect"]
        for f in evaluate(only, fitted.calibration_).features
    }
    assert shift == pytest.approx(shift_only)
    assert WindowStats.from_dict(fitted.reference_, part.to_dict()).contrib_n == 200
    none = WindowStats(fitted.reference_)
    add(none, np.arange(600), False)
    assert all("contribution" not in f for f in evaluate(none, fitted.calibration_).features)


def test_one_search_over_the_joint_cuts_gives_both_bin_counts_exactly():
    """Atoms, values on the cuts and just below them, a cut shared by both sets."""
    from anomaly_vae.drift.check import _joint_cuts
    from anomaly_vae.drift.reference import atom_cuts, quantile_cuts

    rng = np.random.default_rng(12)
    ref = np.round(rng.normal(size=3000), 1)  # a discrete column: many ties
    coarse, fine = quantile_cuts(ref), atom_cuts(ref)
    values = np.concatenate(
        [np.round(rng.normal(size=2000), 1), fine, np.nextafter(fine, -np.inf), coarse]
    )
    union, to_coarse, to_fine = _joint_cuts(coarse, fine)
    at = np.searchsorted(union, values, side="left")
    assert np.array_equal(
        np.bincount(to_coarse[at], minlength=coarse.size + 1), bin_counts(values, coarse)
    )
    assert np.array_equal(
        np.bincount(to_fine[at], minlength=fine.size + 1), bin_counts(values, fine)
    )
    # and as WindowStats counts them: union bins from the sorted column, then mapped
    row = sorted_columns(values[:, None])[0]
    per_union = sorted_bin_counts(row, len(values), union)
    assert np.array_equal(np.bincount(to_coarse, per_union), bin_counts(values, coarse))
    assert np.array_equal(np.bincount(to_fine, per_union), bin_counts(values, fine))


def test_counting_on_sorted_columns_is_bin_counts_bin_for_bin():
    """Ties, values on the cuts and just either side, infinities, signed zeros, seen NaNs
    (the last bin, as bin_counts puts them) and unseen entries (left out)."""
    rng = np.random.default_rng(3)
    cuts = np.array([-1.5, -0.0, 0.2, 0.2000000001, 3.0])
    edge = np.concatenate([cuts, np.nextafter(cuts, -np.inf), np.nextafter(cuts, np.inf)])
    col = np.concatenate(
        [np.round(rng.normal(size=500), 1), edge, [np.inf, -np.inf, 0.0, np.nan, np.nan]]
    )
    values = np.stack([col, rng.permutation(col), np.zeros_like(col)], axis=1)
    seen = rng.random(values.shape) < 0.8
    seen[:, 2] = False  # a column with nothing seen
    rows = sorted_columns(values, seen)
    for j in range(values.shape[1]):
        kept = values[seen[:, j], j]
        got = sorted_bin_counts(rows[j], int(seen[:, j].sum()), cuts)
        assert np.array_equal(got, bin_counts(kept, cuts)), j
    whole = sorted_columns(values)
    assert np.array_equal(sorted_bin_counts(whole[0], len(col), cuts), bin_counts(col, cuts))
