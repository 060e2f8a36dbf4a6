"""ImageDetector on small generated images: shapes, finiteness, determinism, units."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from anomaly_vae.exceptions import ImageError, ImageScaleWarning, NotFittedError
from anomaly_vae.image_detector import ImageDetector, png_bits


def squares(n: int, seed: int) -> np.ndarray:
    """16x16 images, each a bright 8x8 square at a random place."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 1, 16, 16), np.uint8)
    for i in range(n):
        a, b = rng.integers(0, 8, 2)
        x[i, 0, a : a + 8, b : b + 8] = 255
    return x


@pytest.fixture(scope="module", params=["bernoulli", "logistic"])
def fitted(request):
    small = {"max_epochs": 12, "k": 16, "latent_dim": 8, "width_mult": 8, "batch_size": 64}
    return ImageDetector(likelihood=request.param, **small).fit(squares(400, 0))


def test_scores_shapes_units_and_detection(fitted) -> None:
    normal, noise = (
        squares(50, 1),
        np.random.default_rng(2).integers(0, 256, (10, 1, 16, 16)).astype(np.uint8),
    )
    out = fitted.score(np.concatenate([normal, noise]))
    assert list(out.columns) == [
        "log_likelihood",
        "stderr",
        "ess",
        "unreliable",
        "bits_per_dim",
        "score",
        "p_value",
        "is_outlier",
    ]
    assert np.isfinite(out[["log_likelihood", "stderr", "bits_per_dim"]].to_numpy()).all()
    assert (out["log_likelihood"] <= 1e-9).all()  # discrete likelihoods: probabilities
    np.testing.assert_allclose(out["bits_per_dim"], -out["log_likelihood"] / (256 * math.log(2)))
    y = np.r_[np.zeros(50), np.ones(10)]
    assert roc_auc_score(y, out["score"]) > 0.95


def test_deterministic_per_image_whatever_the_batch(fitted) -> None:
    x = squares(30, 3)
    whole = fitted.score(x)["log_likelihood"].to_numpy()
    parts = np.concatenate(
        [fitted.score(x[i : i + 7])["log_likelihood"].to_numpy() for i in range(0, 30, 7)]
    )
    np.testing.assert_allclose(parts, whole, rtol=0, atol=1e-9)


def test_large_k_runs_in_bounded_chunks(fitted) -> None:
    out = fitted.score(squares(3, 4), k=2000)
    assert np.isfinite(out["log_likelihood"]).all()


def test_generative_side_and_heatmap(fitted, tmp_path) -> None:
    assert fitted.sample(4).shape == (4, 1, 16, 16) and fitted.sample(4).dtype == np.uint8
    rec = fitted.reconstruct(squares(2, 5))
    assert rec.shape == (2, 1, 16, 16) and rec.min() >= 0 and rec.max() <= 1
    assert fitted.encode(squares(2, 5)).shape == (2, 8)
    heat = fitted.heatmap(squares(2, 5))
    assert heat.shape == (2, 1, 16, 16)
    # per-pixel terms sum to the reconstruction part of log p(x), which is below 0
    assert (heat.reshape(2, -1).sum(1) <= 0).all()
    fitted.save(tmp_path / "b")
    again = ImageDetector.load(tmp_path / "b")
    x = squares(5, 6)
    np.testing.assert_array_equal(
        again.score(x)["log_likelihood"], fitted.score(x)["log_likelihood"]
    )


