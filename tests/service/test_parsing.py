"""The orjson reading of ``/v1/score`` bodies against pydantic's, which it must equal or
hand the body to, and the records-to-columns transposition."""

from __future__ import annotations

import json

import pytest
from anomaly_vae.service.errors import RequestError
from anomaly_vae.service.parsing import (
    columns_from_request,
    parse_score_request,
    plain_score_request,
    validate_json,
)
from anomaly_vae.service.schemas import ScoreRequest
from anomaly_vae.service.settings import Settings
from hypothesis import given, settings
from hypothesis import strategies as st

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False,
    allow_infinity=False), st.text(max_size=5),
)  # fmt: skip
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=4)
field_values = st.one_of(
    values,
    st.lists(st.dictionaries(st.text(max_size=3), scalars, max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.one_of(st.lists(scalars, max_size=3), scalars)),
    st.sampled_from(["records", "columns", "rows"]),
)
documents = st.one_of(
    st.dictionaries(
        st.sampled_from(["records", "columns", "k", "contributions", "orient", "extra"]),
        field_values,
        max_size=4,
    ),
    values,
)


@PROPERTY
@given(doc=documents)
def test_plain_reading_equals_pydantic_or_hands_the_body_over(doc):
    body = json.dumps(doc).encode()
    try:
        expected = validate_json(ScoreRequest, body)
    except RequestError:
        assert plain_score_request(doc) is None
        with pytest.raises(RequestError):
            parse_score_request(body)
        return
    plain = plain_score_request(doc)
    if plain is not None:
        assert plain.model_dump() == expected.model_dump()
    assert parse_score_request(body).model_dump() == expected.model_dump()


def test_plain_reading_takes_the_usual_bodies():
    for doc in (
        {"records": [{"a": 1.5, "b": None}], "k": 8, "contributions": 2, "orient": "columns"},
        {"columns": {"a": [1, 2], "b": ["x", None]}},
    ):
        assert plain_score_request(doc) is not None
    for doc in ({"records": [], "k": True}, {"records": [], "k": 2.0}, {"records": [[1]]}):
        assert plain_score_request(doc) is None


def test_records_are_transposed_in_the_first_records_order(tmp_path):
    s = Settings(bundle_path=tmp_path)
    req = ScoreRequest(records=[{"a": 1, "b": "x"}, {"b": "y", "a": None}])
    assert columns_from_request(req, s) == ({"a": (1, None), "b": ("x", "y")}, 2)
    one = ScoreRequest(records=[{"a": 1}, {"a": 2}])
    assert columns_from_request(one, s) == ({"a": [1, 2]}, 2)
    with pytest.raises(RequestError, match=r"record 1 has different fields from record 0"):
        columns_from_request(ScoreRequest(records=[{"a": 1}, {"b": 2}]), s)


def test_plain_writes_any_integer_as_json_can_hold_it():
    import orjson
    from anomaly_vae.service.parsing import plain

    assert plain(2**64 - 1) == 2**64 - 1 and plain(-(2**63)) == -(2**63)
    assert plain(2**70) == float(2**70) and type(plain(2**70)) is float
    assert plain(-(2**70)) == -float(2**70)
    assert plain(10**400) == str(10**400)
    assert plain(True) is True  # a bool is not an integer here
    orjson.dumps([plain(v) for v in (2**70, -(2**64), 10**400)])


ids = st.one_of(
    st.integers(-(2**66), 2**66), st.text(max_size=3), st.none(), st.booleans(),
    st.floats(allow_infinity=False),
)  # fmt: skip


@PROPERTY
@given(st.lists(ids, max_size=6))
def test_plain_ids_is_plain_on_each_id(ids):
    """The one-check path for a request's id column gives what :func:`plain` gives on
    each id: NaN as None, integers beyond 64 bits as floats, the rest as they are."""
    from anomaly_vae.service.parsing import plain, plain_ids

    got, want = plain_ids(ids), [plain(v) for v in ids]
    assert [type(v) for v in got] == [type(v) for v in want]
    assert got == want


def test_plain_ids_takes_plain_ids_as_they_are():
    from anomaly_vae.service.parsing import plain_ids

    assert plain_ids(["a", "b"]) == ["a", "b"]
    assert plain_ids([1, "b", 2**64 - 1]) == [1, "b", 2**64 - 1]
    assert plain_ids([2**64]) == [float(2**64)]
    assert plain_ids([True, 1]) == [True, 1] and type(plain_ids([True, 1])[0]) is bool
