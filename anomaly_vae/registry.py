"""MLflow: log a trained detector as a run and a registered model version, manage aliases,
and fetch a version's bundle for serving.

The embedded default is a sqlite tracking and registry store plus an artifact folder
under one directory (``mlruns/`` in the working directory unless told otherwise);
``MLFLOW_TRACKING_URI`` points everything at a real MLflow server instead.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anomaly_vae.detector import TabularDetector
    from anomaly_vae.image_detector import ImageDetector

EXPERIMENT = "anomaly-vae"
CHAMPION = "champion"
CHALLENGER = "challenger"
_PREVIOUS_TAG = "previous_champion"
_MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
#: Embedded-store URIs :func:`configure` has set. ``mlflow.set_tracking_uri`` exports each
#: as MLFLOW_TRACKING_URI, which must not be mistaken for the user's setting later on.
_exported_uris: set[str] = set()


@dataclass(frozen=True)
class ModelVersionInfo:
    """One registered version: number, run, creation time (ms), aliases, tags."""

    name: str
    version: int
    run_id: str
    created_ms: int
    aliases: tuple[str, ...]
    tags: dict[str, str]


def configure(store: str | Path | None = None) -> str:
    """Point MLflow at ``MLFLOW_TRACKING_URI`` if set, else at an embedded sqlite store in
    ``store`` (default ``./mlruns``); returns the tracking URI. Creates the experiment
    with a local artifact folder on first use."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri in _exported_uris:
        uri = None  # our own export from an earlier call, not the user's choice
    artifacts: str | None = None
    if not uri:
        root = Path(store or "mlruns").resolve()
        root.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        artifacts = (root / "artifacts").as_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if artifacts is not None:  # only the embedded store is ours
        _exported_uris.add(uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts)
    mlflow.set_experiment(EXPERIMENT)
    return uri


def image_artifacts(detector: ImageDetector, example: Any, out: Path) -> list[Path]:
    """PNG views of an image detector, written under ``out``: 64 samples, the example
    images next to their reconstructions, and a latent traversal of the first example
    (one row per latent dimension, see :func:`~anomaly_vae.image_detector.latent_traversal`).
    """
    import numpy as np

    from anomaly_vae.data.images import save_grid
    from anomaly_vae.image_detector import latent_traversal

    images = np.asarray(example)[:8]
    rec = detector.reconstruct(images)
    pairs = np.concatenate([images.astype(np.float32) / 255.0, rec])
    return [
        save_grid(detector.sample(64, seed=0), out / "samples.png"),
        save_grid(pairs, out / "reconstructions.png", ncol=len(images)),
        save_grid(latent_traversal(detector, images[:1]), out / "latent_traversal.png", ncol=9),
    ]


def log_detector(
    detector: TabularDetector | ImageDetector,
    *,
    name: str,
    example: Any,
    metrics: dict[str, float] | None = None,
    plots: list[Path] | None = None,
    alias: str | None = None,
) -> ModelVersionInfo:
    """Log a fitted detector as a run (parameters, per-epoch ELBO, calibration, metrics,
    plots) and a pyfunc model from code with the bundle as its artifact, register it as
    a new version of ``name`` and optionally point ``alias`` at it. An image detector
    also logs PNGs of samples, reconstructions and a latent traversal under ``images/``.

    Args:
        example: a few input rows (DataFrame) for the signature and input example; for
            an image detector, a few images, uint8 [N, C, H, W].
    """
    import mlflow
    from mlflow.models import infer_signature

    from anomaly_vae.image_detector import ImageDetector

    detector._check_fitted()
    with mlflow.start_run() as run, tempfile.TemporaryDirectory() as tmp:
        params = {k: v for k, v in detector.get_params().items() if k != "schema"}
        mlflow.log_params({k: str(v)[:500] for k, v in {**params, **detector.training_}.items()})
        for row in detector.history_:
            step = int(row["epoch"])
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=step)
        cal = detector.calibration_.summary()
        mlflow.log_metrics(
            {
                "calibration_threshold": cal["threshold"],
                "calibration_n": float(cal["n"]),
                **{f"calibration_{k}": v for k, v in cal["reference_quantiles"].items()},
                **(metrics or {}),
            }
        )
        from anomaly_vae.evaluation import plot_training

        curves = plot_training(detector.history_, Path(tmp) / "training_curves.png")
        for plot in [curves, *(plots or [])]:
            mlflow.log_artifact(str(plot), artifact_path="plots")
        # signed when the deployment has a key, so a service holding it accepts the version
        bundle = detector.save(
            Path(tmp) / "bundle", signing_key=os.environ.get("ANOMALY_VAE_SIGNING_KEY") or None
        )
        sample: Any
        if isinstance(detector, ImageDetector):
            sample = detector._checked(example)[:5]
            for png in image_artifacts(detector, sample, Path(tmp) / "images"):
                mlflow.log_artifact(str(png), artifact_path="images")
            output = detector.score(sample)
            mlflow.set_tag("kind", "image")
        else:
            sample = example.head(5).reset_index(drop=True)
            output = detector.score(sample, allow_extra=True).reset_index(drop=True)
            mlflow.set_tag("kind", "tabular")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(_MODEL_CODE),
            artifacts={"bundle": str(bundle)},
            signature=infer_signature(sample, output, params={"k": detector.sampler_.k}),
            input_example=sample,
            registered_model_name=name,
            pip_requirements=["anomaly-vae"],
        )
        version = int(info.registered_model_version)
        run_id = run.info.run_id
    if alias:
        promote(name, version, alias)
    return get_version(name, version, run_id=run_id)


