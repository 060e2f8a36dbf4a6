"""The gated training pipeline: ``anomaly-vae pipeline train CONFIG.yaml``.

Train a detector from a YAML configuration, calibrate it, evaluate it on held-out rows,
register it as a new MLflow model version, and point the alias (``champion``) at it only
when the promotion gate passes. The decision and its reasons are logged on the run and on
the model version, and returned.

The configuration (paths are relative to the file)::

    data:
      path: transactions.parquet     # CSV or Parquet
      label_column: is_fraud         # optional; never trained on; enables AUROC
      drop: [note]                   # optional columns to ignore
      holdout_fraction: 0.3          # rows kept out of training for the gate
    model:                           # TabularDetector arguments (all optional)
      id_column: txn_id
      alpha: 0.05
      max_epochs: 50
    registry:
      name: fraud                    # registered model name
      alias: champion                # promoted on a pass
      store: mlruns                  # embedded store, unless MLFLOW_TRACKING_URI is set
    gate:
      fpr_tolerance: auto            # held-out false-positive rate above alpha allowed
      fpr_bound: upper               # upper: refuse only too many false alarms; both
      metric: auto                   # auroc (with labels) or log_likelihood
      margin: 0.01                   # auroc points (0-1) or nats per record
    seed: 0

The gate, on the held-out rows (its normal rows, when labels exist):

1. *Calibration*: the fraction of normal held-out rows flagged at the detector's
   threshold is at most its target (alpha, or the contamination rate) plus
   ``fpr_tolerance`` (``fpr_bound: both``: also at least the target minus it). ``auto`` is
   three binomial standard errors of that fraction, at least 0.01. The default bound is
   one-sided because training data with outliers in it makes the threshold conservative:
   the calibration rows hold outliers too, so the alpha-quantile falls among them and
   normal rows are flagged less often than alpha (by about the contamination rate). That
   is the model being careful, not broken; the figure is reported either way.
2. *No regression*: when a champion exists, the new model's metric on the same held-out
   rows is not worse than the champion's by more than ``margin``: AUROC when labels exist
   (``metric: auto``), else the mean log-likelihood of the normal rows (nats per record;
   higher is better). A champion that cannot score the new data (schema change) fails the
   gate: promote such a model by hand with ``anomaly-vae models promote``.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from anomaly_vae.data.io import read_table
from anomaly_vae.detector import TabularDetector
from anomaly_vae.exceptions import ModelUnavailableError, SchemaError

_SECTIONS = {"data", "model", "registry", "gate", "seed"}
_DATA_KEYS = {"path", "label_column", "drop", "holdout_fraction"}
_REGISTRY_KEYS = {"name", "alias", "store"}
_GATE_KEYS = {"fpr_tolerance", "fpr_bound", "metric", "margin"}


@dataclass
class PipelineConfig:
    """A validated pipeline configuration (see the module docstring)."""

    data_path: Path
    name: str
    label_column: str | None = None
    drop: list[str] = field(default_factory=list)
    holdout_fraction: float = 0.3
    model: dict[str, Any] = field(default_factory=dict)
    alias: str = "champion"
    store: Path | None = None
    fpr_tolerance: float | None = None  # None: auto
    fpr_bound: str = "upper"
    metric: str = "auto"
    margin: float = 0.01
    seed: int = 0

    @classmethod
    def from_yaml(cls, path: str | Path) -> PipelineConfig:
        """Read and validate ``path``; SchemaError naming the key on any mistake."""
        p = Path(path)
        if not p.is_file():
            msg = f"no such pipeline config: {str(p)!r}"
            raise FileNotFoundError(msg)
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            msg = f"{p}: not valid YAML: {exc}"
            raise SchemaError(msg) from exc
        if not isinstance(doc, dict):
            msg = f"{p}: the config must be a mapping with sections {sorted(_SECTIONS)}"
            raise SchemaError(msg)
        _no_unknown(p, "", doc, _SECTIONS)
        data = _section(p, doc, "data", required=True)
        _no_unknown(p, "data.", data, _DATA_KEYS)
        reg = _section(p, doc, "registry", required=True)
        _no_unknown(p, "registry.", reg, _REGISTRY_KEYS)
        gate = _section(p, doc, "gate")
        _no_unknown(p, "gate.", gate, _GATE_KEYS)
        model = _section(p, doc, "model")
        allowed = set(TabularDetector().get_params()) - {"progress", "seed"}
        _no_unknown(p, "model.", model, allowed)
        if "path" not in data:
            msg = f"{p}: data.path is required"
            raise SchemaError(msg)
        if "name" not in reg:
            msg = f"{p}: registry.name is required"
            raise SchemaError(msg)
        tol = gate.get("fpr_tolerance", "auto")
        metric = gate.get("metric", "auto")
        if metric not in ("auto", "auroc", "log_likelihood"):
            msg = f"{p}: gate.metric must be auto, auroc or log_likelihood, got {metric!r}"
            raise SchemaError(msg)
        bound = gate.get("fpr_bound", "upper")
        if bound not in ("upper", "both"):
            msg = f"{p}: gate.fpr_bound must be upper or both, got {bound!r}"
            raise SchemaError(msg)
        cfg = cls(
            data_path=(p.parent / str(data["path"])).resolve(),
            name=str(reg["name"]),
            label_column=data.get("label_column"),
            drop=list(data.get("drop") or []),
            holdout_fraction=_number(p, "data.holdout_fraction", data.get("holdout_fraction", 0.3)),
            model=dict(model),
            alias=str(reg.get("alias", "champion")),
            store=(p.parent / str(reg["store"])).resolve() if reg.get("store") else None,
            fpr_tolerance=None if tol == "auto" else _number(p, "gate.fpr_tolerance", tol),
            fpr_bound=bound,
            metric=metric,
            margin=_number(p, "gate.margin", gate.get("margin", 0.01)),
            seed=int(_number(p, "seed", doc.get("seed", 0))),
        )
        if not 0.05 <= cfg.holdout_fraction <= 0.9:
            msg = f"{p}: data.holdout_fraction must be in [0.05, 0.9], got {cfg.holdout_fraction}"
            raise SchemaError(msg)
        if cfg.metric == "auroc" and cfg.label_column is None:
            msg = f"{p}: gate.metric auroc needs data.label_column"
            raise SchemaError(msg)
        return cfg


def _section(p: Path, doc: dict[str, Any], key: str, required: bool = False) -> dict[str, Any]:
    value = doc.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        msg = f"{p}: section {key!r} must be a mapping" + (" and is required" if required else "")
        raise SchemaError(msg)
    return value


def _no_unknown(p: Path, prefix: str, doc: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        msg = f"{p}: unknown key(s) {[prefix + k for k in unknown]}; allowed: {sorted(allowed)}"
        raise SchemaError(msg)


def _number(p: Path, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"{p}: {key} must be a number, got {value!r}"
        raise SchemaError(msg)
    return float(value)


def _split(
    frame: pd.DataFrame, labels: np.ndarray | None, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(frame))
    strat = labels if labels is not None and 0 < labels.sum() < len(labels) else None
    train, hold = train_test_split(idx, test_size=fraction, random_state=seed, stratify=strat)
    return np.sort(train), np.sort(hold)


def held_out_metrics(
    detector: TabularDetector, holdout: pd.DataFrame, outliers: np.ndarray | None
) -> dict[str, float]:
    """The gate's figures for one detector on the held-out rows: ``fpr`` (flagged fraction
    of normal rows), ``target_fpr``, ``mean_log_likelihood`` (normal rows, nats per record)
    and, with labels, ``auroc``."""
    from sklearn.metrics import roc_auc_score

    ll = detector.score_samples(holdout)
    normal = np.ones(len(holdout), bool) if outliers is None else ~outliers
    flagged = ll < detector.offset_
    cal = detector.calibration_
    target = cal.alpha if cal.alpha is not None else cal.contamination
    assert target is not None  # a calibration has one or the other
    out = {
        "fpr": float(flagged[normal].mean()),
        "target_fpr": float(target),
        "n_normal": float(normal.sum()),
        "mean_log_likelihood": float(ll[normal].mean()),
    }
    if outliers is not None and 0 < outliers.sum() < len(outliers):
        out["auroc"] = float(roc_auc_score(outliers, -ll))
    return out


def decide(
    cfg: PipelineConfig,
    new: dict[str, float],
    champion: dict[str, float] | None,
    champion_error: str | None = None,
) -> dict[str, Any]:
    """Apply the gate; returns ``passed`` and human-readable ``reasons`` (one per check)."""
    reasons: list[str] = []
    passed = True
    target, n = new["target_fpr"], max(1.0, new["n_normal"])
    tol = cfg.fpr_tolerance
    if tol is None:
        tol = max(0.01, 3 * math.sqrt(target * (1 - target) / n))
    gap = new["fpr"] - target
    ok = gap <= tol and (cfg.fpr_bound == "upper" or gap >= -tol)
    passed &= ok
    allowed = (
        f"at most {target + tol:.4f}" if cfg.fpr_bound == "upper" else f"within {tol:.4f} of it"
    )
    reasons.append(
        f"calibration {'ok' if ok else 'FAILED'}: held-out false-positive rate "
        f"{new['fpr']:.4f} vs target {target:.4f} ({allowed})"
    )
    metric = cfg.metric
    if metric == "auto":
        metric = "auroc" if "auroc" in new else "log_likelihood"
    key = "auroc" if metric == "auroc" else "mean_log_likelihood"
    if key not in new:
        passed = False
        reasons.append(f"comparison FAILED: {metric} is not available on the held-out rows")
    elif champion_error is not None:
        passed = False
        reasons.append(
            f"comparison FAILED: the champion cannot score the held-out rows: {champion_error}"
        )
    elif champion is None:
        reasons.append(f"comparison ok: no {cfg.alias} yet; {key} {new[key]:.4f}")
    else:
        diff = new[key] - champion[key]
        ok = diff >= -cfg.margin
        passed &= ok
        reasons.append(
            f"comparison {'ok' if ok else 'FAILED'}: {key} {new[key]:.4f} vs {cfg.alias}'s "
            f"{champion[key]:.4f} (difference {diff:+.4f}, margin {cfg.margin})"
        )
    return {"passed": bool(passed), "reasons": reasons, "metric": key, "fpr_tolerance": tol}


def run_pipeline(config: str | Path, store: str | Path | None = None) -> dict[str, Any]:
    """Run the pipeline of ``config``; returns the decision document: ``promoted``,
    ``version``, ``reasons``, and the held-out figures of the new model and the champion.

    Raises:
        SchemaError: bad config or data (names the key, column or rows).
        ModelUnavailableError: the champion exists but cannot be downloaded or loaded.
    """
    from mlflow import MlflowClient

    from anomaly_vae import registry
    from anomaly_vae.evaluation import labels_as_outlier_flags

    cfg = PipelineConfig.from_yaml(config)
    registry.configure(store or cfg.store)
    frame = read_table(cfg.data_path)
    missing = [c for c in [*cfg.drop, cfg.label_column] if c is not None and c not in frame]
    if missing:
        msg = f"{config}: columns {missing} are not in {str(cfg.data_path)!r}"
        raise SchemaError(msg)
    outliers = (
        labels_as_outlier_flags(frame[cfg.label_column]) if cfg.label_column is not None else None
    )
    features = frame.drop(columns=[c for c in [*cfg.drop, cfg.label_column] if c is not None])
    train_idx, hold_idx = _split(features, outliers, cfg.holdout_fraction, cfg.seed)
    holdout = features.iloc[hold_idx]
    hold_out = outliers[hold_idx] if outliers is not None else None

    detector = TabularDetector(**{**cfg.model, "seed": cfg.seed}).fit(features.iloc[train_idx])
    if detector.global_rank_ != 0:
        # model.strategy ddp: Lightning re-ran this command once per extra process; rank 0
        # evaluates, registers and decides, the others end here
        raise SystemExit(0)
    new = held_out_metrics(detector, holdout, hold_out)

    champion: dict[str, float] | None = None
    champion_version: int | None = None
    champion_error: str | None = None
    try:
        champion_version = registry.resolve(cfg.name, cfg.alias).version
    except LookupError:
        champion_version = None
    if champion_version is not None:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                bundle = registry.download_bundle(cfg.name, champion_version, tmp)
                current = TabularDetector.load(bundle)
            except Exception as exc:
                msg = f"{cfg.name} version {champion_version} ({cfg.alias}) cannot be loaded: {exc}"
                raise ModelUnavailableError(msg) from exc
            try:
                champion = held_out_metrics(current, holdout, hold_out)
            except (SchemaError, ValueError) as exc:
                champion_error = str(exc)
    decision = decide(cfg, new, champion, champion_error)

    metrics = {f"holdout_{k}": v for k, v in new.items()}
    info = registry.log_detector(
        detector, name=cfg.name, example=holdout.head(5), metrics=metrics, alias=None
    )
    doc: dict[str, Any] = {
        "model": cfg.name,
        "version": info.version,
        "run_id": info.run_id,
        "alias": cfg.alias,
        "promoted": decision["passed"],
        "reasons": decision["reasons"],
        "gate_metric": decision["metric"],
        "fpr_tolerance": decision["fpr_tolerance"],
        "margin": cfg.margin,
        "new": new,
        "champion": None
        if champion_version is None
        else {"version": champion_version, **(champion or {}), "error": champion_error},
    }
    client = MlflowClient()
    client.log_dict(info.run_id, doc, "gate.json")
    client.set_tag(info.run_id, "gate.decision", "promoted" if doc["promoted"] else "refused")
    client.set_tag(info.run_id, "gate.reasons", " | ".join(decision["reasons"])[:5000])
    client.set_model_version_tag(
        cfg.name, str(info.version), "gate", "passed" if doc["promoted"] else "refused"
    )
    if doc["promoted"]:
        registry.promote(cfg.name, info.version, cfg.alias)
    return doc
