"""Fitted preprocessing: frames in the user's columns to arrays the network reads, and back.

Every frame passes :meth:`TabularPreprocessor.transform`, which validates it against the
schema first. The arrays it returns are plain numpy; the torch side lives in ``nn/``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import pandas as pd

from anomaly_vae.data.schema import Schema, describe_rows, text_columns
from anomaly_vae.defaults import WINSOR_TAIL
from anomaly_vae.exceptions import SchemaError, not_fitted

#: Smallest scale used for a numeric column (in its own units, relative to its size), so
#: a constant column does not divide by zero.
_MIN_SCALE = 1e-6

# WINSOR_TAIL (anomaly_vae.defaults): the default share of each tail clipped before a
# numeric column's center and scale are taken. Training rows hold outliers, and a few
# extreme values would otherwise set the unit in which every other row, and the
# decoder's noise floor, are measured (benchmarks/RESULTS.md, ablations).


@dataclass
class TabularArrays:
    """A validated, encoded block of rows.

    Shapes (N rows): ``num`` [N, n_numeric] float32, standardized, 0 where missing;
    ``num_mask`` [N, n_numeric] bool, True where observed; ``cat`` [N, n_categorical]
    int64, the category index, ``len(categories)`` for an unseen category ("unknown"
    slot) and -1 where missing; ``bin`` [N, n_boolean] float32 in {0, 1}, 0 where
    missing; ``bin_mask`` [N, n_boolean] bool.
    """

    num: np.ndarray
    num_mask: np.ndarray
    cat: np.ndarray
    bin: np.ndarray
    bin_mask: np.ndarray

    def __len__(self) -> int:
        return int(self.num.shape[0])

    @classmethod
    def concat(cls, parts: list[TabularArrays]) -> TabularArrays:
        """Rows of several blocks, in order."""
        return cls(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__)
        )

    def take(self, idx: np.ndarray | slice) -> TabularArrays:
        return TabularArrays(
            self.num[idx], self.num_mask[idx], self.cat[idx], self.bin[idx], self.bin_mask[idx]
        )


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value, so messages read 2, not np.int64(2)."""
    return value.item() if isinstance(value, np.generic) else value


#: Standardized numeric values are clipped to +-this many standard deviations: beyond
#: about 1e19 the decoder's float32 arithmetic overflows and log p(x) became NaN, which a
#: threshold cannot flag. Clipped, such a record gets a finite, astronomically low
#: log-likelihood (about -1e21 nats) and is flagged; no real value is anywhere near it.
MAX_STANDARDIZED = 1e12

#: The Python types a parsed JSON value of each kind may have for
#: :meth:`TabularPreprocessor.transform_columns` to encode it without pandas, in a column
#: with missing values (None); one without them only needs numpy to read it as numbers.
_PLAIN_NUMBER = frozenset({float, int, type(None)})
_PLAIN_LABEL = frozenset({str, type(None)})
_PLAIN_FLAG = frozenset({bool, type(None)})

_TRUE = {"true", "1", "1.0", "yes", "t", "y"}
_FALSE = {"false", "0", "0.0", "no", "f", "n"}


def _numeric_column(frame: pd.DataFrame, name: str) -> np.ndarray:
    """Column as float64 with NaN for missing; errors name non-numbers and infinities."""
    s = frame[name]
    if pd.api.types.is_bool_dtype(s):
        values = s.astype("float64").to_numpy()
    elif pd.api.types.is_numeric_dtype(s):
        values = s.to_numpy(dtype="float64", na_value=np.nan)
    else:
        try:
            coerced = pd.to_numeric(s, errors="coerce")
        except OverflowError:  # an integer too large for any float: as infinite
            coerced = pd.Series(
                [np.inf if isinstance(v, int) and abs(v) > 2**1023 else v for v in s], index=s.index
            )
            coerced = pd.to_numeric(coerced, errors="coerce")
        bad = coerced.isna() & s.notna()
        if bad.any():
            first = _plain(s[bad].iloc[0])
            msg = (
                f"column {name!r} is numeric but has non-numeric values at rows "
                f"{describe_rows(s.index[bad])} (first: {first!r})"
            )
            raise SchemaError(msg, columns=(name,), rows=_positions(bad))
        values = coerced.to_numpy(dtype="float64", na_value=np.nan)
    inf = np.isinf(values)
    if inf.any():
        msg = (
            f"column {name!r} has infinite values at rows {describe_rows(s.index[inf])}; "
            "replace them with a finite value or NaN (NaN is marginalized out)"
        )
        raise SchemaError(msg, columns=(name,), rows=tuple(np.flatnonzero(inf)[:1]))
    return values