def log_drift_run(out: Path, summary: dict[str, Any], name: str | None, version: int | None) -> str:
    """Log a drift report directory as the artifacts of a run tagged ``kind=drift``,
    linked to the model version it checked (tags ``model_name``, ``model_version``), with
    the verdict and the window size as tags and metrics; returns the run id."""
    import mlflow

    tags = {"kind": "drift", "drift.verdict": str(summary["verdict"])}
    if name is not None:
        tags |= {"model_name": name, "model_version": str(version)}
    with mlflow.start_run(run_name="drift", tags=tags) as run:
        mlflow.log_metrics(
            {
                "window_rows": float(summary["n"]),
                "alarms": float(len(summary["fired"])),
                "drifted_features": float(
                    sum(f["verdict"] == "drift" for f in summary["features"])
                ),
            }
        )
        mlflow.log_artifacts(str(out), artifact_path="drift")
        return str(run.info.run_id)


def _client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


def get_version(name: str, version: int, run_id: str | None = None) -> ModelVersionInfo:
    mv = _client().get_model_version(name, str(version))
    return ModelVersionInfo(
        name=name,
        version=int(mv.version),
        run_id=run_id or mv.run_id,
        created_ms=int(mv.creation_timestamp),
        aliases=tuple(mv.aliases or ()),
        tags=dict(mv.tags or {}),
    )


def list_versions(name: str) -> list[ModelVersionInfo]:
    """All versions of ``name``, newest first."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        msg = f"no registered model named {name!r}"
        raise LookupError(msg) from exc
    found = client.search_model_versions(f"name = '{name}'")
    return sorted((get_version(name, int(m.version)) for m in found), key=lambda v: -v.version)


def resolve(name: str, alias: str) -> ModelVersionInfo:
    """The version an alias points at; LookupError naming the alias if it is unset."""
    from mlflow.exceptions import MlflowException

    try:
        mv = _client().get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        msg = f"model {name!r} has no version with alias {alias!r}"
        raise LookupError(msg) from exc
    return get_version(name, int(mv.version))


def promote(name: str, version: int, alias: str = CHAMPION) -> None:
    """Point ``alias`` at ``version``; remembers the version it pointed at before, so that
    :func:`rollback` can return to it."""
    client = _client()
    get_version(name, version)  # raises for an unknown version
    try:
        previous = resolve(name, alias).version
    except LookupError:
        previous = None
    client.set_registered_model_alias(name, alias, str(version))
    if previous is not None and previous != version:
        client.set_registered_model_tag(name, f"{_PREVIOUS_TAG}.{alias}", str(previous))


def rollback(name: str, alias: str = CHAMPION) -> int:
    """Point ``alias`` back at the version it had before the last promotion; returns it."""
    client = _client()
    tags = client.get_registered_model(name).tags or {}
    previous = tags.get(f"{_PREVIOUS_TAG}.{alias}")
    if previous is None:
        msg = f"model {name!r}: no earlier version recorded for alias {alias!r}, nothing to roll back to"
        raise LookupError(msg)
    promote(name, int(previous), alias)
    return int(previous)


def download_bundle(name: str, version: int, dest: str | Path | None = None) -> Path:
    """Fetch version ``version``'s bundle directory to ``dest`` (a temporary directory by
    default) and return its path."""
    import mlflow

    target = Path(dest) if dest else Path(tempfile.mkdtemp(prefix=f"{name}-v{version}-"))
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}/{version}", dst_path=str(target)
    )
    bundle = Path(local) / "artifacts" / "bundle"
    if not (bundle / "manifest.json").exists():
        msg = f"model {name!r} version {version} has no detector bundle in its artifacts"
        raise LookupError(msg)
    return bundle
