"""MLflow registry with a real sqlite store: log, register, alias, rollback, load back."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mlflow")

from anomaly_vae import TabularDetector, registry


@pytest.fixture(scope="module")
def store(tmp_path_factory, mixed_train):
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = registry.configure(tmp_path_factory.mktemp("mlflow"))
    det = TabularDetector(id_column="id", seed=0, k=8, max_epochs=3, min_sigma=0.05).fit(
        mixed_train
    )
    v1 = registry.log_detector(
        det, name="mixed", example=mixed_train, alias=registry.CHAMPION, metrics={"auroc": 0.5}
    )
    v2 = registry.log_detector(det, name="mixed", example=mixed_train)
    yield uri, det, v1, v2
    mp.undo()


def test_versions_aliases_and_rollback(store):
    uri, _, v1, v2 = store
    assert uri.startswith("sqlite:///")
    assert (v1.version, v2.version) == (1, 2)
    assert registry.resolve("mixed", "champion").version == 1
    registry.promote("mixed", 2, "champion")
    assert registry.resolve("mixed", "champion").version == 2
    assert [v.version for v in registry.list_versions("mixed")] == [2, 1]
    assert registry.rollback("mixed", "champion") == 1
    assert registry.resolve("mixed", "champion").version == 1


def test_run_has_params_curves_and_calibration(store):
    import mlflow

    _, det, v1, _ = store
    run = mlflow.get_run(v1.run_id)
    assert run.data.params["k"] == "8"
    assert "calibration_threshold" in run.data.metrics
    assert run.data.metrics["auroc"] == 0.5
    history = mlflow.MlflowClient().get_metric_history(v1.run_id, "train_elbo")
    assert len(history) == len(det.history_)
    plots = [a.path for a in mlflow.MlflowClient().list_artifacts(v1.run_id, "plots")]
    assert plots == ["plots/training_curves.png"]


def test_unknown_names_are_lookup_errors(store):
    with pytest.raises(LookupError, match="no registered model named 'nope'"):
        registry.list_versions("nope")
    with pytest.raises(LookupError, match="has no version with alias 'challenger'"):
        registry.resolve("mixed", "challenger")
    with pytest.raises(LookupError, match="no earlier version recorded for alias 'staging'"):
        registry.rollback("mixed", "staging")


def test_bundle_and_pyfunc_score_like_the_detector(store, mixed_test, tmp_path):
    import mlflow.pyfunc

    _, det, v1, _ = store
    frame, _ = mixed_test
    expected = det.score(frame).reset_index(drop=True)
    bundle = registry.download_bundle("mixed", v1.version, tmp_path)
    np.testing.assert_array_equal(
        TabularDetector.load(bundle).score_samples(frame), expected["log_likelihood"]
    )
    model = mlflow.pyfunc.load_model("models:/mixed@champion")
    got = model.predict(frame)
    np.testing.assert_allclose(got["log_likelihood"], expected["log_likelihood"], rtol=0, atol=1e-9)
    assert got["is_outlier"].tolist() == expected["is_outlier"].tolist()


def test_configure_switches_embedded_stores_but_keeps_the_users_uri(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; a second embedded store must
    still be used, and a URI the user set must win every time."""
    import os

    import mlflow

    from anomaly_vae import registry

    # put the module's store back afterwards: left pointing at user.db, later tests in
    # this module would log there, with artifacts in ./mlruns of the working directory
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        first = registry.configure(tmp_path / "a")
        second = registry.configure(tmp_path / "b")
        assert first != second and second.endswith("b/mlflow.db")
        user = f"sqlite:///{tmp_path / 'user.db'}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", user)
        assert registry.configure(tmp_path / "c") == user
        assert registry.configure(tmp_path / "d") == user
        assert os.environ["MLFLOW_TRACKING_URI"] == user
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])


def test_image_detector_registers_with_pngs_and_scores_through_pyfunc(store, tmp_path):
    """An image model is a registered version too: its run carries sample,
    reconstruction and traversal PNGs, and the pyfunc model scores uint8 images
    exactly as the detector does."""
    import mlflow
    from PIL import Image

    from anomaly_vae.image_detector import ImageDetector
    from tests.test_image_detector import squares

    det = ImageDetector(max_epochs=3, k=8, latent_dim=4, width_mult=8).fit(squares(200, 0))
    test = squares(6, 1)
    info = registry.log_detector(det, name="squares", example=test, alias="champion")
    assert info.version == 1 and registry.resolve("squares", "champion").version == 1
    client = mlflow.MlflowClient()
    assert client.get_run(info.run_id).data.tags["kind"] == "image"
    pngs = sorted(a.path for a in client.list_artifacts(info.run_id, "images"))
    assert pngs == [
        "images/latent_traversal.png",
        "images/reconstructions.png",
        "images/samples.png",
    ]
    local = mlflow.artifacts.download_artifacts(
        run_id=info.run_id, artifact_path="images/reconstructions.png", dst_path=str(tmp_path)
    )
    with Image.open(local) as im:  # 5 example images over their 5 reconstructions
        assert im.size == (5 * 18 + 2, 2 * 18 + 2)
    model = mlflow.pyfunc.load_model("models:/squares@champion")
    got = model.predict(test)
    want = det.score(test)
    np.testing.assert_allclose(got["log_likelihood"], want["log_likelihood"], rtol=0, atol=1e-9)
    assert list(got.columns) == list(want.columns)
    bundle = registry.download_bundle("squares", 1, tmp_path / "dl")
    from anomaly_vae import load_detector

    assert isinstance(load_detector(bundle), ImageDetector)
