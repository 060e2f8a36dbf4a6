"""Schema inference and the exact outcome of every bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from anomaly_vae.data.preprocessing import TabularPreprocessor
from anomaly_vae.data.schema import Schema, infer_schema, text_columns
from anomaly_vae.exceptions import NotFittedError, SchemaError


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ["a", "b", "c", "d", "e", "f"],
            "x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "n": [1, 5, 2, 8, 3, 0],
            "color": ["red", "blue", "red", "green", "blue", "red"],
            "ok": [True, False, True, True, False, True],
            "bit": [0, 1, 1, 0, 0, 1],
        }
    )


@pytest.fixture
def pre(frame) -> TabularPreprocessor:
    return TabularPreprocessor(infer_schema(frame, id_column="id")).fit(frame)


def test_infer_kinds(frame):
    s = infer_schema(frame, id_column="id")
    assert [(c.name, c.kind) for c in s.columns] == [
        ("x", "numeric"),
        ("n", "numeric"),
        ("color", "categorical"),
        ("ok", "boolean"),
        ("bit", "boolean"),
    ]
    assert s.of_kind("categorical")[0].categories == ("blue", "green", "red")
    assert s.id_column == "id"


def test_schema_round_trips_through_dict(frame):
    s = infer_schema(frame, id_column="id", categorical=["n"])
    assert Schema.from_dict(s.to_dict()) == s
    assert s.of_kind("categorical")[0].name == "n"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"id_column": "nope"}, "id column 'nope' is not in the frame"),
        ({"categorical": ["zz"]}, r"columns declared categorical are not in the frame: \['zz'\]"),
    ],
)
def test_infer_argument_errors(frame, kwargs, message):
    with pytest.raises(SchemaError, match=message):
        infer_schema(frame, **kwargs)


def test_infer_refuses_empty_all_missing_and_high_cardinality():
    with pytest.raises(SchemaError, match="empty frame"):
        infer_schema(pd.DataFrame({"x": []}))
    with pytest.raises(SchemaError, match="column 'y' has no values"):
        infer_schema(pd.DataFrame({"x": [1.0, 2.0], "y": [None, None]}))
    with pytest.raises(SchemaError, match="column 'name' looks categorical but has 300 distinct"):
        infer_schema(pd.DataFrame({"name": [f"n{i}" for i in range(300)]}))


def test_schema_from_dict_errors():
    with pytest.raises(SchemaError, match="kind must be one of"):
        Schema.from_dict({"columns": [{"name": "x", "kind": "text"}]})
    with pytest.raises(SchemaError, match=r"duplicate column names in schema: \['x'\]"):
        Schema.from_dict({"columns": [{"name": "x", "kind": "numeric"}] * 2})
    with pytest.raises(SchemaError, match="at least one modelled column"):
        Schema.from_dict({"columns": []})


def test_missing_columns_named(pre, frame):
    with pytest.raises(SchemaError, match=r"missing columns: \['color', 'bit'\]"):
        pre.transform(frame.drop(columns=["color", "bit"]))


def test_unexpected_columns_named_unless_allowed(pre, frame):
    extra = frame.assign(label=1, note="x")
    with pytest.raises(SchemaError, match=r"unexpected columns: \['label', 'note'\]"):
        pre.transform(extra)
    assert len(pre.transform(extra, allow_extra=True)) == len(frame)


def test_non_numeric_string_names_column_rows_and_value(pre, frame):
    bad = frame.astype({"x": object})
    bad.loc[[1, 4], "x"] = ["abc", "1,5"]
    with pytest.raises(
        SchemaError,
        match=r"column 'x' is numeric but has non-numeric values at rows \[1, 4\] \(first: 'abc'\)",
    ):
        pre.transform(bad)


def test_numeric_strings_are_accepted(pre, frame):
    as_text = frame.astype({"x": str})
    np.testing.assert_allclose(pre.transform(as_text).num, pre.transform(frame).num)


def test_infinity_names_column_and_rows(pre, frame):
    bad = frame.copy()
    bad.loc[2, "x"] = np.inf
    bad.loc[5, "x"] = -np.inf
    with pytest.raises(SchemaError, match=r"column 'x' has infinite values at rows \[2, 5\]"):
        pre.transform(bad)


def test_many_bad_rows_are_summarized(pre):
    bad = pd.DataFrame(
        {"id": range(9), "x": ["q"] * 9, "n": 1, "color": "red", "ok": True, "bit": 0}
    )
    with pytest.raises(SchemaError, match=r"at rows \[0, 1, 2, 3, 4\] and 4 more"):
        pre.transform(bad)


def test_bad_boolean_values_named(pre, frame):
    bad = frame.copy()
    bad["bit"] = [0, 1, 2, 0, 0, 1]
    with pytest.raises(
        SchemaError,
        match=r"column 'bit' is boolean but has values other than 0/1/true/false at rows \[2\] \(first: 2",
    ):
        pre.transform(bad)
    text = frame.assign(ok=["yes", "no", "true", "FALSE", "0", "1"])
    np.testing.assert_array_equal(pre.transform(text).bin[:, 0], [1, 0, 1, 0, 0, 1])


def test_unseen_category_maps_to_unknown_slot(pre, frame):
    new = frame.assign(color=["red", "purple", "blue", "green", "teal", "red"])
    cat = pre.transform(new).cat[:, 0]
    assert cat.tolist() == [2, 3, 0, 1, 3, 2]  # 3 == len(categories): the unknown slot


def test_nan_is_marginalized_not_an_error(pre, frame):
    holes = frame.astype({"color": object, "ok": object})
    holes.loc[1, "x"] = np.nan
    holes.loc[2, "color"] = None
    holes.loc[3, "ok"] = None
    arr = pre.transform(holes)
    assert not arr.num_mask[1, 0] and arr.num[1, 0] == 0.0
    assert arr.cat[2, 0] == -1
    assert not arr.bin_mask[3, 0]
    assert arr.num_mask.sum() == arr.num_mask.size - 1


def test_not_a_frame_and_not_fitted(frame):
    s = infer_schema(frame, id_column="id")
    with pytest.raises(NotFittedError, match="not fitted yet"):
        TabularPreprocessor(s).transform(frame)
    with pytest.raises(SchemaError, match="expected a pandas DataFrame, got list"):
        TabularPreprocessor(s).fit([[1, 2]])  # type: ignore[arg-type]


def test_constant_column_gets_a_floor_scale():
    f = pd.DataFrame({"x": [3.0] * 5, "y": [1.0, 2, 3, 4, 5]})
    pre = TabularPreprocessor(infer_schema(f)).fit(f)
    assert np.all(np.isfinite(pre.transform(f).num))
    assert pre.scale_ is not None and pre.scale_[0] > 0


def test_outliers_do_not_set_the_numeric_scale():
    """Center and scale are winsorized moments: 1% of wild values among the training
    rows leave the unit near the clean column's, where the plain std would be ~1000x."""
    rng = np.random.default_rng(0)
    clean = rng.normal(5.0, 2.0, size=2000)
    dirty = clean.copy()
    dirty[:20] = 1e5
    fitted = {}
    for key, v in (("clean", clean), ("dirty", dirty)):
        f = pd.DataFrame({"x": v})
        fitted[key] = TabularPreprocessor(infer_schema(f)).fit(f)
    c, d = fitted["clean"], fitted["dirty"]
    assert c.center_ is not None and c.scale_ is not None
    assert d.center_ is not None and d.scale_ is not None
    lo, hi = np.quantile(dirty, [0.025, 0.975])
    w = np.clip(dirty, lo, hi)
    np.testing.assert_allclose([d.center_[0], d.scale_[0]], [w.mean(), w.std()], rtol=1e-12)
    assert abs(d.center_[0] - c.center_[0]) < 0.1
    assert 0.9 < d.scale_[0] / c.scale_[0] < 1.1
    assert np.std(dirty) > 1000 * d.scale_[0]
    np.testing.assert_allclose(d.log_scale, np.log(d.scale_))


