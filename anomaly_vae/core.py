"""What every detector shares, whatever its data: the estimator contract, the outlier API,
calibration, the bundle and the Lightning fit.

:class:`Detector` follows scikit-learn's estimator and outlier-detector contract
(``IsolationForest``) without importing scikit-learn, so the scoring path starts fast:
constructor arguments are stored as given and returned by ``get_params``; ``set_params``,
``repr`` and ``sklearn.base.clone`` work; ``fit`` returns self and fitted state ends in
``_``; ``score_samples`` is higher-is-more-normal; ``decision_function`` is
``score_samples - offset_``; ``predict`` gives +1 (inlier) / -1 (outlier).

A subclass says what is particular to its data:

- ``_kind``: the bundle kind (``tabular``, ``image``);
- ``_normality(X, k)``: the values calibration and ``score_samples`` use, [N];
- ``_documents()`` / ``_weights()`` / ``_restore(docs, weights, cfg)``: its part of the
  bundle;
- ``_scorer_document()``: extra scorer settings for ``calibration.json``.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from anomaly_vae.bundle import inconsistent_bundle, read_bundle, write_bundle
from anomaly_vae.exceptions import not_fitted
from anomaly_vae.scoring.calibration import Calibration

#: Lightning's notices that say nothing about a detector's fit: single-process loaders,
#: few batches per epoch, no validation loader where the module scores its own held-out
#: rows, and the module's direct batch copy winning over the datamodule's generic one.
_LIGHTNING_NOTICES = (
    ".*does not have many workers.*",
    ".*number of training batches.*",
    ".*no `val_dataloader`.*",
    ".*overridden `transfer_batch_to_device`.*",
    # Lightning's own use of torch's pytree API, not the user's to act on
    ".*isinstance\\(treespec, LeafSpec\\).*",
)


class Detector:
    """Base class of the detectors: the contract, the outlier API and the bundle.

    Fitted attributes every detector has: ``net_`` (the VAE), ``sampler_`` (the
    importance sampler), ``calibration_`` (:class:`Calibration`), ``offset_`` (the
    threshold on ``score_samples``), ``training_`` (figures of the fit), ``history_``
    (per-epoch ELBOs), ``reference_`` (the drift reference; may be empty for bundles
    written before it existed) and, after ``load``, ``manifest_``.
    """

    #: The bundle kind this detector writes and reads.
    _kind: ClassVar[str]
    #: Constructor arguments stored under another attribute name (``score`` would hide
    #: the ``score`` method): parameter -> attribute.
    _param_attributes: ClassVar[dict[str, str]] = {}
    #: scikit-learn reads this to know an outlier detector (``OutlierMixin`` sets it too).
    _estimator_type: ClassVar[str] = "outlier_detector"

    # constructor arguments every detector takes
    seed: int
    accelerator: str
    devices: int | str
    strategy: str
    progress: bool

    #: the manifest of the bundle it was loaded from (files, sha256, versions)
    manifest_: dict[str, Any]
    net_: Any
    sampler_: Any
    calibration_: Calibration
    offset_: float
    training_: dict[str, Any]
    history_: list[dict[str, float]]
    reference_: dict[str, Any]

    @property
    def kind(self) -> str:
        """The kind of data this detector models: ``tabular`` or ``image``."""
        return self._kind

    # ================================================================== parameters
    @classmethod
    def _get_param_names(cls) -> list[str]:
        """Constructor argument names, in signature order."""
        sig = inspect.signature(cls.__init__)
        return [
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor arguments as given (scikit-learn convention). ``deep`` adds the
        parameters of arguments that are estimators themselves (``name__param``)."""
        out: dict[str, Any] = {}
        for name in self._get_param_names():
            value = getattr(self, self._param_attributes.get(name, name))
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update({f"{name}__{k}": v for k, v in value.get_params().items()})
            out[name] = value
        return out

    def set_params(self, **params: Any) -> Self:
        """Set constructor arguments (scikit-learn convention); returns self. Fitted state
        is not touched: refit for the new values to take effect."""
        valid = self._get_param_names()
        for name, value in params.items():
            if name not in valid:
                msg = (
                    f"invalid parameter {name!r} for {type(self).__name__}; valid "
                    f"parameters are {sorted(valid)}"
                )
                raise ValueError(msg)
            setattr(self, self._param_attributes.get(name, name), value)
        return self

    def __repr__(self) -> str:
        defaults = {
            name: p.default for name, p in inspect.signature(type(self).__init__).parameters.items()
        }
        changed = []
        for name, value in self.get_params(deep=False).items():
            default = defaults.get(name, inspect.Parameter.empty)
            if default is inspect.Parameter.empty or not _same(value, default):
                changed.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_tags__(self) -> Any:
        """scikit-learn's estimator tags (read only by scikit-learn, which is then imported):
        an unsupervised outlier detector that needs no labels."""
        from sklearn.utils import Tags, TargetTags

        tags = Tags(estimator_type="outlier_detector", target_tags=TargetTags(required=False))
        tags.non_deterministic = False
        # missing values are marginalized out of the likelihood, by design
        tags.input_tags.allow_nan = True
        return tags

    def _bundle_params(self) -> dict[str, Any]:
        """Constructor arguments as JSON for ``config.json``."""
        return self.get_params(deep=False)

    # ================================================================== fitted state
    def _check_fitted(self) -> None:
        if not hasattr(self, "net_"):
            name = type(self).__name__
            msg = f"this {name} is not fitted yet; call fit (or {name}.load) before using it"
            raise not_fitted(msg)

    # ================================================================== the device
    def _networks(self) -> list[Any]:
        """The fitted torch modules that score (the model, and any it is compared with)."""
        return [self.net_]

    def to(self, device: Any) -> Self:
        """Score on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or a
        ``torch.device``): the networks move there, each scoring pass's rows are moved
        there as it starts and the results come back as numpy; encoding and
        reconstructions follow. The importance samples are drawn on the CPU either way,
        so every device scores under the same noise (a GPU's arithmetic is its own:
        scores agree to float32 rounding, not to the bit). Training chooses its device by
        ``accelerator`` (Lightning's); a loaded detector starts on the CPU.

        Raises:
            ValueError: a device torch does not know, or one this machine does not have
                (no CUDA GPU visible, a GPU index beyond the count).
        """
        self._check_fitted()
        dev = resolve_device(device)
        for net in self._networks():
            net.to(dev)
        return self

    def _sampling_net(self) -> Any:
        """The model to draw new records from: itself on the CPU, a CPU copy otherwise, so
        a seed gives the same draws whatever the scoring device."""
        import copy

        from anomaly_vae.scoring.iwae import model_device

        if model_device(self.net_).type == "cpu":
            return self.net_
        return copy.deepcopy(self.net_).cpu()

    @property
    def device_(self) -> Any:
        """The ``torch.device`` this detector scores on (see :meth:`to`)."""
        from anomaly_vae.scoring.iwae import model_device

        self._check_fitted()
        return model_device(self.net_)

    # ================================================================== the outlier API
    def _normality(self, X: Any, k: int | None) -> np.ndarray:
        """Higher-is-more-normal values of ``X``, [N] float64: what the threshold is set on."""
        raise NotImplementedError

    def score_samples(self, X: Any, *, k: int | None = None) -> np.ndarray:
        """Per record, the value the threshold is set on, [N] float64; higher is more
        normal. For tables and the image ``likelihood`` score it is the importance-sampled
        log p(x) in nats (see each detector for its other scores)."""
        return self._normality(X, k)

    def decision_function(self, X: Any) -> np.ndarray:
        """``score_samples(X) - offset_``: negative for outliers, [N]."""
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """+1 for inliers, -1 for outliers, [N] int."""
        return np.where(self.decision_function(X) < 0, -1, 1)

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """``fit(X)`` then ``predict(X)`` (scikit-learn's ``OutlierMixin``), [N] int."""
        return self.fit(X).predict(X)  # type: ignore[attr-defined]

    def p_values(self, X: Any) -> np.ndarray:
        """Split-conformal p-values, [N] in (0, 1]; small means unusual."""
        self._check_fitted()
        return self.calibration_.p_values(self.score_samples(X))

    def recalibrate(
        self, X: Any, *, alpha: float | None = None, contamination: float | None = None
    ) -> Self:
        """Re-set the threshold on new normal records without retraining; returns self.

        With neither rate given, the current method and rate are kept.
        """
        self._check_fitted()
        if alpha is None and contamination is None:
            alpha, contamination = self.calibration_.alpha, self.calibration_.contamination
        self._calibrate_on(X, alpha=alpha, contamination=contamination)
        return self

    def _calibrate_on(self, X: Any, *, alpha: float | None, contamination: float | None) -> None:
        """Calibrate on held-out records ``X`` (what ``recalibrate`` does after its checks)."""
        self._calibrate(self._normality(X, None), alpha=alpha, contamination=contamination)

    def _calibrate(
        self, normality: np.ndarray, *, alpha: float | None, contamination: float | None
    ) -> None:
        """Set ``calibration_`` and ``offset_`` from held-out normality values [N]."""
        if contamination is not None:
            alpha = None
        self.calibration_ = Calibration.fit(normality, alpha=alpha, contamination=contamination)
        self.offset_ = self.calibration_.threshold

    # ================================================================== the bundle
    def _documents(self) -> dict[str, Any]:
        """This kind's bundle documents beside config, calibration and reference."""
        return {}

    def _scorer_document(self) -> dict[str, Any]:
        """Extra scorer settings for ``calibration.json``'s ``scorer`` section."""
        return {}

    def _calibration_document(self) -> dict[str, Any]:
        """Extra top-level entries of ``calibration.json``."""
        return {}

    def _weights(self) -> dict[str, Any]:
        return dict(self.net_.state_dict())

    def _restore(self, docs: dict[str, Any], weights: dict[str, Any], cfg: dict[str, Any]) -> None:
        """Rebuild this kind's fitted state (the net, the schema, ...) from a bundle."""
        raise NotImplementedError

    def _make_sampler(self, k: int, seed: int) -> Any:
        from anomaly_vae.scoring.iwae import ImportanceSampler

        return ImportanceSampler(k=k, seed=seed)

    def save(self, path: str | Path, *, signing_key: str | bytes | None = None) -> Path:
        """Write the detector bundle directory (see ``anomaly_vae.bundle``), signed with
        ``signing_key`` when one is given."""
        self._check_fitted()
        docs = {
            "config.json": {
                "model": self.net_.config(),
                "params": self._bundle_params(),
                "training": self.training_,
                "history": self.history_,
            },
            **self._documents(),
            "calibration.json": {
                "scorer": {
                    "k": self.sampler_.k,
                    "seed": self.sampler_.seed,
                    **self._scorer_document(),
                },
                **self.calibration_.to_dict(),
                **self._calibration_document(),
            },
        }
        if getattr(self, "reference_", None):
            docs["reference.json"] = self.reference_
        # safetensors writes host memory: a detector moved to a GPU saves the same file
        weights = {k: v.detach().cpu() for k, v in self._weights().items()}
        return write_bundle(path, self._kind, docs, weights, signing_key)

    @classmethod
    def load(cls, path: str | Path, *, signing_key: str | bytes | None = None) -> Self:
        """Read a bundle written by :meth:`save`; never unpickles. With ``signing_key``,
        an unsigned bundle or one whose signature does not verify is refused."""
        manifest, docs, weights = read_bundle(path, kind=cls._kind, signing_key=signing_key)
        with inconsistent_bundle(path):
            cfg = docs["config.json"]
            det = cls(**cfg["params"])
            det._restore(docs, weights, cfg)
            cal = docs["calibration.json"]
            det.sampler_ = det._make_sampler(int(cal["scorer"]["k"]), int(cal["scorer"]["seed"]))
            det.calibration_ = Calibration.from_dict(cal)
            det.offset_ = det.calibration_.threshold
            det.reference_ = docs.get("reference.json", {})
            det.training_ = cfg.get("training", {})
            det.history_ = cfg.get("history", [])
        det.manifest_ = manifest
        return det

    # ================================================================== training
    def _fit_lightning(
        self,
        module: Any,
        *,
        max_epochs: int,
        datamodule: Any = None,
        loaders: Sequence[Any] = (),
        **trainer_kwargs: Any,
    ) -> tuple[int, int]:
        """Train ``module`` (a :class:`~anomaly_vae.models.vae.VAEModule`) with a quiet
        Lightning Trainer on this detector's accelerator, devices and strategy, with the
        epoch progress bar when ``progress`` is on; returns (global rank, world size).
        ``datamodule`` or ``loaders`` (train, then optional validation) feed it."""
        # Lightning is imported here only: it costs seconds, and scoring never needs it.
        import pytorch_lightning as pl

        from anomaly_vae.models.vae import EpochProgress, quiet_trainer

        for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
        pl.seed_everything(self.seed, workers=True, verbose=False)
        callbacks: list[pl.Callback] = [EpochProgress(max_epochs)] if self.progress else []
        trainer = quiet_trainer(
            max_epochs=max_epochs,
            accelerator=self.accelerator,
            devices=self.devices,
            strategy=self.strategy,
            callbacks=callbacks,
            **trainer_kwargs,
        )
        with warnings.catch_warnings():
            for notice in _LIGHTNING_NOTICES:
                warnings.filterwarnings("ignore", message=notice)
            if datamodule is not None:
                trainer.fit(module, datamodule=datamodule)
            else:
                trainer.fit(module, *loaders)
        return trainer.global_rank, trainer.world_size


def _same(a: Any, b: Any) -> bool:
    """Whether a parameter equals its default, for ``repr`` (arrays and NaN included)."""
    if a is b:
        return True
    try:
        return bool(a == b) and type(a) is type(b)
    except (TypeError, ValueError):
        return False


def resolve_device(device: Any) -> Any:
    """``device`` as a ``torch.device`` this machine has; ValueError naming it otherwise."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        msg = f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:<index>' or 'mps'"
        raise ValueError(msg) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            msg = (
                f"device {device!r}: no CUDA GPU is visible to torch on this machine "
                "(torch.cuda.is_available() is False; a CPU-only torch build, or no driver)"
            )
            raise ValueError(msg)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            msg = f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
            raise ValueError(msg)
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        msg = f"device {device!r}: Apple's MPS backend is not available on this machine"
        raise ValueError(msg)
    elif dev.type not in ("cpu", "cuda", "mps"):
        msg = f"device {device!r}: scoring runs on 'cpu', 'cuda' or 'mps', not {dev.type!r}"
        raise ValueError(msg)
    return dev
