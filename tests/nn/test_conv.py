"""The image VAE's likelihoods are probabilities of the pixels."""

from __future__ import annotations

import pytest
import torch

from anomaly_vae.nn.conv import ConvVAE, discretized_logistic_log_prob, subpixel_conv_transpose
from tests.helpers import assert_tensor_is_good


@pytest.mark.parametrize(
    ("mean", "log_scale"), [(0.0, -2.0), (0.9, -4.0), (-1.0, 0.5), (0.3, -7.0), (1.5, -3.0)]
)
def test_discretized_logistic_sums_to_one_over_the_256_levels(
    mean: float, log_scale: float
) -> None:
    levels = torch.arange(256, dtype=torch.uint8).reshape(256, 1, 1, 1)
    lp = discretized_logistic_log_prob(
        levels,
        torch.full((256, 1, 1, 1), mean, dtype=torch.float64),
        torch.full((256, 1, 1, 1), log_scale, dtype=torch.float64),
    )
    assert float(lp.exp().sum()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("likelihood", ["bernoulli", "logistic"])
def test_shapes_and_probabilities(likelihood: str) -> None:
    torch.manual_seed(0)
    net = ConvVAE(3, 8, 12, latent_dim=4, width_mult=4, likelihood=likelihood)
    x = torch.randint(0, 256, (5, 3, 8, 12), dtype=torch.uint8)
    mu, logvar = net.encode(x)
    assert_tensor_is_good(mu, (5, 4))
    lp = net.feature_log_prob(torch.randn(2, 5, 4), x)
    assert_tensor_is_good(lp, (2, 5, 3 * 8 * 12))
    assert torch.all(lp <= 0)
    assert net.sample_image(torch.randn(2, 4)).shape == (2, 3, 8, 12)
    with pytest.raises(ValueError, match="divisible by 4"):
        ConvVAE(1, 10, 8)


@pytest.mark.parametrize(
    ("c_in", "c_out", "size"), [(8, 4, (3, 5)), (4, 1, (6, 6)), (6, 2, (7, 4))]
)
def test_subpixel_form_equals_the_transposed_convolution(c_in: int, c_out: int, size) -> None:
    torch.manual_seed(1)
    layer = torch.nn.ConvTranspose2d(c_in, c_out, 4, 2, 1).double()
    x = torch.randn(3, c_in, *size, dtype=torch.float64)
    torch.testing.assert_close(subpixel_conv_transpose(x, layer), layer(x), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="kernel 4, stride 2, padding 1"):
        subpixel_conv_transpose(x, torch.nn.ConvTranspose2d(c_in, c_out, 3, 1, 1).double())


@pytest.mark.parametrize("likelihood", ["bernoulli", "logistic"])
def test_fast_inference_decoder_matches_the_module(likelihood: str) -> None:
    torch.manual_seed(2)
    net = ConvVAE(3, 8, 12, latent_dim=4, width_mult=4, likelihood=likelihood)
    z = torch.randn(5, 2, 4)
    with torch.no_grad():
        fast = net._decode(z)
    plain = net.decoder(z.reshape(10, 4)).reshape(fast.shape)
    assert plain.requires_grad and not fast.requires_grad  # training keeps the module path
    torch.testing.assert_close(fast, plain.detach(), rtol=1e-5, atol=1e-5)