def _standardize(
    v: np.ndarray, center: np.ndarray, scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """[N, n_numeric] float64 values (NaN: missing) -> (standardized float32, clipped to
    +-MAX_STANDARDIZED, 0 where missing; the observed mask)."""
    num_mask = ~np.isnan(v)
    z = np.clip((v - center) / scale, -MAX_STANDARDIZED, MAX_STANDARDIZED)
    return np.where(num_mask, z, 0.0).astype(np.float32), num_mask


def _positions(bad: Any) -> tuple[int, ...]:
    """The position of the first True in a boolean mask (Series or array), as a tuple."""
    hits = np.flatnonzero(np.asarray(bad, dtype=bool))
    return (int(hits[0]),) if hits.size else ()


def _boolean_column(frame: pd.DataFrame, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Column as (values in {0,1} float32, observed mask); other values are errors."""
    s = frame[name]
    observed = s.notna().to_numpy()
    out = np.zeros(len(s), dtype=np.float32)
    if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
        v = s.to_numpy(dtype="float64", na_value=np.nan)
        bad = observed & ~np.isin(v, (0.0, 1.0))
        out[observed] = v[observed]
    else:
        text = s.astype("string").str.strip().str.lower()
        is_true = text.isin(_TRUE).fillna(False).to_numpy(dtype=bool)
        is_false = text.isin(_FALSE).fillna(False).to_numpy(dtype=bool)
        bad = observed & ~(is_true | is_false)
        out[is_true] = 1.0
    if bad.any():
        first = _plain(s[bad].iloc[0])
        msg = (
            f"column {name!r} is boolean but has values other than 0/1/true/false at rows "
            f"{describe_rows(s.index[bad])} (first: {first!r})"
        )
        raise SchemaError(msg, columns=(name,), rows=_positions(bad))
    return out, observed


def _level_codes(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """[N] float64 values of a discrete column -> [N] int64 level indices: ``len(levels)``
    (the unknown slot) for a value that is not a level, -1 for NaN (marginalized)."""
    pos = np.clip(np.searchsorted(levels, values), 0, len(levels) - 1)
    codes = np.where(levels[pos] == values, pos, len(levels))
    return np.where(np.isnan(values), -1, codes).astype(np.int64)


def check_winsorize(value: float) -> None:
    """Raise ValueError unless ``value`` is a tail share in [0, 0.5)."""
    if not 0.0 <= value < 0.5:
        msg = f"winsorize must be in [0, 0.5), got {value!r}"
        raise ValueError(msg)


def _winsorized_moments(v: np.ndarray, tail: float) -> tuple[float, float]:
    """(mean, standard deviation) of ``v`` [n] clipped to its ``tail`` and ``1 - tail``
    quantiles, in the column's units; ``tail=0`` gives the plain moments."""
    w = v
    if tail > 0:
        lo, hi = np.quantile(v, [tail, 1.0 - tail])
        w = np.clip(v, lo, hi)
    return float(np.mean(w)), float(np.std(w))


class TabularPreprocessor:
    """Standardizes numeric columns and indexes categories, fitted on training rows.

    Numeric columns are scaled as ``(x - center) / scale``; the log-likelihood the
    model reports is corrected by ``-sum(log scale)`` so that it is a density in the
    column's own units (nats), not in standardized units. ``center`` and ``scale`` are
    the mean and standard deviation of the column winsorized at its ``winsorize`` and
    ``1 - winsorize`` quantiles, so that outliers among the training rows do not set the
    unit; a column with no spread inside those quantiles (say 98% zeros) falls back to
    the plain mean and standard deviation, as does ``winsorize=0``.
    """

    def __init__(self, schema: Schema, *, winsorize: float = WINSOR_TAIL) -> None:
        check_winsorize(winsorize)
        self.schema = schema
        self.winsorize = winsorize
        self.center_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None

    # ------------------------------------------------------------------ fitting
    def fit(self, frame: pd.DataFrame) -> TabularPreprocessor:
        self.schema.check_columns(frame, allow_extra=True)
        frame = text_columns(frame)
        num_cols = [c.name for c in self.schema.of_kind("numeric")]
        centers, scales = [], []
        for name in num_cols:
            v = _numeric_column(frame, name)
            v = v[~np.isnan(v)]
            if v.size == 0:
                msg = f"column {name!r} has no observed values in the training data"
                raise SchemaError(msg)
            c, s = _winsorized_moments(v, self.winsorize)
            if not s > _MIN_SCALE * max(1.0, abs(c)):
                c, s = float(np.mean(v)), float(np.std(v))
            s = max(s, _MIN_SCALE * max(1.0, abs(c)))
            centers.append(c)
            scales.append(s)
        self.center_ = np.asarray(centers, dtype=np.float64)
        self.scale_ = np.asarray(scales, dtype=np.float64)
        return self

    def _check_fitted(self) -> tuple[np.ndarray, np.ndarray]:
        if self.center_ is None or self.scale_ is None:
            msg = "this TabularPreprocessor is not fitted yet; call fit first"
            raise not_fitted(msg)
        return self.center_, self.scale_

    @property
    def log_scale(self) -> np.ndarray:
        """[n_numeric] float64: log of each numeric column's scale (the Jacobian term)."""
        _, scale = self._check_fitted()
        return np.log(scale)

    # ------------------------------------------------------------------ transform
    def transform(self, frame: pd.DataFrame, *, allow_extra: bool = False) -> TabularArrays:
        """Validate ``frame`` against the schema and encode it.

        Raises:
            SchemaError: missing or (unless ``allow_extra``) unexpected columns,
                non-numeric strings or infinities in numeric columns, values other
                than 0/1/true/false in boolean columns. The message names the column
                and the first offending row labels.
        """
        center, scale = self._check_fitted()
        self.schema.check_columns(frame, allow_extra=allow_extra)
        frame = text_columns(frame)
        n = frame.shape[0]
        num_specs = self.schema.of_kind("numeric")
        num_names = [c.name for c in num_specs]
        block = frame[num_names]
        if all(
            pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t)
            for t in block.dtypes
        ):
            # all numeric dtypes: one vectorized pass; only an infinity needs the per-column path
            v = block.to_numpy(dtype=np.float64, na_value=np.nan)
            if np.isinf(v).any():
                v = np.column_stack([_numeric_column(frame, c) for c in num_names])
        else:
            v = (
                np.column_stack([_numeric_column(frame, c) for c in num_names])
                if num_names
                else np.zeros((n, 0))
            )
        num, num_mask = _standardize(v, center, scale)

        cat_specs = self.schema.of_kind("categorical")
        cat = np.full((n, len(cat_specs)), -1, dtype=np.int64)
        for j, spec in enumerate(cat_specs):
            if spec.discrete:
                cat[:, j] = _level_codes(_numeric_column(frame, spec.name), spec.levels)
                continue
            s = frame[spec.name]
            obs = s.notna().to_numpy()
            lookup = {c: i for i, c in enumerate(spec.categories)}
            unknown = len(spec.categories)
            labels = s[obs].astype(str).to_numpy()
            cat[obs, j] = np.fromiter(
                (lookup.get(v, unknown) for v in labels), dtype=np.int64, count=labels.size
            )

        bin_specs = self.schema.of_kind("boolean")
        binv = np.zeros((n, len(bin_specs)), dtype=np.float32)
        bin_mask = np.zeros((n, len(bin_specs)), dtype=bool)
        for j, spec in enumerate(bin_specs):
            binv[:, j], bin_mask[:, j] = _boolean_column(frame, spec.name)
        return TabularArrays(num, num_mask, cat, binv, bin_mask)

    def transform_columns(
        self, columns: Mapping[str, Sequence[Any]], *, allow_extra: bool = False
    ) -> TabularArrays | None:
        """Encode columns of plain Python values without a DataFrame: ``columns`` maps each
        column name to its N values, as a parsed JSON body holds them (numbers, strings,
        booleans, None for missing).

        The arrays are those :meth:`transform` makes from ``pd.DataFrame(columns)``. Only
        values both paths read alike are taken: numbers (None: missing) in numeric and
        discrete columns, strings in categorical ones, booleans in boolean ones, all
        finite. Anything else (a string in a numeric column, an infinity, a missing or
        unexpected column, unequal lengths) returns None, and the caller passes the
        table to :meth:`transform`, whose coercions and errors (naming the column and the
        row) stay the one definition.
        """
        center, scale = self._check_fitted()
        names = self.schema.names
        if not all(n in columns for n in names):
            return None
        if not allow_extra:
            known = set(names) | ({self.schema.id_column} if self.schema.id_column else set())
            if not known.issuperset(columns):
                return None
        n = len(columns[names[0]]) if names else 0
        if any(len(v) != n for v in columns.values()):
            return None

        def numbers(cols: list[str]) -> np.ndarray | None:
            """[N, len(cols)] float64 (NaN: missing), or None to take the DataFrame path."""
            values = [columns[c] for c in cols]
            if not values:
                return np.zeros((n, 0))
            try:
                inferred = np.array(values)  # one pass: numbers and booleans only -> "biuf"
            except (ValueError, OverflowError):
                return None
            if inferred.dtype.kind in "biuf":  # True is 1.0 here as in pandas' reading
                v = inferred.astype(np.float64)
            elif inferred.dtype == object and _PLAIN_NUMBER.issuperset(
                map(type, chain.from_iterable(values))
            ):  # numbers with None (missing), or integers beyond int64
                try:
                    v = np.array(values, dtype=np.float64)
                except OverflowError:  # an integer beyond float64: the DataFrame path's error
                    return None
            else:
                return None
            return None if np.isinf(v).any() else v.T

        num_specs = self.schema.of_kind("numeric")
        v = numbers([c.name for c in num_specs])
        if v is None:
            return None
        num, num_mask = _standardize(v, center, scale)

        cat_specs = self.schema.of_kind("categorical")
        cat = np.full((n, len(cat_specs)), -1, dtype=np.int64)
        for j, spec in enumerate(cat_specs):
            if spec.discrete:
                levels = numbers([spec.name])
                if levels is None:
                    return None
                cat[:, j] = _level_codes(levels[:, 0], spec.levels)
                continue
            labels = columns[spec.name]
            if not _PLAIN_LABEL.issuperset(map(type, labels)):
                return None
            lookup = {c: i for i, c in enumerate(spec.categories)}
            unknown = len(spec.categories)
            cat[:, j] = np.fromiter(
                (-1 if x is None else lookup.get(x, unknown) for x in labels), np.int64, n
            )

        bin_specs = self.schema.of_kind("boolean")
        binv = np.zeros((n, len(bin_specs)), dtype=np.float32)
        bin_mask = np.zeros((n, len(bin_specs)), dtype=bool)
        for j, spec in enumerate(bin_specs):
            flags = columns[spec.name]
            if not _PLAIN_FLAG.issuperset(map(type, flags)):
                return None
            bin_mask[:, j] = np.fromiter((x is not None for x in flags), bool, n)
            binv[:, j] = np.fromiter((x is True for x in flags), np.float32, n)
        return TabularArrays(num, num_mask, cat, binv, bin_mask)

    def transform_matrix(self, matrix: np.ndarray) -> TabularArrays:
        """Encode a numeric matrix [N, D] whose columns are the schema's, in order.

        The fast path for numpy input: the same checks as :meth:`transform` (infinities
        and non-0/1 booleans are errors naming the column and rows; NaN is marginalized)
        without building a DataFrame. Categorical columns other than discrete ones take
        the DataFrame path.
        """
        center, scale = self._check_fitted()
        specs = self.schema.columns
        if matrix.ndim != 2 or matrix.shape[1] != len(specs):
            msg = (
                f"expected a matrix with {len(specs)} columns {self.schema.names}, got shape "
                f"{matrix.shape} (X has {matrix.shape[-1]} features, but TabularDetector is "
                f"expecting {len(specs)} features as input)"
            )
            raise SchemaError(msg)
        if any(not c.discrete for c in self.schema.of_kind("categorical")):
            return self.transform(pd.DataFrame(matrix, columns=self.schema.names))
        x = np.asarray(matrix, dtype=np.float64)
        inf = np.isinf(x)
        if inf.any():
            j = int(np.flatnonzero(inf.any(0))[0])
            msg = (
                f"column {specs[j].name!r} has infinite values at rows "
                f"{describe_rows(np.flatnonzero(inf[:, j]))}; replace them with a finite value "
                "or NaN (NaN is marginalized out)"
            )
            raise SchemaError(
                msg, columns=(specs[j].name,), rows=tuple(np.flatnonzero(inf[:, j])[:1])
            )
        kinds = np.array([c.kind for c in specs])
        num_idx = np.flatnonzero(kinds == "numeric")
        bin_idx = np.flatnonzero(kinds == "boolean")
        cat_idx = np.flatnonzero(kinds == "categorical")
        xn = x[:, num_idx]
        num, num_mask = _standardize(xn, center, scale)
        xb = x[:, bin_idx]
        bin_mask = ~np.isnan(xb)
        bad = bin_mask & (xb != 0.0) & (xb != 1.0)
        if bad.any():
            j = int(np.flatnonzero(bad.any(0))[0])
            rows = np.flatnonzero(bad[:, j])
            msg = (
                f"column {specs[bin_idx[j]].name!r} is boolean but has values other than "
                f"0/1/true/false at rows {describe_rows(rows)} (first: {xb[rows[0], j]!r})"
            )
            raise SchemaError(msg, columns=(specs[bin_idx[j]].name,), rows=(int(rows[0]),))
        cat = np.empty((x.shape[0], len(cat_idx)), dtype=np.int64)
        for j, col in enumerate(cat_idx):
            cat[:, j] = _level_codes(x[:, col], specs[col].levels)
        return TabularArrays(
            num,
            num_mask,
            cat,
            np.where(bin_mask, xb, 0.0).astype(np.float32),
            bin_mask,
        )

    def inverse_numeric(self, num: np.ndarray) -> np.ndarray:
        """[N, n_numeric] standardized values -> the columns' own units (float64)."""
        center, scale = self._check_fitted()
        return num.astype(np.float64) * scale + center

    def decode(self, num: np.ndarray, cat: np.ndarray, binv: np.ndarray) -> pd.DataFrame:
        """Arrays in model space (standardized numeric, category indices, 0/1) to a frame
        with the schema's columns in order; the unknown slot decodes to NaN (None for a
        categorical column), as does a missing category (-1)."""
        out: dict[str, Any] = {}
        num_names = [c.name for c in self.schema.of_kind("numeric")]
        values = self.inverse_numeric(num) if num_names else num
        for j, name in enumerate(num_names):
            out[name] = values[:, j]
        for j, spec in enumerate(self.schema.of_kind("categorical")):
            # the unknown slot and missing (-1) both decode to the missing value
            code = np.where(cat[:, j] < 0, len(spec.categories), cat[:, j])
            code = np.minimum(code, len(spec.categories))
            if spec.discrete:
                out[spec.name] = np.append(spec.levels, np.nan)[code]
                continue
            out[spec.name] = np.asarray([*spec.categories, None], dtype=object)[code]
        for j, spec in enumerate(self.schema.of_kind("boolean")):
            out[spec.name] = binv[:, j].astype(bool)
        return pd.DataFrame({name: out[name] for name in self.schema.names})

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        center, scale = self._check_fitted()
        names = [c.name for c in self.schema.of_kind("numeric")]
        return {
            "numeric": {
                n: {"center": float(c), "scale": float(s)}
                for n, c, s in zip(names, center, scale, strict=True)
            },
            "categorical": {c.name: list(c.categories) for c in self.schema.of_kind("categorical")},
        }

    @classmethod
    def from_dict(cls, schema: Schema, d: dict[str, Any]) -> TabularPreprocessor:
        pre = cls(schema)
        names = [c.name for c in schema.of_kind("numeric")]
        try:
            stats = d["numeric"]
            pre.center_ = np.asarray([stats[n]["center"] for n in names], dtype=np.float64)
            pre.scale_ = np.asarray([stats[n]["scale"] for n in names], dtype=np.float64)
        except (KeyError, TypeError) as exc:
            msg = f"preprocessing.json lacks statistics for numeric column {exc}"
            raise SchemaError(msg) from exc
        return pre