def test_errors(fitted) -> None:
    with pytest.raises(ImageError, match=r"images of shape \(1, 8, 8\)"):
        fitted.score(np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(NotFittedError):
        ImageDetector().score(squares(2, 0))
    with pytest.raises(ValueError, match="likelihood must be one of"):
        ImageDetector(likelihood="gaussian")


def test_complexity_score() -> None:
    x = squares(200, 0)
    assert (png_bits(x[:5]) > 0).all()
    det = ImageDetector(score="complexity", max_epochs=5, k=8, latent_dim=4, width_mult=4).fit(x)
    out = det.score(squares(10, 1))
    assert "complexity_bits" in out.columns
    # S = -log2 p(x) - L(x)
    np.testing.assert_allclose(
        out["score"], -out["log_likelihood"] / math.log(2) - out["complexity_bits"]
    )


def test_complexity_weight_fitted_on_validation_images(tmp_path) -> None:
    x = squares(240, 0)
    small = {"max_epochs": 5, "k": 8, "latent_dim": 4, "width_mult": 4, "seed": 3}
    det = ImageDetector(score="complexity", complexity_weight="fit", **small).fit(x)
    # the validation images, as fit splits them: calibration first, then validation
    order = np.random.default_rng(3).permutation(240)
    n_cal, n_val = det._split_sizes(240)
    assert (n_cal, n_val) == (50, 23)
    val = x[order[n_cal : n_cal + n_val]]
    code = -det._score_images(val).log_likelihood / math.log(2)
    slope = np.polyfit(png_bits(val), code, 1)[0]
    assert det.complexity_weight_ == pytest.approx(max(0.0, slope), rel=1e-9, abs=1e-12)
    out = det.score(squares(10, 1))
    np.testing.assert_allclose(
        out["score"],
        -out["log_likelihood"] / math.log(2) - det.complexity_weight_ * out["complexity_bits"],
    )
    again = ImageDetector.load(det.save(tmp_path / "b"))
    assert again.complexity_weight_ == det.complexity_weight_
    np.testing.assert_array_equal(again.score(squares(10, 1)).to_numpy(), out.to_numpy())
    fixed = ImageDetector(score="complexity", complexity_weight=0.25, **small).fit(x)
    assert fixed.complexity_weight_ == 0.25
    with pytest.raises(ImageError, match="needs at least 3 validation images, got 2"):
        ImageDetector(score="complexity", complexity_weight="fit", **small).fit(x[:30])
    for bad in (-1.0, "fitted", float("nan"), True):
        with pytest.raises(ValueError, match="complexity_weight must be a number >= 0 or 'fit'"):
            ImageDetector(score="complexity", complexity_weight=bad)


def bars(n: int, seed: int) -> np.ndarray:
    """16x16 images, each a bright 2x12 horizontal bar: simpler than a square."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 1, 16, 16), np.uint8)
    for i in range(n):
        a, b = rng.integers(0, 14), rng.integers(0, 4)
        x[i, 0, a : a + 2, b : b + 12] = 255
    return x


def test_ratio_score_trains_a_background_model_and_round_trips(tmp_path) -> None:
    small = {"max_epochs": 12, "k": 8, "latent_dim": 4, "width_mult": 8, "batch_size": 64}
    det = ImageDetector(score="ratio", mutation_rate=0.3, **small).fit(squares(300, 0))
    assert det.background_ is not None and det.background_ is not det.net_
    test = np.concatenate([squares(30, 1), bars(30, 2)])
    out = det.score(test)
    assert "background_log_likelihood" in out.columns
    # the anomaly score is the negative log-likelihood ratio, in nats
    np.testing.assert_allclose(
        out["score"], -(out["log_likelihood"] - out["background_log_likelihood"])
    )
    # the background model saw noisy squares: it gives clean squares less likelihood
    assert out["background_log_likelihood"][:30].mean() < out["log_likelihood"][:30].mean() - 5
    again = ImageDetector.load(det.save(tmp_path / "b")).score(test)
    np.testing.assert_array_equal(again.to_numpy(), out.to_numpy())
    with pytest.raises(ValueError, match=r"mutation_rate must be in \(0, 1\), got 1.5"):
        ImageDetector(score="ratio", mutation_rate=1.5)


def test_mutation_replaces_the_asked_share_of_pixels() -> None:
    from anomaly_vae.image_detector import _mutate

    x = squares(200, 0)
    m = _mutate(x, 0.2, seed=0)
    assert set(np.unique(m)) <= {0, 255}  # binary images stay binary
    # a replaced pixel keeps its value half the time: about 10% change
    assert 0.08 < (m != x).mean() < 0.12
    grey = np.full((50, 1, 16, 16), 100, np.uint8)
    assert 0.18 < (_mutate(grey, 0.2, seed=0) != grey).mean() < 0.21


@pytest.mark.parametrize(
    ("n_train", "expected"),
    [
        # scikit-learn's digits, one class: ~120 images, 8 batches of 16 an epoch
        (119, {"batch_size": 16, "max_epochs": 125, "patience": 31, "kl_warmup_epochs": 31}),
        # one MNIST class: 40 batches of 128, 25 epochs make the 1000 steps
        (5064, {"batch_size": 128, "max_epochs": 25, "patience": 6, "kl_warmup_epochs": 6}),
        # all of MNIST: 20 epochs are far more than 1000 steps
        (51300, {"batch_size": 128, "max_epochs": 20, "patience": 5, "kl_warmup_epochs": 5}),
    ],
)
def test_schedule_is_sized_from_the_training_images(n_train, expected) -> None:
    assert ImageDetector()._schedule(n_train) == expected


def test_schedule_takes_what_is_given() -> None:
    det = ImageDetector(max_epochs=3, batch_size=8, patience=2, kl_warmup_epochs=0)
    assert det._schedule(119) == {
        "batch_size": 8,
        "max_epochs": 3,
        "patience": 2,
        "kl_warmup_epochs": 0,
    }
    # an explicit epoch count still sizes patience and warm-up from it
    assert ImageDetector(max_epochs=12)._schedule(5064) == {
        "batch_size": 128,
        "max_epochs": 12,
        "patience": 5,
        "kl_warmup_epochs": 3,
    }


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (20, (5, 1)),  # the fewest images fit takes: a quarter calibrates
        (180, (45, 16)),  # a digits class: floors, not 18 and 8
        (400, (50, 32)),  # the floors themselves
        (6000, (600, 270)),  # the fractions once they are larger
    ],
)
def test_split_holds_out_enough_images_on_small_sets(n, expected) -> None:
    assert ImageDetector()._split_sizes(n) == expected


def test_fit_records_its_schedule_and_split() -> None:
    det = ImageDetector(max_epochs=2, k=4, latent_dim=4, width_mult=4).fit(squares(180, 0))
    t = det.training_
    assert (t["n_calibration"], t["n_validation"], t["n_train"]) == (45, 16, 119)
    assert t["schedule"] == {
        "batch_size": 16,
        "max_epochs": 2,
        "patience": 5,
        "kl_warmup_epochs": 0,
    }
    assert det.calibration_.n == 45


def test_unscaled_images_warn_with_the_peak_and_the_fix() -> None:
    dim = (squares(60, 0) // 255 * 16).astype(np.int64)  # 0..16, as scikit-learn's digits
    with pytest.warns(ImageScaleWarning) as caught:
        ImageDetector(max_epochs=1, k=4, latent_dim=4, width_mult=4).fit(dim)
    (message,) = [str(w.message) for w in caught if w.category is ImageScaleWarning]
    assert message == (
        "the brightest training pixel is 16 of 255: integer pixels are read as 8-bit levels "
        "(0..255), so binarized at 128 for the bernoulli likelihood, every pixel is black. "
        "If the images are on another scale (0..16), rescale them to 0..255 (e.g. images * "
        "255 // 16) or pass floats in [0, 1]"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImageScaleWarning)
        # 64 of 255 is dim but plausible (and floats in [0, 1] are scaled by 255)
        ImageDetector(max_epochs=1, k=4, latent_dim=4, width_mult=4).fit(dim * 4)
        ImageDetector(max_epochs=1, k=4, latent_dim=4, width_mult=4).fit(squares(60, 0) / 255.0)


@pytest.mark.slow
def test_no_collapsed_encoder_on_a_small_real_set() -> None:
    """One class of scikit-learn's 8x8 digits (126 training images), as benchmarks/
    images.py --parts small runs it: the previous fixed schedule left 0 active latent
    dimensions; the sized schedule keeps the encoder in use and finds the other digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    xtr, xte, ytr, yte = train_test_split(
        images, d.target, test_size=0.3, stratify=d.target, random_state=0
    )
    det = ImageDetector(k=16).fit(xtr[ytr == 0])
    active = int((det.encode(xtr[ytr == 0]).var(0) > 0.01).sum())
    assert active >= 4, f"{active} active latent dimensions"
    assert roc_auc_score(yte != 0, -det.score_samples(xte)) > 0.95
