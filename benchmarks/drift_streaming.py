"""The streaming part of benchmarks/drift.py: live drift monitoring as the service runs it.

1. **Ever-alarm rate on long no-drift streams.** Many streams of 10^5 records, each with
   its own calibration set of n scores, the stream's scores exchangeable with it. A
   conformal p-value only sees ranks, so for continuous scores its law is the same
   whatever the score's distribution: uniform draws stand for any model's scores, and
   the figure holds for every detector. The service's martingale (its own classes:
   :class:`~anomaly_vae.drift.martingale.OnlineConformal` ranks, Simple Jumper at level
   0.05) against the same bets on p-values from the fixed calibration set alone (an
   inductive conformal martingale, whose guarantee holds only for exact uniforms).
   Reported: the share of streams that ever alarm, with its binomial standard error.
2. **Detection delay** on part 1's drift kinds (benchmarks/drift.py), on real ADBench
   tables: a stream of held-out normal rows in random order, then from the change on rows
   of the drifted pool; the delay is the number of records after the change until the
   alarm, for the martingale (the service's, level 0.05) and for the count-window check
   (the service's defaults: the latest 5,000 records, checked every 500, window level
   0.01). Streams that do not alarm within ``--delay-max`` records count as not detected.
3. **Throughput with monitoring on and off.** Two real uvicorn servers of the same
   registered version, one with ``ANOMALY_VAE_DRIFT=false``, loaded in turn by the same
   closed-loop clients posting 1000-record requests, in alternating slots; after each
   slot of the monitored server the next waits until its drift task has taken every
   record, so that work is not done in the other's slot. Each server's CPU (user and
   system, every thread, from /proc) per record is measured beside its records/s: the
   wall clock of this machine's slots moves with its neighbours, CPU per record much less.

Nothing here chooses a default: the jump rate (0.01, Vovk's), the levels and the window
sizes were set before this part ran; it measures them.
"""

from __future__ import annotations

import itertools
import json
import math
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

LEVEL = 0.05
JUMP = 0.01


# ---------------------------------------------------------------------- 1. null streams
def _jumper_step(w: np.ndarray, p: np.ndarray) -> np.ndarray:
    """One Simple Jumper step for many streams at once: weights [S, 3], p-values [S];
    returns the capital's factor [S] and updates ``w`` in place (the same arithmetic as
    :class:`~anomaly_vae.drift.martingale.SimpleJumper`, vectorized over streams)."""
    w *= 1.0 - JUMP
    w += JUMP / 3.0
    w[:, 0] *= 1.0 - (p - 0.5)
    w[:, 2] *= 1.0 + (p - 0.5)
    total = w.sum(1)
    w /= total[:, None]
    return total


def fixed_calibration_streams(
    streams: int, length: int, n: int, seed: int, block: int = 2000
) -> dict[str, Any]:
    """The peer: the same martingale on p-values against the fixed calibration set alone
    (what an inductive conformal martingale does), ``streams`` streams each with its own
    set of ``n`` scores."""
    rng = np.random.default_rng(seed)
    cal = np.sort(rng.random((streams, n)), axis=1)
    # every stream's calibration set in one sorted array, stream s moved to [s, s + 1),
    # so one searchsorted ranks a block of every stream's records
    offset = np.arange(streams, dtype=np.float64)[:, None]
    flat = (cal + offset).ravel()
    w = np.full((streams, 3), 1 / 3)
    log_v = np.zeros(streams)
    ever = np.zeros(streams, bool)
    first = np.full(streams, -1)
    threshold = math.log(1 / LEVEL)
    for start in range(0, length, block):
        m = min(block, length - start)
        x = rng.random((streams, m))
        below = np.searchsorted(flat, (x + offset).ravel()).reshape(streams, m)
        below -= (np.arange(streams) * n)[:, None]
        p = (below + rng.random((streams, m))) / (n + 1)
        for t in range(m):
            log_v += np.log(_jumper_step(w, p[:, t]))
            hit = (log_v >= threshold) & ~ever
            first[hit] = start + t
            ever |= hit
    return _rate(ever, first, streams)


