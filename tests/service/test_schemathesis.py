"""A bounded schemathesis run against the app in process: the OpenAPI document
describes the loaded model's columns, so generated requests reach scoring; every
answer is documented (status, content type, body schema) and none is a server error."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
import schemathesis
from anomaly_vae.service.app import create_app
from anomaly_vae.service.settings import Settings
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

#: Generated cases per route (benchmarks/robustness.py reports it).
MAX_EXAMPLES = 25
SENT = ("headers", "json", "content", "params", "data", "files", "cookies")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]  # fmt: skip


@pytest.fixture(scope="module")
def served(fitted, tmp_path_factory):
    bundle = fitted.save(tmp_path_factory.mktemp("fuzz") / "bundle")
    # small bounds keep each generated request cheap to score
    app = create_app(
        Settings(bundle_path=bundle, poll_seconds=0, max_records=20, max_k=32, admin_token="t" * 16)
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_openapi_describes_the_loaded_models_columns(served, fitted):
    doc = served.get("/openapi.json").json()
    record = doc["components"]["schemas"]["Record"]
    assert set(record["required"]) == {c.name for c in fitted.schema_.columns}
    assert record["properties"]["a"] == {"type": "number"}
    assert record["properties"]["flag"] == {"type": "boolean"}


def _fuzz(
    client, routes: set[str], media_type: str | None = None
) -> tuple[dict, dict, list[str], object]:
    """Run the generated cases (and the document's examples) of ``routes`` against
    ``client``, bodies of ``media_type`` only if given: (statuses per route, cases per
    route, failures, the schema)."""
    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    statuses: dict[str, set[int]] = {}
    counts: dict[str, int] = {}
    failures: list[str] = []

    def send(case) -> None:  # type: ignore[no-untyped-def]
        if media_type is not None and case.media_type not in (None, media_type):
            return
        kwargs = case.as_transport_kwargs(base_url="http://testserver")
        sent = {k: v for k, v in kwargs.items() if k in SENT}
        response = client.request(case.method, case.formatted_path, **sent)
        route = case.operation.path
        statuses.setdefault(route, set()).add(response.status_code)
        counts[route] = counts.get(route, 0) + 1
        try:
            case.validate_response(response, checks=CHECKS)
        except BaseExceptionGroup as exc:  # collect, so the report names every route
            failures.append(f"{case.method} {route}: {exc}"[:500])

    for op in schema.get_all_operations():
        operation = op.ok()
        if operation.path not in routes:
            continue
        strategies = [
            operation.as_strategy(media_type=media_type),
            *operation.get_strategies_from_examples(),
        ]
        for strategy in strategies:

            @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            @given(case=strategy)
            def run(case):  # type: ignore[no-untyped-def]
                send(case)

            run()
    return statuses, counts, failures, schema


def test_bounded_fuzz_reaches_scoring_without_server_errors(served):
    # a table model: the image route answers 409 (the image model's run covers it)
    routes = set(served.get("/openapi.json").json()["paths"]) - {"/v1/score/images", "/metrics"}
    statuses, counts, failures, schema = _fuzz(served, routes)
    print("\nfuzz:", counts, statuses)
    # the checks are live: an undocumented answer fails them
    op = schema["/v1/score"]["POST"]
    case = op.as_strategy().example()
    fake = httpx.Response(418, json={"x": 1}, request=httpx.Request("POST", "http://t/v1/score"))
    fake.read()
    fake.elapsed = dt.timedelta(milliseconds=1)
    with pytest.raises(BaseExceptionGroup, match="distinct failure") as failed:
        case.validate_response(fake, checks=CHECKS)
    assert "Undocumented status code" in str(failed.value.exceptions)
    assert not failures, "\n".join(failures[:5])
    assert 200 in statuses["/v1/score"] and 200 in statuses["/invocations"], statuses


@pytest.fixture(scope="module")
def served_images(tmp_path_factory):
    from anomaly_vae import ImageDetector
    from tests.test_image_detector import squares

    det = ImageDetector(max_epochs=1, k=8, latent_dim=4, width_mult=8).fit(squares(120, 0))
    bundle = det.save(tmp_path_factory.mktemp("fuzz-img") / "bundle")
    app = create_app(
        Settings(bundle_path=bundle, poll_seconds=0, max_records=4, max_k=16, max_files=4)
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_bounded_fuzz_of_the_image_route_reaches_scoring(served_images):
    """The document describes the image model's bodies with an example that scores;
    generated JSON bodies (not images) get a documented 4xx, never a server error.
    (Multipart bodies: schemathesis' generated files do not serialize through the test
    client; the bad-input table's multipart cases cover them.)"""
    statuses, counts, failures, _ = _fuzz(
        served_images, {"/v1/score/images"}, media_type="application/json"
    )
    print("\nfuzz (images):", counts, statuses)
    assert not failures, "\n".join(failures[:5])
    assert 200 in statuses["/v1/score/images"], statuses
    assert statuses["/v1/score/images"] - {200} <= {400, 413, 415, 422}, statuses
