"""A convolutional VAE for images, with a likelihood that is a real probability of the
pixels: Bernoulli for binarized images, a discretized logistic for 8-bit pixels.

Input is uint8 [N, C, H, W] (H and W divisible by 4). Features, for the scorer and for
per-pixel contributions, are the D = C*H*W pixels in C-order, so a record's contributions
reshape to a [C, H, W] heat map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LIKELIHOODS = ("bernoulli", "logistic")
#: Half the width of one 8-bit level in the logistic's [-1, 1] pixel scale.
_HALF_BIN = 1.0 / 255.0


class ConvVAE(nn.Module):
    """Conv encoder (two stride-2 convolutions and a dense layer) to a diagonal Gaussian
    q(z|x); a mirrored transposed-conv decoder to per-pixel likelihood parameters.

    Args:
        channels, height, width: image shape (1 or 3 channels; height and width
            divisible by 4).
        latent_dim: size of z.
        width_mult: channels of the first convolution (the second has twice as many).
        likelihood: ``bernoulli`` (pixels binarized at 128: log p of the binary image) or
            ``logistic`` (discretized logistic per pixel over the 256 levels).
    """

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        latent_dim: int = 32,
        width_mult: int = 32,
        likelihood: str = "bernoulli",
    ) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            msg = f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}"
            raise ValueError(msg)
        if height % 4 or width % 4:
            msg = f"image height and width must be divisible by 4, got {height}x{width}"
            raise ValueError(msg)
        self.channels, self.height, self.width = channels, height, width
        self.latent_dim, self.width_mult, self.likelihood = latent_dim, width_mult, likelihood
        self.n_features = channels * height * width
        w, h4, w4 = width_mult, height // 4, width // 4
        flat = 2 * w * h4 * w4
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, w, 4, 2, 1),
            nn.SiLU(),
            nn.Conv2d(w, 2 * w, 4, 2, 1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(flat, 256),
            nn.SiLU(),
            nn.Linear(256, 2 * latent_dim),
        )
        out_channels = channels if likelihood == "bernoulli" else 2 * channels
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 256),
            nn.SiLU(),
            nn.Linear(256, flat),
            nn.SiLU(),
            nn.Unflatten(1, (2 * w, h4, w4)),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1),
            nn.SiLU(),
            nn.ConvTranspose2d(w, out_channels, 4, 2, 1),
        )

    def config(self) -> dict[str, object]:
        return {
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "latent_dim": self.latent_dim,
            "width_mult": self.width_mult,
            "likelihood": self.likelihood,
        }

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q(z|x) for uint8 images [N, C, H, W]: (mu, logvar) [N, L], logvar in [-12, 8]."""
        h = self.encoder(x.to(torch.float32) / 255.0)
        mu, logvar = h.chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)

    def _decode(self, z: Tensor) -> Tensor:
        """z [S, N, L] -> decoder output [S, N, C', H, W].

        Without gradients (scoring, sampling) the transposed convolutions run in the
        forms CPU kernels are fastest at: the first on channels-last memory, the last
        as its sub-pixel equivalent (a 3x3 convolution to 4 phases, then a pixel
        shuffle). Same weights, same function; float results differ from the plain
        module by float rounding only (about 1e-6 relative), and the decoder runs
        about twice as fast (``benchmarks/images.py --parts speed``).
        """
        s, n = z.shape[:2]
        flat = z.reshape(s * n, -1)
        out = self.decoder(flat) if torch.is_grad_enabled() else self._decode_fast(flat)
        return out.reshape(s, n, *out.shape[1:])

    def _decode_fast(self, flat: Tensor) -> Tensor:
        """The decoder on z [B, L] without autograd: [B, C', H, W] (see ``_decode``)."""
        *dense, first, act, last = self.decoder
        h = flat
        for layer in dense:
            h = layer(h)
        h = act(first(h.contiguous(memory_format=torch.channels_last)))
        assert isinstance(last, nn.ConvTranspose2d)
        return subpixel_conv_transpose(h, last).contiguous()

    def feature_log_prob(self, z: Tensor, x: Tensor) -> Tensor:
        """log p(pixel | z), nats: z [S, N, L], x uint8 [N, C, H, W] -> [S, N, C*H*W]."""
        out = self._decode(z)
        c = self.channels
        if self.likelihood == "bernoulli":
            target = (x >= 128).to(out.dtype).expand_as(out)
            lp = -F.binary_cross_entropy_with_logits(out, target, reduction="none")
        else:
            lp = discretized_logistic_log_prob(x, out[:, :, :c], out[:, :, c:])
        return lp.flatten(2)

    def mean_image(self, z: Tensor) -> Tensor:
        """The decoder's expected image for z [N, L], as floats in [0, 1], [N, C, H, W]."""
        out = self._decode(z.unsqueeze(0))[0]
        c = self.channels
        if self.likelihood == "bernoulli":
            return torch.sigmoid(out)
        return ((out[:, :c].clamp(-1, 1) + 1) / 2).clamp(0, 1)

    def sample_image(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw x ~ p(x|z) for z [N, L]: uint8 [N, C, H, W]."""
        out = self._decode(z.unsqueeze(0))[0]
        c = self.channels
        if self.likelihood == "bernoulli":
            u = torch.rand(out.shape, generator=generator)
            return ((u < torch.sigmoid(out)).to(torch.uint8)) * 255
        mean, log_scale = out[:, :c], out[:, c:].clamp(min=-7.0)
        u = torch.rand(mean.shape, generator=generator).clamp(1e-5, 1 - 1e-5)
        x = mean + log_scale.exp() * (u.log() - (-u).log1p())
        return torch.round((x.clamp(-1, 1) + 1) * 127.5).to(torch.uint8)


#: Taps of a stride-2, kernel-4, padding-1 transposed convolution: for output phase r
#: (row or column parity) and input offset d (input index = output index // 2 + d), the
#: kernel index that connects them.
_TAPS = {(0, 0): 1, (0, -1): 3, (1, 1): 0, (1, 0): 2}


def subpixel_conv_transpose(x: Tensor, layer: nn.ConvTranspose2d) -> Tensor:
    """``layer(x)`` for a ConvTranspose2d(kernel 4, stride 2, padding 1), computed as a
    3x3 convolution to four output phases per channel and a pixel shuffle.

    x [B, C_in, H, W] -> [B, C_out, 2H, 2W]. Each output pixel of such a layer reads a
    2x2 neighbourhood of the input; the 3x3 kernel holds those taps for all four
    phases (zero elsewhere), so the result equals ``layer(x)`` up to float rounding.
    """
    if layer.kernel_size != (4, 4) or layer.stride != (2, 2) or layer.padding != (1, 1):
        msg = f"subpixel_conv_transpose needs kernel 4, stride 2, padding 1, got {layer}"
        raise ValueError(msg)
    wt = layer.weight  # [C_in, C_out, 4, 4]
    c_in, c_out = wt.shape[:2]
    w = wt.new_zeros(c_out, 2, 2, c_in, 3, 3)
    for (ry, dy), ky in _TAPS.items():
        for (rx, dx), kx in _TAPS.items():
            w[:, ry, rx, :, dy + 1, dx + 1] = wt[:, :, ky, kx].T
    bias = None if layer.bias is None else layer.bias.repeat_interleave(4)
    return F.pixel_shuffle(F.conv2d(x, w.reshape(4 * c_out, c_in, 3, 3), bias, padding=1), 2)


def discretized_logistic_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) of 8-bit pixels under a logistic discretized to 256 levels (PixelCNN++'s
    edge handling: level 0 takes all mass below, 255 all mass above), nats.

    x uint8 [N, C, H, W]; mean and log_scale [..., N, C, H, W] in the [-1, 1] pixel scale.
    The probabilities over the 256 levels sum to 1 for any mean and scale.
    """
    xs = x.to(mean.dtype) / 127.5 - 1.0
    log_scale = log_scale.clamp(min=-7.0)
    inv = torch.exp(-log_scale)
    centered = xs - mean
    plus_in = inv * (centered + _HALF_BIN)
    min_in = inv * (centered - _HALF_BIN)
    log_cdf_plus = plus_in - F.softplus(plus_in)  # log sigmoid(plus_in), for level 0
    log_one_minus_cdf_min = -F.softplus(min_in)  # log(1 - sigmoid(min_in)), for 255
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    mid_in = inv * centered
    # where the bin's mass underflows, the density at its centre times its width
    log_pdf_mid = mid_in - log_scale - 2.0 * F.softplus(mid_in) + math.log(2 * _HALF_BIN)
    interior = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid)
    return torch.where(x == 0, log_cdf_plus, torch.where(x == 255, log_one_minus_cdf_min, interior))