def test_a_column_without_spread_inside_its_quantiles_keeps_the_plain_moments():
    v = np.zeros(1000)
    v[:10] = 3.0  # 99% zeros: winsorized at 2.5% it is constant
    f = pd.DataFrame({"x": v})
    pre = TabularPreprocessor(infer_schema(f, discrete_levels=0)).fit(f)
    assert pre.center_ is not None and pre.scale_ is not None
    np.testing.assert_allclose([pre.center_[0], pre.scale_[0]], [v.mean(), v.std()])
    with pytest.raises(ValueError, match=r"winsorize must be in \[0, 0.5\), got -0.1"):
        TabularPreprocessor(infer_schema(f), winsorize=-0.1)


# ---------------------------------------------------------------- discrete columns
@pytest.fixture
def counts() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "grade": rng.integers(0, 5, 200).astype(float),  # 5 levels, 40 rows each
            "wide": rng.integers(0, 40, 200),  # 40 levels: continuous
            "x": rng.normal(size=200),
        }
    )


def test_integer_columns_with_few_recurring_levels_are_discrete(counts):
    s = infer_schema(counts)
    grade, wide, x = s.columns
    assert (grade.kind, grade.discrete, grade.categories) == (
        "categorical",
        True,
        ("0", "1", "2", "3", "4"),
    )
    assert (wide.kind, x.kind) == ("numeric", "numeric")
    assert Schema.from_dict(s.to_dict()) == s
    assert infer_schema(counts, discrete_levels=0).columns[0].kind == "numeric"
    # too few rows per level (30 needed): 5 levels in 100 rows
    assert infer_schema(counts.head(100)).columns[0].kind == "numeric"


