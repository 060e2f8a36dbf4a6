"""Detection metrics against labels, and the plot people look at instead of reading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly_vae.exceptions import SchemaError


def labels_as_outlier_flags(values: pd.Series | np.ndarray, name: str = "labels") -> np.ndarray:
    """Labels as a bool array (True = outlier). Accepts 0/1, booleans, and -1/+1 in the
    scikit-learn convention (-1 = outlier). Anything else is an error naming the rows."""
    s = pd.Series(values)
    if s.isna().any():
        rows = s.index[s.isna()].tolist()[:5]
        msg = f"labels column {name!r} has missing values at rows {rows}"
        raise SchemaError(msg)
    uniq = set(pd.unique(s).tolist())
    if uniq <= {0, 1}:
        flags = s.astype(bool).to_numpy()
    elif uniq <= {-1, 1}:
        flags = (s == -1).to_numpy()
    else:
        msg = f"labels column {name!r} must hold 0/1 (1 = outlier) or -1/+1, got values {sorted(map(str, uniq))[:10]}"
        raise SchemaError(msg)
    if flags.all() or not flags.any():
        msg = f"labels column {name!r} has only one class; AUROC needs both outliers and inliers"
        raise SchemaError(msg)
    return flags


def detection_metrics(
    y_outlier: np.ndarray, score: np.ndarray, flagged: np.ndarray
) -> dict[str, Any]:
    """AUROC and AUPRC of an anomaly score (higher = more anomalous) and precision,
    recall and F1 of the flags at the calibrated threshold."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(y_outlier, dtype=bool)
    f = np.asarray(flagged, dtype=bool)
    tp = int((y & f).sum())
    precision = tp / max(1, int(f.sum()))
    recall = tp / max(1, int(y.sum()))
    return {
        "n": int(y.size),
        "n_outliers": int(y.sum()),
        "n_flagged": int(f.sum()),
        "auroc": float(roc_auc_score(y, score)),
        "auprc": float(average_precision_score(y, score)),
        "precision": precision,
        "recall": recall,
        "f1": 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall),
        "false_positive_rate": float((f & ~y).sum() / max(1, int((~y).sum()))),
    }


def _save(fig: Any, path: str | Path) -> Path:
    """Lay out, write as PNG (creating the folder) and close a figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_evaluation(
    y_outlier: np.ndarray,
    score: np.ndarray,
    threshold_score: float,
    path: str | Path,
    title: str = "",
) -> Path:
    """PNG with the score histogram of inliers and outliers, the threshold, and the ROC curve.

    ``score`` is the anomaly score (-log-likelihood, nats); ``threshold_score`` is the
    same quantity at the threshold.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(y_outlier, dtype=bool)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    lo, hi = np.percentile(score, [0.5, 99.5])
    bins = np.linspace(min(lo, threshold_score), max(hi, threshold_score), 50)
    clipped = np.clip(score, bins[0], bins[-1])
    ax1.hist(clipped[~y], bins=bins, alpha=0.6, label=f"inliers (n={int((~y).sum())})")
    ax1.hist(clipped[y], bins=bins, alpha=0.6, label=f"outliers (n={int(y.sum())})")
    ax1.axvline(threshold_score, color="k", ls="--", label="threshold")
    ax1.set_xlabel("anomaly score = -log p(x)  [nats]")
    ax1.set_ylabel("rows")
    ax1.legend()
    ax1.set_title("score distribution")
    fpr, tpr, _ = roc_curve(y, score)
    ax2.plot(fpr, tpr, label=f"AUROC = {roc_auc_score(y, score):.3f}")
    ax2.plot([0, 1], [0, 1], color="grey", ls=":")
    ax2.set_xlabel("false-positive rate")
    ax2.set_ylabel("true-positive rate")
    ax2.set_title("ROC")
    ax2.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_training(history: list[dict[str, float]], path: str | Path) -> Path:
    """PNG of the per-epoch training and validation ELBO (nats per row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("train_elbo", "train ELBO"), ("val_elbo", "validation ELBO")):
        pts = [(r["epoch"], r[key]) for r in history if key in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO per row [nats]")
    ax.set_title("training curves")
    ax.legend()
    return _save(fig, path)
