"""Fixtures for the pipeline tests: a saved detector and partitioned inputs with known
outliers, in CSV and Parquet."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_mixed

DAYS = ("2026-11-20", "2026-11-21", "2026-11-22")


@pytest.fixture(autouse=True)
def _own_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test names its own embedded store; none inherits another test's URI."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from anomaly_vae import TabularDetector

    path = tmp_path_factory.mktemp("pipelines") / "bundle"
    TabularDetector(id_column="id", seed=0, k=16, min_sigma=0.05).fit(make_mixed(600, 0)).save(path)
    return path


def write_partitions(root: Path, rows: int, days: tuple[str, ...] = DAYS) -> Path:
    """``root/date=DAY/a.csv`` and ``b.parquet`` per day, each with 2% outliers; ids are
    unique across the whole layout."""
    for i, day in enumerate(days):
        part = root / f"date={day}"
        part.mkdir(parents=True)
        for j, name in enumerate(("a.csv", "b.parquet")):
            frame = make_mixed(rows, seed=100 + 2 * i + j, n_outliers=rows // 50)
            frame["id"] = [f"{day}/{name}/{r}" for r in range(rows)]
            if name.endswith(".csv"):
                frame.to_csv(part / name, index=False)
            else:
                frame.to_parquet(part / name, index=False)
    return root
