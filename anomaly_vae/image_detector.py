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

The estimator contract and the outlier API (``score_samples`` returns the calibrated
normality: log p(x) in nats, -S(x) in bits or the log ratio in nats, higher is more
normal; ``decision_function``, ``predict``, ``p_values``, ``recalibrate``), calibration,
the bundle and the Lightning fit come from :class:`anomaly_vae.core.Detector`.
"""

from __future__ import annotations

import io
import math
import time
import warnings
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from anomaly_vae.core import Detector
from anomaly_vae.data.images import load_images
from anomaly_vae.defaults import (
    BINARIZE,
    FIT,
    IMAGE,
    IMAGE_EPOCHS,
    IMAGE_LIKELIHOODS,
    IMAGE_MAX_BATCH,
    IMAGE_MIN_BATCH,
    IMAGE_MIN_CALIBRATION,
    IMAGE_MIN_STEPS,
    IMAGE_MIN_VALIDATION,
    IMAGE_SCHEDULE_SHARE,
    MIN_IMAGES,
)
from anomaly_vae.defaults import IMAGE_SCORES as SCORES
from anomaly_vae.exceptions import ImageError, ImageScaleWarning, not_fitted
from anomaly_vae.nn.conv import ConvVAE
from anomaly_vae.scoring.iwae import ImportanceSampler, ScoreResult, model_device, to_numpy

__all__ = ["BINARIZE", "FIT", "SCORES", "ImageDetector", "latent_traversal", "png_bits"]

#: Images per scorer pass. Every pass is padded to exactly this many images: convolution
#: kernels are chosen by batch size, and a short last chunk changed scores by up to 7e-6
#: nats; with fixed-size passes an image's score is the same bits in any batch.
ROW_CHUNK = 16
#: Weight-name prefix of the ratio score's background model in the bundle.
BACKGROUND = "background."


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


#: Brightest training pixel below which images look unscaled (8-bit levels are 0..255).
UNSCALED_PEAK = 64


def _warn_if_unscaled(images: np.ndarray, likelihood: str) -> None:
    """Warn when no training pixel reaches ``UNSCALED_PEAK``: integers are read as 8-bit
    levels, so images on another scale (scikit-learn's digits are 0..16) look nearly
    black, and binarized at 128 for ``bernoulli`` they are black."""
    peak = int(images.max())
    if peak >= UNSCALED_PEAK:
        return
    effect = (
        "binarized at 128 for the bernoulli likelihood, every pixel is black"
        if likelihood == "bernoulli"
        else "the model sees nearly black images"
    )
    msg = (
        f"the brightest training pixel is {peak} of 255: integer pixels are read as 8-bit "
        f"levels (0..255), so {effect}. If the images are on another scale (0..{peak}), "
        f"rescale them to 0..255 (e.g. images * 255 // {max(peak, 1)}) or pass floats in [0, 1]"
    )
    warnings.warn(msg, ImageScaleWarning, stacklevel=3)


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


class ImageDetector(Detector):
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
        beta: KL weight; kl_warmup_epochs, max_epochs, batch_size, lr, patience: training
            schedule. Left unset they are sized from the number of training images (see
            :meth:`_schedule`).
        max_minutes: a wall-clock budget for training (Lightning's ``max_time``).
        k: importance samples per image when scoring.
        alpha: target false-positive rate of the conformal threshold.
        contamination: alternatively, the expected outlier fraction; the threshold is
            that quantile of the calibration images' normality. Overrides ``alpha``.
        calibration_fraction, validation_fraction: held-out shares of the images; on
            small sets the split holds out at least ``IMAGE_MIN_CALIBRATION`` images (at
            most a quarter) and ``IMAGE_MIN_VALIDATION`` (at most an eighth of the rest).
        seed: seeds splits, weights, shuffling, binarization and the scorer.
        accelerator, devices, strategy: passed to the Lightning Trainer.
        progress: progress bars.
    """

    _kind = "image"
    # ``score`` names the score kind; the attribute would hide the ``score`` method
    _param_attributes: ClassVar[dict[str, str]] = {"score": "score_kind"}

    def __init__(
        self,
        *,
        likelihood: str = IMAGE["likelihood"],
        binarize: str = IMAGE["binarize"],
        score: str = IMAGE["score"],
        mutation_rate: float = IMAGE["mutation_rate"],
        complexity_weight: float | str = IMAGE["complexity_weight"],
        latent_dim: int = IMAGE["latent_dim"],
        width_mult: int = IMAGE["width_mult"],
        beta: float = IMAGE["beta"],
        kl_warmup_epochs: int | None = IMAGE["kl_warmup_epochs"],
        max_epochs: int | None = IMAGE["max_epochs"],
        batch_size: int | None = IMAGE["batch_size"],
        lr: float = IMAGE["lr"],
        patience: int | None = IMAGE["patience"],
        max_minutes: float | None = IMAGE["max_minutes"],
        k: int = IMAGE["k"],
        alpha: float = IMAGE["alpha"],
        contamination: float | None = IMAGE["contamination"],
        calibration_fraction: float = IMAGE["calibration_fraction"],
        validation_fraction: float = IMAGE["validation_fraction"],
        seed: int = IMAGE["seed"],
        accelerator: str = IMAGE["accelerator"],
        devices: int | str = IMAGE["devices"],
        strategy: str = IMAGE["strategy"],
        progress: bool = IMAGE["progress"],
    ) -> None:
        if likelihood not in IMAGE_LIKELIHOODS:
            msg = f"likelihood must be one of {IMAGE_LIKELIHOODS}, got {likelihood!r}"
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
        if contamination is not None and not 0.0 < contamination < 0.5:
            msg = f"contamination must be in (0, 0.5), got {contamination!r}"
            raise ValueError(msg)
        ImportanceSampler(k=k)  # validates k
        self.likelihood, self.binarize, self.score_kind = likelihood, binarize, score
        self.mutation_rate = mutation_rate
        self.complexity_weight = complexity_weight
        self.latent_dim, self.width_mult, self.beta = latent_dim, width_mult, beta
        self.kl_warmup_epochs = kl_warmup_epochs
        self.max_epochs, self.batch_size, self.lr, self.patience = (
            max_epochs,
            batch_size,
            lr,
            patience,
        )
        self.max_minutes = max_minutes
        self.k, self.alpha, self.contamination = k, alpha, contamination
        self.calibration_fraction, self.validation_fraction = (
            calibration_fraction,
            validation_fraction,
        )
        self.seed = seed
        self.accelerator, self.devices, self.strategy = accelerator, devices, strategy
        self.progress = progress

    # ------------------------------------------------------------------ fitting
    def _networks(self) -> list[Any]:
        return [self.net_] + ([self.background_] if self.background_ is not None else [])

    def _tensor(self, images: np.ndarray) -> torch.Tensor:
        """Checked images as the network's input tensor, on the scoring device."""
        return torch.from_numpy(self._prepare(images)).to(model_device(self.net_))

    def _prepare(self, images: np.ndarray) -> np.ndarray:
        """Pixels as the model scores them: binarized at 128 for ``bernoulli``."""
        if self.likelihood == "bernoulli":
            return np.where(images >= 128, 255, 0).astype(np.uint8)
        return images

    def fit(self, X: Any, y: Any = None) -> ImageDetector:
        """Fit on mostly normal images (array or path, see ``load_images``); returns self.
        With ``score="ratio"`` a background model is trained as well (twice the time)."""
        t0 = time.perf_counter()
        images = load_images(X)
        n = len(images)
        if n < MIN_IMAGES:
            msg = f"fit needs at least {MIN_IMAGES} images, got {n}"
            raise ImageError(msg)
        _, c, h, w = images.shape
        _warn_if_unscaled(images, self.likelihood)
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(n)
        n_cal, n_val = self._split_sizes(n)
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
        schedule = self._schedule(len(train_idx))
        net, history, best_epoch, rank = self._train(
            _ImageData(torch.from_numpy(train_src), dynamic, self.seed),
            self._prepare(images[val_idx]),
            (c, h, w),
            schedule,
        )
        self.background_: ConvVAE | None = None
        if self.score_kind == "ratio":
            # Ren et al.: the same model on perturbed images; perturbing the prepared
            # (binarized) pixels keeps the background on the model's own input space
            mutated = _mutate(self._prepare(images[train_idx]), self.mutation_rate, self.seed)
            val_mutated = _mutate(self._prepare(images[val_idx]), self.mutation_rate, self.seed + 1)
            self.background_, *_ = self._train(
                _ImageData(torch.from_numpy(mutated), False, self.seed),
                val_mutated,
                (c, h, w),
                schedule,
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
            "schedule": schedule,
        }
        cal_res = self._score_images(images[cal_idx])
        normality = self._image_normality(images[cal_idx], cal_res)
        self._calibrate(normality, alpha=self.alpha, contamination=self.contamination)
        self.reference_ = self._drift_reference(images[cal_idx], normality, cal_res)
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

    def _split_sizes(self, n: int) -> tuple[int, int]:
        """(calibration, validation) image counts of ``n`` images: the fractions, raised
        on small sets to ``IMAGE_MIN_CALIBRATION`` (at most a quarter of the images) and
        ``IMAGE_MIN_VALIDATION`` (at most an eighth of the rest)."""
        n_cal = max(1, round(self.calibration_fraction * n), min(IMAGE_MIN_CALIBRATION, n // 4))
        rest = n - n_cal
        n_val = max(1, round(self.validation_fraction * rest), min(IMAGE_MIN_VALIDATION, rest // 8))
        return n_cal, n_val

    def _schedule(self, n_train: int) -> dict[str, int]:
        """Training schedule sized from the number of training images.

        Batches are about an eighth of the images (``IMAGE_MIN_BATCH``..``IMAGE_MAX_BATCH``,
        a power of two); epochs are ``IMAGE_EPOCHS``, or more where that many epochs make
        fewer than ``IMAGE_MIN_STEPS`` optimizer steps; patience is a quarter of the epochs
        (at least 5) and the KL weight rises to ``beta`` over the first quarter
        (``IMAGE_SCHEDULE_SHARE``). Any of them given at construction is taken as given.

        On scikit-learn's 8x8 digits (about 126 training images per class) the previous
        fixed schedule, 20 epochs of one 128-image batch, left the encoders collapsed (0
        active latent dimensions) with the decoder drawing each class's mean. With the
        step budget but patience a tenth of the epochs and no warm-up, 3 of the 10
        classes still collapsed in the first epochs and early stopping kept that state;
        with patience a quarter and no warm-up, one class left it in its last epoch of
        patience. The warm-up keeps the encoder in use from the start.
        """
        bs = self.batch_size or int(
            min(IMAGE_MAX_BATCH, max(IMAGE_MIN_BATCH, 2 ** round(math.log2(max(1, n_train / 8)))))
        )
        steps_per_epoch = max(1, math.ceil(n_train / bs))
        epochs = self.max_epochs or max(IMAGE_EPOCHS, math.ceil(IMAGE_MIN_STEPS / steps_per_epoch))
        return {
            "batch_size": bs,
            "max_epochs": epochs,
            "patience": self.patience or max(5, epochs // IMAGE_SCHEDULE_SHARE),
            "kl_warmup_epochs": (
                self.kl_warmup_epochs
                if self.kl_warmup_epochs is not None
                else epochs // IMAGE_SCHEDULE_SHARE
            ),
        }

    def _train(
        self,
        train: _ImageData,
        val_images: np.ndarray,
        shape: tuple[int, int, int],
        schedule: dict[str, int],
    ) -> tuple[ConvVAE, list[dict[str, float]], int, int]:
        """Fit one ConvVAE with Lightning on ``train``, early-stopping on the prepared
        ``val_images``; returns (net in eval mode, history, best epoch, global rank).
        The held-out ELBO comes from Lightning's validation loop over ``val_images``."""
        import datetime as dt

        from anomaly_vae.models.vae import VAEModule

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
            sampler = torch.utils.data.BatchSampler(base, schedule["batch_size"], drop_last=False)
            return torch.utils.data.DataLoader(ds, batch_size=None, sampler=sampler)

        module = VAEModule(
            net,
            beta=self.beta,
            kl_warmup_epochs=schedule["kl_warmup_epochs"],
            lr=self.lr,
            patience=schedule["patience"],
        )
        rank, _ = self._fit_lightning(
            module,
            max_epochs=schedule["max_epochs"],
            loaders=(loader(train, True), loader(val, False)),
            max_time=dt.timedelta(minutes=self.max_minutes) if self.max_minutes else None,
            num_sanity_val_steps=0,
        )
        net.eval()
        return net, module.history, module.best_epoch, rank

    # ------------------------------------------------------------------ scoring
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
        # the sampler pads every pass to ROW_CHUNK images, so no image's bits depend on
        # the others it came with
        x = torch.from_numpy(self._prepare(images))
        if self.progress and n > 10 * ROW_CHUNK:
            from tqdm.auto import tqdm

            with tqdm(total=n, unit="images", desc="scoring") as bar:
                return sampler.score(
                    net or self.net_, x, n, progress=bar.update, contributions=contributions
                )
        return sampler.score(net or self.net_, x, n, contributions=contributions)

    def _normality(self, X: Any, k: int | None) -> np.ndarray:
        images = self._checked(X)
        return self._image_normality(images, self._score_images(images, k), k)

    def score_samples(self, X: Any, *, k: int | None = None) -> np.ndarray:
        """Per image, the normality the threshold is set on, [N] float64, higher is more
        normal: log p(x) in nats (``likelihood``), -S(x) = log2 p(x) + lambda L(x) in
        bits (``complexity``), or log p(x) - log p_bg(x) in nats (``ratio``)."""
        return self._normality(X, k)

    def _image_normality(
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
                raise not_fitted(msg)
            return res.log_likelihood - self.background_log_likelihood(images, k)
        # -S(x) = log2 p(x) + lambda L(x), bits; L compresses the pixels the model
        # scored (binarized for bernoulli), so both terms describe the same image
        if bits is None:
            bits = png_bits(self._prepare(images))
        return res.log_likelihood / math.log(2.0) + self.complexity_weight_ * bits

    def _drift_reference(
        self, images: np.ndarray, normality: np.ndarray, res: ScoreResult
    ) -> dict[str, Any]:
        """The drift reference of calibration ``images``: scores, latent means, KL."""
        from anomaly_vae.drift.reference import model_part

        return model_part(normality, self.encode(images), res.kl, self.seed)

    def drift_outputs(self, X: Any, *, k: int | None = None) -> dict[str, Any]:
        """What a drift check needs of a batch of images (see :mod:`anomaly_vae.drift`):
        ``normality`` [N] (the calibrated score's units), ``flags`` [N], ``mu`` [N, L],
        ``kl`` [N], ``keys`` [N] (per-image keys, the same in any batch)."""
        images = self._checked(X)
        res = self._score_images(images, k)
        normality = self._image_normality(images, res, k)
        from anomaly_vae.drift.check import record_keys

        return {
            "normality": normality,
            "flags": self.calibration_.is_outlier(normality),
            "mu": self.encode(images),
            "kl": res.kl,
            "keys": record_keys(images),
        }

    def rebuild_reference(self, X: Any) -> ImageDetector:
        """Recompute the drift reference from images like the training data (for a
        bundle written before the reference existed). Returns self."""
        images = self._checked(X)
        res = self._score_images(images)
        self.reference_ = self._drift_reference(images, self._image_normality(images, res), res)
        return self

    def background_log_likelihood(self, images: np.ndarray, k: int | None = None) -> np.ndarray:
        """log p_bg(x) per image under the ratio score's background model, nats, [N]."""
        assert self.background_ is not None
        return self._score_images(images, k, net=self.background_).log_likelihood

    def score(self, X: Any, *, k: int | None = None) -> pd.DataFrame:
        """Per image: ``log_likelihood`` (nats) and its ``stderr``, ``ess`` and
        ``unreliable`` (the importance weights' effective sample size, and whether it is
        below :data:`~anomaly_vae.scoring.iwae.MIN_ESS`), ``bits_per_dim``
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
                "ess": res.ess,
                "unreliable": res.unreliable,
                "bits_per_dim": -res.log_likelihood / (d * math.log(2.0)),
            }
        )
        bits = png_bits(self._prepare(images)) if self.score_kind == "complexity" else None
        normality = self._image_normality(images, res, k, bits)
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
        net = self._sampling_net()
        with torch.inference_mode():
            z = torch.randn(n, net.latent_dim, generator=g)
            return net.sample_image(z, generator=g).numpy()

    def encode(self, X: Any) -> np.ndarray:
        """Posterior means, [N, latent_dim]."""
        images = self._checked(X)
        with torch.inference_mode():
            mu, _ = self.net_.encode(self._tensor(images))
        return to_numpy(mu)

    def latent_outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior means [N, L] and KL(q(z|x) || p(z)) [N] (nats) of checked images
        [N, C, H, W]: one encoder pass, what live drift monitoring needs."""
        from anomaly_vae.nn.base import gaussian_kl

        with torch.inference_mode():
            mu, logvar = self.net_.encode(self._tensor(images))
            kl = gaussian_kl(mu, logvar).to(torch.float64)
        return to_numpy(mu), to_numpy(kl)

    def reconstruct(self, X: Any) -> np.ndarray:
        """Decoder means at the posterior means, floats in [0, 1], [N, C, H, W]."""
        images = self._checked(X)
        with torch.inference_mode():
            mu, _ = self.net_.encode(self._tensor(images))
            return to_numpy(self.net_.mean_image(mu))

    # ------------------------------------------------------------------ persistence
    def _documents(self) -> dict[str, Any]:
        """``schema.json`` of an image bundle: what the model takes."""
        c, h, w = self.shape_
        return {
            "schema.json": {
                "kind": "image",
                "shape": [c, h, w],
                "layout": "NCHW",
                "dtype": "uint8",
                "value_range": [0, 255],
                "channels": "grayscale" if c == 1 else "RGB",
                "pixels_as_scored": "binarized at 128"
                if self.likelihood == "bernoulli"
                else "8-bit",
            }
        }

    def _scorer_document(self) -> dict[str, Any]:
        return {"complexity_weight": self.complexity_weight_}

    def _weights(self) -> dict[str, Any]:
        weights = dict(self.net_.state_dict())
        if self.background_ is not None:
            weights |= {f"{BACKGROUND}{k}": v for k, v in self.background_.state_dict().items()}
        return weights

    def _make_sampler(self, k: int, seed: int) -> ImportanceSampler:
        return ImportanceSampler(k=k, seed=seed, row_chunk=ROW_CHUNK)

    def _restore(self, docs: dict[str, Any], weights: dict[str, Any], cfg: dict[str, Any]) -> None:
        net = ConvVAE(**cfg["model"])
        bg = {k[len(BACKGROUND) :]: v for k, v in weights.items() if k.startswith(BACKGROUND)}
        net.load_state_dict({k: v for k, v in weights.items() if not k.startswith(BACKGROUND)})
        net.eval()
        self.net_ = net
        self.background_ = None
        if self.score_kind == "ratio":
            self.background_ = ConvVAE(**cfg["model"])
            self.background_.load_state_dict(bg)
            self.background_.eval()
        self.shape_ = (net.channels, net.height, net.width)
        schema = docs.get("schema.json")  # bundles from before it have none
        if schema is not None and tuple(schema["shape"]) != self.shape_:
            msg = (
                f"schema.json gives image shape {schema['shape']}, the weights {list(self.shape_)}"
            )
            raise KeyError(msg)
        # bundles from before complexity_weight: Serrà et al.'s lambda = 1
        scorer = docs["calibration.json"]["scorer"]
        self.complexity_weight_ = float(scorer.get("complexity_weight", 1.0))


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
        z = torch.cat(rows).to(model_device(detector.net_))
        return to_numpy(detector.net_.mean_image(z))
