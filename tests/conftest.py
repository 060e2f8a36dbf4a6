"""Shared fixtures: tiny seeded tables with known outliers, and fitted detectors."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def make_mixed(n: int, seed: int, n_outliers: int = 0) -> pd.DataFrame:
    """Rows with structure: b ~ 2a, color follows the sign of a, flag follows c > 5.

    The last ``n_outliers`` rows break the a-b relation (b is 2a moved by +/-2, ten noise
    standard deviations): each of their columns is ordinary on its own (b's spread is
    about 2), only the joint pattern is wrong.
    """
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1, n)
    b = 2 * a + rng.normal(0, 0.2, n)
    c = rng.normal(5, 2, n)
    color = np.where(a > 0.5, "red", np.where(a < -0.5, "blue", "green"))
    flag = c + rng.normal(0, 0.5, n) > 5
    if n_outliers:
        b[-n_outliers:] = 2 * a[-n_outliers:] + rng.choice([-2.0, 2.0], n_outliers)
    return pd.DataFrame(
        {
            "id": [f"row{i}" for i in range(n)],
            "a": a,
            "b": b,
            "c": c,
            "color": color,
            "flag": flag,
        }
    )


@pytest.fixture(scope="session")
def mixed_train() -> pd.DataFrame:
    return make_mixed(800, seed=0)


@pytest.fixture(scope="session")
def mixed_test() -> tuple[pd.DataFrame, np.ndarray]:
    frame = make_mixed(300, seed=1, n_outliers=15)
    y = np.zeros(len(frame), dtype=bool)
    y[-15:] = True
    return frame, y


@pytest.fixture(scope="session")
def fitted(mixed_train):
    from anomaly_vae import TabularDetector

    return TabularDetector(id_column="id", seed=0, k=32, min_sigma=0.05).fit(mixed_train)
