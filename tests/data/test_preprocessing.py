"""The DataFrame-free encoding of plain column lists (``transform_columns``) against the
DataFrame path it must equal, and the inputs it hands back to that path."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from anomaly_vae.data.preprocessing import TabularArrays, TabularPreprocessor
from anomaly_vae.data.schema import infer_schema
from anomaly_vae.exceptions import SchemaError


@pytest.fixture(scope="module")
def pre() -> TabularPreprocessor:
    rng = np.random.default_rng(0)
    n = 200
    train = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "x": rng.normal(10, 3, n),
            "count": rng.integers(0, 1000, n),
            "grade": rng.integers(0, 5, n),  # few recurring integers: discrete
            "color": rng.choice(["red", "green", "blue"], n),
            "ok": rng.random(n) < 0.3,
        }
    )
    schema = infer_schema(train, id_column="id")
    assert [(c.name, c.kind, c.discrete) for c in schema.columns] == [
        ("x", "numeric", False),
        ("count", "numeric", False),
        ("grade", "categorical", True),
        ("color", "categorical", False),
        ("ok", "boolean", False),
    ]
    return TabularPreprocessor(schema).fit(train)


def _same(a: TabularArrays, b: TabularArrays) -> None:
    for field in TabularArrays.__dataclass_fields__:
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype and x.shape == y.shape, field
        np.testing.assert_array_equal(x, y, err_msg=field)


def _columns(seed: int, n: int) -> dict[str, list[Any]]:
    """Plain values as a parsed JSON body holds them: floats and ints mixed in the numeric
    columns, None anywhere, unseen categories and levels, huge and tiny magnitudes."""
    rng = np.random.default_rng(seed)

    def some_none(values: list[Any]) -> list[Any]:
        return [None if rng.random() < 0.15 else v for v in values]

    x: list[Any] = [float(v) for v in rng.normal(10, 3, n)]
    x[0] = 1e300  # standardized beyond MAX_STANDARDIZED: clipped alike
    count: list[Any] = [int(v) for v in rng.integers(-(2**62), 2**62, n)]
    count[1] = 2**70  # an int beyond int64, within float64
    count[2] = 3.5
    return {
        "id": [f"q{i}" for i in range(n)],
        "x": some_none(x),
        "count": some_none(count),
        "grade": some_none([int(v) for v in rng.integers(-1, 7, n)]),  # -1, 5, 6 unseen
        "color": some_none([str(v) for v in rng.choice(["red", "green", "blue", "teal", ""], n)]),
        "ok": some_none([bool(v) for v in rng.random(n) < 0.5]),
    }


@pytest.mark.parametrize("seed", range(5))
def test_plain_columns_encode_as_the_dataframe_path_does(pre, seed):
    cols = _columns(seed, 300)
    fast = pre.transform_columns(cols)
    assert fast is not None
    _same(fast, pre.transform(pd.DataFrame(cols)))
    # without the id column, and with one row
    no_id = {k: v for k, v in cols.items() if k != "id"}
    _same(pre.transform_columns(no_id), pre.transform(pd.DataFrame(no_id)))  # type: ignore[arg-type]
    one = {k: v[3:4] for k, v in cols.items()}
    _same(pre.transform_columns(one), pre.transform(pd.DataFrame(one)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "x",
    [
        [1.5, 2.0, 3.25, -4.0],
        [1, 2, 3, 4],  # integers
        [1.5, True, False, 2],  # booleans among numbers: 1.0 and 0.0, as pandas reads them
        [True, False, True, True],
        [2**63, 1, 2, 3],  # numpy reads it as uint64
        [2**64, 1, 2, 3],  # and this as an object
    ],
)
def test_complete_numeric_columns_encode_alike(pre, x):
    cols = _columns(1, 4)
    cols["x"], cols["count"] = x, [7, 8, 9, 10]  # the numeric block without None
    fast = pre.transform_columns(cols)
    assert fast is not None
    _same(fast, pre.transform(pd.DataFrame(cols)))


@pytest.mark.parametrize(
    "x", [["1.5", 2.0, 3.0, 4.0], [1.5, float("inf"), 2.0, 3.0], [1j, 2, 3, 4]]
)
def test_complete_numeric_columns_numpy_cannot_read_are_handed_back(pre, x):
    cols = _columns(1, 4)
    cols["x"], cols["count"] = x, [7, 8, 9, 10]
    assert pre.transform_columns(cols) is None


def test_all_missing_columns_encode_alike(pre):
    cols: dict[str, list[Any]] = {c: [None, None] for c in ("x", "count", "grade", "color", "ok")}
    fast = pre.transform_columns(cols)
    assert fast is not None
    _same(fast, pre.transform(pd.DataFrame(cols)))
    assert not fast.num_mask.any() and (fast.cat == -1).all() and not fast.bin_mask.any()


@pytest.mark.parametrize(
    ("column", "value", "error"),
    [
        ("x", "1.5", None),  # a numeric string: the DataFrame path reads it
        ("x", "lots", r"column 'x' is numeric but has non-numeric values at rows \[1\]"),
        ("x", float("inf"), r"column 'x' has infinite values at rows \[1\]"),
        ("count", 2**1100, r"column 'count' has infinite values at rows \[1\]"),
        ("x", True, None),  # a boolean with None in a numeric column: pandas' own coercion
        ("grade", "two", r"column 'grade' is numeric but has non-numeric values at rows \[1\]"),
        ("color", 3, None),  # a number in a categorical column: read as its label
        ("ok", 1, None),  # 0/1 in a boolean column
        ("ok", "maybe", r"column 'ok' is boolean but has values other than 0/1/true/false"),
    ],
)
def test_values_the_dataframe_path_reads_are_handed_back(pre, column, value, error):
    cols = _columns(0, 4)
    cols[column][1] = value
    cols[column][2] = None
    assert pre.transform_columns(cols) is None
    if error is None:
        pre.transform(pd.DataFrame(cols))
    else:
        with pytest.raises(SchemaError, match=error):
            pre.transform(pd.DataFrame(cols))


def test_column_sets_the_dataframe_path_judges_are_handed_back(pre):
    cols = _columns(0, 4)
    assert pre.transform_columns({k: v for k, v in cols.items() if k != "x"}) is None
    extra = {**cols, "note": ["a", "b", "c", "d"]}
    assert pre.transform_columns(extra) is None
    allowed = pre.transform_columns(extra, allow_extra=True)
    assert allowed is not None
    _same(allowed, pre.transform(pd.DataFrame(cols)))
    assert pre.transform_columns({**cols, "x": cols["x"][:3]}) is None  # unequal lengths