def _rate(ever: np.ndarray, first: np.ndarray, streams: int) -> dict[str, Any]:
    rate = float(ever.mean())
    return {
        "ever_alarm": rate,
        "se": math.sqrt(max(rate * (1 - rate), 1e-12) / streams),
        "alarms": int(ever.sum()),
        "streams": streams,
        "median_alarm_at": float(np.median(first[ever])) if ever.any() else None,
    }


def _online_chunk(job: tuple[int, int, int, int]) -> list[int]:
    """For streams ``start``..``stop``: the record at which the service's martingale
    (its own classes) first alarmed, -1 for none."""
    from anomaly_vae.drift.martingale import OnlineConformal, SimpleJumper

    start, stop, length, n = job
    out = []
    for s in range(start, stop):
        rng = np.random.default_rng([s, n, 1])
        online = OnlineConformal(rng.random(n))
        m = SimpleJumper(level=LEVEL, jump=JUMP)
        hit = -1
        for b in range(0, length, 1000):
            x = rng.random(min(1000, length - b))
            m.update(online.p_values(x, rng.random(x.size)))
            if m.alarm and hit < 0:
                hit = b  # to the block: the rate, not the time, is the figure
        out.append(hit)
    return out


def null_streams(streams: int, length: int, sizes: tuple[int, ...], seed: int,
                 online_streams: int) -> dict[str, Any]:  # fmt: skip
    """Ever-alarm rates on no-drift streams: the service's martingale on online ranks
    (``online_streams`` streams per calibration size, its own code, in two processes) and
    the same martingale against a fixed calibration set (``streams``, vectorized)."""
    from concurrent.futures import ProcessPoolExecutor

    out: dict[str, Any] = {"length": length, "level": LEVEL, "sizes": {}}
    for n in sizes:
        t0 = time.perf_counter()
        row: dict[str, Any] = {
            "fixed_calibration": fixed_calibration_streams(streams, length, n, seed)
        }
        cut = np.linspace(0, online_streams, 9).astype(int)
        jobs = [(int(a), int(b), length, n) for a, b in itertools.pairwise(cut)]
        with ProcessPoolExecutor(2) as pool:
            hits = np.array([h for part in pool.map(_online_chunk, jobs) for h in part])
        row["service"] = _rate(hits >= 0, hits, online_streams)
        row["seconds"] = round(time.perf_counter() - t0)
        out["sizes"][str(n)] = row
        print(f"null streams, n={n}: {row}", flush=True)
    return out


# ---------------------------------------------------------------------- 2. delays
class Stream:
    """Rows of several scored pools in one order, with the attributes benchmarks/drift.py's
    ``Pool.add`` reads (so window statistics of any slice are built the same way)."""

    def __init__(
        self, segments: list[tuple[Any, np.ndarray]], order: np.ndarray | None = None
    ) -> None:
        from anomaly_vae.data.preprocessing import TabularArrays

        keys = ("normality", "flags", "mu", "kl", "contributions", "keys")
        self.out = {k: np.concatenate([pl.out[k][ix] for pl, ix in segments]) for k in keys}
        self.arrays = TabularArrays.concat([pl.arrays.take(ix) for pl, ix in segments])
        self.order = segments[0][0].order
        if order is not None:
            self.out = {k: v[order] for k, v in self.out.items()}
            self.arrays = self.arrays.take(order)

    def add(self, stats: Any, idx: np.ndarray) -> None:
        from benchmarks.drift import Pool

        Pool.add(self, stats, idx)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.out["normality"])


