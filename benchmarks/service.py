"""This service against `mlflow models serve`, same model version, same machine, one run.

Trains a detector on ADBench's WDBC (scikit-learn's breast-cancer data), registers it in
a temporary sqlite MLflow store, starts both servers on loopback (one process each, the
service at its default K), then alternates requests between them so that both see the
same machine load:

* single-record latency: sequential 1-record requests on a kept-alive connection (the standard
  library's ``http.client``, the lightest client at hand), p50/p99;
* throughput: sequential 1000-record requests, records per second.

This service is timed in both of its request forms: ``records`` in and result objects
out (the form ``mlflow models serve`` takes too), and ``columns`` in with
``"orient": "columns"`` out, the cheaper form for large requests. A second instance with
live drift monitoring off (``ANOMALY_VAE_DRIFT=false``) takes the same requests, so the
monitor's share of the throughput is measured, not guessed; the drift task's own CPU
seconds per 1000 records come from the monitored instance's ``/metrics``.

The in-process scorer runs in the same alternation, on the same records and torch
threads: the detector's ``score_samples`` on the records' DataFrame (what a server could
at best deliver from a parsed table), and its kernel alone on records encoded once. The
servers' throughput is reported as a fraction of the first: the ratio of the medians
over the run, and the median of the ratios paired by block (each block of a server's
requests against the in-process scorer's block right after it).

Writes the figures and the ratios into benchmarks/RESULTS.md ("## Service") and
benchmarks/results/service.json.

    python benchmarks/service.py [--single 300] [--bulk 20]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--single", type=int, default=300, help="1-record requests per server")
    p.add_argument("--bulk", type=int, default=40, help="1000-record requests per server")
    p.add_argument(
        "--block", type=int, default=20, help="requests per server before switching (bulk: /10)"
    )
    args = p.parse_args(argv)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    import warnings

    warnings.filterwarnings("ignore")

    from anomaly_vae.service.monitor import INGEST_SECONDS

    from anomaly_vae import TabularDetector, registry
    from anomaly_vae.demo_data import wdbc
    from benchmarks.results_md import replace_section
    from tests.integration.conftest import MlflowServe, Server

    tmp = Path(tempfile.mkdtemp(prefix="svc-bench-"))
    registry.configure(tmp)
    data = wdbc().drop(columns=["is_outlier"])
    det = TabularDetector(id_column="row_id", seed=0).fit(data)
    registry.log_detector(det, name="bench", example=data, alias="champion")
    ours = Server(tmp, "bench")
    unmonitored = Server(tmp, "bench", extra_env={"ANOMALY_VAE_DRIFT": "false"})
    theirs_server = MlflowServe(tmp, "models:/bench/1")
    theirs = theirs_server.url
    conns: dict[str, http.client.HTTPConnection] = {}
    try:
        rows = json.loads(data.to_json(orient="records"))
        bulk = [rows[i % len(rows)] for i in range(1000)]

        # bodies encoded once: the client's own JSON encoding is not the servers' cost
        def body(doc: dict) -> bytes:
            return json.dumps(doc).encode()

        def columnar(records: list[dict]) -> bytes:
            cols = {k: [r[k] for r in records] for k in records[0]}
            return body({"columns": cols, "orient": "columns"})

        one = {
            "ours": body({"records": rows[:1]}),
            "ours_columns": columnar(rows[:1]),
            "mlflow": body({"dataframe_records": rows[:1]}),
        }
        many = {
            "ours": body({"records": bulk}),
            "ours_columns": columnar(bulk),
            "mlflow": body({"dataframe_records": bulk}),
        }
        url = {
            "ours": ours.url + "/v1/score",
            "ours_columns": ours.url + "/v1/score",
            "mlflow": theirs + "/invocations",
            "unmonitored": unmonitored.url + "/v1/score",
            "unmonitored_columns": unmonitored.url + "/v1/score",
        }
        for form in ("", "_columns"):
            one["unmonitored" + form] = one["ours" + form]
            many["unmonitored" + form] = many["ours" + form]
        headers = {"content-type": "application/json"}
        lat: dict[str, list[float]] = {name: [] for name in [*url, "in_process"]}
        thr: dict[str, list[float]] = {name: [] for name in [*url, "in_process", "kernel"]}
        paired: dict[str, list[float]] = {name: [] for name in url}
        import pandas as pd

        one_frame = pd.DataFrame(rows[:1])
        bulk_frame = pd.DataFrame(bulk)
        encoded = det.encode_rows(bulk_frame)

        def in_process(frame: pd.DataFrame) -> float:
            t = time.perf_counter()
            det.score_samples(frame)
            return time.perf_counter() - t

        def kernel_only() -> float:
            t = time.perf_counter()
            det.score_encoded(encoded)
            return time.perf_counter() - t

        # the standard library's client, one kept-alive connection per server: httpx's own
        # work per request (0.17 ms on /healthz, 0.45 ms on a one-record score, measured)
        # was part of every server's latency
        for name, address in url.items():
            parts = urlsplit(address)
            conns[name] = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)

        def timed(name: str, payload: bytes) -> float:
            conn, path = conns[name], urlsplit(url[name]).path
            t = time.perf_counter()
            conn.request("POST", path, body=payload, headers=headers)
            response = conn.getresponse()
            response.read()
            elapsed = time.perf_counter() - t
            if response.status != 200:
                raise RuntimeError(f"{name}: HTTP {response.status}")
            return elapsed

        for _ in range(10):  # warm both
            for name in url:
                timed(name, one[name])
        # alternate blocks of requests, so both see the same machine over the run but
        # neither is timed while the other's threads are still spinning down (torch's
        # OpenMP workers spin after each request: alternating single requests doubled
        # the latency of whichever server came second)
        for _ in range(10):
            in_process(one_frame)
        for start in range(0, args.single, args.block):
            for name in url:
                for _ in range(min(args.block, args.single - start)):
                    lat[name].append(timed(name, one[name]))
            for _ in range(min(args.block, args.single - start)):
                lat["in_process"].append(in_process(one_frame))
        bulk_block = max(1, args.block // 10)
        for start in range(0, args.bulk, bulk_block):
            m = min(bulk_block, args.bulk - start)
            for name in url:
                for _ in range(m):
                    thr[name].append(1000 / timed(name, many[name]))
            for _ in range(m):
                thr["in_process"].append(1000 / in_process(bulk_frame))
                thr["kernel"].append(1000 / kernel_only())
            # each block's servers against the in-process scorer right after them: the
            # machine's drift over the run cancels out of these ratios
            for name in url:
                paired[name].append(
                    float(np.mean(thr[name][-m:]) / np.mean(thr["in_process"][-m:]))
                )
        time.sleep(2 * INGEST_SECONDS)  # the drift task takes its queue every INGEST_SECONDS
        drift_cpu, monitored_records = _drift_cost(conns["ours"])
    finally:
        for conn in conns.values():
            conn.close()
        theirs_server.stop()
        ours.stop()
        unmonitored.stop()

    def ms(v: list[float], q: float) -> float:
        return float(np.percentile(v, q) * 1000)

    fig: dict[str, dict[str, float]] = {
        name: {
            **({"p50_ms": ms(lat[name], 50), "p99_ms": ms(lat[name], 99)} if lat.get(name) else {}),
            "records_per_s": float(np.median(thr[name])),
        }
        for name in thr
    }
    ratio_thr = fig["ours"]["records_per_s"] / fig["mlflow"]["records_per_s"]
    ratio_p50 = fig["ours"]["p50_ms"] / fig["mlflow"]["p50_ms"]
    best = fig["in_process"]["records_per_s"]
    headline = {
        "k": det.sampler_.k,
        "service_vs_in_process": fig["ours"]["records_per_s"] / best,
        "service_columns_vs_in_process": fig["ours_columns"]["records_per_s"] / best,
        "mlflow_vs_in_process": fig["mlflow"]["records_per_s"] / best,
        "service_vs_in_process_paired": float(np.median(paired["ours"])),
        "service_columns_vs_in_process_paired": float(np.median(paired["ours_columns"])),
        "mlflow_vs_in_process_paired": float(np.median(paired["mlflow"])),
        "kernel_vs_in_process": fig["kernel"]["records_per_s"] / best,
        "service_vs_mlflow": ratio_thr,
        "p50_ms": fig["ours"]["p50_ms"],
        "p99_ms": fig["ours"]["p99_ms"],
        "p50_vs_mlflow": ratio_p50,
        "p50_columns_ms": fig["ours_columns"]["p50_ms"],
        "p50_columns_vs_mlflow": fig["ours_columns"]["p50_ms"] / fig["mlflow"]["p50_ms"],
        "in_process_p50_ms": fig["in_process"]["p50_ms"],
        "unmonitored_vs_in_process": fig["unmonitored"]["records_per_s"] / best,
        "unmonitored_columns_vs_in_process": fig["unmonitored_columns"]["records_per_s"] / best,
        "unmonitored_vs_in_process_paired": float(np.median(paired["unmonitored"])),
        "unmonitored_columns_vs_in_process_paired": float(np.median(paired["unmonitored_columns"])),
        "drift_cpu_ms_per_1000_records": drift_cpu / max(monitored_records, 1) * 1e6,
    }
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "service.json").write_text(
        json.dumps(
            {"headline": headline, "figures": fig, "single": args.single, "bulk": args.bulk},
            indent=1,
        )
    )
    lines = [
        "## Service: this service against `mlflow models serve`",
        "",
        "Reproduce: `python benchmarks/service.py`",
        "",
        f"Same registered version (WDBC detector, K={det.sampler_.k}), both on loopback with one process at their defaults, in one run: "
        f"{args.single} sequential 1-record requests each (kept-alive connection), then {args.bulk} sequential 1000-record requests each, "
        f"in alternating blocks of {args.block} (bulk: {max(1, args.block // 10)}) requests per server. Request bodies are encoded once, before timing.",
        "",
        "| server | p50 latency, 1 record (ms) | p99 latency, 1 record (ms) | throughput, 1000-record requests (records/s) |",
        "|---|---:|---:|---:|",
        f"| anomaly-vae `/v1/score`, `records` in, `results` out | {fig['ours']['p50_ms']:.2f} | {fig['ours']['p99_ms']:.2f} | {fig['ours']['records_per_s']:,.0f} |",
        f'| anomaly-vae `/v1/score`, `columns` in, `"orient": "columns"` out | {fig["ours_columns"]["p50_ms"]:.2f} | {fig["ours_columns"]["p99_ms"]:.2f} | {fig["ours_columns"]["records_per_s"]:,.0f} |',
        f"| `mlflow models serve` `/invocations` | {fig['mlflow']['p50_ms']:.2f} | {fig['mlflow']['p99_ms']:.2f} | {fig['mlflow']['records_per_s']:,.0f} |",
        f"| the same service, drift monitoring off, `records` | {fig['unmonitored']['p50_ms']:.2f} | {fig['unmonitored']['p99_ms']:.2f} | {fig['unmonitored']['records_per_s']:,.0f} |",
        f"| the same service, drift monitoring off, `columns` | {fig['unmonitored_columns']['p50_ms']:.2f} | {fig['unmonitored_columns']['p99_ms']:.2f} | {fig['unmonitored_columns']['records_per_s']:,.0f} |",
        f"| in-process `score_samples` on the records' DataFrame | {fig['in_process']['p50_ms']:.2f} | {fig['in_process']['p99_ms']:.2f} | {best:,.0f} |",
        f"| in-process kernel on records encoded once | | | {fig['kernel']['records_per_s']:,.0f} |",
        "",
        f"Throughput ratio (ours / mlflow): {ratio_thr:.2f}x. p50 latency ratio (ours / mlflow): {ratio_p50:.2f}. "
        f"Bulk throughput as a fraction of the in-process `score_samples`: this service **{headline['service_vs_in_process']:.2f}** with records, "
        f"**{headline['service_columns_vs_in_process']:.2f}** with columns (p50 {headline['p50_columns_ms']:.2f} ms, {headline['p50_columns_vs_mlflow']:.2f} of mlflow's), "
        f"`mlflow models serve` {headline['mlflow_vs_in_process']:.2f} (the kernel alone: {headline['kernel_vs_in_process']:.2f}), each the ratio of the medians over the run. "
        f"Paired by block (each block's throughput over the in-process scorer's right after it, median over the {len(paired['ours'])} blocks): "
        f"records **{headline['service_vs_in_process_paired']:.2f}**, columns **{headline['service_columns_vs_in_process_paired']:.2f}**, mlflow {headline['mlflow_vs_in_process_paired']:.2f}.",
        "",
        f"Live drift monitoring (on by default) is part of the service's figures above. With it off, paired: records {headline['unmonitored_vs_in_process_paired']:.2f}, "
        f"columns {headline['unmonitored_columns_vs_in_process_paired']:.2f} (ratio of the medians: {headline['unmonitored_vs_in_process']:.2f}, {headline['unmonitored_columns_vs_in_process']:.2f}). "
        f"The drift task's thread spent {headline['drift_cpu_ms_per_1000_records']:.2f} CPU-ms per 1000 records it took (`anomaly_vae_drift_cpu_seconds_total` over `anomaly_vae_drift_records_total`: "
        "this run's mix of one-record and 1000-record requests, its window checks included). Over a longer run at saturation the windows take only "
        "the requests `drift_budget` pays for (a share of a core); the martingale takes every record.",
        "",
    ]
    section = "\n".join(lines) + "\n"
    results = ROOT / "RESULTS.md"
    replace_section(results, "## Service: this service against", section)
    print(section)
    return 0


def _drift_cost(conn: http.client.HTTPConnection) -> tuple[float, float]:
    """(CPU seconds the service's drift task spent, records it took), read from
    ``/metrics`` on ``conn``: ``anomaly_vae_drift_cpu_seconds_total`` and the sum of
    ``anomaly_vae_drift_records_total`` over model versions."""
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    cpu, records = None, 0.0
    for line in response.read().decode().splitlines():
        if line.startswith("anomaly_vae_drift_cpu_seconds_total"):
            cpu = float(line.split()[-1])
        elif line.startswith("anomaly_vae_drift_records_total{"):
            records += float(line.split()[-1])
    if cpu is None:
        msg = "the service's /metrics has no anomaly_vae_drift_cpu_seconds_total"
        raise RuntimeError(msg)
    return cpu, records


if __name__ == "__main__":
    sys.exit(main())
