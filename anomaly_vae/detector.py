"""The detector users touch: a tabular VAE with an honest log p(x) and calibrated flags.

The estimator contract, the outlier API (``score_samples`` is the importance-sampled
log-likelihood in nats, higher is more normal; ``decision_function``, ``predict``,
``p_values``, ``recalibrate``), calibration, the bundle and the Lightning fit come from
:class:`anomaly_vae.core.Detector`; this module says what is particular to tables: the
schema and preprocessing, the schedule sized from the rows, per-feature contributions
and explanations, generation and the drift reference.
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from anomaly_vae.core import Detector
from anomaly_vae.data.io import read_table
from anomaly_vae.data.preprocessing import TabularArrays, TabularPreprocessor, check_winsorize
from anomaly_vae.data.schema import KINDS, Schema, infer_schema, text_columns
from anomaly_vae.defaults import (
    AUTO_LR,
    BASE_LR,
    DISCRETE_LIKELIHOODS,
    MAX_CALIBRATION,
    MAX_LR,
    MIN_ROWS,
    MIN_SIGMA_RULES,
    MIN_STEPS,
    NOMINAL_MIN_STEPS,
    SMALL_TABLE_ROWS,
    STEPS_PER_ITEM,
    TABULAR,
    TARGET_STEPS,
)
from anomaly_vae.exceptions import CalibrationWarning, SchemaError
from anomaly_vae.nn.tabular import (
    TabularTensors,
    TabularVAE,
    default_architecture,
    default_min_sigma,
    scott_min_sigma,
)
from anomaly_vae.scoring.calibration import Calibration, bonferroni
from anomaly_vae.scoring.iwae import (
    AUTO_K,
    ImportanceSampler,
    ScoreResult,
    choose_k,
    model_device,
    to_device,
    to_numpy,
)
from anomaly_vae.scoring.marginal import MarginalTails

#: Calibration rows kept in the bundle (encoded) for records with missing cells: each
#: missingness pattern is calibrated on them with the same cells removed.
MAX_PATTERN_ROWS = 2000
#: Missingness patterns whose calibration is kept in memory at once.
MAX_PATTERNS = 256
_ROWS_PREFIX = "calibration_rows."
_MARGINAL_PREFIX = "marginal_tails."

#: Rows missing the same cells: (log p(x)'s calibration for them, their row indices, the
#: channel columns' calibrations, the marginal statistic's calibration or None).
PatternGroup = tuple[Calibration, list[int], dict[str, Calibration], Calibration | None]

__all__ = [
    "DISCRETE_LIKELIHOODS",
    "MAX_CALIBRATION",
    "MIN_ROWS",
    "MIN_SIGMA_RULES",
    "TabularDetector",
]


def _as_array(X: Any, what: str = "X") -> Any:
    """``X`` as it is if a frame or a path; any other array-like (lists, array wrappers)
    as a 2-D numpy array. Sparse and complex input and other shapes are errors."""
    if isinstance(X, pd.DataFrame | str | Path):
        return X
    if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
        msg = f"{what}: sparse input is not supported; pass a dense array (X.toarray())"
        raise SchemaError(msg)
    unknown = f"{what} must be a pandas DataFrame, a 2-D numpy array or a CSV/Parquet path, got {type(X).__name__}"
    if not isinstance(X, np.ndarray | list | tuple) and not hasattr(X, "__array__"):
        raise SchemaError(unknown)
    try:
        arr = np.asarray(X)
    except (TypeError, ValueError) as exc:
        raise SchemaError(unknown) from exc
    if arr.dtype.kind == "c":
        msg = f"{what} holds complex values: Complex data not supported"
        raise SchemaError(msg)
    if arr.ndim != 2:
        msg = (
            f"{what} must be 2-D [rows, columns], got an array of shape {arr.shape}; "
            "Reshape your data with X.reshape(-1, 1) for one column or X.reshape(1, -1) "
            "for one row"
        )
        raise SchemaError(msg)
    return arr


def _as_frame(X: Any, what: str = "X") -> pd.DataFrame:
    """``X`` (a frame, an array, or a CSV/Parquet path) as a frame whose column names are
    the text the schema names them by (:func:`text_columns`; an array's are x0, x1, ...)."""
    X = _as_array(X, what)
    if isinstance(X, pd.DataFrame):
        return text_columns(X)
    if isinstance(X, str | Path):
        return read_table(X)
    return pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])


