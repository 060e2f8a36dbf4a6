"""``anomaly-vae``: train, score, evaluate, sample and the end-to-end demo.

Exit codes, the same for every command, so a scheduler can tell failures apart:

- 0: success (for ``score-batch``, also when every partition was already done);
- 1: anything unexpected (a bug: the traceback is printed);
- 2: bad input: data, configuration or flags (the message names the column, row, file
  or flag); re-running will fail the same way;
- 3: the model is unavailable: the URI, alias, version or bundle cannot be resolved or
  loaded;
- 4: no input: the input path or glob matched no data files (for a scheduled run:
  the partition has not landed yet; retry later);
- 5: output could not be written (disk full, permissions); nothing partial is left;
- 6: ``pipeline train`` trained and registered a model but the promotion gate refused it;
- 7: ``drift``: the window drifted from the model's reference (the report says how).

This is the one module of the library that may reach into ``service/`` and
``pipelines/``, lazily, inside a command.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from anomaly_vae.defaults import (
    AUTO_LR,
    BINARIZE,
    DISCRETE_LIKELIHOODS,
    FIT,
    IMAGE,
    IMAGE_LIKELIHOODS,
    IMAGE_SCORES,
    MAX_CALIBRATION,
    MIN_SIGMA_RULES,
    TABULAR,
)

EXIT_BAD_INPUT = 2
EXIT_MODEL_UNAVAILABLE = 3
EXIT_NO_INPUT = 4
EXIT_OUTPUT = 5
EXIT_GATE_REFUSED = 6
EXIT_DRIFT = 7
#: The model registry was unreachable: try again later (sysexits' EX_TEMPFAIL), the one
#: model failure a scheduler should retry.
EXIT_RETRY = 75

#: Top-level modules of the optional extras, and the extra that installs each: a command
#: that reaches one on an install without it gets a message naming the extra.
EXTRAS = {
    "mlflow": "service",
    "fastapi": "service",
    "uvicorn": "service",
    "pydantic_settings": "service",
    "prometheus_client": "service",
    "multipart": "service",
    "python_multipart": "service",
    "orjson": "service",
    "pyspark": "spark",
    "pyod": "bench",
}


def missing_extra(exc: ImportError) -> str | None:
    """The one-line message for a command that needs an extra this install lacks, or
    None when ``exc`` is not about an extra's module (a genuine bug)."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    return (
        f"this command needs {top!r}, which comes with the {extra!r} extra: "
        f"pip install 'anomaly-vae[{extra}]'"
    )


def _optional_float(text: str) -> float | None:
    """argparse type: a float, or None for 'none'."""
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        msg = f"expected a number or 'none', got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _word_or_number(*words: str) -> Callable[[str], float | str]:
    """An argparse type taking one of ``words`` or a finite number >= 0."""

    def parse(text: str) -> float | str:
        if text in words:
            return text
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not (value >= 0 and value != float("inf")):
            named = ", ".join(repr(w) for w in words)
            msg = f"expected {named} or a number >= 0, got {text!r}"
            raise argparse.ArgumentTypeError(msg)
        return value

    return parse


_min_sigma = _word_or_number(*MIN_SIGMA_RULES)
_complexity_weight = _word_or_number(FIT)
_lr = _word_or_number(AUTO_LR)


def _add_device_flag(p: argparse.ArgumentParser, scope: str = "") -> None:
    """``--device``: where a scoring command scores (see ``Detector.to``)."""
    p.add_argument(
        "--device",
        default="cpu",
        help=f"score on this device{scope}: cpu (default), cuda, cuda:<index> or mps",
    )


