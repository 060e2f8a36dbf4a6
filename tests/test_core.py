"""The detector core both kinds share: scikit-learn's estimator contract and the outlier
API, for tables and images alike."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from anomaly_vae import ImageDetector, TabularDetector
from anomaly_vae.defaults import IMAGE, TABULAR
from anomaly_vae.exceptions import NotFittedError
from tests.helpers import edit_bundle_document
from tests.test_image_detector import squares

KINDS = [
    (TabularDetector, TABULAR, {"k": 8, "alpha": 0.01, "hidden": [16, 8], "id_column": "id"}),
    (ImageDetector, IMAGE, {"k": 4, "score": "complexity", "complexity_weight": "fit"}),
]


@pytest.mark.parametrize(("cls", "defaults", "params"), KINDS)
def test_constructor_defaults_are_the_shared_ones(cls, defaults, params):
    assert cls().get_params(deep=False) == defaults


@pytest.mark.parametrize(("cls", "defaults", "params"), KINDS)
def test_clone_round_trips_the_parameters(cls, defaults, params):
    det = cls(**params)
    twin = clone(det)
    assert twin is not det
    assert type(twin) is cls
    assert twin.get_params() == det.get_params() == {**defaults, **params}
    # clone copies the arguments as given (scikit-learn checks identity of simple ones)
    if "hidden" in params:
        assert twin.hidden == params["hidden"]
        assert twin.hidden is not params["hidden"]


@pytest.mark.parametrize(("cls", "defaults", "params"), KINDS)
def test_set_params_and_repr(cls, defaults, params):
    det = cls()
    assert det.set_params(**params) is det
    assert det.get_params() == {**defaults, **params}
    text = repr(det)
    assert text.startswith(f"{cls.__name__}(")
    for name, value in params.items():
        assert f"{name}={value!r}" in text
    assert repr(cls()) == f"{cls.__name__}()"
    with pytest.raises(ValueError, match="invalid parameter 'nope' for"):
        det.set_params(nope=1)


def test_image_score_parameter_keeps_the_score_method():
    """``score`` is both a constructor argument (the score kind) and a method."""
    det = ImageDetector(score="ratio")
    assert det.get_params()["score"] == "ratio"
    assert callable(det.score)
    assert clone(det).get_params()["score"] == "ratio"
    det.set_params(score="likelihood")
    assert det.score_kind == "likelihood" and callable(det.score)


def test_clone_of_a_fitted_detector_is_unfitted(fitted):
    twin = clone(fitted)
    assert twin.get_params() == fitted.get_params()
    assert not hasattr(twin, "net_")
    with pytest.raises(NotFittedError, match="not fitted yet"):
        twin.score_samples(np.zeros((1, 3)))


@pytest.fixture(scope="module")
def image_fitted():
    small = {"max_epochs": 6, "k": 8, "latent_dim": 4, "width_mult": 8, "batch_size": 64}
    return ImageDetector(**small).fit(squares(200, 0))


def _noise(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 1, 16, 16)).astype(np.uint8)


def test_image_outlier_api(image_fitted):
    det = image_fitted
    x = np.concatenate([squares(40, 1), _noise(8, 2)])
    s = det.score_samples(x)
    assert s.shape == (48,) and s.dtype == np.float64 and np.isfinite(s).all()
    # the likelihood score: score_samples is log p(x), the negative of score()'s score
    np.testing.assert_array_equal(s, det.score(x)["log_likelihood"].to_numpy())
    np.testing.assert_array_equal(det.decision_function(x), s - det.offset_)
    assert det.offset_ == det.calibration_.threshold
    pred = det.predict(x)
    assert set(np.unique(pred)) <= {-1, 1}
    np.testing.assert_array_equal(pred == -1, det.score(x)["is_outlier"].to_numpy())
    assert (pred[40:] == -1).all()  # noise is nothing like a square
    p = det.p_values(x)
    np.testing.assert_array_equal(p, det.score(x)["p_value"].to_numpy())
    assert ((p > 0) & (p <= 1)).all()


def test_image_recalibrate_and_contamination(image_fitted):
    det = clone(image_fitted).set_params(max_epochs=6, k=8, latent_dim=4, width_mult=8)
    det.set_params(batch_size=64, contamination=0.1).fit(squares(200, 0))
    assert det.calibration_.method == "contamination"
    assert det.calibration_.contamination == 0.1
    fresh = squares(100, 5)
    det.recalibrate(fresh, alpha=0.2)
    assert det.calibration_.method == "conformal" and det.calibration_.alpha == 0.2
    assert det.calibration_.n == 100
    assert det.offset_ == det.calibration_.threshold
    # a conformal threshold at alpha flags at most alpha of the rows it was set on
    assert (det.predict(fresh) == -1).mean() <= 0.2


def test_image_outlier_api_survives_save_and_load(image_fitted, tmp_path):
    loaded = ImageDetector.load(image_fitted.save(tmp_path / "b"))
    x = squares(20, 7)
    np.testing.assert_array_equal(loaded.score_samples(x), image_fitted.score_samples(x))
    assert loaded.offset_ == image_fitted.offset_
    assert loaded.get_params() == image_fitted.get_params()


def test_image_detector_not_fitted():
    det = ImageDetector()
    for call in (det.score_samples, det.decision_function, det.predict, det.p_values):
        with pytest.raises(NotFittedError, match="not fitted yet"):
            call(squares(2, 0))


def test_image_contamination_is_checked():
    with pytest.raises(ValueError, match=r"contamination must be in \(0, 0.5\), got 0.7"):
        ImageDetector(contamination=0.7)


def test_image_bundle_has_a_schema(image_fitted, tmp_path):
    import json

    from anomaly_vae.exceptions import BundleError

    path = image_fitted.save(tmp_path / "b")
    schema = json.loads((path / "schema.json").read_text())
    assert schema["kind"] == "image"
    assert schema["shape"] == [1, 16, 16]
    assert schema["dtype"] == "uint8" and schema["value_range"] == [0, 255]
    # a schema that disagrees with the weights, re-signed so it passes the sha256 check
    edit_bundle_document(path, "schema.json", lambda doc: doc.update(shape=[3, 16, 16]))
    with pytest.raises(BundleError, match=r"schema.json gives image shape \[3, 16, 16\]"):
        ImageDetector.load(path)


def test_tabular_takes_array_likes_and_names_what_it_cannot(fitted):
    """scikit-learn's input conventions: lists are arrays; 1-D, sparse and complex input
    get errors that say so (the messages scikit-learn's checks look for)."""
    from scipy import sparse

    from anomaly_vae.exceptions import SchemaError

    det = TabularDetector(k=2, max_epochs=1, seed=0)
    rows = np.random.default_rng(0).normal(size=(40, 3))
    det.fit(rows.tolist())
    assert det.n_features_in_ == 3
    np.testing.assert_array_equal(det.score_samples(rows[:5].tolist()), det.score_samples(rows[:5]))
    assert "log_likelihood" in det.score(rows[:5], None).columns  # score(X, y)
    with pytest.raises(SchemaError, match="Reshape your data"):
        det.score_samples(rows[:, 0])
    with pytest.raises(SchemaError, match="sparse input is not supported"):
        det.score_samples(sparse.csr_matrix(rows))
    with pytest.raises(SchemaError, match="Complex data not supported"):
        det.score_samples(rows.astype(complex))
    with pytest.raises(SchemaError, match="X has 2 features, but TabularDetector is expecting 3"):
        det.score_samples(rows[:, :2])
    with pytest.raises(ValueError, match=r"0 sample\(s\) \(shape=\(0, 3\)\)"):
        TabularDetector().fit(rows[:0])
    assert fitted.n_features_in_ == len(fitted.schema_.columns)
