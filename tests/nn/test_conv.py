"""The image VAE's likelihoods are probabilities of the pixels."""

from __future__ import annotations

import pytest
import torch

from anomaly_vae.nn.conv import ConvVAE, discretized_logistic_log_prob
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
