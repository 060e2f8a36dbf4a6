"""Table schema: which columns the model sees, of which kind, with which categories.

A schema is inferred from a training frame (or given by the user) and then every frame
that reaches the model is checked against it, so that a wrong input fails with a message
that names the column and the rows, never with a numpy or torch traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from anomaly_vae.exceptions import SchemaError

ColumnKind = Literal["numeric", "categorical", "boolean"]
KINDS: tuple[ColumnKind, ...] = ("numeric", "categorical", "boolean")

#: How many offending rows an error message lists before it says "and N more".
MAX_ROWS_IN_MESSAGE = 5


def describe_rows(index: pd.Index | np.ndarray | list[Any]) -> str:
    """Render the first few offending row labels for an error message."""
    labels = list(index)
    shown = ", ".join(
        repr(r) if isinstance(r, str) else str(r) for r in labels[:MAX_ROWS_IN_MESSAGE]
    )
    more = len(labels) - MAX_ROWS_IN_MESSAGE
    return f"[{shown}]" + (f" and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class ColumnSpec:
    """One modelled column.

    Attributes:
        name: column name in the user's frame.
        kind: ``numeric`` (Gaussian likelihood), ``categorical`` (categorical likelihood
            over ``categories`` plus an "unknown" slot) or ``boolean`` (Bernoulli).
        categories: the category labels seen in training (categorical only), as strings.
    """

    name: str
    kind: ColumnKind
    categories: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "categorical":
            out["categories"] = list(self.categories)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ColumnSpec:
        kind = d.get("kind")
        if kind not in KINDS:
            msg = f"column {d.get('name')!r}: kind must be one of {KINDS}, got {kind!r}"
            raise SchemaError(msg)
        return cls(name=str(d["name"]), kind=kind, categories=tuple(d.get("categories", ())))


@dataclass(frozen=True)
class Schema:
    """The modelled columns, in order, plus an optional id column carried through.

    Missing-value policy (documented behaviour, tested):
      * NaN / None in a numeric, boolean or categorical column is *marginalized*: the
        record's likelihood covers only its observed features.
      * A category never seen in training maps to the "unknown" slot, which the model
        learned to find improbable, so the record scores as unusual.
      * +/-inf in a numeric column, and a string that is not a number, are errors.
    """

    columns: tuple[ColumnSpec, ...]
    id_column: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def of_kind(self, kind: ColumnKind) -> list[ColumnSpec]:
        return [c for c in self.columns if c.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id_column": self.id_column,
            "columns": [c.to_dict() for c in self.columns],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schema:
        if not isinstance(d, dict) or "columns" not in d:
            msg = "a schema must be a mapping with a 'columns' list"
            raise SchemaError(msg)
        cols = tuple(ColumnSpec.from_dict(c) for c in d["columns"])
        if not cols:
            msg = "a schema needs at least one modelled column"
            raise SchemaError(msg)
        dup = sorted({c.name for c in cols if [x.name for x in cols].count(c.name) > 1})
        if dup:
            msg = f"duplicate column names in schema: {dup}"
            raise SchemaError(msg)
        return cls(columns=cols, id_column=d.get("id_column"))

    # ------------------------------------------------------------------ validation
    def check_columns(self, frame: pd.DataFrame, *, allow_extra: bool = False) -> None:
        """Raise :class:`SchemaError` naming missing (and, unless allowed, unexpected) columns."""
        if not isinstance(frame, pd.DataFrame):
            msg = f"expected a pandas DataFrame, got {type(frame).__name__}"
            raise SchemaError(msg)
        present = [str(c) for c in frame.columns]
        missing = [n for n in self.names if n not in present]
        if missing:
            msg = f"missing columns: {missing} (the model was trained on {self.names})"
            raise SchemaError(msg)
        if not allow_extra:
            known = set(self.names) | ({self.id_column} if self.id_column else set())
            unexpected = [c for c in present if c not in known]
            if unexpected:
                msg = (
                    f"unexpected columns: {unexpected}; drop them or pass allow_extra=True "
                    f"(the model was trained on {self.names})"
                )
                raise SchemaError(msg)


def _looks_boolean(values: pd.Series) -> bool:
    uniq = pd.unique(values.dropna())
    if len(uniq) == 0 or len(uniq) > 2:
        return False
    try:
        return {float(u) for u in uniq} <= {0.0, 1.0}
    except (TypeError, ValueError):
        return False


def infer_schema(
    frame: pd.DataFrame,
    *,
    id_column: str | None = None,
    categorical: list[str] | None = None,
    max_categories: int = 200,
) -> Schema:
    """Infer column kinds from a training frame.

    Rules: pandas bool columns, and numeric columns whose values are all 0 or 1, are
    ``boolean``; object, string and category columns are ``categorical`` (with at most
    ``max_categories`` distinct values, else an error: such a column is an identifier or
    free text and should be dropped or declared as the id column); every other numeric
    column is ``numeric``. ``categorical`` forces the named columns to be categorical.
    """
    if not isinstance(frame, pd.DataFrame):
        msg = f"expected a pandas DataFrame, got {type(frame).__name__}"
        raise SchemaError(msg)
    if frame.shape[0] == 0:
        msg = "cannot infer a schema from an empty frame (0 rows)"
        raise SchemaError(msg)
    names = [str(c) for c in frame.columns]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        msg = f"duplicate column names: {dup}"
        raise SchemaError(msg)
    if id_column is not None and id_column not in names:
        msg = f"id column {id_column!r} is not in the frame (columns: {names})"
        raise SchemaError(msg)
    forced = set(categorical or [])
    unknown_forced = sorted(forced - set(names))
    if unknown_forced:
        msg = f"columns declared categorical are not in the frame: {unknown_forced}"
        raise SchemaError(msg)

    specs: list[ColumnSpec] = []
    for col in frame.columns:
        name = str(col)
        if name == id_column:
            continue
        s = frame[col]
        if s.isna().all():
            msg = f"column {name!r} has no values (all missing): drop it before training"
            raise SchemaError(msg)
        if name in forced or not (
            pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)
        ):
            cats = sorted({str(v) for v in s.dropna().unique()})
            if len(cats) > max_categories:
                msg = (
                    f"column {name!r} looks categorical but has {len(cats)} distinct values "
                    f"(more than max_categories={max_categories}); if it holds numbers, "
                    "convert it; if it is an identifier, pass it as id_column"
                )
                raise SchemaError(msg)
            specs.append(ColumnSpec(name, "categorical", tuple(cats)))
        elif pd.api.types.is_bool_dtype(s) or _looks_boolean(s):
            specs.append(ColumnSpec(name, "boolean"))
        else:
            specs.append(ColumnSpec(name, "numeric"))
    if not specs:
        msg = "no columns left to model (only the id column was given)"
        raise SchemaError(msg)
    return Schema(columns=tuple(specs), id_column=id_column)
