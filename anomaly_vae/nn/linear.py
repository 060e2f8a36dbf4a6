"""Linear-Gaussian VAE (probabilistic PCA): the closed form that keeps the scorer honest.

With p(z) = N(0, I) and p(x|z) = N(W z + b, s2 I), the marginal is
p(x) = N(b, W W^T + s2 I), and the posterior is Gaussian with covariance
s2 (W^T W + s2 I)^-1. When W's columns are orthogonal that covariance is diagonal, so a
diagonal-Gaussian encoder can represent the exact posterior and every importance weight
equals p(x): the estimate is exact for any K.
"""

from __future__ import annotations

import torch
from torch import Tensor

from anomaly_vae.nn.base import LOG_2PI


class LinearGaussianVAE(torch.nn.Module):
    """PPCA decoder with an affine diagonal-Gaussian encoder.

    Args:
        weight: W, [D, L]. bias: b, [D]. noise_var: s2 > 0 (scalar).
        enc_weight: [L, D] and enc_bias [L]: mu(x) = enc_weight @ x + enc_bias.
        enc_logvar: [L], the (input-independent) log-variance of q(z|x).
    """

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor,
        noise_var: float,
        enc_weight: Tensor,
        enc_bias: Tensor,
        enc_logvar: Tensor,
    ) -> None:
        super().__init__()
        self.latent_dim = int(weight.shape[1])
        self.weight = weight
        self.bias = bias
        self.noise_var = float(noise_var)
        self.enc_weight = enc_weight
        self.enc_bias = enc_bias
        self.enc_logvar = enc_logvar

    @classmethod
    def with_exact_posterior(
        cls, weight: Tensor, bias: Tensor, noise_var: float
    ) -> LinearGaussianVAE:
        """Encoder set to the exact posterior; needs W^T W diagonal (orthogonal columns)."""
        wtw = weight.T @ weight
        off = wtw - torch.diag(torch.diagonal(wtw))
        if off.abs().max() > 1e-8 * wtw.abs().max():
            msg = "the exact posterior is diagonal only when W has orthogonal columns"
            raise ValueError(msg)
        m = torch.diagonal(wtw) + noise_var  # [L]
        enc_weight = weight.T / m.unsqueeze(-1)  # M^-1 W^T
        enc_bias = -(enc_weight @ bias)
        enc_logvar = torch.log(noise_var / m)
        return cls(weight, bias, noise_var, enc_weight, enc_bias, enc_logvar)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [N, D] -> (mu, logvar), each [N, L]."""
        mu = x @ self.enc_weight.T + self.enc_bias
        return mu, self.enc_logvar.expand_as(mu)

    def feature_log_prob(self, z: Tensor, x: Tensor) -> Tensor:
        """z [S, N, L] -> log N(x_d; (W z + b)_d, s2) per dimension, [S, N, D] nats."""
        mean = z @ self.weight.T + self.bias
        return (
            -0.5 * (LOG_2PI + torch.log(torch.tensor(self.noise_var, dtype=z.dtype)))
            - 0.5 * (x - mean).pow(2) / self.noise_var
        )

    def exact_log_prob(self, x: Tensor) -> Tensor:
        """The exact log p(x) = log N(x; b, W W^T + s2 I): [N, D] -> [N] nats."""
        d = x.shape[-1]
        cov = self.weight @ self.weight.T + self.noise_var * torch.eye(d, dtype=x.dtype)
        dist = torch.distributions.MultivariateNormal(self.bias, covariance_matrix=cov)
        return dist.log_prob(x)
