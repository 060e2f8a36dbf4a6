"""Robustness of the service under load (issue 22): a real uvicorn server, a real sqlite
MLflow store, many clients, the alias flipped while they score, costly requests in flight.

Two versions of a WDBC detector (scikit-learn's breast-cancer data; seeds 0 and 1) are
registered; the champion alias flips between them every ``--flip-every`` seconds and the
server follows by polling. ``--clients`` clients send 1-record requests as fast as they
are answered, and one more sends a ``--costly-records`` x k = ``--costly-k`` request,
waits ``--costly-pause`` seconds and sends the next. Every response must be a 200 whose
log-likelihoods are *the same bits* as the version it names gives those records in this
process (scores are deterministic whatever the batch). The run is repeated with the
costly lane turned off (``LANE_COST`` above any request) as the peer: the same load, the
1-record latency without slicing.

The other robustness figures (bad-input classes, fuzz cases, faults) come from the test
suite, which runs them against the app and real servers; this script counts the cases
those tests hold and writes everything to benchmarks/results/robustness.json and the
"Robustness" section of benchmarks/RESULTS.md.

    python benchmarks/robustness.py [--duration 60] [--clients 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
JSON_OUT = ROOT / "results" / "robustness.json"
NAME = "wdbc-load"
#: The 1-record p99 latency the load test must stay under with 50 clients (seconds, 2
#: cores shared with the clients' process). 50 closed-loop clients saturate one worker
#: (about 85 requests/s, every request waiting for the others'): measured p99 2.8 s and
#: max 4.9 s with the lane on or off; the bound leaves room for a slower machine. The
#: lane's own effect shows under a load that does not saturate (4 clients: p99 82 ms
#: with it, 479 ms without).
P99_BOUND_S = 6.0


def _rows(frame: Any) -> list[dict[str, Any]]:
    # exact floats (DataFrame.to_json rounds to 10 digits): the server must score the
    # very rows whose expected bits this process computed
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


def setup(
    store: Path, n_costly: int = 100
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[int, Any]]:
    """Two registered versions; returns the cheap pool, the costly request's rows and,
    per version, the detector (for the expected bits)."""
    from anomaly_vae import TabularDetector, registry
    from anomaly_vae.demo_data import wdbc

    registry.configure(store)
    data = wdbc().drop(columns=["is_outlier"])
    dets = {}
    for version, seed in ((1, 0), (2, 1)):
        det = TabularDetector(id_column="row_id", seed=seed, max_epochs=30).fit(data)
        registry.log_detector(det, name=NAME, example=data, alias="champion")
        dets[version] = det
    registry.promote(NAME, 1)
    costly = data.iloc[np.arange(64, 64 + n_costly) % len(data)]
    return _rows(data.iloc[:64]), _rows(costly), dets


def expected(dets: dict[int, Any], pool: list[dict], costly: list[dict], k: int) -> dict[str, Any]:
    import pandas as pd

    out: dict[str, Any] = {}
    for v, det in dets.items():
        out[f"cheap{v}"] = det.score(pd.DataFrame(pool)).log_likelihood.tolist()
        out[f"costly{v}"] = det.score(pd.DataFrame(costly), k=k).log_likelihood.tolist()
    return out


async def _load(
    url: str,
    pool: list[dict],
    costly: list[dict],
    want: dict[str, Any],
    args: argparse.Namespace,
    clients: int,
) -> dict[str, Any]:
    from anomaly_vae import registry

    bodies = [json.dumps({"records": [r]}).encode() for r in pool]
    costly_body = json.dumps({"records": costly, "k": args.costly_k}).encode()
    headers = {"content-type": "application/json"}
    stop_at = time.monotonic() + args.duration
    lat: list[float] = []
    lat_during_costly: list[float] = []
    failures: list[str] = []
    versions: dict[int, int] = {}
    costly_lat: list[float] = []
    costly_inflight = [0]
    flips = [0]

    def check(r: httpx.Response, key: str, idx: list[int]) -> None:
        if r.status_code != 200:
            failures.append(f"{r.status_code}: {r.text[:200]}")
            return
        doc = r.json()
        v = int(doc["model"]["version"])
        versions[v] = versions.get(v, 0) + 1
        got = [res["log_likelihood"] for res in doc["results"]]
        if got != [want[f"{key}{v}"][i] for i in idx]:
            failures.append(f"{key} scores differ from version {v}'s")

    async def client(c: httpx.AsyncClient, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while time.monotonic() < stop_at:
            i = int(rng.integers(len(pool)))
            busy = costly_inflight[0] > 0
            t = time.perf_counter()
            try:
                r = await c.post(url + "/v1/score", content=bodies[i], headers=headers)
            except httpx.HTTPError as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            dt = time.perf_counter() - t
            lat.append(dt)
            if busy and costly_inflight[0] > 0:
                lat_during_costly.append(dt)
            check(r, "cheap", [i])

    async def costly_client(c: httpx.AsyncClient) -> None:
        while time.monotonic() < stop_at:
            costly_inflight[0] += 1
            t = time.perf_counter()
            try:
                r = await c.post(url + "/v1/score", content=costly_body, headers=headers)
            except httpx.HTTPError as exc:
                failures.append(f"costly {type(exc).__name__}: {exc}")
                continue
            finally:
                costly_inflight[0] -= 1
            costly_lat.append(time.perf_counter() - t)
            check(r, "costly", list(range(len(costly))))
            await asyncio.sleep(args.costly_pause)

    async def flipper() -> None:
        version = 1
        while True:
            await asyncio.sleep(args.flip_every)
            if time.monotonic() >= stop_at:
                return
            version = 3 - version
            await asyncio.to_thread(registry.promote, NAME, version)
            flips[0] += 1

    # idle connections are dropped before uvicorn's 5 s keep-alive timeout closes them:
    # with both at 5 s a client could pick a connection the server was closing
    # (ReadError), a race in the client's pool, not an answer of the server
    limits = httpx.Limits(
        max_connections=clients + 5, max_keepalive_connections=clients + 5, keepalive_expiry=2.0
    )
    async with httpx.AsyncClient(timeout=300, limits=limits) as c:
        await asyncio.gather(*(client(c, s) for s in range(clients)), costly_client(c), flipper())

    def q(v: list[float], p: float) -> float | None:
        return round(float(np.percentile(v, p)), 4) if v else None

    return {
        "requests": len(lat) + len(costly_lat),
        "one_record_requests": len(lat),
        "costly_requests": len(costly_lat),
        "failed": len(failures),
        "failures": failures[:10],
        "versions_seen": {str(k): v for k, v in sorted(versions.items())},
        "alias_flips": flips[0],
        "p50_s": q(lat, 50),
        "p99_s": q(lat, 99),
        "max_s": round(max(lat), 4) if lat else None,
        "p99_while_costly_s": q(lat_during_costly, 99),
        "one_record_while_costly": len(lat_during_costly),
        "costly_median_s": q(costly_lat, 50),
        "requests_per_s": round(len(lat) / args.duration, 1),
    }


def run_load(args: argparse.Namespace, lanes: tuple[str, ...] = ("on", "off")) -> dict[str, Any]:
    """The load test, once per lane setting; returns the figures per setting."""
    from tests.integration.conftest import Server

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    store = Path(tempfile.mkdtemp(prefix="robustness-"))
    pool, costly, dets = setup(store, args.costly_records)
    want = expected(dets, pool, costly, args.costly_k)
    out: dict[str, Any] = {
        "duration_s": args.duration, "clients": args.clients, "flip_every_s": args.flip_every,
        "light_clients": getattr(args, "light_clients", 0),
        "costly": f"{len(costly)} records at k={args.costly_k}, then a {args.costly_pause} s pause",
        "p99_bound_s": P99_BOUND_S,
    }  # fmt: skip
    from anomaly_vae import registry

    light = getattr(args, "light_clients", 0)
    runs = [("", args.clients)] + ([("light_", light)] if light else [])
    for prefix, clients in runs:
        for lane in lanes:
            registry.promote(NAME, 1)
            extra = {} if lane == "on" else {"ANOMALY_VAE_LANE_COST": str(10**15)}
            server = Server(store, NAME, poll=0.5, extra_env=extra)
            try:
                fig = asyncio.run(_load(server.url, pool, costly, want, args, clients))
            finally:
                server.stop()
            out[f"{prefix}lane_{lane}"] = {"clients": clients, **fig}
            print(f"{prefix}lane {lane}: {json.dumps(fig)}", flush=True)
    return out


#: The sets MIN_ESS was read off (scoring/iwae.py), and sets not looked at while choosing.
ESS_CHOSEN_ON = ("cardio", "satellite")
ESS_CONFIRM = ("thyroid", "pendigits", "mammography", "landsat")


def _median(values: np.ndarray, mask: np.ndarray) -> float | None:
    return round(float(np.median(values[mask])), 4) if mask.any() else None


def ess_part(seed: int = 0, rows: int = 400) -> dict[str, Any]:
    """The unreliable flag (ESS below MIN_ESS at K=64) on the sets it was chosen on and
    on sets nobody looked at: the share of held-out normal rows and of outliers flagged,
    and whether a flagged estimate is in fact further from log p(x) (K=5000 taken as
    the truth) than an unflagged one."""
    from anomaly_vae import TabularDetector
    from anomaly_vae.scoring.iwae import MIN_ESS
    from benchmarks.drift import load_set

    out: dict[str, Any] = {"min_ess": MIN_ESS, "k": 64, "reference_k": 5000, "sets": []}
    for name in (*ESS_CHOSEN_ON, *ESS_CONFIRM):
        normal, outliers = load_set(name, seed)
        n_fit = min(len(normal) * 6 // 10, 20_000)
        det = TabularDetector(seed=seed).fit(normal[:n_fit])
        held = normal[n_fit:][:rows]
        both = np.vstack([held, outliers[:rows]])
        is_out = np.r_[np.zeros(len(held), bool), np.ones(min(rows, len(outliers)), bool)]
        arrays = det.encode_rows(both)
        res = det.score_encoded(arrays)
        truth = det.score_encoded(arrays, k=5000).log_likelihood
        err = np.abs(res.log_likelihood - truth)
        flag = res.unreliable

        out["sets"].append({
            "set": name, "role": "chosen on" if name in ESS_CHOSEN_ON else "confirmation",
            "normal_flagged": round(float(flag[~is_out].mean()), 4),
            "outliers_flagged": round(float(flag[is_out].mean()), 4) if is_out.any() else None,
            "median_error_flagged": _median(err, flag),
            "median_error_unflagged": _median(err, ~flag),
            "flagged": int(flag.sum()), "rows": len(flag),
        })  # fmt: skip
        print(f"ess: {out['sets'][-1]}", flush=True)
    return out


def startup_part() -> dict[str, Any]:
    """Seconds from starting the server process to its first /healthz answer, with the
    store reachable, refusing connections, and accepting them but never answering (a
    hung server); and whether /readyz then says why it is not ready."""
    import socket

    from tests.integration.conftest import Server, free_port

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    store = Path(tempfile.mkdtemp(prefix="robustness-start-"))
    from anomaly_vae import TabularDetector, registry
    from anomaly_vae.demo_data import wdbc

    registry.configure(store)
    data = wdbc().drop(columns=["is_outlier"])
    det = TabularDetector(id_column="row_id", seed=0, max_epochs=5).fit(data)
    registry.log_detector(det, name="start", example=data, alias="champion")
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)  # accepts (the kernel does), never answers
    cases = {
        "store reachable": {},
        "connection refused": {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"},
        "store hangs": {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{hung.getsockname()[1]}"},
    }
    out: dict[str, Any] = {}
    try:
        for name, env in cases.items():
            t = time.perf_counter()
            server = Server(store, "start", extra_env=env, wait_ready=False)
            listening = time.perf_counter() - t
            try:
                ready = httpx.get(server.url + "/readyz", timeout=10)
                out[name] = {
                    "seconds_to_listen": round(listening, 2),
                    "readyz": ready.status_code,
                    "reason": ready.json().get("reason"),
                }
            finally:
                server.stop()
            print(f"start-up, {name}: {out[name]}", flush=True)
    finally:
        hung.close()
    return out


def suite_counts() -> dict[str, Any]:
    """The cases the test suite holds for the other robustness figures."""
    sys.path.insert(0, str(ROOT.parent))
    import tests.service.test_bad_inputs as bad
    import tests.service.test_schemathesis as fuzz

    cases = [*bad.CASES, *bad.LIMIT_CASES, *bad.IMAGE_CASES]
    return {
        "bad_input_classes": len({case[0] for case in cases}),
        "bad_input_routes": sorted(
            {c[1] for c in [*bad.CASES, *bad.LIMIT_CASES]} | {"/v1/score/images"}
        ),
        "bad_input_test": "tests/service/test_bad_inputs.py (every case: status and loc)",
        "fuzz_cases_per_route": fuzz.MAX_EXAMPLES,
        "fuzz_test": "tests/service/test_schemathesis.py (0 server errors, 0 schema violations)",
        "property_tests": "tests/service/test_properties.py (hypothesis: the scorer and both "
        "table routes over extreme and special values)",
        "fault_tests": "tests/integration/test_service_faults.py, tests/service/test_model_store.py, "
        "tests/test_bundle.py",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=60.0, help="seconds per load run")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument(
        "--light-clients", type=int, default=4,
        help="a second, lighter load (0: none): the server not saturated by cheap requests",
    )  # fmt: skip
    p.add_argument("--flip-every", type=float, default=5.0, help="seconds between alias flips")
    p.add_argument("--costly-records", type=int, default=100)
    p.add_argument("--costly-k", type=int, default=5000)
    p.add_argument("--costly-pause", type=float, default=2.0)
    p.add_argument("--lanes", default="on,off", help="costly lane settings to run: on, off")
    p.add_argument("--parts", default="load,ess,startup", help="load, ess, startup")
    p.add_argument("--json", type=Path, default=JSON_OUT)
    args = p.parse_args(argv)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    parts = set(args.parts.split(","))
    doc: dict[str, Any] = json.loads(args.json.read_text()) if args.json.exists() else {}
    if "load" in parts:
        doc["load"] = run_load(args, tuple(args.lanes.split(",")))
    if "ess" in parts:
        doc["ess"] = ess_part()
    if "startup" in parts:
        doc["startup"] = startup_part()
    doc["suite"] = suite_counts()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    if args.json == JSON_OUT:
        write_results(doc)
    return 0


def write_results(doc: dict[str, Any]) -> None:
    from benchmarks.results_md import replace_section

    load, suite, ess = doc.get("load", {}), doc["suite"], doc.get("ess")
    rows = []
    for key in ("lane_on", "lane_off", "light_lane_on", "light_lane_off"):
        r = load.get(key)
        if r is None:
            continue
        lane = key.rsplit("_", 1)[1]
        rows.append(
            f"| {r.get('clients', load['clients'])} | {lane} | {r['requests']:,} | {r['failed']} | {r['alias_flips']} "
            f"({', '.join(f'v{k}: {v:,}' for k, v in r['versions_seen'].items())}) | "
            f"{r['costly_requests']} | {r['p50_s'] * 1000:.0f} | {r['p99_s'] * 1000:.0f} | "
            f"{(r['p99_while_costly_s'] or 0) * 1000:.0f} | {r['max_s'] * 1000:.0f} |"
        )
    ratio = ""
    for prefix in ("", "light_"):
        on, off = load.get(f"{prefix}lane_on"), load.get(f"{prefix}lane_off")
        if on and off and on["p99_s"]:
            ratio += (
                f" With {on['clients']} clients the 1-record p99 without the lane is "
                f"{off['p99_s'] / on['p99_s']:.1f}x the p99 with it."
            )
    lines = [
        "## Robustness",
        "",
        "Reproduce: `python benchmarks/robustness.py` (figures also in "
        "`benchmarks/results/robustness.json`).",
        "",
    ]
    if load:
        lines += [
            f"Load: a real uvicorn server (one worker, 2 cores shared with the clients' process) "
            f"on a sqlite MLflow store; {load['clients']} clients (and, in a second run, "
            f"{load.get('light_clients', 0)}) sending 1-record requests for {load['duration_s']:.0f} s "
            f"while the champion alias flips between two versions every {load['flip_every_s']:.0f} s "
            f"and one more client sends {load['costly']}. A request fails unless it is a 200 whose "
            "log-likelihoods are the same bits the version it names gives those records in the "
            "benchmark's own process. The costly lane off (LANE_COST above any request) is the "
            "peer: same load, same run.",
            "",
            "| clients | costly lane | requests | failed | alias flips (answers per version) | costly "
            "requests | p50, 1 record (ms) | p99 (ms) | p99 while a costly one is in flight (ms) | max (ms) |",
            "|---:|---|---:|---:|---|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"The stated bound for the 1-record p99 with 50 clients is {P99_BOUND_S:.1f} s (the "
            "slow test `tests/integration/test_load.py` asserts it, 0 failures and both "
            f"versions answering).{ratio} Fifty closed-loop clients saturate one worker (each "
            "request waits for the others' parsing and scoring, the clients' own process "
            "takes a core), so there the wait is queueing, lane or not; with 4 clients the "
            "costly request is what a 1-record request waited for, and the lane removes it. "
            "(The 'while a costly one is in flight' column counts requests that began and "
            "ended during one, which without the lane are few.)",
            "",
        ]
    lines += [
        f"Bad inputs: {suite['bad_input_classes']} classes across "
        f"{', '.join(suite['bad_input_routes'])} ({suite['bad_input_test']}); every one answers "
        "its 4xx with `loc`, "
        f"none a 500. Fuzzing: a derandomized schemathesis run, {suite['fuzz_cases_per_route']} "
        "generated cases per route plus the document's examples, reaching 200 on "
        f"/v1/score, /invocations and /v1/score/images ({suite['fuzz_test']}). Properties: "
        f"{suite['property_tests']}. Faults: {suite['fault_tests']} (store down at start, a "
        "model registered late, a champion that fails to load, 100 failed loads leaving no "
        "temporary folder, SIGKILL of a two-worker master, a consistently edited bundle "
        "refused when signing is on).",
        "",
    ]
    start = doc.get("startup")
    if start:
        lines += [
            "Start-up (seconds from starting the process, imports included, to the first "
            "`/healthz` answer; then `/readyz`): "
            + "; ".join(
                f"{name}: {r['seconds_to_listen']:.1f} s, readyz {r['readyz']}"
                + (f" ({r['reason'][:60]}...)" if r.get("reason") else "")
                for name, r in start.items()
            )
            + ". A store that refuses connections fails at once; one that hangs delays "
            "listening by at most STARTUP_WAIT_S = 5 s.",
            "",
        ]
    if ess:
        lines += [
            f"Unreliable estimates: a record is flagged when the effective sample size of its "
            f"K={ess['k']} importance weights is below MIN_ESS = {ess['min_ess']:g} "
            f"(scoring/iwae.py). The threshold was read off {' and '.join(ESS_CHOSEN_ON)}; "
            f"{', '.join(ESS_CONFIRM)} were not looked at while choosing. Error: |log p(x) at "
            f"K={ess['k']} - at K={ess['reference_k']}|, nats, on up to 400 held-out normal "
            "rows and 400 outliers per set.",
            "",
            "| set | role | normal rows flagged | outliers flagged | median error, flagged | "
            "median error, not flagged |",
            "|---|---|---:|---:|---:|---:|",
            *[
                f"| {r['set']} | {r['role']} | {r['normal_flagged']:.1%} | "
                + (f"{r['outliers_flagged']:.1%}" if r["outliers_flagged"] is not None else "-")
                + f" | {r['median_error_flagged'] if r['median_error_flagged'] is not None else '-'}"
                f" | {r['median_error_unflagged']} |"
                for r in ess["sets"]
            ],
            "",
        ]
    replace_section(ROOT / "RESULTS.md", "## Robustness", "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or None))
