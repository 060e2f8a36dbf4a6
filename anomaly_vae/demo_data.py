"""Real data that ships with scikit-learn, shaped as ADBench uses it."""

from __future__ import annotations

import numpy as np
import pandas as pd


def wdbc(seed: int = 0) -> pd.DataFrame:
    """ADBench's WDBC: the breast-cancer data's 357 benign rows plus 10 malignant ones
    (drawn with ``seed``). Columns: the 30 features, ``row_id`` and ``is_outlier``."""
    from sklearn.datasets import load_breast_cancer

    b = load_breast_cancer(as_frame=True)
    frame = b.frame.drop(columns="target")
    malignant = (b.target == 0).to_numpy()
    rng = np.random.default_rng(seed)
    pick = np.r_[
        np.flatnonzero(~malignant), rng.choice(np.flatnonzero(malignant), 10, replace=False)
    ]
    out = frame.iloc[pick].reset_index(drop=True)
    out.insert(0, "row_id", [f"r{i:04d}" for i in range(len(out))])
    out["is_outlier"] = malignant[pick].astype(int)
    return out