def _add_training_flags(p: argparse.ArgumentParser) -> None:
    """The training flags of ``train``; every default is the detector's own
    (``anomaly_vae.defaults.TABULAR``)."""
    d = TABULAR
    g = p.add_argument_group("model and training (unset: sized from the data)")
    g.add_argument("--latent-dim", type=int, help="size of the latent code z")
    g.add_argument("--hidden", type=int, nargs="+", help="encoder hidden widths, e.g. 128 64")
    g.add_argument(
        "--beta", type=float, default=d["beta"], help="KL weight (beta-VAE), default %(default)s"
    )
    g.add_argument("--kl-warmup-epochs", type=int, help="epochs of linear KL warm-up")
    g.add_argument(
        "--max-epochs", type=int, help="upper bound on epochs (early stopping may end sooner)"
    )
    g.add_argument("--batch-size", type=int, help="rows per gradient step")
    g.add_argument(
        "--lr",
        type=_lr,
        default=d["lr"],
        help="AdamW learning rate, default %(default)s; 'auto': 2e-3 at 3000 steps, larger "
        "for shorter schedules (small tables), at most 1e-2",
    )
    g.add_argument(
        "--trim-fraction",
        type=float,
        default=d["trim_fraction"],
        help="robust training: drop this fraction of each batch's highest-loss rows from the "
        "gradient, default %(default)s (0 disables)",
    )
    g.add_argument(
        "--min-sigma",
        type=_min_sigma,
        default=d["min_sigma"],
        help="floor of numeric columns' decoder std in standardized units, 'auto' (default: "
        "1 up to 10,000 training rows, then (10000/rows)**0.25, at least 0.6) or 'scott' "
        "(Scott's rule from rows and columns, in [0.6, 1]); lower it (e.g. 0.05) when "
        "columns are tightly determined by others",
    )
    g.add_argument(
        "--student-df",
        type=_optional_float,
        default=d["student_df"],
        help="degrees of freedom of the Student-t likelihood of numeric columns, default "
        "%(default)s ('none' for a Gaussian)",
    )
    g.add_argument(
        "--winsorize",
        type=float,
        default=d["winsorize"],
        help="share of each tail of a numeric column clipped before its center and scale "
        "are taken, so outliers do not set the unit, default %(default)s (0: plain mean and "
        "std)",
    )
    g.add_argument(
        "--discrete-levels",
        type=int,
        default=d["discrete_levels"],
        help="numeric columns holding at most this many distinct integers are modelled as "
        "discrete (a likelihood over their levels), default %(default)s (0 disables)",
    )
    g.add_argument(
        "--discrete-likelihood",
        choices=DISCRETE_LIKELIHOODS,
        default=d["discrete_likelihood"],
        help="how a discrete column's levels are modelled: ordinal (a logistic binned at the "
        "levels, the default) or categorical (unordered, a free probability per level)",
    )
    g.add_argument(
        "--no-category-channels",
        dest="category_channels",
        action="store_false",
        help="judge records by log p(x) alone; by default each text column is also judged "
        "on its own and a record's p-value is Bonferroni's over both",
    )
    g.add_argument(
        "--marginal-channel",
        type=float,
        default=d["marginal_channel"],
        metavar="W",
        help="share of the level given to judging each column on its own (its cells' "
        "empirical tails, ECOD's statistic, beside log p(x)); 0 disables, default "
        "%(default)s",
    )
    g.add_argument(
        "--k",
        type=int,
        default=d["k"],
        help="importance samples per record when scoring (1 = ELBO); by default the fewest of "
        "8, 16, 32, 64 whose estimates on the validation rows are as good as 64's",
    )
    g.add_argument(
        "--alpha",
        type=float,
        default=d["alpha"],
        help="target false-positive rate of the conformal threshold, default %(default)s",
    )
    g.add_argument(
        "--contamination",
        type=float,
        help="alternatively, the expected outlier fraction (quantile threshold)",
    )
    g.add_argument(
        "--calibration-fraction",
        type=float,
        default=d["calibration_fraction"],
        help=f"share of rows held out to calibrate on, default %(default)s (at most "
        f"{MAX_CALIBRATION:,} rows)",
    )
    g.add_argument("--seed", type=int, default=d["seed"])
    g.add_argument(
        "--accelerator",
        default=d["accelerator"],
        help="Lightning accelerator: cpu (default), gpu, auto, ...",
    )
    g.add_argument(
        "--devices", default=str(d["devices"]), help="Lightning devices, e.g. 1, 2 or auto"
    )
    g.add_argument("--strategy", default=d["strategy"], help="Lightning strategy, e.g. ddp")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomaly-vae",
        description="Anomaly detection and density estimation with variational autoencoders.",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train a detector on a CSV/Parquet table and save its bundle",
        description="Train a tabular VAE detector; writes a bundle directory.",
    )
    p.add_argument("data", help="training table (.csv or .parquet), mostly normal rows")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--id-column", help="column carried through scoring but never modelled")
    p.add_argument("--drop", nargs="+", default=[], help="columns to ignore (e.g. a label)")
    p.add_argument("--categorical", nargs="+", help="columns to treat as categorical")
    _add_training_flags(p)

    p = sub.add_parser(
        "score",
        help="score a table with a saved detector",
        description="Write per-row log_likelihood, stderr, elbo, kl, score, p_value, is_outlier.",
    )
    p.add_argument("bundle", help="detector bundle directory")
    p.add_argument("data", help="table to score (.csv or .parquet)")
    p.add_argument("--out", required=True, help="output table (.csv or .parquet)")
    p.add_argument("--k", type=int, help="importance samples (default: the detector's own)")
    p.add_argument(
        "--explain",
        type=int,
        default=0,
        metavar="TOP",
        help="add the TOP most unusual features per row",
    )
    p.add_argument(
        "--allow-extra",
        action="store_true",
        help="ignore columns the model does not know (default: error)",
    )
    p.add_argument(
        "--keep-columns", action="store_true", help="copy the input columns into the output"
    )
    _add_device_flag(p)

    p = sub.add_parser(
        "evaluate",
        help="AUROC/AUPRC/precision/recall against a labels column, with a plot",
        description="Evaluate a detector on a labelled table; prints JSON, writes a PNG.",
    )
    p.add_argument("bundle", help="detector bundle directory")
    p.add_argument("data", help="labelled table (.csv or .parquet)")
    p.add_argument(
        "--labels", required=True, help="column with 1 (or -1) for outliers, 0 (or +1) for inliers"
    )
    p.add_argument("--plot", help="PNG to write: score histogram, threshold, ROC curve")
    p.add_argument("--json", dest="json_out", help="write the metrics to this JSON file too")

    p = sub.add_parser("sample", help="generate synthetic rows from a detector's VAE")
    p.add_argument("bundle")
    p.add_argument("-n", type=int, default=10, help="rows to draw, default 10")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output table; default: print CSV")

    p = sub.add_parser("encode", help="latent means of each row")
    p.add_argument("bundle")
    p.add_argument("data")
    p.add_argument("--out", required=True, help="output table (.csv or .parquet)")

    p = sub.add_parser(
        "register",
        help="log a bundle to MLflow as a new registered model version",
        description="Log a detector bundle as a run and a registered pyfunc model version.",
    )
    p.add_argument("bundle", help="detector bundle directory")
    p.add_argument("--name", required=True, help="registered model name")
    p.add_argument("--alias", help="point this alias (e.g. champion) at the new version")
    p.add_argument(
        "--store",
        default="mlruns",
        help="embedded MLflow store directory (ignored when MLFLOW_TRACKING_URI is set)",
    )

    p = sub.add_parser(
        "sign",
        help="sign a bundle (HMAC-SHA256 of its manifest) with ANOMALY_VAE_SIGNING_KEY",
        description="Sign a detector bundle with the key in ANOMALY_VAE_SIGNING_KEY (at "
        "least 32 characters). A service given the same key serves only bundles signed "
        "with it; `register` signs the bundle it logs whenever the variable is set.",
    )
    p.add_argument("bundle", help="detector bundle directory")
    p.add_argument(
        "--verify", action="store_true", help="check the signature instead of writing one"
    )

    p = sub.add_parser("models", help="list registered versions, promote an alias, roll back")
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    q = msub.add_parser("list", help="versions of a registered model, newest first")
    q.add_argument("name")
    q = msub.add_parser("promote", help="point an alias at a version")
    q.add_argument("name")
    q.add_argument("version", type=int)
    q.add_argument("--alias", default="champion")
    q = msub.add_parser("rollback", help="point an alias back at its previous version")
    q.add_argument("name")
    q.add_argument("--alias", default="champion")
    for q in msub.choices.values():
        q.add_argument("--store", default="mlruns", help="embedded MLflow store directory")

    p = sub.add_parser(
        "serve",
        help="run the scoring service (FastAPI on uvicorn)",
        description="Serve a registered model (--model NAME, --alias) or a bundle (--bundle).",
    )
    p.add_argument("--model", help="registered model name")
    # flags left unset leave the environment's ANOMALY_VAE_* settings (or their defaults)
    p.add_argument(
        "--alias", help="alias to serve and poll (default: ANOMALY_VAE_MODEL_ALIAS or champion)"
    )
    p.add_argument("--bundle", help="serve this bundle directory instead of a registered model")
    p.add_argument(
        "--store",
        help="embedded MLflow store directory (default: ANOMALY_VAE_TRACKING_STORE or mlruns)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--workers", type=int, help="uvicorn worker processes (default: ANOMALY_VAE_WORKERS or 1)"
    )
    p.add_argument(
        "--poll-seconds",
        type=float,
        help="alias polling period, 0: no hot reload (default: ANOMALY_VAE_POLL_SECONDS or 30)",
    )

    p = sub.add_parser(
        "score-batch",
        help="score CSV/Parquet files, directories or partitions into Parquet, streaming",
        description="Stream-score a file, a directory (partitioned layouts such as "
        "date=2026-11-22/ are kept), or a glob, into OUTPUT with the same partition "
        "directories: the id column (or every input column) plus log_likelihood, stderr, "
        "score, p_value, is_outlier. Each partition is written atomically; re-running skips "
        "partitions already done. {today} and {yesterday} in --input/--output become ISO "
        "dates (UTC). Exit codes: 0 ok, 2 bad data or flags, 3 model unavailable, 4 no input "
        "files, 5 output not writable.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="models:/NAME@ALIAS, models:/NAME/VERSION, or a bundle directory",
    )
    p.add_argument("--input", required=True, help="file, directory or glob (quote it)")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--engine", choices=["local", "spark"], default="local")
    p.add_argument("--k", type=int, help="importance samples (default: the detector's own)")
    p.add_argument(
        "--keep-columns", action="store_true", help="copy every input column into the output"
    )
    _add_device_flag(p, " (local engine)")
    p.add_argument(
        "--batch-rows",
        type=int,
        default=65_536,
        help="rows per scoring batch (local engine), default 65536; memory grows with it",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="re-score partitions that are already done"
    )
    p.add_argument(
        "--store",
        help="embedded MLflow store directory for models:/ URIs and run logging "
        "(default mlruns; ignored when MLFLOW_TRACKING_URI is set)",
    )
    p.add_argument(
        "--no-track",
        action="store_true",
        help="do not log the run's manifest to MLflow (logged by default when the model is a "
        "models:/ URI, --store is given or MLFLOW_TRACKING_URI is set)",
    )
    p.add_argument(
        "--spark-master", help="Spark master URL (default: local[*], or spark-submit's own)"
    )
    p.add_argument(
        "--drift",
        action="store_true",
        help="also check each partition for drift against the model's reference: "
        "_drift.json beside _partition.json, summarized in the run manifest",
    )

    p = sub.add_parser(
        "drift",
        help="check a table (or images) for drift against a model's reference; HTML + JSON report",
        description="Compare DATA with the reference in the model's bundle: the scores, the "
        "outlier rate, the latent codes and (tables) every feature and its log-likelihood "
        "contribution. Writes OUT/report.html (self-contained) and OUT/report.json. Exit "
        "codes: 0 no drift (or a window too small to say), 7 drift, 2 bad data or flags, "
        "3 model unavailable or without a reference.",
    )
    p.add_argument("model", help="bundle directory, models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument(
        "data", nargs="+", help="CSV/Parquet file(s) of a table model, or images of an image model"
    )
    p.add_argument("--out", required=True, help="directory for report.html and report.json")
    p.add_argument(
        "--level", type=float, default=0.05, help="false-alarm level of the verdict, default 0.05"
    )
    p.add_argument("--k", type=int, help="importance samples (default: the detector's own)")
    p.add_argument(
        "--allow-extra", action="store_true", help="ignore columns the model does not know"
    )
    p.add_argument("--store", help="embedded MLflow store (for models:/ URIs and run logging)")
    p.add_argument(
        "--no-track",
        action="store_true",
        help="do not log the report to MLflow (logged by default for a models:/ URI, with "
        "--store or with MLFLOW_TRACKING_URI set)",
    )

    p = sub.add_parser(
        "drift-reference",
        help="recompute a bundle's drift reference from rows like the training data",
        description="For bundles written before drift monitoring: score DATA (rows or images "
        "like the training data) and write a copy of the bundle with a drift reference.",
    )
    p.add_argument("bundle", help="detector bundle directory")
    p.add_argument("data", help="table (CSV/Parquet) or images like the training data")
    p.add_argument("--out", required=True, help="the new bundle directory")

    p = sub.add_parser(
        "pipeline",
        help="configured pipelines: train, calibrate, evaluate, register, gated promotion",
    )
    psub = p.add_subparsers(dest="pipeline_command", required=True, metavar="PIPELINE")
    q = psub.add_parser(
        "train",
        help="train from a YAML config; promote to champion only when the gate passes",
        description="Read data, model and gate settings from CONFIG (YAML; see "
        "pipelines/train.py and docs in README), train, calibrate, evaluate on held-out rows, "
        "register a new version, and point the alias at it only if the gate passes. Exit "
        "codes: 0 promoted, 6 refused by the gate, 2 bad config or data, 3 champion "
        "unavailable.",
    )
    q.add_argument("config", help="pipeline YAML file")
    q.add_argument("--store", help="embedded MLflow store (overrides the config's)")
    q.add_argument("--report", help="also write the gate's decision as JSON here")

    p = sub.add_parser(
        "images",
        help="image detectors: train, score, evaluate, sample, reconstruct, traverse",
        description="Images from IDX files (gzip or not), .npy/.npz arrays or folders of "
        "PNG/JPEG files. Scores are log p(x) in nats and bits per dimension.",
    )
    isub = p.add_subparsers(dest="images_command", required=True, metavar="ACTION")
    q = isub.add_parser("train", help="train a convolutional VAE detector; writes a bundle")
    q.add_argument("data", help="training images (mostly normal)")
    q.add_argument("--out", required=True, help="bundle directory to write")
    d = IMAGE
    q.add_argument("--likelihood", choices=IMAGE_LIKELIHOODS, default=d["likelihood"],
                   help="bernoulli: binarized pixels; logistic: 8-bit pixels (discretized logistic)")  # fmt: skip
    q.add_argument("--binarize", choices=BINARIZE, default=d["binarize"])
    q.add_argument("--score", choices=IMAGE_SCORES, default=d["score"],
                   help="complexity: -log2 p(x) minus the PNG length (Serra et al. 2020); ratio: "
                   "log p(x) minus a background model's, trained on mutated images (Ren et al. 2019)")  # fmt: skip
    q.add_argument("--mutation-rate", type=float, default=d["mutation_rate"],
                   help="with --score ratio: share of pixels randomized for the background model")  # fmt: skip
    q.add_argument("--complexity-weight", type=_complexity_weight, default=d["complexity_weight"],
                   help="with --score complexity: lambda in -log2 p(x) - lambda * PNG bits; 1 is "
                   "Serra et al. (other-domain inputs), 'fit' fits it on the validation images "
                   "(novelty within one domain, e.g. one-class)")  # fmt: skip
    q.add_argument("--latent-dim", type=int, default=d["latent_dim"])
    q.add_argument("--beta", type=float, default=d["beta"])
    q.add_argument("--max-epochs", type=int, default=d["max_epochs"])
    q.add_argument("--max-minutes", type=float, help="wall-clock training budget")
    q.add_argument("--k", type=int, default=d["k"], help="importance samples when scoring")
    q.add_argument("--alpha", type=float, default=d["alpha"])
    q.add_argument("--seed", type=int, default=d["seed"])
    q.add_argument("--register", metavar="NAME",
                   help="also log the run (curves, sample/reconstruction/traversal PNGs) and register a version of NAME in MLflow")  # fmt: skip
    q.add_argument("--alias", help="with --register: point this alias (e.g. champion) at the new version")  # fmt: skip
    q.add_argument("--store", default="mlruns",
                   help="embedded MLflow store directory (ignored when MLFLOW_TRACKING_URI is set)")  # fmt: skip
    q = isub.add_parser("score", help="score images; writes a CSV or Parquet table")
    q.add_argument("bundle")
    q.add_argument("data")
    q.add_argument("--out", required=True, help="output table (.csv or .parquet)")
    q.add_argument("--k", type=int, help="importance samples (default: the detector's)")
    q.add_argument("--heatmaps", help="also write per-pixel contribution heat maps (PNG) of the 16 most anomalous images here")  # fmt: skip
    _add_device_flag(q)
    q = isub.add_parser("evaluate", help="AUROC/AUPRC against labels (1 = outlier)")
    q.add_argument("bundle")
    q.add_argument("data")
    q.add_argument("--labels", required=True, help="IDX, .npy or .csv file of 0/1 outlier flags, one per image")  # fmt: skip
    q.add_argument("--plot", help="PNG: score histogram, threshold, ROC")
    q = isub.add_parser("sample", help="a grid of new images (PNG)")
    q.add_argument("bundle")
    q.add_argument("-n", type=int, default=64)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True, help="PNG file")
    q = isub.add_parser("reconstruct", help="originals (odd rows) over reconstructions (PNG)")
    q.add_argument("bundle")
    q.add_argument("data")
    q.add_argument("-n", type=int, default=16)
    q.add_argument("--out", required=True, help="PNG file")
    q = isub.add_parser("traverse", help="sweep one latent dimension at a time (PNG)")
    q.add_argument("bundle")
    q.add_argument("data", help="images; the first one is the starting point")
    q.add_argument("--dims", type=int, default=8)
    q.add_argument("--steps", type=int, default=9)
    q.add_argument("--out", required=True, help="PNG file")

    p = sub.add_parser(
        "demo",
        help="the README's main job: train on real data, score, report",
        description="Train on ADBench's WDBC (breast-cancer data shipped with scikit-learn), "
        "score a held-out 30%%, evaluate and print a report.",
    )
    p.add_argument("--workdir", default="runs/demo", help="where the bundle, scores and plot go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--register",
        metavar="NAME",
        help="also log and register the model in MLflow as NAME (alias champion)",
    )
    p.add_argument("--store", default="mlruns", help="embedded MLflow store directory")
    p.add_argument("--port", type=int, default=8000, help="the port the printed curl examples use")
    return parser


