"""What every VAE in ``nn/`` offers the scorer, and the Gaussian pieces they share.

The scorer in ``anomaly_vae.scoring`` works on anything that satisfies
:class:`VAEProtocol`: an encoder giving a diagonal Gaussian q(z|x) and a decoder giving
one log-likelihood term per feature. All log densities are in nats.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


@runtime_checkable
class VAEProtocol(Protocol):
    """A VAE as the scorer sees it.

    ``batch`` is whatever the model's data path produces for N records (a tensor or a
    tuple of tensors); the scorer only hands it back to the model.
    """

    latent_dim: int

    def encode(self, batch: Any) -> tuple[Tensor, Tensor]:
        """Return (mu, logvar) of q(z|x), each [N, latent_dim]."""
        ...

    def feature_log_prob(self, z: Tensor, batch: Any) -> Tensor:
        """log p(x_f | z) for each feature f: z [S, N, latent_dim] -> [S, N, F], nats."""
        ...


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the last dim: [N, L] -> [N], nats."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last dim: [..., L] -> [...], nats."""
    return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)


def mlp(sizes: list[int], *, final_activation: bool = False) -> torch.nn.Sequential:
    """Linear layers of the given widths with SiLU between them."""
    layers: list[torch.nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or final_activation:
            layers.append(torch.nn.SiLU())
    return torch.nn.Sequential(*layers)


def single_sample_elbo(
    model: VAEProtocol, batch: Any, *, beta: float = 1.0, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """One-sample reparameterized ELBO terms for training.

    Returns (reconstruction log-likelihood [N], analytic KL [N], beta-ELBO [N]), nats.
    """
    mu, logvar = model.encode(batch)
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    z = mu + (0.5 * logvar).exp() * eps
    rec = model.feature_log_prob(z.unsqueeze(0), batch).sum(-1).squeeze(0)
    kl = gaussian_kl(mu, logvar)
    return rec, kl, rec - beta * kl
