"""The image detector: a convolutional VAE with an honest log p(x) per image (nats and
bits per dimension), calibrated flags, and an out-of-distribution score that survives the
likelihood paradox.

Scores (``score=`` at construction; the threshold is calibrated on the chosen one):

- ``likelihood``: the anomaly score is -log p(x), nats.
- ``complexity``: the input-complexity-corrected score of Serrà et al. (ICLR 2020),
  S(x) = -log2 p(x) - lambda L(x), with L(x) the length in bits of the image losslessly
  compressed as PNG. Simple images (large flat areas) get high likelihood from any
  generative model because they are easy to compress; subtracting what a generic
  compressor already explains leaves what the model adds. ``complexity_weight`` is
  lambda: 1 is Serrà et al.'s score (right for inputs from another domain, where the
  two code lengths differ wholesale); ``"fit"`` sets lambda to the least-squares slope
  of -log2 p(x) on L(x) over the held-out validation images, so S is the part of the
  model's code length that the image's complexity does not explain *among normal
  images* (right for novelty within one domain, such as one-class MNIST, where the
  PNG length overstates how much of the code length is complexity).
- ``ratio``: the likelihood ratio of Ren et al. (NeurIPS 2019), log p(x) - log p_bg(x),
  with p_bg a second VAE of the same shape trained on the training images with a
  fraction ``mutation_rate`` of their pixels replaced by random values. The background
  model learns the population statistics (how much ink, how flat) but not the semantics,
  so the ratio keeps what is specific to the normal class.
"""

from __future__ import annotations

import io
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from anomaly_vae.bundle import inconsistent_bundle, read_bundle, write_bundle
from anomaly_vae.data.images import load_images
from anomaly_vae.exceptions import ImageError, NotFittedError
from anomaly_vae.nn.conv import LIKELIHOODS, ConvVAE
from anomaly_vae.scoring.calibration import Calibration
from anomaly_vae.scoring.iwae import ImportanceSampler, ScoreResult

SCORES = ("likelihood", "complexity", "ratio")
#: ``complexity_weight`` value that fits lambda on the validation images.
FIT = "fit"
#: Images per scorer pass. Every pass is padded to exactly this many images: convolution
#: kernels are chosen by batch size, and a short last chunk changed scores by up to 7e-6
#: nats; with fixed-size passes an image's score is the same bits in any batch.
ROW_CHUNK = 16
#: Weight-name prefix of the ratio score's background model in the bundle.
BACKGROUND = "background."
BINARIZE = ("dynamic", "threshold", "none")


def _mutate(images: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """Replace a ``rate`` share of the pixels of uint8 images [N, C, H, W] with uniform
    random values (0 or 255 for binary images): the background model's training data."""
    rng = np.random.default_rng(seed)
    binary = bool(np.isin(images, (0, 255)).all())
    noise = (
        rng.integers(0, 2, images.shape, dtype=np.uint8) * 255
        if binary
        else rng.integers(0, 256, images.shape, dtype=np.uint8)
    )
    return np.where(rng.random(images.shape) < rate, noise, images).astype(np.uint8)


def png_bits(images: np.ndarray) -> np.ndarray:
    """Lossless PNG length of each uint8 image [N, C, H, W], in bits, [N] float64."""
    from PIL import Image

    out = np.empty(len(images))
    for i, im in enumerate(images):
        arr = im[0] if im.shape[0] == 1 else im.transpose(1, 2, 0)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG", optimize=True)
        out[i] = 8.0 * buf.tell()
    return out


class _ImageData(torch.utils.data.Dataset[torch.Tensor]):
    """Batches of uint8 images; with ``dynamic`` each draw re-binarizes every pixel as
    Bernoulli(intensity) (the standard protocol for binarized MNIST)."""

    def __init__(self, images: torch.Tensor, dynamic: bool, seed: int) -> None:
        self.images, self.dynamic = images, dynamic
        self.g = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: Any) -> torch.Tensor:
        x = self.images[torch.as_tensor(idx)]
        if not self.dynamic:
            return x
        u = torch.rand(x.shape, generator=self.g)
        return (u * 255.0 < x.to(torch.float32)).to(torch.uint8) * 255