# ---------------------------------------------------------------------- commands
def _cmd_train(args: argparse.Namespace) -> int:
    from anomaly_vae.data.io import read_table
    from anomaly_vae.detector import TabularDetector
    from anomaly_vae.exceptions import SchemaError

    frame = read_table(args.data)
    missing = [c for c in args.drop if c not in frame.columns]
    if missing:
        msg = f"--drop names columns not in {args.data!r}: {missing}"
        raise SchemaError(msg)
    frame = frame.drop(columns=args.drop)
    devices: int | str = int(args.devices) if args.devices.isdigit() else args.devices
    det = TabularDetector(
        latent_dim=args.latent_dim,
        hidden=args.hidden,
        beta=args.beta,
        kl_warmup_epochs=args.kl_warmup_epochs,
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        trim_fraction=args.trim_fraction,
        min_sigma=args.min_sigma,
        student_df=args.student_df,
        winsorize=args.winsorize,
        discrete_levels=args.discrete_levels,
        discrete_likelihood=args.discrete_likelihood,
        category_channels=args.category_channels,
        marginal_channel=args.marginal_channel,
        k=args.k,
        alpha=args.alpha,
        contamination=args.contamination,
        calibration_fraction=args.calibration_fraction,
        id_column=args.id_column,
        categorical=args.categorical,
        seed=args.seed,
        accelerator=args.accelerator,
        devices=devices,
        strategy=args.strategy,
        progress=not args.quiet,
    ).fit(frame)
    if det.global_rank_ != 0:
        return 0  # distributed training: rank 0 writes the bundle and the summary
    path = det.save(args.out)
    summary = {"bundle": str(path), **det.training_, "calibration": det.calibration_.summary()}
    print(json.dumps(summary, indent=1, default=str))
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    import pandas as pd

    from anomaly_vae.data.io import read_table, write_table
    from anomaly_vae.detector import TabularDetector

    det = TabularDetector.load(args.bundle).to(args.device)
    frame = read_table(args.data)
    out = det.score(frame, k=args.k, allow_extra=args.allow_extra, progress=not args.quiet)
    if args.explain:
        res_expl = det.explain(frame, top=args.explain, k=args.k)
        wide = res_expl.pivot(index="row", columns="rank", values="feature")
        wide.columns = [f"top{r}_feature" for r in wide.columns]
        out = out.join(wide)
    if args.keep_columns:
        out = pd.concat(
            [frame.drop(columns=[c for c in out.columns if c in frame.columns]), out], axis=1
        )
    write_table(out, args.out)
    print(f"scored {len(out)} rows, {int(out['is_outlier'].sum())} flagged -> {args.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from anomaly_vae.data.io import read_table
    from anomaly_vae.detector import TabularDetector
    from anomaly_vae.evaluation import detection_metrics, labels_as_outlier_flags, plot_evaluation
    from anomaly_vae.exceptions import SchemaError

    det = TabularDetector.load(args.bundle)
    frame = read_table(args.data)
    if args.labels not in frame.columns:
        msg = f"labels column {args.labels!r} is not in {args.data!r} (columns: {list(frame.columns)})"
        raise SchemaError(msg)
    y = labels_as_outlier_flags(frame[args.labels], args.labels)
    res = det.score(frame.drop(columns=[args.labels]), progress=not args.quiet)
    metrics = detection_metrics(y, res["score"].to_numpy(), res["is_outlier"].to_numpy())
    metrics["calibration"] = det.calibration_.summary()
    if args.plot:
        plot_evaluation(
            y, res["score"].to_numpy(), -det.offset_, args.plot, title=Path(args.data).name
        )
        metrics["plot"] = args.plot
    text = json.dumps(metrics, indent=1)
    if args.json_out:
        Path(args.json_out).write_text(text)
    print(text)
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from anomaly_vae.data.io import write_table
    from anomaly_vae.detector import TabularDetector

    rows = TabularDetector.load(args.bundle).sample(args.n, seed=args.seed)
    if args.out:
        write_table(rows, args.out)
        print(f"wrote {len(rows)} synthetic rows -> {args.out}")
    else:
        print(rows.to_csv(index=False), end="")
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    import pandas as pd

    from anomaly_vae.data.io import read_table, write_table
    from anomaly_vae.detector import TabularDetector

    det = TabularDetector.load(args.bundle)
    frame = read_table(args.data)
    z = det.encode(frame)
    out = pd.DataFrame(z, columns=[f"z{i}" for i in range(z.shape[1])], index=frame.index)
    sid = det.schema_.id_column
    if sid and sid in frame.columns:
        out.insert(0, sid, frame[sid])
    write_table(out, args.out)
    print(f"encoded {len(out)} rows to {z.shape[1]} latent dimensions -> {args.out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from sklearn.model_selection import train_test_split

    from anomaly_vae.demo_data import wdbc
    from anomaly_vae.detector import TabularDetector
    from anomaly_vae.evaluation import detection_metrics, plot_evaluation

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = wdbc(seed=args.seed)
    train, test = train_test_split(
        data, test_size=0.3, stratify=data["is_outlier"], random_state=args.seed
    )
    print(
        f"data: ADBench WDBC from scikit-learn's breast-cancer set, {len(data)} rows, "
        f"{int(data['is_outlier'].sum())} outliers; training on {len(train)} unlabeled rows"
    )
    det = TabularDetector(id_column="row_id", seed=args.seed, progress=not args.quiet)
    det.fit(train.drop(columns=["is_outlier"]))
    bundle = det.save(work / "detector")
    scored = det.score(test.drop(columns=["is_outlier"]))
    scored["is_outlier_label"] = test["is_outlier"].to_numpy()
    scored.to_csv(work / "test_scores.csv", index=False)
    y = test["is_outlier"].to_numpy().astype(bool)
    m = detection_metrics(y, scored["score"].to_numpy(), scored["is_outlier"].to_numpy())
    plot = plot_evaluation(
        y,
        scored["score"].to_numpy(),
        -det.offset_,
        work / "evaluation.png",
        title="WDBC held-out 30%",
    )
    t = det.training_
    print(
        f"trained {t['epochs_run']} epochs (best {t['best_epoch']}) in {t['fit_seconds']:.1f} s; "
        f"calibrated on {t['n_calibration']} held-out rows, alpha={det.calibration_.alpha}"
    )
    print(
        f"held-out: AUROC {m['auroc']:.3f}  AUPRC {m['auprc']:.3f}  flagged {m['n_flagged']}/{m['n']}  "
        f"precision {m['precision']:.2f}  recall {m['recall']:.2f}  FPR {m['false_positive_rate']:.3f}"
    )
    worst = scored.sort_values("score", ascending=False).head(3)
    expl = det.explain(test.loc[worst.index].drop(columns=["is_outlier"]), top=2)
    print("most anomalous held-out rows:")
    for idx, row in worst.iterrows():
        feats = expl[expl["row"] == idx]
        why = ", ".join(
            f"{f.feature}={f.value:.4g} ({f.excess:+.1f} nats)" for f in feats.itertuples()
        )
        print(
            f"  {row['row_id']}: log p(x) = {row['log_likelihood']:.2f} ± {row['stderr']:.2f} nats, "
            f"p = {row['p_value']:.3f}, label {'outlier' if row['is_outlier_label'] else 'inlier'}; {why}"
        )
    print(f"bundle: {bundle}\nscores: {work / 'test_scores.csv'}\nplot:   {plot}")
    if args.register:
        from anomaly_vae import registry

        uri = registry.configure(args.store)
        info = registry.log_detector(
            det,
            name=args.register,
            example=test.drop(columns=["is_outlier"]),
            metrics={"test_auroc": m["auroc"], "test_auprc": m["auprc"]},
            plots=[plot],
            alias=registry.CHAMPION,
        )
        print(f"registered {info.name} version {info.version} as @champion in {uri}")
        example = test.drop(columns=["is_outlier"]).head(2)
        request = work / "example_request.json"
        request.write_text(
            json.dumps(
                {"records": json.loads(example.to_json(orient="records")), "contributions": 3}
            )
        )
        print("once the service is up (anomaly-vae serve --model " + args.register + "), try:")
        host = f"localhost:{args.port}"
        for line in (
            f"curl -s {host}/readyz",
            f"curl -s -X POST {host}/v1/score -H 'content-type: application/json' -d @{request}",
            f"curl -s {host}/v1/models",
            f"curl -s {host}/metrics | grep anomaly_vae_records",
            f"curl -s {host}/v1/drift   # live drift: the martingale and the window checks",
            f"open http://{host}/monitor for the monitoring page (drift, outlier rate, scores)",
            f"open http://{host}/docs for the OpenAPI documentation",
        ):
            print("  " + line)
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    from anomaly_vae import load_detector, registry

    det = load_detector(args.bundle)
    uri = registry.configure(args.store)
    # the input example: five records (or images) the model itself generates
    info = registry.log_detector(det, name=args.name, example=det.sample(5), alias=args.alias)
    print(
        f"registered {info.name} version {info.version} (run {info.run_id}) in {uri}"
        + (f"; alias {args.alias} -> {info.version}" if args.alias else "")
    )
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    import os

    from anomaly_vae.bundle import sign_bundle, verify_signature

    key = os.environ.get("ANOMALY_VAE_SIGNING_KEY")
    if not key:
        print("anomaly-vae: error: set ANOMALY_VAE_SIGNING_KEY to the signing key", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.verify:
        verify_signature(args.bundle, key)
        print(f"{args.bundle}: signature verifies")
    else:
        print(sign_bundle(args.bundle, key))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from anomaly_vae import registry

    registry.configure(args.store)
    try:
        if args.models_command == "list":
            for v in registry.list_versions(args.name):
                aliases = ",".join(v.aliases) or "-"
                print(f"{v.name}\tversion {v.version}\taliases {aliases}\trun {v.run_id}")
        elif args.models_command == "promote":
            registry.promote(args.name, args.version, args.alias)
            print(f"{args.name}@{args.alias} -> version {args.version}")
        else:
            version = registry.rollback(args.name, args.alias)
            print(f"{args.name}@{args.alias} -> version {version} (rolled back)")
    except LookupError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _cmd_score_batch(args: argparse.Namespace) -> int:
    import os

    from anomaly_vae.pipelines.batch import log_run, score_batch
    from anomaly_vae.pipelines.models import is_model_uri, load_detector, resolve_model
    from anomaly_vae.pipelines.partitions import expand_dates

    if args.engine == "spark" and args.device != "cpu":
        msg = (
            f"--device {args.device} applies to the local engine: with --engine spark the "
            "executors load the model themselves and score on their CPUs"
        )
        raise ValueError(msg)
    store = args.store or "mlruns"
    ref = resolve_model(args.model, store)
    det = load_detector(ref).to(args.device)
    report = score_batch(
        det,
        ref,
        expand_dates(args.input),
        expand_dates(args.output),
        engine=args.engine,
        k=args.k,
        keep_columns=args.keep_columns,
        batch_rows=args.batch_rows,
        overwrite=args.overwrite,
        progress=not args.quiet,
        spark_master=args.spark_master,
        drift=args.drift,
    )
    totals = report.totals()
    print(
        f"{totals['partitions_scored']} partition(s) scored, {totals['partitions_skipped']} "
        f"already done; {totals['rows_out']} rows, {totals['outliers']} flagged; "
        f"{report.duration_s:.1f} s -> {report.output}"
    )
    if report.drift is not None:
        whole = report.drift.get("all_partitions", {})
        print(
            f"drift: {report.drift['partitions_drifted']} of {len(report.drift['per_partition'])} "
            f"partition(s) drifted; all partitions together: {whole.get('verdict', 'n/a')}"
            + (f" ({', '.join(whole['fired'])})" if whole.get("fired") else "")
        )
    track = is_model_uri(args.model) or args.store or os.environ.get("MLFLOW_TRACKING_URI")
    if track and not args.no_track:
        run_id = log_run(report, store)
        print(f"manifest logged to MLflow run {run_id}")
    return 0


def _cmd_drift(args: argparse.Namespace) -> int:
    import os

    from anomaly_vae import load_detector
    from anomaly_vae.drift import window_stats
    from anomaly_vae.drift.check import evaluate
    from anomaly_vae.drift.report import write_report
    from anomaly_vae.exceptions import BundleError, ModelUnavailableError
    from anomaly_vae.pipelines.models import is_model_uri, resolve_model

    ref = resolve_model(args.model, args.store or "mlruns")
    try:
        det = load_detector(ref.bundle)
    except (BundleError, FileNotFoundError) as exc:
        msg = f"{ref.uri}: {exc}"
        raise ModelUnavailableError(msg) from exc
    try:
        from anomaly_vae.drift.check import require_reference

        require_reference(det)
    except BundleError as exc:
        raise ModelUnavailableError(str(exc)) from exc
    window = args.data[0] if det.kind == "image" else args.data
    stats = window_stats(det, window, k=args.k, allow_extra=args.allow_extra)
    report = evaluate(stats, det.calibration_, level=args.level)
    report.model = {"kind": det.kind, "k": args.k or det.sampler_.k, "uri": ref.uri,
                    "name": ref.name, "version": ref.version, "alias": ref.alias}  # fmt: skip
    page, doc = write_report(report, args.out, stats, title=ref.name or Path(ref.bundle).name)
    summary = {
        "verdict": report.verdict,
        "n": report.n,
        "fired": [f["signal"] for f in report.fired],
        "drifted_features": report.drifted_features(),
        "report": str(page),
        "json": str(doc),
    }
    track = is_model_uri(args.model) or args.store or os.environ.get("MLFLOW_TRACKING_URI")
    if track and not args.no_track:
        from anomaly_vae import registry

        registry.configure(args.store or "mlruns")
        summary["mlflow_run"] = registry.log_drift_run(
            Path(args.out), report.to_dict(), ref.name, ref.version
        )
    print(json.dumps(summary, indent=1))
    return EXIT_DRIFT if report.drifted else 0


def _cmd_drift_reference(args: argparse.Namespace) -> int:
    from anomaly_vae import load_detector

    det = load_detector(args.bundle)
    det.rebuild_reference(args.data)
    print(json.dumps({"bundle": str(det.save(args.out))}))
    return 0


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from anomaly_vae.pipelines.train import run_pipeline

    decision = run_pipeline(args.config, store=args.store)
    doc = json.dumps(decision, indent=1, default=str)
    print(doc)
    if args.report:
        Path(args.report).write_text(doc + "\n")
    return 0 if decision["promoted"] else EXIT_GATE_REFUSED


def _cmd_images(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from anomaly_vae.data.images import load_images, read_idx, save_grid
    from anomaly_vae.data.io import write_table
    from anomaly_vae.image_detector import ImageDetector, latent_traversal

    action = args.images_command
    if action == "train":
        det = ImageDetector(
            likelihood=args.likelihood, binarize=args.binarize, score=args.score,
            mutation_rate=args.mutation_rate, complexity_weight=args.complexity_weight,
            latent_dim=args.latent_dim, beta=args.beta, max_epochs=args.max_epochs,
            max_minutes=args.max_minutes, k=args.k, alpha=args.alpha, seed=args.seed,
            progress=not args.quiet,
        ).fit(args.data)  # fmt: skip
        if det.global_rank_ != 0:
            return 0
        path = det.save(args.out)
        report: dict[str, Any] = {
            "bundle": str(path),
            **det.training_,
            "calibration": det.calibration_.summary(),
        }
        if args.register:
            from anomaly_vae import registry

            report["tracking_uri"] = registry.configure(args.store)
            example = load_images(args.data)[:5]
            info = registry.log_detector(det, name=args.register, example=example, alias=args.alias)
            report["registered"] = {
                "name": info.name,
                "version": info.version,
                "run_id": info.run_id,
            }
        print(json.dumps(report, indent=1, default=str))
        return 0
    det = ImageDetector.load(args.bundle)
    if action == "sample":
        print(save_grid(det.sample(args.n, seed=args.seed), args.out))
        return 0
    images = load_images(args.data)
    if action == "score":
        out = det.to(args.device).score(images, k=args.k)
        write_table(out, args.out)
        print(f"scored {len(out)} images, {int(out['is_outlier'].sum())} flagged -> {args.out}")
        if args.heatmaps:
            top = np.argsort(-out["score"].to_numpy())[:16]
            heat = det.heatmap(images[top], k=args.k)
            # low (unlikely) pixels bright: rescale each map's negative terms to [0, 1]
            neg = np.clip(-heat, 0, None)
            scaled = neg / np.maximum(neg.reshape(len(neg), -1).max(1), 1e-12)[:, None, None, None]
            pairs = np.concatenate([images[top].astype(np.float32) / 255.0, scaled], axis=0)
            order = np.stack([np.arange(len(top)), len(top) + np.arange(len(top))], 1).ravel()
            print(save_grid(pairs[order], Path(args.heatmaps) / "heatmaps.png", ncol=8))
        return 0
    if action == "evaluate":
        from anomaly_vae.evaluation import (
            detection_metrics,
            labels_as_outlier_flags,
            plot_evaluation,
        )

        lp = Path(args.labels)
        raw = (
            np.load(lp) if lp.suffix == ".npy"
            else pd.read_csv(lp).iloc[:, 0].to_numpy() if lp.suffix == ".csv"
            else read_idx(lp)
        )  # fmt: skip
        flags = labels_as_outlier_flags(np.asarray(raw).ravel(), name=str(lp))
        if len(flags) != len(images):
            msg = f"{lp}: {len(flags)} labels for {len(images)} images"
            raise ValueError(msg)
        out = det.score(images)
        metrics = detection_metrics(flags, out["score"].to_numpy(), out["is_outlier"].to_numpy())
        if args.plot:
            plot_evaluation(flags, out["score"].to_numpy(), -det.calibration_.threshold, args.plot)
        print(json.dumps(metrics, indent=1))
        return 0
    if action == "reconstruct":
        x = images[: args.n]
        rec = det.reconstruct(x)
        rows = []
        for start in range(0, len(x), 8):
            rows += [x[start : start + 8].astype(np.float32) / 255.0, rec[start : start + 8]]
        print(save_grid(np.concatenate(rows), args.out, ncol=min(8, len(x))))
        return 0
    grid = latent_traversal(det, images[:1], dims=args.dims, steps=args.steps)
    print(save_grid(grid, args.out, ncol=args.steps))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import os
    import tempfile

    import uvicorn

    if args.model is not None and args.bundle is not None:
        msg = "give one of --model NAME or --bundle PATH, not both"
        raise ValueError(msg)
    # a flag overrides the environment only when given: an operator's
    # ANOMALY_VAE_POLL_SECONDS=1 must not silently become the flag's default
    given = {
        "ANOMALY_VAE_MODEL_ALIAS": args.alias,
        "ANOMALY_VAE_TRACKING_STORE": str(Path(args.store).resolve()) if args.store else None,
        "ANOMALY_VAE_POLL_SECONDS": None if args.poll_seconds is None else str(args.poll_seconds),
        "ANOMALY_VAE_WORKERS": None if args.workers is None else str(args.workers),
    }
    env = {k: v for k, v in given.items() if v is not None}
    if "ANOMALY_VAE_TRACKING_STORE" not in env and "ANOMALY_VAE_TRACKING_STORE" not in os.environ:
        env["ANOMALY_VAE_TRACKING_STORE"] = str(Path("mlruns").resolve())
    # neither flag: the environment's ANOMALY_VAE_MODEL_NAME or _BUNDLE_PATH (Settings
    # below names both when neither is set)
    if args.model:
        env["ANOMALY_VAE_MODEL_NAME"] = args.model
    elif args.bundle:
        env["ANOMALY_VAE_BUNDLE_PATH"] = str(Path(args.bundle).resolve())
    os.environ.update(env)
    workers = int(os.environ.get("ANOMALY_VAE_WORKERS", "1"))
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="anomaly-vae-metrics-")
    elif os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # a fixed directory (the Docker image's) holds the files of the processes of an
        # earlier start: their counts would be added to the new ones, and a new worker
        # given a dead one's pid would write on in its file. This server's processes
        # are the only writers, and none has started yet.
        clear_metric_files(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
    from anomaly_vae.service.settings import Settings

    Settings()  # fail fast, with the message, on bad settings
    shown = "localhost" if args.host in ("0.0.0.0", "::") else args.host
    print(
        f"serving on http://{shown}:{args.port}: monitoring page /monitor, drift state "
        "/v1/drift, Prometheus metrics /metrics, OpenAPI documentation /docs",
        flush=True,
    )
    uvicorn.run(
        "anomaly_vae.service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=workers,
    )
    return 0


def clear_metric_files(directory: Path) -> int:
    """Remove prometheus-client's multiprocess files (``*.db``) and the live drift state
    (its ``drift`` folder: a restart starts a fresh test) from ``directory``, creating it
    if missing; returns how many metric files were removed."""
    import shutil

    directory.mkdir(parents=True, exist_ok=True)
    removed = 0
    for f in directory.glob("*.db"):
        f.unlink(missing_ok=True)
        removed += 1
    shutil.rmtree(directory / "drift", ignore_errors=True)
    return removed


COMMANDS = {
    "train": _cmd_train,
    "score": _cmd_score,
    "evaluate": _cmd_evaluate,
    "sample": _cmd_sample,
    "encode": _cmd_encode,
    "demo": _cmd_demo,
    "register": _cmd_register,
    "sign": _cmd_sign,
    "models": _cmd_models,
    "serve": _cmd_serve,
    "score-batch": _cmd_score_batch,
    "pipeline": _cmd_pipeline,
    "images": _cmd_images,
    "drift": _cmd_drift,
    "drift-reference": _cmd_drift_reference,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from anomaly_vae.exceptions import (
        AnomalyVAEError,
        CalibrationWarning,
        InputNotFoundError,
        ModelUnavailableError,
        OutputError,
        RegistryUnreachableError,
    )

    def _show(message: Any, category: Any, *_: Any, **__: Any) -> None:
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = _show
    warnings.simplefilter("default", CalibrationWarning)
    try:
        return COMMANDS[args.command](args)
    except ImportError as exc:
        message = missing_extra(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RegistryUnreachableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RETRY
    except ModelUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MODEL_UNAVAILABLE
    except InputNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NO_INPUT
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_OUTPUT
    except (AnomalyVAEError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
