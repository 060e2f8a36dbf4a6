"""The importance-sample count sized from held-out rows: the fewest samples whose
estimates are as good as the most's, on models whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import anomaly_vae.scoring.iwae as iwae
from anomaly_vae.nn.linear import LinearGaussianVAE
from anomaly_vae.scoring.iwae import (
    AUTO_K,
    AUTO_K_MAX_GAP,
    AUTO_K_MAX_UNRELIABLE,
    ImportanceSampler,
    choose_k,
)

D, L, N = 6, 3, 400


@pytest.fixture(scope="module")
def ppca() -> tuple[LinearGaussianVAE, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    q, _ = torch.linalg.qr(torch.randn(D, L, generator=g, dtype=torch.float64))
    w = q * torch.tensor([2.0, 1.5, 0.7], dtype=torch.float64)
    b = torch.randn(D, generator=g, dtype=torch.float64)
    model = LinearGaussianVAE.with_exact_posterior(w, b, noise_var=0.05)
    z = torch.randn(N, L, generator=g, dtype=torch.float64)
    x = z @ w.T + b + 0.05**0.5 * torch.randn(N, D, generator=g, dtype=torch.float64)
    return model, x


def poor_proposal(model: LinearGaussianVAE) -> LinearGaussianVAE:
    """The same decoder with an encoder whose q(z|x) is off-centre and too wide: the
    importance weights of a few samples carry every estimate."""
    return LinearGaussianVAE(
        model.weight,
        model.bias,
        model.noise_var,
        model.enc_weight * 0.8,
        model.enc_bias + 0.5,
        model.enc_logvar + 2.0,
    )


def test_an_exact_posterior_needs_the_fewest_samples(ppca):
    """With q(z|x) the exact posterior every weight is p(x): 8 samples give the same
    estimate as 64, and none is unreliable."""
    model, x = ppca
    choice = choose_k(model, x, N, seed=0)
    assert choice.k == AUTO_K[0]
    assert choice.rows == N
    assert all(abs(g) < 1e-6 for g in choice.gap.values()), choice.gap
    assert all(s == 0.0 for s in choice.unreliable.values()), choice.unreliable


def test_a_poor_proposal_keeps_more_samples_and_the_rule_holds(ppca):
    """The chosen K meets both bounds and every smaller candidate misses one, recomputed
    here from the scorer itself."""
    model, x = ppca
    bad = poor_proposal(model)
    choice = choose_k(bad, x, N, seed=0)
    assert choice.k > AUTO_K[0]
    ll = {k: ImportanceSampler(k=k, seed=0).score(bad, x, N, contributions=False) for k in AUTO_K}
    top = AUTO_K[-1]

    def meets(k: int) -> bool:
        gap = np.mean(ll[top].log_likelihood - ll[k].log_likelihood)
        extra = ll[k].unreliable.sum() - ll[top].unreliable.sum()
        return bool(gap <= AUTO_K_MAX_GAP and extra <= AUTO_K_MAX_UNRELIABLE * N)

    assert choice.k == top or meets(choice.k)
    assert not any(meets(k) for k in AUTO_K if k < choice.k)
    for k in AUTO_K:
        assert choice.gap[k] == pytest.approx(
            float(np.mean(ll[top].log_likelihood - ll[k].log_likelihood)), abs=1e-12
        )


def test_only_the_first_rows_are_scored(ppca, monkeypatch):
    model, x = ppca
    monkeypatch.setattr(iwae, "AUTO_K_ROWS", 50)
    choice = choose_k(poor_proposal(model), x, N, seed=0)
    assert choice.rows == 50
    assert choice == choose_k(poor_proposal(model), x[:50], 50, seed=0)


def test_choice_is_json_ready_and_arguments_are_checked(ppca):
    model, x = ppca
    doc = choose_k(model, x, 20, seed=0).as_dict()
    assert doc["k"] == 8 and doc["rows"] == 20
    assert set(doc["gap_nats"]) == {str(k) for k in AUTO_K}
    with pytest.raises(ValueError, match="distinct and increasing"):
        choose_k(model, x, 20, candidates=(16, 8))
    with pytest.raises(ValueError, match="at least one held-out row"):
        choose_k(model, x, 0)
