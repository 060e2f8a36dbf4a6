"""The scorer against probabilistic PCA, whose log p(x) is known in closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomaly_vae.nn.linear import LinearGaussianVAE
from anomaly_vae.scoring.iwae import ImportanceSampler
from tests.helpers import assert_tensor_is_good

D, L, N = 6, 3, 300


@pytest.fixture(scope="module")
def ppca() -> tuple[LinearGaussianVAE, torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(7)
    q, _ = torch.linalg.qr(torch.randn(D, L, generator=g, dtype=torch.float64))
    w = q * torch.tensor([2.0, 1.5, 0.7], dtype=torch.float64)  # orthogonal columns
    b = torch.randn(D, generator=g, dtype=torch.float64)
    model = LinearGaussianVAE.with_exact_posterior(w, b, noise_var=0.3)
    z = torch.randn(N, L, generator=g, dtype=torch.float64)
    x = z @ w.T + b + 0.3**0.5 * torch.randn(N, D, generator=g, dtype=torch.float64)
    return model, x, model.exact_log_prob(x).numpy()


@pytest.mark.parametrize("k", [1, 2, 10, 100, 1000])
def test_exact_posterior_gives_exact_log_likelihood_for_any_k(ppca, k):
    model, x, exact = ppca
    res = ImportanceSampler(k=k, seed=3).score(model, x, N)
    assert_tensor_is_good(res.log_likelihood, (N,))
    np.testing.assert_allclose(res.log_likelihood, exact, atol=1e-4, rtol=0)
    # with q equal to the posterior every weight is p(x): no Monte Carlo error
    if k > 1:
        assert np.all(res.stderr < 1e-6)


def test_perturbed_encoder_gap_shrinks_with_k(ppca):
    model, x, exact = ppca
    perturbed = LinearGaussianVAE(
        model.weight,
        model.bias,
        model.noise_var,
        model.enc_weight * 1.1,
        model.enc_bias + 0.1,
        model.enc_logvar + 0.3,
    )
    gaps = {}
    for k in (1, 10, 100, 1000):
        gaps[k] = float(
            np.mean(
                np.abs(exact - ImportanceSampler(k=k, seed=0).score(perturbed, x, N).log_likelihood)
            )
        )
    assert gaps[1] > gaps[10] > gaps[100] > gaps[1000], gaps
    assert gaps[1000] < 0.05, gaps
    # Jensen: the mean of log w (the ELBO field) never exceeds log of the mean weight
    res = ImportanceSampler(k=1000, seed=0).score(perturbed, x, N)
    assert np.all(res.elbo <= res.log_likelihood + 1e-9)
    # and the ELBO's gap is larger on average than IWAE's
    assert np.mean(exact - res.elbo) > np.mean(np.abs(exact - res.log_likelihood))


def test_score_is_independent_of_batch_and_chunking(ppca):
    model, x, _ = ppca
    full = ImportanceSampler(k=50, seed=1, row_chunk=256, sample_chunk=16).score(model, x, N)
    small = ImportanceSampler(k=50, seed=1, row_chunk=7, sample_chunk=16).score(model, x[:40], 40)
    np.testing.assert_allclose(small.log_likelihood, full.log_likelihood[:40], rtol=0, atol=1e-9)
    np.testing.assert_allclose(small.contributions, full.contributions[:40], rtol=0, atol=1e-9)


def test_contributions_sum_to_reconstruction_part(ppca):
    model, x, _ = ppca
    pert = LinearGaussianVAE(
        model.weight,
        model.bias,
        model.noise_var,
        model.enc_weight,
        model.enc_bias + 0.2,
        model.enc_logvar,
    )
    res = ImportanceSampler(k=1, seed=0).score(pert, x, N)
    # with K=1 the weighted reconstruction is log p(x|z_1) and elbo = rec - (log q - log p(z))
    assert res.contributions.shape == (N, D)
    mu, logvar = pert.encode(x)
    eps = ImportanceSampler(k=1, seed=0).eps(L, torch.float64)
    z = mu + (0.5 * logvar).exp() * eps
    direct = pert.feature_log_prob(z.unsqueeze(0), x)[0].numpy()
    np.testing.assert_allclose(res.contributions, direct, atol=1e-9)


@pytest.mark.parametrize("bad", [0, -1, 100_001, 2.5, True])
def test_k_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="k must be an integer"):
        ImportanceSampler(k=bad)


def test_effective_sample_size_is_k_for_the_exact_posterior_and_falls_with_a_bad_q(ppca):
    """Kish's ESS of the weights: every weight equal (q = posterior) gives K; an encoder
    far off the posterior gives few effective samples, and those records are flagged."""
    from anomaly_vae.scoring.iwae import MIN_ESS, unreliable

    model, x, _ = ppca
    res = ImportanceSampler(k=100, seed=1).score(model, x, N)
    np.testing.assert_allclose(res.ess, 100.0, rtol=1e-9)
    assert not res.unreliable.any()
    far = LinearGaussianVAE(
        model.weight, model.bias, model.noise_var,
        model.enc_weight * 0.2, model.enc_bias + 2.0, model.enc_logvar - 4.0,
    )  # fmt: skip
    bad = ImportanceSampler(k=100, seed=1).score(far, x, N)
    assert np.all((bad.ess >= 1.0 - 1e-9) & (bad.ess <= 100.0 + 1e-9))
    assert np.median(bad.ess) < MIN_ESS
    np.testing.assert_array_equal(bad.unreliable, bad.ess < MIN_ESS)
    # by hand: weights (1, 1, 0, 0) have ESS 2; the flag scales to a small K, never K = 1
    assert unreliable(np.array([2.0]), 4).tolist() == [False]
    assert unreliable(np.array([1.5]), 4).tolist() == [True]
    one = ImportanceSampler(k=1, seed=1).score(far, x, N)
    assert np.all(one.ess == 1.0) and not one.unreliable.any()


def test_the_result_carries_the_posterior_means_of_its_own_encoder_pass(ppca):
    """Live drift monitoring takes mu(x) from the scoring pass instead of a second one."""
    model, x, _ = ppca
    res = ImportanceSampler(k=8, seed=2, row_chunk=64).score(model, x[:70], 70)  # one padded
    mu, _ = model.encode(x[:70])
    assert res.latent_mean.shape == (70, L)
    np.testing.assert_allclose(res.latent_mean, mu.detach().numpy(), rtol=0, atol=1e-12)
