"""Reading tables from CSV and Parquet with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from anomaly_vae.exceptions import SchemaError

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file into a DataFrame (by the file's suffix)."""
    p = Path(path)
    if not p.exists():
        msg = f"no such file: {str(p)!r}"
        raise FileNotFoundError(msg)
    suffix = p.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(p)
        if suffix in (".parquet", ".pq") or p.is_dir():
            return pd.read_parquet(p)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        msg = f"could not read {str(p)!r} as a {suffix or 'parquet'} table: {exc}"
        raise SchemaError(msg) from exc
    msg = f"unsupported table format {suffix!r} for {str(p)!r}; use one of {TABLE_SUFFIXES}"
    raise SchemaError(msg)


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    """Write CSV or Parquet by suffix."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix.lower() == ".csv":
        frame.to_csv(p, index=False)
    elif p.suffix.lower() in (".parquet", ".pq"):
        frame.to_parquet(p, index=False)
    else:
        msg = f"unsupported output format {p.suffix!r} for {str(p)!r}; use .csv or .parquet"
        raise SchemaError(msg)
