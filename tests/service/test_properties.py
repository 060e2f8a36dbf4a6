"""Property-based: whatever value a column holds (extremes, specials, wrong types), the
scorer and the routes answer a finite, flagged score or a JSON 4xx naming the column;
never a 500, never a null score, never an unscorable record passed as normal."""

from __future__ import annotations

import math

import numpy as np
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