def martingale_delay(det: Any, stream: Stream, change: int, seed: int) -> tuple[float, bool]:
    """(records after ``change`` until the service's martingale alarms, inf if it does
    not; whether it alarmed before the change)."""
    from anomaly_vae.drift.martingale import OnlineConformal, SimpleJumper

    cal = det.calibration_
    online = OnlineConformal(cal.reference, weight=cal.n / cal.reference.size)
    m = SimpleJumper(level=LEVEL, jump=JUMP)
    rng = np.random.default_rng(seed)
    p = online.p_values(stream.out["normality"], rng.random(len(stream)))
    chunk = 256
    for start in range(0, len(p), chunk):
        saved = m.to_dict()
        m.update(p[start : start + chunk])
        if not m.alarm:
            continue
        m = SimpleJumper.from_dict(saved)  # replay the chunk to find the very record
        for i in range(start, min(start + chunk, len(p))):
            m.update(p[i : i + 1])
            if m.alarm:
                return (math.inf, True) if i < change else (float(i - change + 1), False)
    return math.inf, False


def window_delay(det: Any, stream: Stream, args: Any) -> float:
    """Records after the change until the count-window check alarms: buckets of
    ``check_every`` records, the window the latest ``window_records`` records to a
    bucket, checked after each bucket from the change on."""
    from anomaly_vae.drift import WindowStats
    from anomaly_vae.drift.check import evaluate

    change, every = args.delay_before, args.check_every
    buckets: list[Any] = []
    for start in range(0, len(stream), every):
        stop = min(start + every, len(stream))
        stats = WindowStats(det.reference_)
        stream.add(stats, np.arange(start, stop))
        buckets.append(stats)
        if stop <= change:
            continue
        merged, n = WindowStats(det.reference_), 0
        for b in reversed(buckets):
            if n >= args.window_records:
                break
            merged.merge(b)
            n += b.n
        if evaluate(merged, det.calibration_, level=0.01).verdict == "drift":
            return float(stop - change)
    return math.inf