class ImageDetector:
    """Convolutional-VAE detector and density estimator for images.

    Args:
        likelihood: ``bernoulli`` (binarized pixels) or ``logistic`` (8-bit pixels,
            discretized logistic: log p(x) is a probability of the 8-bit image).
        binarize: for ``bernoulli``: ``dynamic`` (training re-samples binary pixels
            from intensities each epoch; scoring thresholds at 128), ``threshold``
            (always at 128) or ``none`` (the images are already binary).
        score: ``likelihood``, ``complexity`` or ``ratio`` (see the module docstring).
        mutation_rate: for ``ratio``: the share of pixels the background model sees
            replaced by uniform random values (Ren et al. used 0.1 to 0.3).
        complexity_weight: for ``complexity``: lambda in S = -log2 p(x) - lambda L(x),
            a number >= 0 (1 is Serrà et al.) or ``"fit"`` (see the module docstring;
            the fitted value is ``complexity_weight_`` and travels in the bundle).
        latent_dim, width_mult: model size.
        beta: KL weight; max_epochs, batch_size, lr, patience: training schedule.
        max_minutes: a wall-clock budget for training (Lightning's ``max_time``).
        k: importance samples per image when scoring.
        alpha: target false-positive rate of the conformal threshold.
        calibration_fraction, validation_fraction: held-out shares of the images.
        seed: seeds splits, weights, shuffling, binarization and the scorer.
        accelerator, devices, strategy: passed to the Lightning Trainer.
        progress: progress bars.
    """

    #: the manifest of the bundle it was loaded from (files, sha256, versions)
    manifest_: dict[str, Any]

    def __init__(
        self,
        *,
        likelihood: str = "bernoulli",
        binarize: str = "dynamic",
        score: str = "likelihood",
        mutation_rate: float = 0.2,
        complexity_weight: float | str = 1.0,
        latent_dim: int = 32,
        width_mult: int = 32,
        beta: float = 1.0,
        max_epochs: int = 20,
        batch_size: int = 128,
        lr: float = 1e-3,
        patience: int = 5,
        max_minutes: float | None = None,
        k: int = 64,
        alpha: float = 0.05,
        calibration_fraction: float = 0.1,
        validation_fraction: float = 0.05,
        seed: int = 0,
        accelerator: str = "cpu",
        devices: int | str = 1,
        strategy: str = "auto",
        progress: bool = False,
    ) -> None:
        if likelihood not in LIKELIHOODS:
            msg = f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}"
            raise ValueError(msg)
        if binarize not in BINARIZE:
            msg = f"binarize must be one of {BINARIZE}, got {binarize!r}"
            raise ValueError(msg)
        if score not in SCORES:
            msg = f"score must be one of {SCORES}, got {score!r}"
            raise ValueError(msg)
        if not 0.0 < mutation_rate < 1.0:
            msg = f"mutation_rate must be in (0, 1), got {mutation_rate!r}"
            raise ValueError(msg)
        if complexity_weight != FIT and not (
            isinstance(complexity_weight, int | float)
            and not isinstance(complexity_weight, bool)
            and math.isfinite(complexity_weight)
            and complexity_weight >= 0
        ):
            msg = f"complexity_weight must be a number >= 0 or {FIT!r}, got {complexity_weight!r}"
            raise ValueError(msg)
        ImportanceSampler(k=k)  # validates k
        self.likelihood, self.binarize, self.score_kind = likelihood, binarize, score
        self.mutation_rate = mutation_rate
        self.complexity_weight = complexity_weight
        self.latent_dim, self.width_mult, self.beta = latent_dim, width_mult, beta
        self.max_epochs, self.batch_size, self.lr, self.patience = (
            max_epochs,
            batch_size,
            lr,
            patience,
        )
        self.max_minutes = max_minutes
        self.k, self.alpha = k, alpha
        self.calibration_fraction, self.validation_fraction = (
            calibration_fraction,
            validation_fraction,
        )
        self.seed = seed
        self.accelerator, self.devices, self.strategy = accelerator, devices, strategy
        self.progress = progress

    def get_params(self) -> dict[str, Any]:
        return {
            "likelihood": self.likelihood,
            "binarize": self.binarize,
            "score": self.score_kind,
            "mutation_rate": self.mutation_rate,
            "complexity_weight": self.complexity_weight,
            "latent_dim": self.latent_dim,
            "width_mult": self.width_mult,
            "beta": self.beta,
            "max_epochs": self.max_epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "patience": self.patience,
            "max_minutes": self.max_minutes,
            "k": self.k,
            "alpha": self.alpha,
            "calibration_fraction": self.calibration_fraction,
            "validation_fraction": self.validation_fraction,
            "seed": self.seed,
            "accelerator": self.accelerator,
            "devices": self.devices,
            "strategy": self.strategy,
            "progress": self.progress,
        }

    # ------------------------------------------------------------------ fitting
    def _prepare(self, images: np.ndarray) -> np.ndarray:
        """Pixels as the model scores them: binarized at 128 for ``bernoulli``."""
        if self.likelihood == "bernoulli":
            return np.where(images >= 128, 255, 0).astype(np.uint8)
        return images

    def fit(self, X: Any, y: Any = None) -> ImageDetector:
        """Fit on mostly normal images (array or path, see ``load_images``); returns self.
        With ``score="ratio"`` a background model is trained as well (twice the time)."""
        import logging

        for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
        t0 = time.perf_counter()
        images = load_images(X)
        n = len(images)
        if n < 20:
            msg = f"fit needs at least 20 images, got {n}"
            raise ImageError(msg)
        _, c, h, w = images.shape
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(n)
        n_cal = max(1, round(self.calibration_fraction * n))
        n_val = max(1, round(self.validation_fraction * (n - n_cal)))
        cal_idx, val_idx, train_idx = (
            order[:n_cal],
            order[n_cal : n_cal + n_val],
            order[n_cal + n_val :],
        )
        if self.score_kind == "complexity" and self.complexity_weight == FIT and n_val < 3:
            msg = (
                f"complexity_weight='fit' needs at least 3 validation images, got {n_val} "
                f"({n} images, validation_fraction={self.validation_fraction}); give more "
                "images, a larger validation_fraction or a number"
            )
            raise ImageError(msg)
        dynamic = self.likelihood == "bernoulli" and self.binarize == "dynamic"
        train_src = images[train_idx] if dynamic else self._prepare(images[train_idx])
        net, history, best_epoch, rank = self._train(
            _ImageData(torch.from_numpy(train_src), dynamic, self.seed),
            self._prepare(images[val_idx]),
            (c, h, w),
        )
        self.background_: ConvVAE | None = None
        if self.score_kind == "ratio":
            # Ren et al.: the same model on perturbed images; perturbing the prepared
            # (binarized) pixels keeps the background on the model's own input space
            mutated = _mutate(self._prepare(images[train_idx]), self.mutation_rate, self.seed)
            val_mutated = _mutate(self._prepare(images[val_idx]), self.mutation_rate, self.seed + 1)
            self.background_, *_ = self._train(
                _ImageData(torch.from_numpy(mutated), False, self.seed), val_mutated, (c, h, w)
            )
        self.net_ = net
        self.shape_ = (c, h, w)
        self.sampler_ = ImportanceSampler(k=self.k, seed=self.seed, row_chunk=ROW_CHUNK)
        self.complexity_weight_ = self._fit_complexity_weight(images[val_idx])
        self.history_ = history
        self.global_rank_ = rank
        self.training_: dict[str, Any] = {
            "n_images": n,
            "n_train": len(train_idx),
            "n_validation": len(val_idx),
            "n_calibration": len(cal_idx),
            "epochs_run": len(history),
            "best_epoch": best_epoch,
        }
        normality = self._normality(images[cal_idx], self._score_images(images[cal_idx]))
        self.calibration_ = Calibration.fit(normality, alpha=self.alpha)
        self.training_["fit_seconds"] = time.perf_counter() - t0
        return self

    def _fit_complexity_weight(self, val_images: np.ndarray) -> float:
        """lambda for the complexity score: the given weight, or with ``"fit"`` the
        least-squares slope of -log2 p(x) (bits) on the PNG length L(x) (bits) over the
        validation images [N, C, H, W], clipped at 0; 1.0 when the score is another."""
        if self.score_kind != "complexity" or self.complexity_weight != FIT:
            return float(self.complexity_weight) if self.score_kind == "complexity" else 1.0
        code = -self._score_images(val_images).log_likelihood / math.log(2.0)
        bits = png_bits(self._prepare(val_images))
        spread = float(np.var(bits))
        if spread == 0.0:  # every image compresses to the same length: nothing to explain
            return 0.0
        slope = float(np.mean((bits - bits.mean()) * (code - code.mean())) / spread)
        return max(0.0, slope)

    def _train(
        self, train: _ImageData, val_images: np.ndarray, shape: tuple[int, int, int]
    ) -> tuple[ConvVAE, list[dict[str, float]], int, int]:
        """Fit one ConvVAE with Lightning on ``train``, early-stopping on the prepared
        ``val_images``; returns (net in eval mode, history, best epoch, global rank)."""
        import datetime as dt

        import pytorch_lightning as pl
        from pytorch_lightning.callbacks import EarlyStopping

        from anomaly_vae.models.tabular import (
            EpochProgress,
            KeepBestWeights,
            TabularVAEModule,
            quiet_trainer,
        )

        torch.manual_seed(self.seed)
        net = ConvVAE(*shape, self.latent_dim, self.width_mult, self.likelihood)
        val = _ImageData(torch.from_numpy(val_images), False, self.seed)

        def loader(ds: _ImageData, shuffle: bool) -> torch.utils.data.DataLoader[torch.Tensor]:
            base: torch.utils.data.Sampler[int] = (
                torch.utils.data.RandomSampler(
                    ds, generator=torch.Generator().manual_seed(self.seed)
                )
                if shuffle
                else torch.utils.data.SequentialSampler(ds)
            )
            sampler = torch.utils.data.BatchSampler(base, self.batch_size, drop_last=False)
            return torch.utils.data.DataLoader(ds, batch_size=None, sampler=sampler)

        pl.seed_everything(self.seed, workers=True, verbose=False)
        module = TabularVAEModule(net, beta=self.beta, kl_warmup_epochs=0, lr=self.lr)
        keep = KeepBestWeights("val_elbo")
        callbacks: list[pl.Callback] = [
            EarlyStopping("val_elbo", mode="max", patience=self.patience),
            keep,
        ]
        if self.progress:
            callbacks.append(EpochProgress(self.max_epochs))
        trainer = quiet_trainer(
            max_epochs=self.max_epochs,
            max_time=dt.timedelta(minutes=self.max_minutes) if self.max_minutes else None,
            accelerator=self.accelerator,
            devices=self.devices,
            strategy=self.strategy,
            num_sanity_val_steps=0,
            callbacks=callbacks,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            trainer.fit(module, loader(train, True), loader(val, False))
        net.eval()
        return net, module.history, keep.best_epoch, trainer.global_rank

    # ------------------------------------------------------------------ scoring
    def _check_fitted(self) -> None:
        if not hasattr(self, "net_"):
            msg = "this ImageDetector is not fitted yet; call fit (or ImageDetector.load)"
            raise NotFittedError(msg)

    def _checked(self, X: Any) -> np.ndarray:
        self._check_fitted()
        images = load_images(X)
        if images.shape[1:] != self.shape_:
            msg = f"images of shape {images.shape[1:]} (C, H, W); the model was trained on {self.shape_}"
            raise ImageError(msg)
        return images

    def _score_images(
        self,
        images: np.ndarray,
        k: int | None = None,
        contributions: bool = False,
        net: ConvVAE | None = None,
    ) -> ScoreResult:
        sampler = self.sampler_
        if k is not None and k != sampler.k:
            sampler = ImportanceSampler(k, sampler.seed, row_chunk=ROW_CHUNK)
        n = len(images)
        pad = (-n) % ROW_CHUNK
        prepared = self._prepare(images)
        if pad:
            prepared = np.concatenate([prepared, np.zeros((pad, *prepared.shape[1:]), np.uint8)])
        x = torch.from_numpy(prepared)
        if self.progress and n > 10 * ROW_CHUNK:
            from tqdm.auto import tqdm

            with tqdm(total=len(x), unit="images", desc="scoring") as bar:
                res = sampler.score(
                    net or self.net_, x, len(x), progress=bar.update, contributions=contributions
                )
        else:
            res = sampler.score(net or self.net_, x, len(x), contributions=contributions)
        return ScoreResult(*(getattr(res, f)[:n] for f in ScoreResult.__dataclass_fields__))

    def _normality(
        self,
        images: np.ndarray,
        res: ScoreResult,
        k: int | None = None,
        bits: np.ndarray | None = None,
    ) -> np.ndarray:
        """Higher-is-more-normal values the threshold is calibrated on, [N]; ``bits``
        are the images' PNG lengths when the caller has them."""
        if self.score_kind == "likelihood":
            return res.log_likelihood
        if self.score_kind == "ratio":
            if self.background_ is None:
                msg = "score='ratio' needs the background model, which this detector lacks"
                raise NotFittedError(msg)
            return res.log_likelihood - self.background_log_likelihood(images, k)
        # -S(x) = log2 p(x) + lambda L(x), bits; L compresses the pixels the model
        # scored (binarized for bernoulli), so both terms describe the same image
        if bits is None:
            bits = png_bits(self._prepare(images))
        return res.log_likelihood / math.log(2.0) + self.complexity_weight_ * bits

    def background_log_likelihood(self, images: np.ndarray, k: int | None = None) -> np.ndarray:
        """log p_bg(x) per image under the ratio score's background model, nats, [N]."""
        assert self.background_ is not None
        return self._score_images(images, k, net=self.background_).log_likelihood

    def score(self, X: Any, *, k: int | None = None) -> pd.DataFrame:
        """Per image: ``log_likelihood`` (nats) and its ``stderr``, ``bits_per_dim``
        (-log2 p(x) / D), ``complexity_bits`` (PNG length; with score=complexity),
        ``background_log_likelihood`` (nats; with score=ratio),
        ``score`` (higher is more anomalous; with score=complexity it is
        -log2 p(x) - complexity_weight_ * complexity_bits, bits), ``p_value`` and
        ``is_outlier``."""
        images = self._checked(X)
        res = self._score_images(images, k)
        d = int(np.prod(self.shape_))
        out = pd.DataFrame(
            {
                "log_likelihood": res.log_likelihood,
                "stderr": res.stderr,
                "bits_per_dim": -res.log_likelihood / (d * math.log(2.0)),
            }
        )
        bits = png_bits(self._prepare(images)) if self.score_kind == "complexity" else None
        normality = self._normality(images, res, k, bits)
        if self.score_kind == "complexity":
            out["complexity_bits"] = bits
        if self.score_kind == "ratio":
            out["background_log_likelihood"] = res.log_likelihood - normality
        out["score"] = -normality
        out["p_value"] = self.calibration_.p_values(normality)
        out["is_outlier"] = self.calibration_.is_outlier(normality)
        return out

    def heatmap(self, X: Any, *, k: int | None = None) -> np.ndarray:
        """Per-pixel log-likelihood contributions, nats, [N, C, H, W] (low = unusual)."""
        images = self._checked(X)
        res = self._score_images(images, k, contributions=True)
        return res.contributions.reshape(len(images), *self.shape_)

    # ------------------------------------------------------------------ generative side
    def sample(self, n: int, *, seed: int | None = None) -> np.ndarray:
        """``n`` new images x ~ p(x), uint8 [n, C, H, W]."""
        self._check_fitted()
        g = torch.Generator().manual_seed(self.seed if seed is None else seed)
        with torch.inference_mode():
            z = torch.randn(n, self.latent_dim, generator=g)
            return self.net_.sample_image(z, generator=g).numpy()

    def encode(self, X: Any) -> np.ndarray:
        """Posterior means, [N, latent_dim]."""
        images = self._checked(X)
        with torch.inference_mode():
            mu, _ = self.net_.encode(torch.from_numpy(self._prepare(images)))
        return mu.numpy()

    def reconstruct(self, X: Any) -> np.ndarray:
        """Decoder means at the posterior means, floats in [0, 1], [N, C, H, W]."""
        images = self._checked(X)
        with torch.inference_mode():
            mu, _ = self.net_.encode(torch.from_numpy(self._prepare(images)))
            return self.net_.mean_image(mu).numpy()

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        self._check_fitted()
        docs = {
            "config.json": {
                "model": self.net_.config(),
                "params": self.get_params(),
                "training": self.training_,
                "history": self.history_,
            },
            "calibration.json": {
                "scorer": {
                    "k": self.sampler_.k,
                    "seed": self.sampler_.seed,
                    "complexity_weight": self.complexity_weight_,
                },
                **self.calibration_.to_dict(),
            },
        }
        weights = dict(self.net_.state_dict())
        if self.background_ is not None:
            weights |= {f"{BACKGROUND}{k}": v for k, v in self.background_.state_dict().items()}
        return write_bundle(path, "image", docs, weights)

    @classmethod
    def load(cls, path: str | Path) -> ImageDetector:
        """Read a bundle written by :meth:`save`; never unpickles."""
        manifest, docs, weights = read_bundle(path, kind="image")
        with inconsistent_bundle(path):
            cfg = docs["config.json"]
            det = cls(**cfg["params"])
            net = ConvVAE(**cfg["model"])
            bg = {k[len(BACKGROUND) :]: v for k, v in weights.items() if k.startswith(BACKGROUND)}
            net.load_state_dict({k: v for k, v in weights.items() if not k.startswith(BACKGROUND)})
            net.eval()
            det.net_ = net
            det.background_ = None
            if det.score_kind == "ratio":
                det.background_ = ConvVAE(**cfg["model"])
                det.background_.load_state_dict(bg)
                det.background_.eval()
            det.shape_ = (net.channels, net.height, net.width)
            cal = docs["calibration.json"]
            det.sampler_ = ImportanceSampler(
                k=int(cal["scorer"]["k"]), seed=int(cal["scorer"]["seed"]), row_chunk=ROW_CHUNK
            )
            det.calibration_ = Calibration.from_dict(cal)
            # bundles from before complexity_weight: Serrà et al.'s lambda = 1
            det.complexity_weight_ = float(cal["scorer"].get("complexity_weight", 1.0))
            det.training_ = cfg.get("training", {})
            det.history_ = cfg.get("history", [])
        det.manifest_ = manifest
        return det


def latent_traversal(
    detector: ImageDetector, image: np.ndarray, *, dims: int = 8, steps: int = 9, span: float = 3.0
) -> np.ndarray:
    """The beta-VAE view: decode the posterior mean of ``image`` [1, C, H, W] with one
    latent dimension at a time swept over ``span`` prior standard deviations either way.
    Returns decoder means [dims * steps, C, H, W] in [0, 1], one row per dimension."""
    mu = torch.from_numpy(detector.encode(image))[0]
    values = torch.linspace(-span, span, steps)
    rows = []
    for d in range(min(dims, detector.latent_dim)):
        z = mu.repeat(steps, 1)
        z[:, d] = values
        rows.append(z)
    with torch.inference_mode():
        return detector.net_.mean_image(torch.cat(rows)).numpy()
