"""The bounded load test (issue 22), against a real uvicorn server and a real sqlite
MLflow store: 50 clients for 60 s, the champion alias flipped every 5 s, a k=5000
request in flight every few seconds. No request may fail, every score must be the bits
its version gives, and the 1-record p99 must stay under the stated bound."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.robustness import P99_BOUND_S, run_load


@pytest.mark.slow
def test_fifty_clients_alias_flips_and_costly_requests():
    args = argparse.Namespace(
        duration=60.0,
        clients=50,
        flip_every=5.0,
        costly_records=100,
        costly_k=5000,
        costly_pause=2.0,
    )
    out = run_load(args, lanes=("on",))["lane_on"]
    assert out["failed"] == 0, out["failures"]
    assert out["alias_flips"] >= 10
    assert set(out["versions_seen"]) == {"1", "2"}  # both versions answered
    assert out["costly_requests"] >= 3 and out["one_record_while_costly"] > 0
    assert out["p99_s"] < P99_BOUND_S, out
