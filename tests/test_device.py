"""Where a detector scores: ``Detector.to``, the CLI's ``--device`` and the service's
``ANOMALY_VAE_DEVICE``.

These machines have no GPU, so the device-agnostic paths run on the CPU here (moving,
scoring, encoding, sampling and saving through them must not change a bit) together with
the refusals of devices the machine lacks; the comparison with a real GPU runs where
torch sees one.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from anomaly_vae import ImageDetector, TabularDetector
from anomaly_vae.core import resolve_device
from anomaly_vae.exceptions import NotFittedError
from anomaly_vae.nn.tabular import TabularTensors
from anomaly_vae.scoring.iwae import model_device, to_device, to_numpy
from tests.test_image_detector import squares

NO_CUDA = not torch.cuda.is_available()


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("bogus", "unknown device 'bogus': use 'cpu', 'cuda', 'cuda:<index>' or 'mps'"),
        (None, "unknown device None: use"),
        ("meta", "device 'meta': scoring runs on 'cpu', 'cuda' or 'mps', not 'meta'"),
        pytest.param(
            "cuda",
            "device 'cuda': no CUDA GPU is visible to torch on this machine",
            marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU"),
        ),
        pytest.param(
            "cuda:1",
            "device 'cuda:1': no CUDA GPU is visible",
            marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU"),
        ),
        pytest.param(
            "mps",
            "device 'mps': Apple's MPS backend is not available on this machine",
            marks=pytest.mark.skipif(
                torch.backends.mps.is_available(), reason="this machine has MPS"
            ),
        ),
    ],
)
def test_devices_this_machine_lacks_are_refused_by_name(device, message):
    with pytest.raises(ValueError, match="^" + _escaped(message)):
        resolve_device(device)


def _escaped(text: str) -> str:
    import re

    return re.escape(text)


def test_cpu_is_resolved_in_any_spelling():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_an_unfitted_detector_has_no_device():
    with pytest.raises(NotFittedError):
        TabularDetector().to("cpu")
    with pytest.raises(NotFittedError):
        _ = ImageDetector().device_


def test_moving_a_table_detector_to_the_cpu_changes_no_bit(fitted, mixed_test, tmp_path):
    frame, _ = mixed_test
    det = copy.deepcopy(fitted)
    before = det.score(frame)
    assert det.to("cpu") is det
    assert det.device_ == torch.device("cpu")
    after = det.score(frame)
    for column in ("log_likelihood", "stderr", "p_value", "is_outlier"):
        np.testing.assert_array_equal(after[column].to_numpy(), before[column].to_numpy())
    np.testing.assert_array_equal(det.encode(frame), fitted.encode(frame))
    assert det.sample(5, seed=3).equals(fitted.sample(5, seed=3))
    det.save(tmp_path / "moved")
    back = TabularDetector.load(tmp_path / "moved")
    np.testing.assert_array_equal(back.score_samples(frame), fitted.score_samples(frame))


def test_moving_an_image_detector_moves_its_background_model():
    det = ImageDetector(
        score="ratio", max_epochs=2, k=4, latent_dim=4, width_mult=4, batch_size=64
    ).fit(squares(120, 0))
    images = squares(20, 1)
    before = det.score_samples(images)
    det.to(torch.device("cpu"))
    assert det.background_ is not None
    assert model_device(det.background_) == torch.device("cpu")
    np.testing.assert_array_equal(det.score_samples(images), before)


def test_tensor_helpers_leave_cpu_tensors_where_they_are():
    t = torch.arange(6.0).reshape(2, 3)
    assert to_device(t, torch.device("cpu")) is t
    batch = TabularTensors(t, t > 1, t.long(), t, t > 2)
    moved = to_device(batch, torch.device("cpu"))
    assert type(moved) is TabularTensors
    assert all(a is b for a, b in zip(moved, batch, strict=True))
    assert np.shares_memory(to_numpy(t), t.numpy())
    assert model_device(object()) == torch.device("cpu")
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")


def test_the_cli_refuses_a_device_the_machine_lacks(fitted, mixed_test, tmp_path, capsys):
    if not NO_CUDA:
        pytest.skip("this machine has a CUDA GPU")
    from anomaly_vae.cli import EXIT_BAD_INPUT, main

    frame, _ = mixed_test
    fitted.save(tmp_path / "bundle")
    frame.to_csv(tmp_path / "rows.csv", index=False)
    out = tmp_path / "scores.csv"
    code = main(["score", str(tmp_path / "bundle"), str(tmp_path / "rows.csv"), "--out", str(out),
                 "--device", "cuda"])  # fmt: skip
    assert code == EXIT_BAD_INPUT
    assert "error: device 'cuda': no CUDA GPU is visible" in capsys.readouterr().err
    assert not out.exists()


def test_the_cli_refuses_a_device_with_the_spark_engine(tmp_path, capsys):
    from anomaly_vae.cli import EXIT_BAD_INPUT, main

    code = main(["score-batch", "--model", str(tmp_path / "nowhere"), "--input",
                 str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--engine", "spark",
                 "--device", "cuda"])  # fmt: skip
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "--device cuda applies to the local engine" in err


def test_the_service_refuses_a_device_the_machine_lacks(tmp_path):
    if not NO_CUDA:
        pytest.skip("this machine has a CUDA GPU")
    from anomaly_vae.service.settings import Settings
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="ANOMALY_VAE_DEVICE: device 'cuda:0': no CUDA"):
        Settings(bundle_path=tmp_path, device="cuda:0")
    assert Settings(bundle_path=tmp_path).device == "cpu"


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU (scoring on it is compared with the CPU)")
def test_gpu_scores_like_the_cpu(fitted, mixed_test):
    frame, _ = mixed_test
    det = copy.deepcopy(fitted).to("cuda")
    assert det.device_.type == "cuda"
    # the same noise on both devices; the GPU's float32 arithmetic is its own
    np.testing.assert_allclose(
        det.score_samples(frame), fitted.score_samples(frame), rtol=1e-4, atol=1e-3
    )
    np.testing.assert_allclose(det.encode(frame), fitted.encode(frame), rtol=1e-4, atol=1e-4)
    assert det.sample(5, seed=3).equals(fitted.sample(5, seed=3))
    assert model_device(det.net_).type == "cuda"  # sampling left the model where it was