def split_rows(
    n: int, seed: int, calibration_fraction: float, validation_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seeded split of ``n`` rows a fit makes: (calibration, validation, training)
    row indices. At most ``MAX_CALIBRATION`` calibration rows, at least one; no validation
    rows when fewer than 2 training rows would be left."""
    order = np.random.default_rng(seed).permutation(n)
    n_cal = min(MAX_CALIBRATION, max(1, round(calibration_fraction * n)))
    rest = order[n_cal:]
    n_val = round(validation_fraction * len(rest))
    if len(rest) - n_val < 2:
        n_val = 0
    return order[:n_cal], rest[:n_val], rest[n_val:]


class TabularDetector(Detector):
    """Variational-autoencoder outlier detector and density estimator for tables.

    Parameters left as None are sized from the data at ``fit``: see
    :func:`anomaly_vae.nn.tabular.default_architecture` and :meth:`_schedule`.

    Args:
        latent_dim: size of z.
        hidden: encoder hidden widths (the decoder mirrors them).
        beta: KL weight (beta-VAE); 1 trains on the plain ELBO.
        kl_warmup_epochs: epochs over which the KL weight rises from 0 to ``beta``.
        max_epochs, batch_size, lr, patience: training schedule; early stopping watches
            the validation ELBO with ``patience`` epochs. Left unset they are sized from
            the rows (see :meth:`_schedule`; a table with a categorical column trains at
            least ``NOMINAL_MIN_STEPS`` steps). ``lr="auto"`` sizes the learning rate from
            the steps planned: larger steps for short schedules (small tables).
        trim_fraction: robust training; leave out this fraction of each batch's
            highest-loss rows from the gradient (0 disables). Training data with
            outliers in it is the normal case (ADBench fits on contaminated rows), and
            a VAE learns whatever it is shown; 0.1 raised mean AUROC on the 29 ADBench
            sets over no trimming (benchmarks/RESULTS.md, ablations).
        robust_validation: with ``trim_fraction`` > 0, early stopping and the kept epoch
            watch the validation ELBO of each batch's best ``1 - trim_fraction`` rows,
            so outliers among the validation rows do not steer model selection. Off by
            default: on ADBench its effect was within seed noise.
        min_sigma: floor of the decoder's standard deviation for numeric columns, in
            standardized units, or a rule: "auto" (the default) is one standard
            deviation up to 10,000 training rows, falling as rows**(-1/4) to 0.6 from
            about 77,000 (:func:`~anomaly_vae.nn.tabular.default_min_sigma`); "scott" is
            the previous default, Scott's rule from the training rows and columns clipped
            to [0.6, 1] (:func:`~anomaly_vae.nn.tabular.scott_min_sigma`). The value used
            is in ``training_["min_sigma"]``. A floor keeps integer-valued and
            near-constant columns from collapsing into density spikes that dominate the
            score; a fixed 1.0 was best of 0.01, 0.1, 0.3, 0.5 and 1.0 on ADBench sets,
            and a lower floor beat it where many rows resolve finer structure (skin,
            donors) and, by less, on a few highly contaminated sets (landsat, SpamBase;
            benchmarks/RESULTS.md, ablations). Held-out likelihood always prefers a lower
            floor: the floor is chosen for detection, not for fit; lower it (e.g. 0.05)
            for density estimation on columns tightly determined by others.
        student_df: degrees of freedom of the Student-t that models each numeric column
            given z (default 3); None for a Gaussian. The t's polynomial tails keep one
            wildly off column (a rare value of a nearly constant column) from
            outvoting the rest of the record; it raised mean AUROC on ADBench over the
            Gaussian (benchmarks/RESULTS.md, ablations).
        winsorize: share of each tail of a numeric column clipped before its center
            and scale are taken (0 uses the plain mean and standard deviation). The
            scale is the unit of the decoder's noise floor, and outliers among the
            training rows should not set it; 0.025 raised the AUROC wins against
            IsolationForest on ADBench (benchmarks/RESULTS.md, ablations).
        k: importance samples per record when scoring (1 = ELBO). None (the default)
            sizes it at ``fit``: the fewest of 8, 16, 32 and 64 whose estimates on the
            validation rows are as good as 64's (on average within 0.05 nats, and at most
            1 in 100 more rows flagged ``unreliable``; see
            ``anomaly_vae.scoring.iwae.choose_k``); 64 when no row is held out for
            validation. Detection on ADBench does not rest on K in that range
            (benchmarks/RESULTS.md), and scoring time is about proportional to it. The
            chosen K is ``sampler_.k``; what was measured is in ``training_["k_choice"]``.
        alpha: target false-positive rate of the conformal threshold.
        contamination: alternatively, the expected outlier fraction; the threshold is
            that quantile of the calibration rows' scores. Overrides ``alpha``.
        calibration_fraction: share of the rows held out of training to calibrate on (at
            most ``MAX_CALIBRATION``, 20,000 rows).
        validation_fraction: share of the remaining rows held out for early stopping.
        id_column: a column carried through scoring but never modelled.
        categorical: columns to treat as categorical even if they hold numbers.
        discrete_levels: a numeric column whose training values are integers with at
            most this many distinct values is modelled as discrete: a likelihood over
            its levels (``discrete_likelihood``; a probability mass, so log p(x) stays
            honest for integer-coded data), with values off the levels in the "unknown"
            slot. 0 models every numeric column as continuous. It raised mean AUROC on
            ADBench (integer-coded sets such as letter and optdigits; RESULTS.md).
        discrete_likelihood: how a discrete column's levels are modelled: ``"ordinal"``
            (the default: a logistic with a learned location and scale, binned at the
            levels, and the level's position as the encoder's input, so neighbouring
            levels share strength; two decoder outputs and one encoder input per column)
            or ``"categorical"`` (unordered: one-hot in, one free probability per level
            out). Ordinal raised mean AUROC on ADBench (benchmarks/RESULTS.md,
            ablations).
        category_channels: judge each text categorical column on its own as well as the
            record as a whole (the default). The joint log p(x) weighs one column's
            surprise against the noise of every other column, so a category that does
            not fit the rest of its row (every value common on its own) hides among
            them. With channels, a record's p-value (and so its flag and
            ``decision_function``) is Bonferroni's over C tests, ``min(1, C min_c p_c)``:
            the conformal p-value of log p(x) and, for each text categorical column, of
            its contribution (log p of the category given the record, nats), each against
            the calibration rows. Valid whatever the dependence between the tests: the
            false-positive rate stays at most ``alpha``. ``score_samples`` and
            ``log_likelihood`` stay the joint log p(x). Tables without a text column
            (integer-coded categories included) are unaffected. It raised contextual
            anomalies' AUROC on benchmarks/mixed.py (RESULTS.md).
        marginal_channel: the share w of the level given to a test of each column on
            its own (0 disables it). The joint log p(x) ranks a record by how well the
            whole row fits; a row whose cells sit in their own columns' tails, each
            plausible given the others, can fit well, and on some tables (celeba,
            vertebral) those are the outliers. The marginal statistic is ECOD's, the sum
            of each observed cell's -log empirical tail probability against the training
            rows (:class:`~anomaly_vae.scoring.marginal.MarginalTails`; numeric, boolean
            and integer-coded columns), calibrated on the calibration rows like log
            p(x). A record's p-value is then the weighted Bonferroni
            ``min(1, p_joint / w_j, ..., p_marginal / w)``, the record's and each text
            column's test sharing ``1 - w`` equally: valid for any dependence, so the
            false-positive rate stays at most ``alpha``. ``score_samples`` and
            ``log_likelihood`` stay the joint log p(x). 0.35 was chosen on half A of the
            ADBench sets by a rule written before the figures and checked on half B
            (benchmarks/marginal_heldout.py, RESULTS.md).
        schema: a :class:`Schema` (or its dict) to use instead of inferring one.
        seed: seeds the split, the initial weights, shuffling and the scorer's samples.
        accelerator, devices, strategy: passed to the Lightning Trainer.
        progress: show progress bars for training and long scoring.
    """

    _kind = "tabular"

    def __init__(
        self,
        *,
        latent_dim: int | None = TABULAR["latent_dim"],
        hidden: list[int] | None = TABULAR["hidden"],
        beta: float = TABULAR["beta"],
        kl_warmup_epochs: int | None = TABULAR["kl_warmup_epochs"],
        max_epochs: int | None = TABULAR["max_epochs"],
        batch_size: int | None = TABULAR["batch_size"],
        lr: float | str = TABULAR["lr"],
        patience: int | None = TABULAR["patience"],
        trim_fraction: float = TABULAR["trim_fraction"],
        robust_validation: bool = TABULAR["robust_validation"],
        min_sigma: float | str = TABULAR["min_sigma"],
        student_df: float | None = TABULAR["student_df"],
        winsorize: float = TABULAR["winsorize"],
        k: int | None = TABULAR["k"],
        alpha: float = TABULAR["alpha"],
        contamination: float | None = TABULAR["contamination"],
        calibration_fraction: float = TABULAR["calibration_fraction"],
        validation_fraction: float = TABULAR["validation_fraction"],
        id_column: str | None = TABULAR["id_column"],
        categorical: list[str] | None = TABULAR["categorical"],
        discrete_levels: int = TABULAR["discrete_levels"],
        discrete_likelihood: str = TABULAR["discrete_likelihood"],
        category_channels: bool = TABULAR["category_channels"],
        marginal_channel: float = TABULAR["marginal_channel"],
        schema: Schema | dict[str, Any] | None = TABULAR["schema"],
        seed: int = TABULAR["seed"],
        accelerator: str = TABULAR["accelerator"],
        devices: int | str = TABULAR["devices"],
        strategy: str = TABULAR["strategy"],
        progress: bool = TABULAR["progress"],
    ) -> None:
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.beta = beta
        self.kl_warmup_epochs = kl_warmup_epochs
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.patience = patience
        self.trim_fraction = trim_fraction
        self.robust_validation = robust_validation
        self.min_sigma = min_sigma
        self.student_df = student_df
        self.winsorize = winsorize
        self.k = k
        self.alpha = alpha
        self.contamination = contamination
        self.calibration_fraction = calibration_fraction
        self.validation_fraction = validation_fraction
        self.id_column = id_column
        self.categorical = categorical
        self.discrete_levels = discrete_levels
        self.discrete_likelihood = discrete_likelihood
        self.category_channels = category_channels
        self.marginal_channel = marginal_channel
        self.schema = schema
        self.seed = seed
        self.accelerator = accelerator
        self.devices = devices
        self.strategy = strategy
        self.progress = progress

    # ================================================================== fitting
    def _check_params(self) -> None:
        if self.lr != AUTO_LR and not (
            isinstance(self.lr, numbers.Real) and not isinstance(self.lr, bool) and self.lr > 0
        ):
            msg = f"lr must be a number > 0 or {AUTO_LR!r}, got {self.lr!r}"
            raise ValueError(msg)
        if not 0.0 < self.calibration_fraction < 1.0:
            msg = f"calibration_fraction must be in (0, 1), got {self.calibration_fraction!r}"
            raise ValueError(msg)
        if not 0.0 <= self.validation_fraction < 1.0:
            msg = f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}"
            raise ValueError(msg)
        if not 0.0 <= self.trim_fraction < 0.5:
            msg = f"trim_fraction must be in [0, 0.5), got {self.trim_fraction!r}"
            raise ValueError(msg)
        check_winsorize(self.winsorize)
        if self.min_sigma not in MIN_SIGMA_RULES and not (
            isinstance(self.min_sigma, numbers.Real)
            and not isinstance(self.min_sigma, bool | np.bool_)
            and 0 <= self.min_sigma < math.inf
        ):
            msg = f"min_sigma must be 'auto', 'scott' or a number >= 0, got {self.min_sigma!r}"
            raise ValueError(msg)
        if self.student_df is not None and not self.student_df > 0:
            msg = f"student_df must be > 0 or None, got {self.student_df!r}"
            raise ValueError(msg)
        if isinstance(self.discrete_levels, bool) or not (
            isinstance(self.discrete_levels, int) and self.discrete_levels >= 0
        ):
            msg = f"discrete_levels must be an integer >= 0, got {self.discrete_levels!r}"
            raise ValueError(msg)
        if self.discrete_likelihood not in DISCRETE_LIKELIHOODS:
            msg = (
                f"discrete_likelihood must be one of {', '.join(DISCRETE_LIKELIHOODS)}, "
                f"got {self.discrete_likelihood!r}"
            )
            raise ValueError(msg)
        if not isinstance(self.category_channels, bool | np.bool_):
            msg = f"category_channels must be True or False, got {self.category_channels!r}"
            raise ValueError(msg)
        if not (
            isinstance(self.marginal_channel, numbers.Real)
            and not isinstance(self.marginal_channel, bool | np.bool_)
            and 0.0 <= self.marginal_channel < 1.0
        ):
            msg = f"marginal_channel must be a number in [0, 1), got {self.marginal_channel!r}"
            raise ValueError(msg)
        if self.beta < 0:
            msg = f"beta must be >= 0, got {self.beta!r}"
            raise ValueError(msg)
        if self.k is not None:
            ImportanceSampler(k=self.k)  # validates k
        if self.contamination is None and not 0.0 < self.alpha < 1.0:
            msg = f"alpha must be in (0, 1), got {self.alpha!r}"
            raise ValueError(msg)
        if self.contamination is not None and not 0.0 < self.contamination < 0.5:
            msg = f"contamination must be in (0, 0.5), got {self.contamination!r}"
            raise ValueError(msg)

    def _schedule(self, n_train: int, nominal: bool = False) -> dict[str, Any]:
        """Training schedule sized from the row count.

        Batches are about n/16 rows (32..512). The step budget grows with the data,
        one step per training row (half a step below ``SMALL_TABLE_ROWS``) between
        ``MIN_STEPS`` and ``TARGET_STEPS``, and is at least ``NOMINAL_MIN_STEPS`` when
        the table has a ``nominal`` categorical column (a head with a free probability
        per level); an epoch
        is at least 8 steps (small tables are cycled within an epoch, so per-epoch
        overhead does not dominate); patience is a tenth of the epochs (at least 5).
        With ``lr="auto"`` the learning rate is ``BASE_LR`` at ``TARGET_STEPS`` planned
        steps and larger for shorter ones, ``BASE_LR * sqrt(TARGET_STEPS / steps)`` up to
        ``MAX_LR``: a small table's step budget is kept small for fit time, and at 2e-3 its
        few dozen steps left a categorical column's dependence on the others unlearned.
        """
        bs = self.batch_size or int(min(512, max(32, 2 ** round(math.log2(max(1, n_train / 16))))))
        rows_per_epoch = max(n_train, 8 * bs)
        steps_per_epoch = max(1, math.ceil(rows_per_epoch / bs))
        per_row = 0.5 if n_train < SMALL_TABLE_ROWS else 1.0
        steps = min(TARGET_STEPS, max(MIN_STEPS, round(per_row * n_train)))
        if nominal:
            steps = max(steps, NOMINAL_MIN_STEPS)
        epochs = self.max_epochs or int(min(200, max(2, math.ceil(steps / steps_per_epoch))))
        planned = epochs * steps_per_epoch
        return {
            "lr": (
                min(MAX_LR, BASE_LR * math.sqrt(max(1.0, TARGET_STEPS / planned)))
                if self.lr == AUTO_LR
                else self.lr
            ),
            "batch_size": bs,
            "rows_per_epoch": rows_per_epoch,
            "max_epochs": epochs,
            "patience": self.patience or max(5, epochs // 10),
            "kl_warmup_epochs": (
                self.kl_warmup_epochs
                if self.kl_warmup_epochs is not None
                else min(10, epochs // 10)
            ),
        }

    def _has_nominal(self, schema: Schema) -> bool:
        """Whether ``schema`` has a column the decoder models with a free probability per
        level: text categories, or integer levels under ``discrete_likelihood="categorical"``
        (ordinal ones share a logistic)."""
        return any(
            not spec.discrete or self.discrete_likelihood == "categorical"
            for spec in schema.of_kind("categorical")
        )

    def fit(self, X: Any, y: Any = None) -> TabularDetector:
        """Fit on a DataFrame (or CSV/Parquet path) of mostly normal rows; returns self.

        The rows are split (seeded) into training, validation (early stopping) and
        calibration rows; the threshold is set on the calibration rows, which the model
        never trains on. ``y`` is ignored (present for scikit-learn compatibility).
        """
        self._check_params()
        frame = _as_frame(X)
        if len(frame) == 0:
            msg = f"0 sample(s) (shape={frame.shape}) while a minimum of {MIN_ROWS} is required"
            raise ValueError(msg)
        if frame.shape[1] == 0:
            msg = f"0 feature(s) (shape={frame.shape}) while a minimum of 1 is required"
            raise ValueError(msg)
        if len(frame) < MIN_ROWS:
            msg = f"fit needs at least {MIN_ROWS} rows, got {len(frame)} (n_samples = {len(frame)})"
            raise ValueError(msg)
        t0 = time.perf_counter()
        if self.schema is None:
            schema = infer_schema(
                frame,
                id_column=self.id_column,
                categorical=self.categorical,
                discrete_levels=self.discrete_levels,
            )
        elif isinstance(self.schema, Schema):
            schema = self.schema
        else:
            schema = Schema.from_dict(self.schema)
        schema.check_columns(frame, allow_extra=False)

        cal_idx, val_idx, train_idx = split_rows(
            len(frame), self.seed, self.calibration_fraction, self.validation_fraction
        )
        n_cal, n_val = len(cal_idx), len(val_idx)

        pre = TabularPreprocessor(schema, winsorize=self.winsorize).fit(frame.iloc[train_idx])
        arrays = pre.transform(frame, allow_extra=False)
        tensors = TabularTensors.from_arrays(arrays)

        counts = [len(c.categories) for c in schema.of_kind("categorical")]
        n_num, n_bin = len(schema.of_kind("numeric")), len(schema.of_kind("boolean"))
        # sized from the columns' one-hot width (a discrete column counts its levels) even
        # though ordinal columns reach the encoder as one number each: the sizes every
        # benchmark figure was measured with
        one_hot_width = n_num + sum(c + 1 for c in counts) + n_bin
        auto_latent, auto_hidden = default_architecture(len(train_idx), one_hot_width)
        if self.min_sigma == "auto":
            min_sigma = default_min_sigma(len(train_idx))
        elif self.min_sigma == "scott":
            min_sigma = scott_min_sigma(len(train_idx), len(schema.columns))
        else:
            min_sigma = float(self.min_sigma)
        torch.manual_seed(self.seed)
        net = TabularVAE(
            n_num,
            counts,
            n_bin,
            latent_dim=self.latent_dim or auto_latent,
            hidden=list(self.hidden or auto_hidden),
            log_scale=pre.log_scale.tolist(),
            min_sigma=min_sigma,
            student_df=self.student_df,
            # a category never seen among n training rows: Laplace's 1 / (n + 2)
            unknown_log_prob=-math.log(len(train_idx) + 2),
            ordinal_levels=[
                spec.levels.tolist()
                if spec.discrete and self.discrete_likelihood == "ordinal"
                else None
                for spec in schema.of_kind("categorical")
            ],
        )
        schedule = self._schedule(len(train_idx), self._has_nominal(schema))
        val_rows = tensors.rows(torch.as_tensor(val_idx)) if n_val else None
        history, best_epoch, rank, world = self._train(
            net, tensors.rows(torch.as_tensor(train_idx)), val_rows, schedule
        )
        net.eval()
        self.schema_ = schema
        self.n_features_in_ = len(schema.columns)
        self.preprocessor_ = pre
        self.net_ = net
        # K sized on the validation rows: held out of training (the training rows'
        # posteriors would flatter it) and not the calibration rows, so the conformal
        # p-values' score function does not depend on the rows that calibrate it
        choice = (
            None
            if self.k is not None or val_rows is None
            else choose_k(net, val_rows, int(n_val), seed=self.seed)
        )
        k = self.k or (AUTO_K[-1] if choice is None else choice.k)
        self.sampler_ = ImportanceSampler(k=k, seed=self.seed)
        self.history_ = history
        self.training_: dict[str, Any] = {
            "n_rows": len(frame),
            "n_train": len(train_idx),
            "n_validation": int(n_val),
            "n_calibration": int(n_cal),
            "min_sigma": min_sigma,
            **schedule,
            "epochs_run": len(history),
            "best_epoch": best_epoch,
            "world_size": world,
            "k_choice": None if choice is None else choice.as_dict(),
        }
        #: this process's rank in a distributed (e.g. DDP) fit; 0 otherwise. Every rank
        #: ends with the same weights; only rank 0 should write files.
        self.global_rank_ = rank
        # the columns' own distributions from the training rows only: the calibration
        # rows must judge the marginal statistic as new rows are judged
        self.marginal_weight_ = float(self.marginal_channel)
        cells = self.marginal_cells(arrays.take(train_idx))
        self.marginal_: MarginalTails | None = (
            MarginalTails.fit(cells, seed=self.seed)
            if self.marginal_weight_ > 0 and cells.shape[1]
            else None
        )
        cal_rows = arrays.take(cal_idx)
        self.calibration_rows_: TabularArrays | None = cal_rows.take(slice(0, MAX_PATTERN_ROWS))
        cal = self._score_arrays(cal_rows)
        self._calibrate_result(
            cal, alpha=self.alpha, contamination=self.contamination, arrays=cal_rows
        )
        # the features' statistics need no model, so they take every row given (the
        # training, validation and calibration rows): a larger reference is a more
        # powerful two-sample test (with 72% of the rows, a 0.1 sd shift at 1,000 rows
        # met the KS part's p <= 1e-3 in 0.67 of windows against 0.94 with all of them)
        self.reference_ = self._drift_reference(arrays, cal_rows, cal)
        self.training_["fit_seconds"] = time.perf_counter() - t0
        return self

    def _train(
        self,
        net: TabularVAE,
        train: TabularTensors,
        val: TabularTensors | None,
        schedule: dict[str, Any],
    ) -> tuple[list[dict[str, float]], int, int, int]:
        """Fit ``net`` with Lightning; returns (history, best epoch, global rank, world size)."""
        from anomaly_vae.data.datamodule import TabularDataModule, held_out_batches
        from anomaly_vae.models.vae import VAEModule

        module = VAEModule(
            net,
            beta=self.beta,
            kl_warmup_epochs=schedule["kl_warmup_epochs"],
            lr=schedule["lr"],
            trim_fraction=self.trim_fraction,
            robust_validation=self.robust_validation,
            held_out=held_out_batches(val, schedule["batch_size"]) if val is not None else None,
            patience=schedule["patience"],
            held_out_seed=self.seed,
            log_metrics=False,  # the history has them; self.log costs ~1 ms per call
        )
        dm = TabularDataModule(
            train,
            schedule["batch_size"],
            self.seed,
            schedule["rows_per_epoch"],
            steps_per_item=STEPS_PER_ITEM,
        )
        rank, world = self._fit_lightning(
            module,
            max_epochs=schedule["max_epochs"],
            datamodule=dm,
            limit_val_batches=0,
            deterministic=True,
        )
        return module.history, module.best_epoch, rank, world

    # ================================================================== calibration
    def _calibrate_result(
        self,
        cal: ScoreResult,
        *,
        alpha: float | None,
        contamination: float | None,
        arrays: TabularArrays,
    ) -> None:
        """Calibrate log p(x), the channels and the marginal statistic on the calibration
        rows ``arrays`` and their scores ``cal`` (with contributions)."""
        self._calibrate(cal.log_likelihood, alpha=alpha, contamination=contamination)
        # patterns follow the new rate and rows
        self.__dict__.pop("_pattern_cache", None)
        self.__dict__.pop("_pattern_channels", None)
        self.__dict__.pop("_pattern_marginal", None)
        self.marginal_calibration_ = self._marginal_reference(arrays)
        # typical per-feature terms on normal rows, so explain() can say which column is
        # unusually unlikely rather than which column is always costly (many categories)
        self.feature_baseline_ = np.median(cal.contributions, axis=0)
        self._calibrate_channels(cal, arrays)

    def channel_columns(self) -> list[str]:
        """The columns judged on their own besides the record (see
        ``category_channels``): the schema's text categorical columns, or none."""
        if not self.category_channels:
            return []
        return [c.name for c in self.schema_.of_kind("categorical") if not c.discrete]

    def _marginal_reference(self, arrays: TabularArrays) -> Calibration | None:
        """The marginal statistic's conformal reference on the rows ``arrays`` (None
        without a marginal channel)."""
        tails = getattr(self, "marginal_", None)
        if tails is None:
            return None
        base = self.calibration_
        with warnings.catch_warnings():
            # the joint calibration has already warned about a small or constant set
            warnings.simplefilter("ignore", CalibrationWarning)
            return Calibration.fit(
                -tails.statistic(self.marginal_cells(arrays)),
                alpha=base.alpha,
                contamination=base.contamination,
            )

    def _judged_channels(self) -> bool:
        """Whether a record's p-value combines tests beside log p(x)'s: text columns'
        (``category_channels``) or the marginal statistic's (``marginal_channel``)."""
        return bool(getattr(self, "channels_", None)) or (
            getattr(self, "marginal_calibration_", None) is not None
        )

    def _channel_scale(self) -> np.ndarray:
        """[1 + C (+ 1)]: what each test's p-value is multiplied by before the minimum
        is taken (the inverse of its share of the level): 1 + C each for log p(x) and
        the C text columns (Bonferroni); with the marginal channel, whose share is w,
        (1 + C) / (1 - w) for those and 1 / w for the marginal test."""
        c = 1 + len(getattr(self, "channels_", {}))
        if getattr(self, "marginal_calibration_", None) is None:
            return np.full(c, float(c))
        w = self.marginal_weight_
        return np.array([c / (1 - w)] * c + [1 / w])

    def _combine(self, p_all: np.ndarray) -> np.ndarray:
        """[N, 1 + C (+ 1)] test p-values -> [N] the record's: the weighted Bonferroni
        ``min(1, min_c p_c * scale_c)`` (:meth:`_channel_scale`), with the marginal
        channel raised to at least the largest scaled floor ``max_c scale_c / (n + 1)``.

        Why the floor: a conformal p-value is at least 1 / (n + 1), so each test's scaled
        p-value stops at its own floor, and the floors differ with the shares. Below the
        largest of them, which test a record's p-value came from says nothing about how
        unusual it is: unfloored, every normal row at the marginal test's floor (2.86 /
        (n + 1)) would rank ahead of every record beyond all calibration rows by log p(x)
        when a text column makes the joint test's floor 3.08 / (n + 1). Floored, they tie,
        and ties are for log p(x) to break. A larger p-value is still valid, and the flags
        do not move: the cut (alpha) is at or above the floor whenever flags use the
        combined p-value (:meth:`_channels_cut`)."""
        if getattr(self, "marginal_calibration_", None) is None:
            return bonferroni(p_all)
        scale = self._channel_scale()
        floor = scale.max() / (self.calibration_.n + 1)
        return np.minimum(1.0, np.maximum((p_all * scale).min(axis=1), floor))

    def _calibrate_channels(self, cal: ScoreResult, arrays: TabularArrays) -> None:
        """Each channel column's conformal reference: its contributions [n] on the
        calibration rows ``cal`` (scored with contributions; ``arrays``, the rows); in
        contamination mode also the cut on the log of the combined p-value
        (``channel_cut_``)."""
        names = self.feature_names_
        base = self.calibration_
        with warnings.catch_warnings():
            # the joint calibration has already warned about a small or constant set
            warnings.simplefilter("ignore", CalibrationWarning)
            self.channels_: dict[str, Calibration] = {
                name: Calibration.fit(
                    cal.contributions[:, names.index(name)],
                    alpha=base.alpha,
                    contamination=base.contamination,
                )
                for name in self.channel_columns()
            }
        self.channel_cut_: float | None = None
        if not self._judged_channels():
            return
        if base.method == "contamination":
            assert base.contamination is not None
            p = self._combine(
                self._channel_p_values(
                    base.p_values(cal.log_likelihood), cal.contributions, [], arrays
                )
            )
            self.channel_cut_ = float(np.quantile(np.log(p), base.contamination, method="lower"))
        elif self._channels_cut() is None:
            tests = ["the record"]
            if self.channels_:
                tests.append(f"the categorical columns {', '.join(self.channels_)}")
            if self.marginal_calibration_ is not None:
                tests.append(f"the columns on their own (share {self.marginal_weight_:g})")
            assert base.alpha is not None
            need = math.ceil(self._channel_scale().max() / base.alpha - 1e-9) - 1
            warnings.warn(
                f"calibration set has {base.n} rows, too few to test "
                f"{len(self._channel_scale())} channels ({', '.join(tests[:-1])} and "
                f"{tests[-1]}) at alpha="
                f"{base.alpha} (needs at least {need}); flags come "
                "from log p(x) alone, p-values still combine the channels",
                CalibrationWarning,
                stacklevel=3,
            )

    def _channel_p_values(
        self,
        p_joint: np.ndarray,
        contributions: np.ndarray | None,
        groups: list[PatternGroup],
        arrays: TabularArrays | None,
    ) -> np.ndarray:
        """[N, 1 + C (+ 1)]: the rows' joint p-values ``p_joint`` [N], each channel
        column's conformal p-value of its contribution (``contributions`` [N, F], in the
        order of :attr:`feature_names_`) and, with the marginal channel, the rows'
        (``arrays``) marginal statistic's; a row with missing cells against its
        pattern's references (``groups``, from :meth:`_pattern_groups`). A missing
        category contributes 0 nats, more than any observed one, so its p-value is 1."""
        names = self.feature_names_
        marginal = getattr(self, "marginal_calibration_", None)
        out = np.ones((len(p_joint), 1 + len(self.channels_) + (marginal is not None)))
        out[:, 0] = p_joint
        refs: list[tuple[Any, Mapping[str, Calibration]]] = [(slice(None), self.channels_)]
        refs += [(idx, channels) for _, idx, channels, _ in groups]
        for rows, channels in refs:
            for c, name in enumerate(self.channels_, start=1):
                ref = channels.get(name)
                if ref is not None:
                    assert contributions is not None
                    out[rows, c] = ref.p_values(contributions[rows, names.index(name)])
                else:  # a pattern calibrated without contributions: no evidence
                    out[rows, c] = 1.0
        if marginal is not None:
            if arrays is None:
                msg = (
                    "this detector judges the columns on their own as well (marginal_channel):"
                    " its p-values need the rows' encoded arrays"
                )
                raise ValueError(msg)
            assert self.marginal_ is not None
            stat = self.marginal_.statistic(self.marginal_cells(arrays))
            out[:, -1] = marginal.p_values(-stat)
            for _, idx, _, ref in groups:
                if ref is not None:  # rows missing cells against rows missing the same
                    out[idx, -1] = ref.p_values(-stat[idx])
        return out

    def _channels_cut(self) -> float | None:
        """The log combined p-value a record is flagged at or below (conformal mode) or
        below (contamination mode; ``channel_cut_``); None when flags come from log p(x)
        alone (no channels, or a calibration set too small to test them at alpha)."""
        if not self._judged_channels():
            return None
        base = self.calibration_
        if base.method == "contamination":
            return self.channel_cut_
        assert base.alpha is not None
        # the smallest p-value a test can reach, scaled, must be able to reach alpha
        if self._channel_scale().max() / (base.n + 1) > base.alpha:
            return None
        return math.log(base.alpha)

    def _calibrate_on(self, X: Any, *, alpha: float | None, contamination: float | None) -> None:
        arrays = self.preprocessor_.transform(_as_frame(X), allow_extra=True)
        self.calibration_rows_ = arrays.take(slice(0, MAX_PATTERN_ROWS))
        self._calibrate_result(
            self._score_arrays(arrays), alpha=alpha, contamination=contamination, arrays=arrays
        )

    # ================================================================== scoring

    def _encode_frame(self, X: Any, allow_extra: bool) -> tuple[pd.DataFrame, TabularArrays]:
        self._check_fitted()
        X = _as_array(X)
        if isinstance(X, np.ndarray) and X.dtype.kind in "fiub":
            # a numeric matrix skips pandas: validated and encoded column-vectorized
            arrays = self.preprocessor_.transform_matrix(X)
            return pd.DataFrame(index=pd.RangeIndex(X.shape[0])), arrays
        frame = _as_frame(X)
        return frame, self.preprocessor_.transform(frame, allow_extra=allow_extra)

    def _sampler(self, k: int | None) -> ImportanceSampler:
        if k is None or k == self.sampler_.k:
            return self.sampler_
        return ImportanceSampler(k=k, seed=self.sampler_.seed)

    def _score_arrays(
        self,
        arrays: TabularArrays,
        k: int | None = None,
        progress: bool | None = None,
        contributions: bool = True,
    ) -> ScoreResult:
        sampler = (
            self._sampler(k)
            if hasattr(self, "sampler_")
            else ImportanceSampler(k or self.k or AUTO_K[-1], self.seed)
        )
        # a record's p-value and flag need its channel columns' contributions
        contributions = contributions or bool(getattr(self, "channels_", None))
        tensors = TabularTensors.from_arrays(arrays)
        show = self.progress if progress is None else progress
        if show and len(arrays) > 10 * sampler.rows_per_pass(self.net_):
            from tqdm.auto import tqdm

            with tqdm(total=len(arrays), unit="rows", desc="scoring") as bar:
                return sampler.score(
                    self.net_,
                    tensors,
                    len(arrays),
                    progress=bar.update,
                    contributions=contributions,
                )
        return sampler.score(self.net_, tensors, len(arrays), contributions=contributions)

    def _tensors(self, arrays: TabularArrays) -> TabularTensors:
        """Encoded rows as tensors on the scoring device (see :meth:`to`)."""
        return to_device(TabularTensors.from_arrays(arrays), model_device(self.net_))

    def encode_rows(self, X: Any, *, allow_extra: bool = False) -> TabularArrays:
        """Validate and encode rows for :meth:`score_encoded` (the service's batching path:
        requests are validated one by one, then scored together)."""
        return self._encode_frame(X, allow_extra=allow_extra)[1]

    def encode_columns(
        self, columns: Mapping[str, Sequence[Any]], *, allow_extra: bool = False
    ) -> TabularArrays | None:
        """Encode columns of plain Python values (``{name: [N values]}``, a parsed JSON
        body's lists) for :meth:`score_encoded` without building a DataFrame; the same
        arrays as :meth:`encode_rows` gives for ``pd.DataFrame(columns)``. None when some
        value needs the DataFrame path's reading or its error (a string in a numeric
        column, an infinity, a missing column): pass the table to :meth:`encode_rows`
        then. See :meth:`TabularPreprocessor.transform_columns`."""
        self._check_fitted()
        return self.preprocessor_.transform_columns(columns, allow_extra=allow_extra)

    def score_encoded(
        self, arrays: TabularArrays, *, k: int | None = None, contributions: bool = False
    ) -> ScoreResult:
        """Score rows from :meth:`encode_rows`; contributions are [N, F] when asked for,
        in the order of :attr:`feature_names_`."""
        return self._score_arrays(arrays, k, progress=False, contributions=contributions)

    def _normality(self, X: Any, k: int | None) -> np.ndarray:
        _, arrays = self._encode_frame(X, allow_extra=False)
        return self._score_arrays(arrays, k, contributions=False).log_likelihood

    def score_samples(self, X: Any, *, k: int | None = None) -> np.ndarray:
        """Importance-sampled log p(x) per row, [N] float64 nats; higher is more normal."""
        return self._normality(X, k)

    def _calibrated_rows(self, X: Any) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        _, arrays = self._encode_frame(X, allow_extra=False)
        res = self._score_arrays(arrays, contributions=False)
        ll = res.log_likelihood
        return ll, self.calibrated(ll, arrays, res.contributions)

    def p_values(self, X: Any) -> np.ndarray:
        """Split-conformal p-values, [N] in (0, 1]; small means unusual. A row with
        missing cells is compared with calibration rows missing the same cells. With
        channel columns (``category_channels``) or the marginal channel
        (``marginal_channel``), the weighted Bonferroni over log p(x)'s p-value, each text
        column's and the marginal statistic's (see :meth:`calibrated`)."""
        self._check_fitted()
        return self._calibrated_rows(X)[1][0]

    def decision_function(self, X: Any) -> np.ndarray:
        """log p(x) minus the threshold it is judged by, [N]; negative for outliers. For a
        complete row that is ``score_samples(X) - offset_``; a row with missing cells
        is judged by its missingness pattern's threshold. A detector with channel columns
        (``category_channels``) or the marginal channel (``marginal_channel``, on by
        default) judges by its combined p-value: the decision is then the log of that
        p-value minus the log of the cut (see :meth:`calibrated`)."""
        return self._calibrated_rows(X)[1][2]

    def score(
        self,
        X: Any,
        y: Any = None,
        *,
        k: int | None = None,
        allow_extra: bool = False,
        progress: bool | None = None,
    ) -> pd.DataFrame:
        """Everything per row as a frame (index preserved): ``log_likelihood`` and its
        ``stderr``, ``ess`` and ``unreliable`` (see :meth:`result_columns`), ``elbo``,
        ``kl`` (nats), ``score`` (= -log_likelihood, higher is more
        anomalous), ``p_value``, ``is_outlier``, and the id column when the schema has one.

        ``y`` is ignored (scikit-learn's ``score(X, y)`` signature). Note: p-values and
        the threshold were calibrated at the detector's own K; at a
        different ``k`` log-likelihoods shift (the bound tightens with K), so the flags
        are approximate.
        """
        frame, arrays = self._encode_frame(X, allow_extra=allow_extra)
        return self.result_frame(
            frame, self._score_arrays(arrays, k, progress, contributions=False), arrays
        )

    #: The columns of :meth:`result_columns`, in output order.
    RESULT_COLUMNS = (
        "log_likelihood", "stderr", "ess", "unreliable", "elbo", "kl", "score", "p_value",
        "is_outlier",
    )  # fmt: skip

    def result_columns(
        self, res: ScoreResult, arrays: TabularArrays | None = None
    ) -> dict[str, np.ndarray]:
        """The per-record output of a scoring result, [N] each, keyed and ordered as
        :data:`RESULT_COLUMNS`: log-likelihood and its stderr, the importance weights'
        effective sample size and whether it is too small to trust the estimate
        (:data:`~anomaly_vae.scoring.iwae.MIN_ESS`), ELBO and KL (nats), score
        (= -log_likelihood), the conformal p-value and the flag. The one place that turns
        scores into output, for :meth:`score`, the service's routes, the MLflow model and
        batch scoring alike. With the rows' ``arrays``, a row with missing cells gets its
        p-value and flag from its missingness pattern's calibration (:meth:`calibrated`)."""
        ll = res.log_likelihood
        p, flags, _ = self.calibrated(ll, arrays, res.contributions)
        empty = self.missing_cells(arrays).all(1) if arrays is not None else np.zeros(len(ll), bool)
        return {
            "log_likelihood": ll,
            "stderr": res.stderr,
            "ess": res.ess,
            "unreliable": res.unreliable,
            "elbo": res.elbo,
            "kl": res.kl,
            "score": -ll,
            "p_value": p,
            # a record that could not be scored, or has no observed cell to judge it by,
            # is never passed as normal
            "is_outlier": flags | ~np.isfinite(ll) | empty,
        }

    def result_frame(
        self, frame: pd.DataFrame, res: ScoreResult, arrays: TabularArrays | None = None
    ) -> pd.DataFrame:
        """:meth:`result_columns` as a frame on ``frame``'s index, after the id column when
        the schema has one and ``frame`` carries it."""
        out = pd.DataFrame(index=frame.index)
        sid = self.schema_.id_column
        if sid is not None and sid in frame.columns:
            out[sid] = frame[sid].to_numpy()
        for name, values in self.result_columns(res, arrays).items():
            out[name] = values
        return out

    @staticmethod
    def missing_cells(arrays: TabularArrays) -> np.ndarray:
        """[N, F] bool, True where a cell is missing, columns in the order of
        :attr:`feature_names_` (numeric, categorical, boolean)."""
        return np.hstack([~arrays.num_mask, arrays.cat < 0, ~arrays.bin_mask])

    def marginal_cells(self, arrays: TabularArrays) -> np.ndarray:
        """[N, D] float64, NaN where missing: the cells the marginal channel judges each on
        its own (:class:`~anomaly_vae.scoring.marginal.MarginalTails`). Numeric columns
        (standardized), integer-coded categorical ones (the level's index: levels are
        sorted, and a value off them takes the slot above every level) and booleans. Text
        categorical columns have no order; ``category_channels`` judges them."""
        discrete = [spec.discrete for spec in self.schema_.of_kind("categorical")]
        cat = arrays.cat[:, discrete].astype(np.float64)
        cat[cat < 0] = np.nan
        num = np.where(arrays.num_mask, arrays.num.astype(np.float64), np.nan)
        binary = np.where(arrays.bin_mask, arrays.bin.astype(np.float64), np.nan)
        return np.hstack([num, cat, binary])

    def _pattern_calibration(self, pattern: tuple[int, ...]) -> Calibration | None:
        """The calibration for records missing the features ``pattern`` (indices into
        :attr:`feature_names_`): the kept calibration rows with those cells removed as
        well, scored as such a record is (the missing cells marginalized), calibrated at
        the detector's own rate. A record with missing cells has a higher log-likelihood
        than a complete one (fewer terms), so comparing it with complete rows' scores
        would make its p-value too large. None for a bundle without calibration rows."""
        rows = getattr(self, "calibration_rows_", None)
        if rows is None or not len(rows):
            return None  # a bundle from before calibration rows: the complete rows' reference
        cache = self.__dict__.setdefault("_pattern_cache", {})
        if pattern in cache:
            return cache[pattern]
        rows = self.pattern_rows(pattern)
        assert rows is not None
        res = self._score_arrays(rows, progress=False, contributions=False)
        return self.store_pattern_calibration(pattern, res.log_likelihood, res.contributions)

    def new_patterns(self, arrays: TabularArrays) -> list[tuple[int, ...]]:
        """The missingness patterns of ``arrays`` whose calibration is not computed yet
        (none without calibration rows): each costs scoring :meth:`pattern_rows` once,
        which a service may want to schedule or count itself."""
        if getattr(self, "calibration_rows_", None) is None or not len(arrays):
            return []
        missing = self.missing_cells(arrays)
        cache = self.__dict__.get("_pattern_cache", {})
        found = {tuple(np.flatnonzero(row).tolist()) for row in missing[missing.any(1)]}
        return sorted(p for p in found if p not in cache)

    def pattern_rows(self, pattern: tuple[int, ...]) -> TabularArrays | None:
        """The kept calibration rows with the cells of ``pattern`` made missing (what
        :meth:`_pattern_calibration` scores); None without calibration rows."""
        rows = getattr(self, "calibration_rows_", None)
        if rows is None or not len(rows):
            return None
        n_num, n_cat = rows.num.shape[1], rows.cat.shape[1]
        masked = TabularArrays(
            *(getattr(rows, f).copy() for f in TabularArrays.__dataclass_fields__)
        )
        for j in pattern:
            if j < n_num:
                masked.num[:, j], masked.num_mask[:, j] = 0.0, False
            elif j < n_num + n_cat:
                masked.cat[:, j - n_num] = -1
            else:
                masked.bin[:, j - n_num - n_cat], masked.bin_mask[:, j - n_num - n_cat] = 0.0, False
        return masked

    def store_pattern_calibration(
        self,
        pattern: tuple[int, ...],
        log_likelihood: np.ndarray,
        contributions: np.ndarray | None = None,
    ) -> Calibration:
        """Calibrate ``pattern`` on the log-likelihoods [R] of its :meth:`pattern_rows`
        (scored at the detector's own K) and keep it (at most ``MAX_PATTERNS``, oldest
        dropped first). A detector with channel columns (``category_channels``) also
        needs their ``contributions`` [R, F]: with a cell missing, a category's
        probability given the rest of its row is another quantity (a category that
        followed the missing cell becomes harder to predict), so its channel is
        calibrated on the same pattern too."""
        cal = self.calibration_
        names = self.feature_names_
        channels = getattr(self, "channels_", {})
        if channels and (contributions is None or contributions.shape[1] != len(names)):
            msg = (
                f"the channel columns {', '.join(channels)} need the pattern rows' "
                f"contributions [R, {len(names)}] to calibrate a missingness pattern"
            )
            raise ValueError(msg)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CalibrationWarning)
            found = Calibration.fit(
                np.asarray(log_likelihood, dtype=np.float64),
                alpha=cal.alpha,
                contamination=cal.contamination,
            )
            found_channels = {
                name: Calibration.fit(
                    contributions[:, names.index(name)],
                    alpha=cal.alpha,
                    contamination=cal.contamination,
                )
                for name in channels
                if contributions is not None
            }
        # the marginal statistic needs no model: its pattern rows are at hand
        rows = self.pattern_rows(pattern)
        found_marginal = None if rows is None else self._marginal_reference(rows)
        cache = self.__dict__.setdefault("_pattern_cache", {})
        chan_cache = self.__dict__.setdefault("_pattern_channels", {})
        marginal_cache = self.__dict__.setdefault("_pattern_marginal", {})
        if len(cache) >= MAX_PATTERNS:
            oldest = next(iter(cache))
            cache.pop(oldest)
            chan_cache.pop(oldest, None)
            marginal_cache.pop(oldest, None)
        cache[pattern] = found
        chan_cache[pattern] = found_channels
        marginal_cache[pattern] = found_marginal
        return found

    def calibrated(
        self,
        log_likelihood: np.ndarray,
        arrays: TabularArrays | None = None,
        contributions: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(p-values, outlier flags, decisions), [N] each, for log-likelihoods [N] of the
        rows ``arrays``: a complete row against the calibration set, a row with missing
        cells against its missingness pattern's calibration (:meth:`_pattern_calibration`).
        Without ``arrays`` every row is taken as complete. A decision is negative exactly
        for the flagged rows: log p(x) minus the threshold it is judged by, or, with
        channel columns (``category_channels``) or the marginal channel, the log of the
        combined p-value minus the log of the cut it is judged by (:meth:`_channels_cut`).
        A detector with channel columns needs the rows' ``contributions`` [N, F]; one with
        the marginal channel needs ``arrays``."""
        ll = np.asarray(log_likelihood, dtype=np.float64)
        p, flags, thr, groups = self._joint_calibrated(ll, arrays)
        decision = ll - thr
        if not self._judged_channels():
            return p, flags, decision
        if self.channels_ and (
            contributions is None or contributions.shape != (len(ll), len(self.feature_names_))
        ):
            got = None if contributions is None else contributions.shape
            msg = (
                f"this detector judges the columns {', '.join(self.channels_)} on their own: "
                f"its p-values need the rows' contributions [{len(ll)}, "
                f"{len(self.feature_names_)}], got {got}"
            )
            raise ValueError(msg)
        p = self._combine(self._channel_p_values(p, contributions, groups, arrays))
        cut = self._channels_cut()
        if cut is None:
            return p, flags, decision
        with np.errstate(divide="ignore", invalid="ignore"):
            decision = np.log(p) - cut
        conformal = self.calibration_.method == "conformal"
        flags = decision <= 0 if conformal else decision < 0
        # at the cut itself a conformal flag has decision 0: make it negative, as promised
        decision = np.where(flags & (decision >= 0), -np.finfo(np.float64).tiny, decision)
        return p, flags, decision

    def _joint_calibrated(
        self, ll: np.ndarray, arrays: TabularArrays | None
    ) -> tuple[
        np.ndarray,
        np.ndarray,
        np.ndarray,
        list[PatternGroup],
    ]:
        """log p(x)'s own (p-values, flags, thresholds), [N] each, for log-likelihoods
        ``ll`` [N] of the rows ``arrays`` (a row with missing cells against its pattern's
        calibration), and the pattern groups (:meth:`_pattern_groups`) they came from."""
        cal = self.calibration_
        p, flags = cal.p_values(ll), cal.is_outlier(ll)
        thr = np.full(len(ll), cal.threshold)
        groups = self._pattern_groups(arrays, len(ll))
        for pc, idx, _, _ in groups:
            p[idx], flags[idx], thr[idx] = (
                pc.p_values(ll[idx]),
                pc.is_outlier(ll[idx]),
                pc.threshold,
            )
        return p, flags, thr, groups

    def drift_flags(
        self, log_likelihood: np.ndarray, arrays: TabularArrays | None = None
    ) -> np.ndarray:
        """[N] bool: the flags log p(x) alone gives the rows ``arrays`` (each against the
        calibration set or its missingness pattern's), a record that could not be scored
        or has no observed cell included. What drift monitoring's outlier-rate test
        counts: its exact Beta-binomial null is that of one conformal threshold, and
        every other drift signal watches log p(x) too. Without channel columns
        (``category_channels``) these are the records' own flags."""
        ll = np.asarray(log_likelihood, dtype=np.float64)
        flags = self._joint_calibrated(ll, arrays)[1]
        empty = self.missing_cells(arrays).all(1) if arrays is not None else False
        return np.asarray(flags | ~np.isfinite(ll) | empty, dtype=bool)

    def smoothed_p_values(
        self, log_likelihood: np.ndarray, u: np.ndarray, arrays: TabularArrays | None = None
    ) -> np.ndarray:
        """Smoothed conformal p-values [N] (``u`` [N] uniform on (0, 1); see
        :meth:`~anomaly_vae.scoring.calibration.Calibration.smoothed_p_values`), each row
        against the calibration its p-value in :meth:`calibrated` comes from."""
        ll = np.asarray(log_likelihood, dtype=np.float64)
        u = np.asarray(u, dtype=np.float64)
        p = self.calibration_.smoothed_p_values(ll, u)
        for pc, idx, _, _ in self._pattern_groups(arrays, len(ll)):
            p[idx] = pc.smoothed_p_values(ll[idx], u[idx])
        return p

    def _pattern_groups(self, arrays: TabularArrays | None, n: int) -> list[PatternGroup]:
        """The rows with missing cells, grouped by missingness pattern, each with its
        pattern's calibration and its channel columns' (patterns without one are left
        out: their rows stay on the complete rows' calibration)."""
        if arrays is None or not n:
            return []
        missing = self.missing_cells(arrays)
        incomplete = np.flatnonzero(missing.any(1))
        patterns: dict[tuple[int, ...], list[int]] = {}
        for i in incomplete.tolist():
            patterns.setdefault(tuple(np.flatnonzero(missing[i]).tolist()), []).append(i)
        out: list[PatternGroup] = []
        for pattern, idx in patterns.items():
            pc = self._pattern_calibration(pattern)
            if pc is not None:
                out.append(
                    (
                        pc,
                        idx,
                        self.__dict__.get("_pattern_channels", {}).get(pattern, {}),
                        self.__dict__.get("_pattern_marginal", {}).get(pattern),
                    )
                )
        return out

    def top_features(
        self, res: ScoreResult, top: int, arrays: TabularArrays | None = None
    ) -> tuple[list[list[int]], np.ndarray]:
        """The ``top`` most unusual features of each record: (per record, indices into
        :attr:`feature_names_`, most unusual first; excess [N, F], each feature's
        contribution minus its median on the calibration rows, nats). ``top`` is clipped
        to [1, F]. With the records' ``arrays``, a missing cell is never named: it is
        marginalized (its contribution is 0), so its "excess" is only minus the column's
        usual term, and a column whose usual log-density is positive looked unusual
        wherever it was missing. With channel columns (``category_channels``), a text
        column whose own test flags the record comes first (:meth:`_channels_first`).
        Needs ``res`` scored with contributions."""
        names = self.feature_names_
        top = max(1, min(top, len(names)))
        excess = res.contributions - self.feature_baseline_
        ranked = np.argsort(excess, axis=1, kind="stable")
        if self._judged_channels():
            ranked = self._channels_first(res, arrays, ranked)
        if arrays is None:
            return ranked[:, :top].tolist(), excess
        missing = self.missing_cells(arrays)
        return [[j for j in row if not missing[i, j]][:top] for i, row in enumerate(ranked)], excess

    def _channels_first(
        self, res: ScoreResult, arrays: TabularArrays | None, ranked: np.ndarray
    ) -> np.ndarray:
        """``ranked`` [N, F] (feature indices, most unusual first by excess nats) with,
        in each row whose own log p(x) test does not flag it, the columns whose test
        does moved to the front, smallest scaled p-value first: the record is flagged
        because of them alone. A text channel column names itself; the marginal test
        names the row's cell deepest in its column's tail. Their nats need not show it:
        the encoder, given a category that does not fit, moves the latent code towards
        it, and the cost lands on the numeric columns it then reconstructs worse. Other
        rows keep ``ranked``; so does every row when flags come from log p(x) alone
        (:meth:`_channels_cut` is None)."""
        cut = self._channels_cut()
        if cut is None:
            return ranked
        p_joint, _, _, groups = self._joint_calibrated(res.log_likelihood, arrays)
        p_all = self._channel_p_values(p_joint, res.contributions, groups, arrays)
        with np.errstate(divide="ignore"):
            margin = np.log(np.minimum(1.0, self._channel_scale() * p_all)) - cut
        flags = margin <= 0 if self.calibration_.method == "conformal" else margin < 0
        # only where log p(x)'s own test does not flag the record: where it does, the
        # nats say why, and a category the encoder was pulled away from is a symptom
        flags = flags[:, 1:] & ~flags[:, :1]
        p = p_all[:, 1:]
        names = self.feature_names_
        columns = np.tile(
            np.array([names.index(name) for name in self.channels_], dtype=np.int64), (len(p), 1)
        )
        if getattr(self, "marginal_calibration_", None) is not None:
            assert self.marginal_ is not None
            assert arrays is not None
            deepest = self.marginal_.cell_surprise(self.marginal_cells(arrays)).argmax(axis=1)
            columns = np.hstack([columns, self.marginal_features()[deepest][:, None]])
        out = ranked.copy()
        for i in np.flatnonzero(flags.any(1)):
            ahead = np.flatnonzero(flags[i])
            first = list(dict.fromkeys(columns[i, ahead[np.argsort(p[i, ahead], kind="stable")]]))
            out[i] = np.concatenate([first, [j for j in ranked[i] if j not in set(first)]])
        return out

    def marginal_features(self) -> np.ndarray:
        """[D] indices into :attr:`feature_names_` of :meth:`marginal_cells`' columns."""
        kinds = self.feature_order_
        n_num, n_cat = len(kinds[0]), len(kinds[1])
        discrete = [
            i for i, spec in enumerate(self.schema_.of_kind("categorical")) if spec.discrete
        ]
        n_bin = len(kinds[2])
        return np.array(
            [
                *range(n_num),
                *(n_num + i for i in discrete),
                *range(n_num + n_cat, n_num + n_cat + n_bin),
            ],
            dtype=np.int64,
        )

    @property
    def feature_names_(self) -> list[str]:
        """Column names in the order of the contribution vectors (numeric, categorical, boolean)."""
        self._check_fitted()
        return [c.name for kind in KINDS for c in self.schema_.of_kind(kind)]

    @property
    def feature_order_(self) -> tuple[list[str], list[str], list[str]]:
        """The (numeric, categorical, boolean) column names, as drift statistics take them."""
        self._check_fitted()
        return tuple([c.name for c in self.schema_.of_kind(kind)] for kind in KINDS)  # type: ignore[return-value]

    def latent_outputs(self, arrays: TabularArrays) -> tuple[np.ndarray, np.ndarray]:
        """Posterior means [N, L] and KL(q(z|x) || p(z)) [N] (nats) of encoded rows: one
        encoder pass, what live drift monitoring needs beside a scoring result."""
        from anomaly_vae.nn.base import gaussian_kl

        with torch.inference_mode():
            mu, logvar = self.net_.encode(self._tensors(arrays))
            kl = gaussian_kl(mu, logvar).to(torch.float64)
        return to_numpy(mu), to_numpy(kl)

    def contributions(self, X: Any, *, k: int | None = None) -> pd.DataFrame:
        """Per-feature log-likelihood terms (nats), rows x schema columns; each row sums to
        the reconstruction part of its log-likelihood."""
        frame, arrays = self._encode_frame(X, allow_extra=True)
        res = self._score_arrays(arrays, k)
        return pd.DataFrame(res.contributions, index=frame.index, columns=self.feature_names_)[
            self.schema_.names
        ]

    def explain(self, X: Any, *, top: int = 3, k: int | None = None) -> pd.DataFrame:
        """The ``top`` features that make each row unusual.

        A feature's excess is its contribution minus its median contribution on the
        calibration rows (nats; negative means less likely than usual). Returns a long
        frame: ``row`` (the input index), ``rank``, ``feature``, ``value``,
        ``contribution`` and ``excess``, most negative excess first.
        """
        frame, arrays = self._encode_frame(X, allow_extra=True)
        res = self._score_arrays(arrays, k)
        return self._explain_result(frame, res, top, arrays)

    def _explain_result(
        self, frame: pd.DataFrame, res: ScoreResult, top: int, arrays: TabularArrays
    ) -> pd.DataFrame:
        names = self.feature_names_
        order, excess = self.top_features(res, top, arrays)
        rows = []
        for i, label in enumerate(frame.index):
            for r, j in enumerate(order[i]):
                value = frame.iloc[i][names[j]]
                rows.append(
                    {
                        "row": label,
                        "rank": r + 1,
                        "feature": names[j],
                        "value": value.item() if hasattr(value, "item") else value,
                        "contribution": float(res.contributions[i, j]),
                        "excess": float(excess[i, j]),
                    }
                )
        return pd.DataFrame(
            rows, columns=["row", "rank", "feature", "value", "contribution", "excess"]
        )

    # ================================================================== generative side
    def encode(self, X: Any) -> np.ndarray:
        """Posterior means of the latent code, [N, latent_dim] float32."""
        _, arrays = self._encode_frame(X, allow_extra=True)
        with torch.inference_mode():
            mu, _ = self.net_.encode(self._tensors(arrays))
        return to_numpy(mu)

    def reconstruct(self, X: Any) -> pd.DataFrame:
        """Each row passed through the posterior mean and the decoder's most likely
        values, in the original columns and units (index preserved)."""
        frame, arrays = self._encode_frame(X, allow_extra=True)
        with torch.inference_mode():
            mu, _ = self.net_.encode(self._tensors(arrays))
            num, cat, binv = self.net_.decode_mean(mu)
        out = self.preprocessor_.decode(to_numpy(num), to_numpy(cat), to_numpy(binv))
        out.index = frame.index
        return out

    def sample(self, n: int, *, seed: int | None = None) -> pd.DataFrame:
        """Draw ``n`` synthetic rows x ~ p(x) = E_z p(x|z), in the original columns and units."""
        self._check_fitted()
        if not isinstance(n, int) or n < 0:
            msg = f"n must be a non-negative integer, got {n!r}"
            raise ValueError(msg)
        g = torch.Generator().manual_seed(self.seed if seed is None else seed)
        net = self._sampling_net()
        with torch.inference_mode():
            z = torch.randn(n, net.latent_dim, generator=g)
            num, cat, binv = net.sample_x(z, generator=g)
        return self.preprocessor_.decode(num.numpy(), cat.numpy(), binv.numpy())

    # ================================================================== drift reference
    def _drift_reference(
        self, train: TabularArrays, cal_rows: TabularArrays, cal: ScoreResult
    ) -> dict[str, Any]:
        """The drift reference (see :mod:`anomaly_vae.drift.reference`): features from
        ``train`` (at fit, every row given), the model's outputs from the calibration
        rows."""
        from anomaly_vae.drift.reference import tabular_reference

        with torch.inference_mode():
            mu, _ = self.net_.encode(TabularTensors.from_arrays(cal_rows))
        return tabular_reference(self, train, cal_rows, cal, mu.numpy())

    def drift_outputs(
        self, X: Any, *, k: int | None = None, allow_extra: bool = False
    ) -> dict[str, Any]:
        """What a drift check needs of a batch of rows (see :mod:`anomaly_vae.drift`):
        ``normality`` (log p(x), nats) [N], ``flags`` [N], ``mu`` [N, L], ``kl`` [N],
        ``keys`` [N] (per-record keys, the same in any batch), ``contributions`` [N, F],
        ``result`` (the ``ScoreResult``, for :meth:`result_frame`), ``arrays`` (the
        encoded rows) and ``feature_order`` (numeric, categorical, boolean column names)."""
        _, arrays = self._encode_frame(X, allow_extra=allow_extra)
        res = self._score_arrays(arrays, k, progress=False)
        with torch.inference_mode():
            mu, _ = self.net_.encode(TabularTensors.from_arrays(arrays))
        from anomaly_vae.drift.check import record_keys

        return {
            "normality": res.log_likelihood,
            # log p(x)'s own flags (missingness patterns included): see drift_flags
            "flags": self.drift_flags(res.log_likelihood, arrays),
            "mu": mu.numpy(),
            "kl": res.kl,
            "keys": record_keys(
                arrays.num, arrays.num_mask, arrays.cat, arrays.bin, arrays.bin_mask
            ),
            "contributions": res.contributions,
            "result": res,
            "arrays": arrays,
            "feature_order": self.feature_order_,
        }

    def rebuild_reference(self, X: Any) -> TabularDetector:
        """Recompute the drift reference from rows like the training data (for a bundle
        written before the reference existed); the rows stand in for both the training
        and the calibration rows. Returns self."""
        arrays = self.preprocessor_.transform(_as_frame(X), allow_extra=True)
        self.reference_ = self._drift_reference(arrays, arrays, self._score_arrays(arrays))
        return self

    # ================================================================== persistence
    def _bundle_params(self) -> dict[str, Any]:
        params = self.get_params(deep=False)
        if isinstance(params.get("schema"), Schema):
            params["schema"] = params["schema"].to_dict()
        return params

    def _documents(self) -> dict[str, Any]:
        return {
            "schema.json": self.schema_.to_dict(),
            "preprocessing.json": self.preprocessor_.to_dict(),
        }

    def _calibration_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"feature_baseline": self.feature_baseline_.tolist()}
        channels = getattr(self, "channels_", {})
        if channels:
            doc["channels"] = {
                "columns": {name: ref.to_dict() for name, ref in channels.items()},
                "cut": self.channel_cut_,
            }
        marginal = getattr(self, "marginal_calibration_", None)
        if marginal is not None:
            doc["marginal"] = {"weight": self.marginal_weight_, "reference": marginal.to_dict()}
            doc.setdefault("channels", {"columns": {}, "cut": self.channel_cut_})
        return doc

    def _weights(self) -> dict[str, Any]:
        out = dict(self.net_.state_dict())
        rows = getattr(self, "calibration_rows_", None)
        if rows is not None:
            for name in TabularArrays.__dataclass_fields__:
                out[_ROWS_PREFIX + name] = torch.from_numpy(
                    np.ascontiguousarray(getattr(rows, name))
                )
        tails = getattr(self, "marginal_", None)
        if tails is not None:
            for name, value in tails.to_dict().items():
                out[_MARGINAL_PREFIX + name] = torch.from_numpy(np.ascontiguousarray(value))
        return out

    def _restore(self, docs: dict[str, Any], weights: dict[str, Any], cfg: dict[str, Any]) -> None:
        rows = {
            k[len(_ROWS_PREFIX) :]: weights.pop(k)
            for k in list(weights)
            if k.startswith(_ROWS_PREFIX)
        }
        self.calibration_rows_ = (
            TabularArrays(**{name: t.numpy() for name, t in rows.items()}) if rows else None
        )
        tails = {
            k[len(_MARGINAL_PREFIX) :]: weights.pop(k).numpy()
            for k in list(weights)
            if k.startswith(_MARGINAL_PREFIX)
        }
        self.schema_ = Schema.from_dict(docs["schema.json"])
        self.n_features_in_ = len(self.schema_.columns)
        self.preprocessor_ = TabularPreprocessor.from_dict(self.schema_, docs["preprocessing.json"])
        net = TabularVAE(**cfg["model"])
        net.load_state_dict(weights)
        net.eval()
        self.net_ = net
        baseline = docs["calibration.json"]["feature_baseline"]
        self.feature_baseline_ = np.asarray(baseline, dtype=np.float64)
        # a bundle from before channels (or without them) judges records by log p(x)
        channels = docs["calibration.json"].get("channels") or {"columns": {}, "cut": None}
        names = self.feature_names_
        for name in channels["columns"]:
            if name not in names:
                msg = f"calibration.json has a channel for column {name!r}, not in the schema"
                raise ValueError(msg)
        self.channels_ = {name: Calibration.from_dict(d) for name, d in channels["columns"].items()}
        self.channel_cut_ = None if channels["cut"] is None else float(channels["cut"])
        # a bundle from before the marginal channel (or without it) has neither part
        marginal = docs["calibration.json"].get("marginal")
        if (marginal is None) != (not tails):
            msg = (
                "the bundle's marginal channel is incomplete: calibration.json "
                f"{'has' if marginal else 'lacks'} its reference, the weights "
                f"{'have' if tails else 'lack'} its tails"
            )
            raise ValueError(msg)
        self.marginal_ = MarginalTails.from_dict(tails) if tails else None
        self.marginal_weight_ = 0.0 if marginal is None else float(marginal["weight"])
        self.marginal_calibration_ = (
            None if marginal is None else Calibration.from_dict(marginal["reference"])
        )
        if self.marginal_ is not None and self.marginal_.n_columns != len(self.marginal_features()):
            msg = (
                f"the bundle's marginal tails have {self.marginal_.n_columns} columns, the "
                f"schema {len(self.marginal_features())}"
            )
            raise ValueError(msg)
        if marginal is not None and not 0 < self.marginal_weight_ < 1:
            msg = f"calibration.json: marginal weight must be in (0, 1), got {marginal['weight']!r}"
            raise ValueError(msg)