def test_discrete_values_off_the_levels_take_the_unknown_slot(counts):
    pre = TabularPreprocessor(infer_schema(counts)).fit(counts)
    new = pd.DataFrame({"grade": [0.0, 4.0, 2.5, 7.0, np.nan], "wide": 1, "x": 0.0})
    codes = pre.transform(new).cat[:, 0]
    assert codes.tolist() == [0, 4, 5, 5, -1]  # 5 = unknown, -1 = missing (marginalized)
    # the numpy fast path agrees, and decoding gives numbers back (unknown -> NaN)
    fast = pre.transform_matrix(new[["grade", "wide", "x"]].to_numpy(dtype=float))
    assert fast.cat[:, 0].tolist() == codes.tolist()
    back = pre.decode(fast.num, fast.cat, fast.bin)["grade"].to_numpy()
    np.testing.assert_array_equal(back, [0.0, 4.0, np.nan, np.nan, np.nan])


def test_discrete_columns_are_validated_as_numbers(counts):
    pre = TabularPreprocessor(infer_schema(counts)).fit(counts)
    bad = pd.DataFrame({"grade": ["1", "two"], "wide": 1, "x": 0.0})
    with pytest.raises(
        SchemaError,
        match=r"column 'grade' is numeric but has non-numeric values at rows \[1\] \(first: 'two'\)",
    ):
        pre.transform(bad)
    inf = pd.DataFrame({"grade": [1.0, np.inf], "wide": 1, "x": 0.0})
    with pytest.raises(SchemaError, match=r"column 'grade' has infinite values at rows \[1\]"):
        pre.transform(inf)
    assert pre.transform(pd.DataFrame({"grade": ["3"], "wide": 1, "x": 0.0})).cat[0, 0] == 3


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"name": "g", "kind": "numeric", "discrete": True},
            "only a categorical column can be discrete",
        ),
        (
            {"name": "g", "kind": "categorical", "categories": ["a"], "discrete": True},
            "must be numbers",
        ),
        (
            {"name": "g", "kind": "categorical", "categories": ["2", "1"], "discrete": True},
            "distinct and ascending",
        ),
    ],
)
def test_bad_discrete_specs(spec, message):
    with pytest.raises(SchemaError, match=message):
        Schema.from_dict({"columns": [spec]})


def test_text_columns_names_columns_by_their_text(frame):
    assert text_columns(frame) is frame  # text names already: the frame itself
    numbered = pd.DataFrame(frame.to_numpy())  # names 0..5
    named = text_columns(numbered)
    assert named.columns.tolist() == ["0", "1", "2", "3", "4", "5"]
    assert numbered.columns.tolist() == [0, 1, 2, 3, 4, 5]  # the caller's frame is untouched
    pre = TabularPreprocessor(infer_schema(numbered, id_column="0")).fit(numbered)
    a = pre.transform(numbered)
    b = pre.transform(named)
    for part in ("num", "num_mask", "cat", "bin", "bin_mask"):
        assert np.array_equal(getattr(a, part), getattr(b, part))
    with pytest.raises(SchemaError, match=r"duplicate column names once written as text: \['1'\]"):
        text_columns(numbered.assign(**{"1": 0}))
