"""Reading input tables and shaping output rows, the same for both engines: CSV columns
typed from the model's schema (numeric columns as float64, every other column as text),
Parquet as stored, streamed in record batches so memory stays flat; the output is the id
column (or every input column) followed by :data:`SCORE_COLUMNS`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from anomaly_vae.data import io
from anomaly_vae.data.io import csv_header
from anomaly_vae.detector import TabularDetector
from anomaly_vae.exceptions import SchemaError

#: Score columns written after the id (or input) columns, in this order.
SCORE_COLUMNS = ("log_likelihood", "stderr", "ess", "score", "p_value", "is_outlier", "unreliable")
SCORE_TYPES = (
    pa.float64(), pa.float64(), pa.float64(), pa.float64(), pa.float64(), pa.bool_(), pa.bool_()
)  # fmt: skip


def csv_column_types(detector: TabularDetector, header: list[str]) -> dict[str, pa.DataType]:
    """Arrow types for a CSV's columns under ``detector``'s schema (see
    :func:`anomaly_vae.data.io.csv_column_types`)."""
    return io.csv_column_types(header, numeric_columns(detector))


def numeric_columns(detector: TabularDetector) -> set[str]:
    """The model's numeric and discrete (integer-level) columns: read from CSV as float64."""
    return {c.name for c in detector.schema_.columns if c.kind == "numeric" or c.discrete}


def iter_frames(path: Path, detector: TabularDetector, batch_rows: int) -> Iterator[pd.DataFrame]:
    """Stream ``path`` typed for ``detector`` (see :func:`anomaly_vae.data.io.iter_frames`)."""
    return io.iter_frames(path, batch_rows, numeric_columns(detector))


def count_rows(path: Path) -> int | None:
    """Rows of a Parquet file from its footer; None for CSV (unknown without a pass)."""
    if path.suffix.lower() == ".csv":
        return None
    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (pa.ArrowInvalid, OSError) as exc:
        msg = f"{path}: not a readable Parquet file: {exc}"
        raise SchemaError(msg) from exc


def carried_columns(detector: TabularDetector, columns: list[str], keep_columns: bool) -> list[str]:
    """Input columns copied into the output, in input order: all of them with
    ``keep_columns`` (an error if one is named like a score column), else the id column
    when the input has it, else none. Both engines use this."""
    if keep_columns:
        clash = [c for c in SCORE_COLUMNS if c in columns]
        if clash:
            msg = f"--keep-columns: input columns {clash} clash with score columns; rename them"
            raise SchemaError(msg)
        return list(columns)
    id_col = detector.schema_.id_column
    return [id_col] if id_col is not None and id_col in columns else []


def output_table(
    detector: TabularDetector,
    frame: pd.DataFrame,
    scored: pd.DataFrame,
    keep_columns: bool,
) -> pa.Table:
    """The output rows of one batch: the id column (or every input column with
    ``keep_columns``) followed by :data:`SCORE_COLUMNS`."""
    carried = frame[carried_columns(detector, list(frame.columns), keep_columns)]
    table = pa.Table.from_pandas(carried, preserve_index=False)
    for name, typ in zip(SCORE_COLUMNS, SCORE_TYPES, strict=True):
        table = table.append_column(name, pa.array(scored[name].to_numpy(), type=typ))
    return table


def empty_output(detector: TabularDetector, src: Path, keep_columns: bool) -> pa.Table:
    if src.suffix.lower() == ".csv":
        header = csv_header(src)
        types = csv_column_types(detector, header)
        in_schema = pa.schema([(n, types[n]) for n in header])
    else:
        in_schema = pq.read_schema(src)
    fields = [in_schema.field(n) for n in carried_columns(detector, in_schema.names, keep_columns)]
    fields += [pa.field(n, t) for n, t in zip(SCORE_COLUMNS, SCORE_TYPES, strict=True)]
    return pa.schema(fields).empty_table()
