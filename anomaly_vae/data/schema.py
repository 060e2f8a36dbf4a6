"""Table schema: which columns the model sees, of which kind, with which categories.

A schema is inferred from a training frame (or given by the user) and then every frame
that reaches the model is checked against it, so that a wrong input fails with a message
that names the column and the rows, never with a numpy or torch traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pandas as pd

from anomaly_vae.defaults import DISCRETE_LEVELS
from anomaly_vae.exceptions import SchemaError

ColumnKind = Literal["numeric", "categorical", "boolean"]
KINDS: tuple[ColumnKind, ...] = ("numeric", "categorical", "boolean")

# DISCRETE_LEVELS (anomaly_vae.defaults): numeric columns holding at most this many
# distinct integers are modelled as discrete (a likelihood over their levels, not a
# density): integer-coded columns such as counts, grades and 0..16 pixel intensities.
#: ... provided each level recurs: at least this many training rows per distinct value.
#: A categorical over L levels has L - 1 free probabilities per decoder output; with
#: fewer rows per level the continuous model, which shares strength across neighbouring
#: values, detects better.
LEVEL_REPEATS = 30

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
        discrete: a numeric column with few integer levels (categorical only). Its values
            are numbers, validated as numbers; the model's likelihood is a probability
            mass over the levels in ``categories`` (decimal strings, in numeric order;
            ordinal or categorical, the detector's ``discrete_likelihood``), and a value
            that is not one of them (3.5, or 17 when training saw 0..16) takes the
            "unknown" slot.
    """

    name: str
    kind: ColumnKind
    categories: tuple[str, ...] = ()
    discrete: bool = False

    @cached_property
    def levels(self) -> np.ndarray:
        """[n_levels] float64: a discrete column's levels, ascending (parsed once: every
        transform of every request reads them)."""
        return np.asarray([float(c) for c in self.categories], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "categorical":
            out["categories"] = list(self.categories)
            if self.discrete:
                out["discrete"] = True
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ColumnSpec:
        kind = d.get("kind")
        if kind not in KINDS:
            msg = f"column {d.get('name')!r}: kind must be one of {KINDS}, got {kind!r}"
            raise SchemaError(msg)
        discrete = bool(d.get("discrete", False))
        if discrete:
            if kind != "categorical":
                msg = f"column {d.get('name')!r}: only a categorical column can be discrete"
                raise SchemaError(msg)
            try:
                levels = [float(c) for c in d.get("categories", ())]
            except (TypeError, ValueError):
                msg = f"column {d.get('name')!r}: a discrete column's categories must be numbers"
                raise SchemaError(msg) from None
            if levels != sorted(set(levels)):
                msg = f"column {d.get('name')!r}: discrete levels must be distinct and ascending"
                raise SchemaError(msg)
        return cls(
            name=str(d["name"]),
            kind=kind,
            categories=tuple(str(c) for c in d.get("categories", ())),
            discrete=discrete,
        )


@dataclass(frozen=True)
class Schema:
    """The modelled columns, in order, plus an optional id column carried through.

    Missing-value policy (documented behaviour, tested):
      * NaN / None in a numeric, boolean or categorical column is *marginalized*: the
        record's likelihood covers only its observed features.
      * A category never seen in training maps to the "unknown" slot, whose probability
        the detector fixes at 1/(n_train + 2), so the record scores as unusual.
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
            raise SchemaError(msg, columns=tuple(missing))
        if not allow_extra:
            known = set(self.names) | ({self.id_column} if self.id_column else set())
            unexpected = [c for c in present if c not in known]
            if unexpected:
                msg = (
                    f"unexpected columns: {unexpected}; drop them or pass allow_extra=True "
                    f"(the model was trained on {self.names})"
                )
                raise SchemaError(msg, columns=tuple(unexpected))


def text_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with each column named by its text, ``str(name)``, as the schema names
    columns: a frame made from an array (``pd.DataFrame(X)``) has the integers 0..n-1 for
    names, and the schema's ``'0'`` did not find column ``0``. The frame itself when every
    name is a string already; otherwise a shallow copy (the data is not copied).

    Raises:
        SchemaError: two names with the same text, such as ``0`` and ``'0'``.
    """
    if all(type(c) is str for c in frame.columns):
        return frame
    names = [str(c) for c in frame.columns]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        msg = f"duplicate column names once written as text: {dup}"
        raise SchemaError(msg, columns=tuple(dup))
    out = frame.copy(deep=False)
    out.columns = pd.Index(names, dtype=object)
    return out


def _integer_levels(values: pd.Series, max_levels: int) -> tuple[str, ...] | None:
    """A numeric column's distinct values as decimal strings in numeric order, when they
    are all finite integers, at most ``max_levels`` of them, and each recurs (on average
    ``LEVEL_REPEATS`` rows per level: six distinct integers in six rows are not evidence
    of a discrete column, and a categorical needs rows to estimate each level); else None."""
    if max_levels < 2:
        return None
    v = values.dropna().to_numpy(dtype=np.float64)  # numeric dtypes only reach here
    if v.size == 0 or not np.isfinite(v).all() or not (v == np.round(v)).all():
        return None
    uniq = np.unique(v)
    if len(uniq) > max_levels or v.size < LEVEL_REPEATS * len(uniq):
        return None
    return tuple(level_label(u) for u in uniq)


def level_label(value: float) -> str:
    """The category label of a discrete column's (integer) level: 3.0 -> '3'."""
    return str(int(value))


def _looks_boolean(values: pd.Series) -> bool:
    uniq = pd.unique(values.dropna())
    if len(uniq) == 0 or len(uniq) > 2:
        return False
    try:
        return {float(u) for u in uniq} <= {0.0, 1.0}
    except (TypeError, ValueError):
        return False


def _holds_booleans(values: pd.Series) -> bool:
    """An object column whose values are all True/False (a bool column that pandas
    widened to object because it has missing values)."""
    if not pd.api.types.is_object_dtype(values):
        return False
    uniq = pd.unique(values.dropna())
    return len(uniq) > 0 and all(isinstance(u, bool | np.bool_) for u in uniq)


def infer_schema(
    frame: pd.DataFrame,
    *,
    id_column: str | None = None,
    categorical: list[str] | None = None,
    max_categories: int = 200,
    discrete_levels: int = DISCRETE_LEVELS,
) -> Schema:
    """Infer column kinds from a training frame.

    Rules: pandas bool columns, object columns of True/False with missing values, and
    numeric columns whose values are all 0 or 1, are ``boolean``; object, string and category columns are ``categorical`` (with at most
    ``max_categories`` distinct values, else an error: such a column is an identifier or
    free text and should be dropped or declared as the id column); a numeric column
    whose values are all integers with at most ``discrete_levels`` distinct values is
    ``discrete`` (categorical over its levels; 0 turns this off); every other numeric
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
        if name not in forced and _holds_booleans(s):
            # missing values made pandas store a bool column as object: still boolean
            # (missing cells are marginalized), not a category of "True" and "False"
            specs.append(ColumnSpec(name, "boolean"))
        elif name in forced or not (
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
        elif (levels := _integer_levels(s, discrete_levels)) is not None:
            specs.append(ColumnSpec(name, "categorical", levels, discrete=True))
        else:
            specs.append(ColumnSpec(name, "numeric"))
    if not specs:
        msg = "no columns left to model (only the id column was given)"
        raise SchemaError(msg)
    return Schema(columns=tuple(specs), id_column=id_column)
