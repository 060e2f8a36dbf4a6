"""Property-based: whatever value a column holds (extremes, specials, wrong types), the
scorer and the routes answer a finite, flagged score or a JSON 4xx naming the column;
never a 500, never a null score, never an unscorable record passed as normal."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from anomaly_vae.service.app import create_app
from anomaly_vae.service.settings import Settings
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anomaly_vae.exceptions import SchemaError
from tests.conftest import make_mixed

PROPERTY = settings(
    max_examples=40,
    deadline=None,  # a property, not a timing: the machine may be busy
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,  # the same cases every run: a failure reproduces
)

extreme_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 5e-324, 1e20, -1e20, 1e300, -1e300, 1.7976931348623157e308]),
)
json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)


def _record() -> dict:
    row = make_mixed(1, seed=1).iloc[0]
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}


@PROPERTY
@given(value=extreme_floats, column=st.sampled_from(["a", "b", "c"]))
def test_scorer_never_passes_an_unscorable_record(fitted, value, column):
    frame = make_mixed(3, seed=2)
    frame[column] = frame[column].astype(float)
    frame.loc[1, column] = value
    if math.isinf(value):  # infinities are refused, naming the column
        with pytest.raises(SchemaError, match=f"column '{column}'"):
            fitted.score(frame)
        return
    out = fitted.score(frame)
    ll = out["log_likelihood"].to_numpy()
    assert np.isfinite(ll).all() or out.loc[~np.isfinite(ll), "is_outlier"].all()
    assert out["p_value"].between(0.0, 1.0).all()
    if math.isfinite(value) and abs(value) >= 1e20:
        assert out["is_outlier"].iloc[1]


@pytest.fixture(scope="module")
def client(fitted, tmp_path_factory):
    bundle = fitted.save(tmp_path_factory.mktemp("prop") / "bundle")
    with TestClient(create_app(Settings(bundle_path=bundle, poll_seconds=0)),
                    raise_server_exceptions=False) as c:  # fmt: skip
        yield c


@PROPERTY
@given(value=json_values, column=st.sampled_from(["a", "b", "c", "color", "flag", "id"]))
def test_routes_answer_any_value_with_a_score_or_a_4xx_naming_it(client, value, column):
    for path, body in (
        ("/v1/score", {"records": [{**_record(), column: value}]}),
        ("/invocations", {"dataframe_records": [{**_record(), column: value}]}),
    ):
        r = client.post(path, json=body)
        assert r.status_code in (200, 413, 422), (path, value, r.text)
        if r.status_code != 200:
            detail = r.json()["detail"]
            assert detail and "loc" in detail[0]
            continue
        items = r.json()["results" if path == "/v1/score" else "predictions"]
        for item in items:
            assert item["log_likelihood"] is not None and math.isfinite(item["log_likelihood"])
            assert item["p_value"] is not None and 0.0 < item["p_value"] <= 1.0
            assert isinstance(item["is_outlier"], bool)


def _score_both_ways(client, body: dict) -> tuple[object, object]:
    """(status, JSON) of ``/v1/score`` with the DataFrame-free path (orjson parse, plain
    column encoding), then with both turned off (pydantic, pandas): what they must equal."""
    from anomaly_vae.service import parsing

    det = client.app.state.store.current.detector
    fast = client.post("/v1/score", json=body)
    real_plain = parsing.plain_score_request
    try:
        parsing.plain_score_request = lambda doc: None
        det.encode_columns = lambda columns, **kw: None
        slow = client.post("/v1/score", json=body)
    finally:
        parsing.plain_score_request = real_plain
        del det.encode_columns
    return (fast.status_code, fast.json()), (slow.status_code, slow.json())


@PROPERTY
@given(
    value=json_values,
    column=st.sampled_from(["a", "b", "c", "color", "flag", "id"]),
    form=st.sampled_from(["records", "columns"]),
    orient=st.sampled_from(["records", "columns"]),
)
def test_the_dataframe_free_path_answers_as_the_dataframe_path(client, value, column, form, orient):
    rows = [_record(), {**_record(), column: value}, {**_record(), column: None}]
    data = rows if form == "records" else {k: [r[k] for r in rows] for k in rows[0]}
    fast, slow = _score_both_ways(client, {form: data, "orient": orient, "contributions": 2})
    assert fast == slow


def test_columns_orient_holds_the_records_results_column_by_column(client, mixed_test):
    frame, _ = mixed_test
    # normal rows and the known outliers at the end, so some are flagged and some not
    some = pd.concat([frame.head(30), frame.tail(10)])
    rows = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
            for r in some.to_dict(orient="records")]  # fmt: skip
    by_rows = client.post("/v1/score", json={"records": rows, "contributions": 2}).json()
    by_cols = client.post(
        "/v1/score", json={"records": rows, "contributions": 2, "orient": "columns"}
    ).json()
    assert "columns" not in by_rows and "results" not in by_cols
    cols = by_cols["columns"]
    assert cols["id"] == [r["id"] for r in rows]
    for name in ("log_likelihood", "stderr", "ess", "unreliable", "score", "p_value",
                 "is_outlier", "contributions"):  # fmt: skip
        assert cols[name] == [item[name] for item in by_rows["results"]], name
    assert any(cols["is_outlier"]) and not all(cols["is_outlier"])
