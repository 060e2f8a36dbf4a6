"""Every default the detectors and the command line share, in one torch-free module.

The detectors' constructors take their defaults from here and the CLI builds its flags
from the same values, so the two cannot drift apart, and ``anomaly-vae --help`` starts
without importing torch or Lightning.
"""

from __future__ import annotations

from typing import Any, Final

#: Fewest rows ``TabularDetector.fit`` accepts: fewer cannot be split into training and
#: calibration rows.
MIN_ROWS: Final = 10
#: Fewest images ``ImageDetector.fit`` accepts.
MIN_IMAGES: Final = 20
#: Epochs of the image schedule when the data is large enough that they make
#: ``IMAGE_MIN_STEPS`` optimizer steps (all of MNIST: 20 epochs of 400 batches; one
#: class's 5,000 training images take 25 epochs of 40 batches).
IMAGE_EPOCHS: Final = 20
#: Fewest optimizer steps the image schedule aims for: a small set is trained for more
#: epochs (at 20 epochs of one batch, the 8x8 digits' encoders collapsed).
IMAGE_MIN_STEPS: Final = 1000
#: The image schedule's patience is 1 / this of its epochs (at least 5), and its KL
#: warm-up takes 1 / this of them.
IMAGE_SCHEDULE_SHARE: Final = 4
#: Largest and smallest image batch; in between, about an eighth of the training images.
IMAGE_MAX_BATCH: Final = 128
IMAGE_MIN_BATCH: Final = 16
#: Fewest calibration images the image split aims for (at most a quarter of the images):
#: at alpha = 0.05 a conformal threshold needs at least 19, and with 12 one class of the
#: digits saw a false-positive rate of 0.20.
IMAGE_MIN_CALIBRATION: Final = 50
#: Fewest validation images the split aims for (at most an eighth of the rest): early
#: stopping and a fitted complexity weight rest on them.
IMAGE_MIN_VALIDATION: Final = 32

#: Gradient steps the tabular schedule aims for; epochs follow from rows and batch size.
TARGET_STEPS: Final = 3000
#: ``lr="auto"``: the tabular learning rate at ``TARGET_STEPS`` steps; a shorter schedule
#: takes larger steps, ``BASE_LR * sqrt(TARGET_STEPS / steps)``, up to ``MAX_LR``. Not the
#: default: it found contextual anomalies better on mixed tables, but lost AUPRC on
#: ADBench and its posteriors were worse importance-sampling proposals on some tables
#: (benchmarks/RESULTS.md, mixed types).
BASE_LR: Final = 2e-3
MAX_LR: Final = 1e-2
#: The word ``lr`` takes for the rate sized from the planned steps.
AUTO_LR: Final = "auto"
#: Floor of the step budget; it binds below 40 training rows, where Lightning's per-step
#: overhead is most of the fit time.
MIN_STEPS: Final = 20
#: Fewest steps for a table with a nominal categorical column (text categories, or
#: integer levels under ``discrete_likelihood="categorical"``). Its head learns the
#: column's dependence on the others only once the latent code carries the row: after
#: the 48 steps of the mixed wine table (89 training rows) the latent means barely
#: varied across rows (standard deviation 0.03-0.08 in each of 5 dimensions; after 500
#: planned steps two dimensions are near 0.9) and the head was uniform (-log 3 nats for
#: every row; after: -0.2 for fitting rows, -2.6 for a changed category). Chosen on half
#: A of benchmarks/mixed.py (contextual AUROC: 54 without a floor, 72 at 250 steps, 75 at
#: 500, 77 at 1000), checked on half B. ADBench's tables are all numeric, so their fits
#: are untouched.
NOMINAL_MIN_STEPS: Final = 500
#: Below this many training rows the schedule takes half a step per row: on the ADBench
#: sets that small, more steps bought no AUROC, only fit time.
SMALL_TABLE_ROWS: Final = 500
#: Optimizer steps per iteration of Lightning's training loop on one process (see
#: ``TabularDataModule``): 16 batches are at most 8,192 rows in memory at once.
STEPS_PER_ITEM: Final = 16
#: Most rows held out for calibration: p-values resolve to 1/20,001 with this many, and
#: on larger tables (over 100,000 rows at the default fraction) the rest train the model.
MAX_CALIBRATION: Final = 20_000

#: The floor rules ``min_sigma`` accepts by name (``default_min_sigma``, ``scott_min_sigma``
#: in ``anomaly_vae.nn.tabular``).
MIN_SIGMA_RULES: Final = ("auto", "scott")
#: How a discrete column's levels can be modelled (``discrete_likelihood``).
DISCRETE_LIKELIHOODS: Final = ("ordinal", "categorical")
#: A numeric column whose training values are integers with at most this many distinct
#: values is modelled as discrete.
DISCRETE_LEVELS: Final = 20
#: Share of each tail of a numeric column clipped before its center and scale are taken.
WINSOR_TAIL: Final = 0.025

#: Image likelihoods: binarized pixels, or a discretized logistic over 8-bit pixels.
IMAGE_LIKELIHOODS: Final = ("bernoulli", "logistic")
#: Image anomaly scores (see ``anomaly_vae.image_detector``).
IMAGE_SCORES: Final = ("likelihood", "complexity", "ratio")
#: How binary pixels are made for the Bernoulli likelihood.
BINARIZE: Final = ("dynamic", "threshold", "none")
#: ``complexity_weight`` value that fits lambda on the validation images.
FIT: Final = "fit"

#: ``TabularDetector``'s constructor defaults (None: sized from the data at ``fit``).
TABULAR: Final[dict[str, Any]] = {
    "latent_dim": None,
    "hidden": None,
    "beta": 1.0,
    "kl_warmup_epochs": None,
    "max_epochs": None,
    "batch_size": None,
    "lr": 2e-3,
    "patience": None,
    "trim_fraction": 0.1,
    "robust_validation": False,
    "min_sigma": "auto",
    "student_df": 3.0,
    "winsorize": WINSOR_TAIL,
    "k": None,
    "alpha": 0.05,
    "contamination": None,
    "calibration_fraction": 0.2,
    "validation_fraction": 0.1,
    "id_column": None,
    "categorical": None,
    "discrete_levels": DISCRETE_LEVELS,
    "discrete_likelihood": "ordinal",
    "category_channels": True,
    "marginal_channel": 0.35,
    "schema": None,
    "seed": 0,
    "accelerator": "cpu",
    "devices": 1,
    "strategy": "auto",
    "progress": False,
}

#: ``ImageDetector``'s constructor defaults.
IMAGE: Final[dict[str, Any]] = {
    "likelihood": "bernoulli",
    "binarize": "dynamic",
    "score": "likelihood",
    "mutation_rate": 0.2,
    "complexity_weight": 1.0,
    "latent_dim": 32,
    "width_mult": 32,
    "beta": 1.0,
    "kl_warmup_epochs": None,
    "max_epochs": None,
    "batch_size": None,
    "lr": 1e-3,
    "patience": None,
    "max_minutes": None,
    "k": 64,
    "alpha": 0.05,
    "contamination": None,
    "calibration_fraction": 0.1,
    "validation_fraction": 0.05,
    "seed": 0,
    "accelerator": "cpu",
    "devices": 1,
    "strategy": "auto",
    "progress": False,
}