def detection_delays(args: Any) -> dict[str, Any]:
    """Per set and drift kind, the median delay of the martingale and of the window
    check (see the module docstring)."""
    from anomaly_vae import TabularDetector
    from benchmarks.drift import Pool, load_set

    out: dict[str, Any] = {"level": LEVEL, "window_level": 0.01, "before": args.delay_before,
                           "max": args.delay_max, "reps": args.delay_reps,
                           "window_reps": args.window_reps, "check_every": args.check_every,
                           "window_records": args.window_records, "sets": {}}  # fmt: skip
    for name in args.delay_sets:
        normal, outliers = load_set(name, args.seed)
        n_fit = min(args.fit_rows, len(normal) // 2)
        train, pool_x = normal[:n_fit], normal[n_fit:]
        det = TabularDetector(seed=args.seed).fit(train)
        rng = np.random.default_rng(args.seed + 7)
        cap = min(len(pool_x), args.drift_pool)
        base = pool_x[:cap]
        # the drift kinds of part 1, made the same way (benchmarks/drift.py's run_set)
        stds = train.std(0)
        distinct = np.array([len(np.unique(train[:, j])) for j in range(train.shape[1])])
        shift_col = int(np.argmax(distinct))
        corr = np.nan_to_num(np.corrcoef(train, rowvar=False))
        np.fill_diagonal(corr, 0.0)
        dep_col = int(np.argmax(np.abs(corr).max(0)))
        kinds: dict[str, np.ndarray] = {}
        for sd in (0.1, 0.25, 0.5):
            x = base.copy()
            x[:, shift_col] += sd * stds[shift_col]
            kinds[f"mean shift {sd} sd"] = x
        x = base.copy()
        x[:, dep_col] = x[rng.permutation(cap), dep_col]
        kinds["shuffled column"] = x
        pool = Pool(det, base)
        pools = {k: Pool(det, v) for k, v in kinds.items()}
        out_pool = Pool(det, outliers) if len(outliers) else None
        res: dict[str, Any] = {"rows_fit": n_fit, "pool": cap, "columns": train.shape[1],
                               "calibration": int(det.calibration_.reference.size), "kinds": {}}  # fmt: skip
        names = [*kinds, *(["5% outliers", "20% outliers"] if out_pool is not None else [])]
        for kind in names:
            m_delays: list[float] = []
            w_delays: list[float] = []
            early = 0
            for rep in range(args.delay_reps):
                before = rng.choice(cap, args.delay_before, replace=False)
                after = rng.choice(cap, args.delay_max, replace=True)
                if kind.endswith("outliers"):
                    assert out_pool is not None
                    share = 0.05 if kind.startswith("5%") else 0.2
                    k_out = rng.binomial(args.delay_max, share)
                    oidx = rng.choice(len(outliers), k_out, replace=True)
                    segments = [(pool, before), (pool, after[: args.delay_max - k_out]),
                                (out_pool, oidx)]  # fmt: skip
                    tail = args.delay_before + rng.permutation(args.delay_max)
                    stream = Stream(segments, np.concatenate([np.arange(args.delay_before), tail]))
                else:
                    stream = Stream([(pool, before), (pools[kind], after)])
                d, was_early = martingale_delay(det, stream, args.delay_before, seed=rep)
                early += was_early
                m_delays.append(d)
                if rep < args.window_reps:
                    w_delays.append(window_delay(det, stream, args))
            res["kinds"][kind] = {
                "martingale_median": _median(m_delays),
                "martingale_detected": float(np.mean(np.isfinite(m_delays))),
                "martingale_alarm_before_change": early,
                "window_median": _median(w_delays),
                "window_detected": float(np.mean(np.isfinite(w_delays))) if w_delays else None,
            }
            print(f"delay {name} {kind}: {res['kinds'][kind]}", flush=True)
        out["sets"][name] = res
    return out


def _median(values: list[float]) -> float | None:
    """The median, None when at least half did not alarm (inf)."""
    if not values:
        return None
    med = float(np.median(values))
    return med if math.isfinite(med) else None


# ---------------------------------------------------------------------- 3. throughput
DRIFT_CPU = "anomaly_vae_drift_cpu_seconds_total"


def throughput(args: Any, table: str | None = None) -> dict[str, Any]:
    """Records/s of two real servers, drift monitoring on and off (module docstring), of
    a detector fitted on WDBC (scikit-learn's copy) or, with ``table``, on that ADBench
    set's normal rows (its columns as numeric features)."""
    import os

    import httpx
    import pandas as pd

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    from anomaly_vae import TabularDetector, registry
    from anomaly_vae.demo_data import wdbc
    from tests.integration.conftest import Server

    tmp = Path(tempfile.mkdtemp(prefix="drift-throughput-"))
    registry.configure(tmp)
    if table is None:
        data = wdbc().drop(columns=["is_outlier"])
    else:
        from benchmarks.drift import load_set

        normal, _ = load_set(table, args.seed)
        data = pd.DataFrame(normal, columns=[f"x{j}" for j in range(normal.shape[1])])
        data.insert(0, "row_id", [f"r{i}" for i in range(len(data))])
    det = TabularDetector(id_column="row_id", seed=0).fit(data)
    registry.log_detector(det, name="bench", example=data, alias="champion")
    servers = {
        "on": Server(tmp, "bench", extra_env={"ANOMALY_VAE_DRIFT": "true"}),
        "off": Server(tmp, "bench", extra_env={"ANOMALY_VAE_DRIFT": "false"}),
    }
    rows = json.loads(data.to_json(orient="records"))
    body = json.dumps({"records": [rows[i % len(rows)] for i in range(1000)]}).encode()
    headers = {"content-type": "application/json"}
    rates: dict[str, list[float]] = {"on": [], "off": []}
    posted = {"on": 0, "off": 0}
    catch_up: list[float] = []  # seconds the drift task needed after an "on" slot ended

    def drift_records(url: str, metric: str = "anomaly_vae_drift_records_total") -> float:
        text = httpx.get(url + "/metrics", timeout=30).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith((metric + "{", metric + " "))
        )

    def cpu_seconds(name: str) -> float:
        # the server process's user + system CPU, every thread (its drift task's too);
        # CPU per record is the steadier figure where neighbours move the wall clock
        fields = Path(f"/proc/{servers[name].proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    cpu: dict[str, list[float]] = {"on": [], "off": []}  # CPU ms per 1000 records, by slot

    def slot(name: str) -> float:
        url = servers[name].url
        cpu0 = cpu_seconds(name)
        stop = time.monotonic() + args.slot_seconds
        counts = [0] * args.clients

        def client(i: int) -> None:
            with httpx.Client(timeout=120) as c:
                while time.monotonic() < stop:
                    c.post(url + "/v1/score", content=body, headers=headers).raise_for_status()
                    counts[i] += 1000

        t0 = time.monotonic()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        posted[name] += sum(counts)
        if name == "on":  # its drift task finishes before the other's slot starts
            t1 = time.monotonic()
            deadline = t1 + 60
            while drift_records(url) < posted[name] and time.monotonic() < deadline:
                time.sleep(0.1)
            catch_up.append(time.monotonic() - t1)
        cpu[name].append(1e6 * (cpu_seconds(name) - cpu0) / max(sum(counts), 1))
        return sum(counts) / elapsed

    try:
        for name in servers:  # warm both
            httpx.post(servers[name].url + "/v1/score", content=body, headers=headers, timeout=60)
            posted[name] += 1000
        cpu_start = {name: cpu_seconds(name) for name in servers}
        drift_cpu_start = drift_records(servers["on"].url, DRIFT_CPU)
        for _ in range(args.slots):
            for name in ("on", "off") if _ % 2 == 0 else ("off", "on"):
                rates[name].append(slot(name))
                print(f"throughput {name}: {rates[name][-1]:,.0f} records/s", flush=True)
        # the whole run's CPU, checks between slots included, per record each server took
        cpu_total = {
            name: 1e6 * (cpu_seconds(name) - cpu_start[name]) / max(posted[name] - 1000, 1)
            for name in servers
        }
        # the drift thread's own CPU over the run: the rest of the difference is the
        # request path's (contributions) and what the thread costs the others (the GIL)
        drift_cpu = drift_records(servers["on"].url, DRIFT_CPU) - drift_cpu_start
        monitored = drift_records(servers["on"].url)
        unwindowed = drift_records(servers["on"].url, "anomaly_vae_drift_unwindowed_records_total")
        state = httpx.get(servers["on"].url + "/v1/drift", timeout=30).json()
    finally:
        for srv in servers.values():
            srv.stop()
    on, off = float(np.median(rates["on"])), float(np.median(rates["off"]))
    # slot i of each server ran back to back, so their ratio shares the machine's state
    paired = [a / b for a, b in zip(rates["on"], rates["off"], strict=True)]
    return {
        "records_per_s_on": on, "records_per_s_off": off, "ratio": on / off,
        "paired_ratios": paired, "paired_ratio_median": float(np.median(paired)),
        "catch_up_seconds": catch_up,
        "cpu_ms_per_1000_on": cpu_total["on"], "cpu_ms_per_1000_off": cpu_total["off"],
        "cpu_ratio": cpu_total["on"] / cpu_total["off"],
        "drift_thread_cpu_ms_per_1000": 1e6 * drift_cpu / max(posted["on"] - 1000, 1),
        "slot_cpu_ms_per_1000_on": cpu["on"], "slot_cpu_ms_per_1000_off": cpu["off"],
        "paired_cpu_ratio_median": float(
            np.median([a / b for a, b in zip(cpu["on"], cpu["off"], strict=True)])
        ),
        "slots": args.slots, "slot_seconds": args.slot_seconds, "clients": args.clients,
        "slot_rates_on": rates["on"], "slot_rates_off": rates["off"],
        "monitored_records": monitored, "posted_records_on": posted["on"],
        "unwindowed_records": unwindowed,
        "windows_checked": sorted(state.get("windows", {})),
        "table": table or "wdbc", "columns": int(data.shape[1] - 1),
    }  # fmt: skip
