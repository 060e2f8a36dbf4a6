"""Live drift monitoring, off the request path.

A scoring route hands its records to :meth:`DriftMonitor.submit`, which only appends
them to a bounded queue; a background thread per worker process does the rest:

- **The martingale.** Each record scored at the model's own K is ranked against the
  calibration scores and every record of the version's stream before it
  (:class:`~anomaly_vae.drift.martingale.OnlineConformal`); the smoothed p-values feed,
  in arrival order, a Simple Jumper at ``drift_level``. If the calibration set and the
  stream are exchangeable, those p-values are independent and uniform, and the chance
  that the alarm *ever* fires is at most ``drift_level``, however long the service runs
  (plus 1e-6 once 10^7 records have frozen the reference). Records scored at another K
  are not monitored (their scores are not comparable with the calibration scores).
- **The windows.** Records also go into buckets of mergeable
  :class:`~anomaly_vae.drift.WindowStats` (closed at ``drift_bucket_records`` records or
  ``drift_bucket_seconds``). Every ``drift_interval_seconds`` the window checks of
  :func:`~anomaly_vae.drift.check.evaluate` run on the count window (the latest
  ``drift_window_records`` records, to a bucket) and the time window (the buckets of the
  last ``drift_window_seconds``), at ``drift_window_level``. The requests a step takes
  into the windows are added in one update (the statistics merge exactly), so a stream
  of one-record requests costs the windows about what one request of them all does.

The state belongs to a model version: a hot swap starts a new :class:`VersionMonitor`
from the new version's own reference, and the old one's figures are not carried over.

**Several workers.** The martingale needs one stream, so it runs in one process: the
worker that holds an exclusive ``flock`` on the drift folder's lock file (``drift_dir``,
by default ``PROMETHEUS_MULTIPROC_DIR/drift``) is the checker. The other workers write
the scores they took (float32, in arrival order) and their closed window buckets to the
folder; the checker ranks every worker's scores in the order it finds them (an order
that does not depend on the scores keeps the stream exchangeable), merges every
worker's buckets exactly, and runs the window checks once for all. When the checker dies
its lock is released and another worker takes over; its martingale starts afresh (as
at a restart). The drift gauges are written by the checker only (``mostrecent``); the
record counters on the request path add up across workers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_vae.data.preprocessing import TabularArrays
from anomaly_vae.drift.check import DriftReport, WindowStats, evaluate, record_keys
from anomaly_vae.drift.martingale import (
    FROZEN_DELTA,
    OnlineConformal,
    SimpleJumper,
    calibration_slack,
)
from anomaly_vae.drift.reference import REFERENCE_FORMAT

from . import metrics
from .model_store import LoadedModel
from .settings import Settings

log = logging.getLogger(__name__)

#: The Simple Jumper's jumping rate: how fast the bets move to follow a late change.
JUMP = 0.01
#: How often the background thread drains the queue (seconds).
INGEST_SECONDS = 0.5
#: The drift task's CPU budget accrues over at most this long (a burst can use it; a
#: longer bank let an idle minute's savings go to one busy stretch of 20 s, at three
#: times the budget's share of a core).
BUDGET_WINDOW_SECONDS = 10.0
#: Top drifted features listed by ``GET /v1/drift``.
TOP_FEATURES = 10
WINDOWS = ("count", "time")


@dataclass
class _Batch:
    """Records one request scored, as the route handed them over (nothing computed)."""

    arrays: Any  # TabularArrays, or images [N, C, H, W]
    normality: np.ndarray  # [N] higher is more normal, in the calibration's units
    kl: np.ndarray | None  # [N] nats, when the scorer gave it
    latent: np.ndarray | None  # [N, L] posterior means, when the scorer gave them
    contributions: np.ndarray | None  # [N, F]
    flags: np.ndarray | None  # [N] bool
    at: float


@dataclass
class Bucket:
    """A slice of consecutive records of one worker: their window statistics and the
    wall-clock time of their first and last record."""

    start: float
    end: float
    stats: WindowStats

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "stats": self.stats.to_dict()}

    @classmethod
    def from_dict(cls, reference: dict[str, Any], doc: dict[str, Any]) -> Bucket:
        return cls(
            float(doc["start"]), float(doc["end"]), WindowStats.from_dict(reference, doc["stats"])
        )


def reference_id(model: LoadedModel) -> str:
    """A short fingerprint of a model's drift reference (its format and calibration
    scores): which reference the drift metrics belong to."""
    import hashlib

    cal = np.asarray(model.detector.calibration_.reference, dtype=np.float64)
    ref = getattr(model.detector, "reference_", None) or {}
    digest = hashlib.sha256(cal.tobytes() + str(ref.get("format")).encode()).hexdigest()
    return digest[:12]


@dataclass
class VersionMonitor:
    """One worker's drift state for one model version."""

    model: LoadedModel
    settings: Settings
    worker: str = ""
    reference: dict[str, Any] | None = None
    martingale: SimpleJumper = field(init=False)
    ranks: OnlineConformal = field(init=False)
    buckets: deque[Bucket] = field(default_factory=deque)
    open: Bucket | None = None
    records: int = 0
    seq: int = 0
    #: this worker's bucket files in the drift folder, and the records last shared
    files: dict[str, Bucket] = field(default_factory=dict)
    shared_records: int = -1
    #: scores taken but not yet ranked (by the checker) or written (by another worker)
    pending: list[np.ndarray] = field(default_factory=list)
    #: reports of the latest check (the checker's), by window
    reports: dict[str, DriftReport] = field(default_factory=dict)
    combined: dict[str, Any] = field(default_factory=dict)
    last_check: float | None = None
    #: when the martingale was last reset (Unix time; 0: never)
    reset_at: float = 0.0

    def __post_init__(self) -> None:
        det = self.model.detector
        ref = getattr(det, "reference_", None) or {}
        self.reference = ref if ref.get("format") == REFERENCE_FORMAT else None
        self.reset_martingale()

    def reset_martingale(self) -> None:
        """A fresh test: the calibration scores alone as the ranks' reference."""
        cal = self.model.detector.calibration_
        self.ranks = OnlineConformal(cal.reference, weight=cal.n / cal.reference.size)
        self.martingale = SimpleJumper(level=self.settings.drift_level, jump=JUMP)
        version = self.model.version or 0
        # the smoothing's randomness: its own stream per version and worker
        self.rng = np.random.default_rng([version, *map(ord, self.worker or str(os.getpid()))])
        self.combined = {k: v for k, v in self.combined.items() if k == "drift_since"}

    def bet(self, scores: np.ndarray, now: float) -> None:
        """Rank ``scores`` (in arrival order) and bet on their p-values (the checker)."""
        if not scores.size:
            return
        p = self.ranks.p_values(scores, self.rng.random(scores.size))
        if self.ranks.frozen and not self.martingale.slack:
            # the reference stopped growing: bets conservative for its noise from now on
            self.martingale.slack = calibration_slack(int(self.ranks.size), FROZEN_DELTA)
        was = self.martingale.alarm
        self.martingale.update(p)
        if self.martingale.alarm and not was:
            self.combined["alarm_at"] = now
            self.combined["alarm_after_records"] = self.martingale.n

    @property
    def labels(self) -> tuple[str, str]:
        return self.model.name, str(self.model.version)

    # ---------------------------------------------------------------- ingesting
    def ingest(self, batch: _Batch, windows: bool = True) -> bool:
        """Add one request's records: their scores to those the martingale will bet on,
        and (with ``windows``) their statistics to the open bucket. Returns whether they
        went into the windows."""
        if not self.take(batch, windows):
            return False
        self.add_windows([batch])
        return True

    def take(self, batch: _Batch, windows: bool = True) -> bool:
        """One request's scores to those the martingale will bet on; returns whether its
        records are for the windows (``windows``, a reference to compare with and a
        finite score), which :meth:`add_windows` then takes."""
        ll = np.asarray(batch.normality, dtype=np.float64)
        ok = np.isfinite(ll)
        if not ok.any():
            return False
        self.pending.append(ll[ok].astype(np.float32))
        self.records += int(ok.sum())
        metrics.DRIFT_RECORDS.labels(*self.labels).inc(int(ok.sum()))
        if self.reference is None:
            return False
        if not windows:
            metrics.DRIFT_UNWINDOWED.labels(*self.labels).inc(int(ok.sum()))
            return False
        return True

    def add_windows(self, batches: list[_Batch]) -> None:
        """The window statistics of ``batches`` (in arrival order, taken by :meth:`take`)
        into the open bucket, in one update for those scored with contributions and one
        for the rest. The statistics merge exactly (counts, and a latent sample chosen
        by record keys), so this is one request at a time in fewer passes: per request,
        the update's fixed cost was about 0.45 ms of CPU, most of a one-record request's
        monitoring."""
        if not batches or self.reference is None:  # take() windows nothing without one
            return
        if self.open is None:
            self.open = Bucket(batches[0].at, batches[0].at, WindowStats(self.reference))
        for part in (
            [b for b in batches if b.contributions is not None],
            [b for b in batches if b.contributions is None],
        ):
            if part:
                self._update_stats(self.open.stats, self._merged(part))
        self.open.end = batches[-1].at

    def _merged(self, batches: list[_Batch]) -> _Batch:
        """One batch of the records of ``batches`` (flags, latent means and KL terms
        filled in for any batch the scorer gave none)."""
        det = self.model.detector
        filled = []
        for b in batches:
            ll = np.asarray(b.normality, dtype=np.float64)
            if b.latent is None or not b.latent.size or b.kl is None:
                mu, kl = det.latent_outputs(b.arrays)
                b = replace(b, latent=mu, kl=kl)
            if b.flags is None:
                b = replace(b, flags=det.calibration_.is_outlier(ll))
            filled.append(replace(b, normality=ll))
        if len(filled) == 1:
            return filled[0]

        def cat(name: str) -> Any:
            return np.concatenate([getattr(b, name) for b in filled])

        first = filled[0]
        arrays = (
            np.concatenate([b.arrays for b in filled])
            if self.model.is_image
            else TabularArrays.concat([b.arrays for b in filled])
        )
        return _Batch(
            arrays, cat("normality"), cat("kl"), cat("latent"),
            cat("contributions") if first.contributions is not None else None,
            cat("flags"), first.at,
        )  # fmt: skip

    def _update_stats(self, stats: WindowStats, batch: _Batch) -> None:
        det = self.model.detector
        ll = np.asarray(batch.normality, dtype=np.float64)
        mu, kl, flags = batch.latent, batch.kl, batch.flags  # filled in by _merged
        assert mu is not None
        assert kl is not None
        assert flags is not None
        if self.model.is_image:
            stats.update(ll, flags, mu, kl, keys=record_keys(batch.arrays))
            return
        a = batch.arrays
        stats.update(
            ll, flags, mu, kl,
            keys=record_keys(a.num, a.num_mask, a.cat, a.bin, a.bin_mask),
            arrays=a,
            contributions=batch.contributions,
            feature_order=det.feature_order_,  # type: ignore[union-attr]
        )  # fmt: skip

    def roll(self, now: float) -> list[Bucket]:
        """Close the open bucket when full or old; drop buckets neither window needs.
        Returns the buckets closed."""
        s = self.settings
        closed: list[Bucket] = []
        b = self.open
        if b is not None and (
            b.stats.n >= s.drift_bucket_records or now - b.start >= s.drift_bucket_seconds
        ):
            self.buckets.append(b)
            self.open = None
            closed.append(b)
        # keep what the time window covers, and enough of the latest for the count window
        kept, count = deque[Bucket](), 0
        for bucket in reversed(self.buckets):
            if bucket.end >= now - s.drift_window_seconds or count < s.drift_window_records:
                kept.appendleft(bucket)
                count += bucket.stats.n
        self.buckets = kept
        return closed

    def own_state(self) -> dict[str, Any]:
        """What the other workers' checker needs of this one, besides the closed buckets."""
        return {
            "worker": self.worker,
            "records": self.records,
            "open": self.open.to_dict() if self.open is not None else None,
            "written": time.time(),
        }


class DriftMonitor:
    """The drift task of one worker process (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        worker: str | None = None,
        current_model: Any = None,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        """``worker`` names this process's files in the drift folder (default: its pid);
        ``current_model`` () -> the loaded model or None: a swap starts the new version's
        monitor at once, and records still queued for the old version are not mixed in;
        ``cpu_clock`` () -> this thread's CPU seconds, what the budget is spent in."""
        self.settings = settings
        self.current_model = current_model
        self.cpu_clock = cpu_clock
        self.worker = worker or str(os.getpid())
        self.queue: deque[tuple[LoadedModel, _Batch]] = deque()
        self.queued = 0
        self._budget = settings.drift_budget * BUDGET_WINDOW_SECONDS
        #: CPU seconds per record of the latest window update (see ``_take``)
        self._window_cost = 0.0
        self._last_step: float | None = None
        self._reset_asked: float | None = None
        # contributions are granted per windowed request (a share of them) and taken by
        # the request path; the first request has one, so a window soon has some
        self._credit = 1.0
        self._credit_lock = threading.Lock()
        self.current: VersionMonitor | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_file: Any = None
        self.checker = False
        self._next_check = 0.0
        self._seen: dict[str, Bucket] = {}  # other workers' closed buckets, by file name
        directory = settings.drift_dir
        if directory is None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]) / "drift"
        self.directory = directory
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- request path
    def wants_contributions(self) -> bool:
        """Whether this request is scored with contributions for the windows'
        contribution tests: ``drift_contribution_share`` of the requests the windows take.
        The drift task grants that share per request it takes into the windows, and the
        next request to ask takes a whole grant, so the choice depends on the requests'
        order and the budget's time, never on their records (an unbiased sample). A
        request scored with contributions always goes into the windows. Tied to the
        windowed requests, not to all of them, because they cost a quarter more scoring
        and at saturation the budget takes only a fifth of the requests into the windows."""
        share = self.settings.drift_contribution_share
        if not self.settings.drift or share <= 0:
            return False
        with self._credit_lock:
            if self._credit >= 1.0:
                self._credit -= 1.0
                return True
        return False

    def _grant(self) -> None:
        """One request went into the windows: grant its share of a contribution."""
        with self._credit_lock:
            self._credit = min(self._credit + self.settings.drift_contribution_share, 1.0)

    def submit(
        self,
        model: LoadedModel,
        arrays: Any,
        normality: np.ndarray,
        *,
        k: int | None,
        kl: np.ndarray | None = None,
        latent: np.ndarray | None = None,
        contributions: np.ndarray | None = None,
        flags: np.ndarray | None = None,
    ) -> None:
        """Queue one request's scored records (called on the request path: an append).
        ``kl`` [N] and ``latent`` [N, L] are the scoring pass's KL terms and posterior
        means (without both, the drift task runs the encoder again). Records scored at
        another K than the model's own are not monitored; beyond
        ``drift_queue_records`` waiting, the oldest are dropped and counted."""
        if not self.settings.drift or len(normality) == 0:
            return
        if k is not None and k != model.detector.sampler_.k:
            metrics.DRIFT_SKIPPED.labels(model.name, str(model.version)).inc(len(normality))
            return
        batch = _Batch(arrays, normality, kl, latent, contributions, flags, time.time())
        self.queue.append((model, batch))
        self.queued += len(normality)
        while self.queued > self.settings.drift_queue_records and len(self.queue) > 1:
            old_model, old = self.queue.popleft()
            self.queued -= len(old.normality)
            metrics.DRIFT_DROPPED.labels(old_model.name, str(old_model.version)).inc(
                len(old.normality)
            )

    def request_reset(self, model: LoadedModel) -> None:
        """Ask the checker to start a fresh martingale for ``model``'s version (a file in
        the drift folder when there is one, so any worker can take the request)."""
        if self.directory is None:
            self._reset_asked = time.time()
            return
        d = self.directory / f"{model.name}-v{model.version}"
        d.mkdir(parents=True, exist_ok=True)
        _write_json(d / "reset.json", {"asked": time.time()})

    def _take_reset(self, cur: VersionMonitor) -> None:
        asked = self._reset_asked
        d = self._version_dir(cur)
        if d is not None:
            doc = _read_json(d / "reset.json")
            asked = float(doc["asked"]) if doc else None
        if asked is not None and asked > cur.reset_at:
            cur.reset_martingale()
            cur.reset_at = asked
            log.info("drift martingale of %s v%s reset", *cur.labels)

    # ---------------------------------------------------------------- background
    def start(self) -> None:
        if not self.settings.drift or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="drift", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _loop(self) -> None:
        # the checks' scipy modules, imported before traffic needs them: imported by the
        # first check instead, they cost 0.8 s of CPU holding the GIL (py-spy, at
        # saturation) while requests waited for it
        import scipy.stats  # noqa: F401

        while not self._stop.is_set():
            self._wake.wait(INGEST_SECONDS)
            self._wake.clear()
            try:
                self.step(time.time())
            except Exception:  # the drift task must never take the service down
                log.exception("drift task failed; it goes on at the next step")

    def monitor_for(self, model: LoadedModel) -> VersionMonitor:
        """The monitor of ``model``'s version, a new one on a swap."""
        cur = self.current
        if cur is None or cur.model is not model:
            if cur is not None:
                self._retire(cur)
            cur = self.current = VersionMonitor(model, self.settings, worker=self.worker)
            self._seen.clear()
            self._next_check = 0.0
            metrics.DRIFT_REFERENCE.labels(*cur.labels, reference_id(model)).set(
                1 if cur.reference is not None else 0
            )
            metrics.MARTINGALE_THRESHOLD.labels(*cur.labels).set(cur.martingale.threshold)
        return cur

    def _retire(self, old: VersionMonitor) -> None:
        """The old version's gauges say it is no longer checked (its alarms drop)."""
        for window in WINDOWS:
            for signal in ("any", "scores", "outlier_rate", "latent", "kl", "features"):
                metrics.DRIFT_ALARM.labels(*old.labels, window, signal).set(0)
        metrics.MARTINGALE_ALARM.labels(*old.labels).set(0)
        metrics.DRIFT_REFERENCE.labels(*old.labels, reference_id(old.model)).set(0)

    def step(self, now: float) -> None:
        """Drain the queue, roll the buckets, share them, and check when due.

        The budget covers the work that grows with traffic: CPU time accrues at
        ``drift_budget`` per second (at most :data:`BUDGET_WINDOW_SECONDS`' worth) and the
        martingale's ranks and bets and the window statistics spend it; a request's window
        statistics are computed only while the balance is positive (the martingale takes
        every record whatever the balance, so it can go below zero). The checks are not
        charged to it (charged, checks every second starved the windows of a quiet
        server): they have a share of their own, ``drift_budget`` again, kept by spacing
        them at least ``drift_interval_seconds`` and at least their cost / budget apart."""
        loaded = self.current_model() if self.current_model is not None else None
        if self._last_step is not None:
            self._budget = min(
                self._budget + self.settings.drift_budget * max(0.0, now - self._last_step),
                self.settings.drift_budget * BUDGET_WINDOW_SECONDS,
            )
        self._last_step = now
        started = self.cpu_clock()
        try:
            cur = self._take(now, loaded, started)
        finally:
            spent = self.cpu_clock() - started
            self._budget -= spent
            metrics.DRIFT_CPU.inc(max(spent, 0.0))
        if cur is not None and self.checker and now >= self._next_check:
            started = self.cpu_clock()
            self.check(cur, now)
            # a check's cost spaces the next one: on average the checks take at most
            # drift_budget of a core too (166 columns: about 0.4 s of CPU per window of
            # 5,000 records evaluated, 1.4 s for the first)
            spent = self.cpu_clock() - started
            metrics.DRIFT_CPU.inc(max(spent, 0.0))
            self._next_check = now + max(
                self.settings.drift_interval_seconds, spent / self.settings.drift_budget
            )

    def _take(
        self, now: float, loaded: LoadedModel | None, started: float
    ) -> VersionMonitor | None:
        """The per-record part of a step; returns the current version's monitor."""
        holder: VersionMonitor | None = None  # the monitor the windowed batches are for
        windowed: list[_Batch] = []
        owed = 0  # records in ``windowed``
        while self.queue:
            model, batch = self.queue.popleft()
            self.queued -= len(batch.normality)
            if loaded is not None and model is not loaded:
                # scored by the version just swapped out: its monitor has retired
                metrics.DRIFT_SKIPPED.labels(model.name, str(model.version)).inc(
                    len(batch.normality)
                )
                continue
            target = self.monitor_for(model)
            if target is not holder:
                self._add_windows(holder, windowed)
                holder, windowed, owed = target, [], 0
            # the windows' work is done after the loop, for all of a step's requests at
            # once: the balance counts it in at the last update's cost per record
            balance = self._budget - (self.cpu_clock() - started) - self._window_cost * owed
            # contributions were computed for the windows: they go in, whatever the balance
            windows = balance > 0 or batch.contributions is not None
            if target.take(batch, windows=windows):
                windowed.append(batch)
                owed += len(batch.normality)
                self._grant()
        self._add_windows(holder, windowed)
        if loaded is not None:
            self.monitor_for(loaded)
        cur = self.current
        if cur is None:
            return None
        closed = cur.roll(now)
        if self._is_checker():
            self._take_reset(cur)
            self._bet(cur, now)
        else:
            self._share_scores(cur)
        self._share(cur, closed)
        return cur

    def _add_windows(self, cur: VersionMonitor | None, batches: list[_Batch]) -> None:
        """``cur.add_windows(batches)``, its CPU cost per record kept for the next
        step's balance."""
        if cur is None or not batches:
            return
        started = self.cpu_clock()
        cur.add_windows(batches)
        records = sum(len(b.normality) for b in batches)
        self._window_cost = max(self.cpu_clock() - started, 0.0) / records

    def _bet(self, cur: VersionMonitor, now: float) -> None:
        """The checker ranks and bets on its own scores and those the other workers
        wrote, in the order it finds them, then exports the martingale."""
        parts, cur.pending = cur.pending, []
        d = self._version_dir(cur)
        if d is not None:
            files = sorted(d.glob("scores-*.npy"), key=lambda f: (f.stat().st_mtime_ns, f.name))
            for path in files:
                with contextlib.suppress(FileNotFoundError, ValueError, OSError):
                    parts.append(np.load(path, allow_pickle=False).astype(np.float32))
                path.unlink(missing_ok=True)
        for scores in parts:
            cur.bet(scores, now)
        m = cur.martingale
        metrics.MARTINGALE_LOG.labels(*cur.labels).set(m.log_value)
        metrics.MARTINGALE_ALARM.labels(*cur.labels).set(1 if m.alarm else 0)

    def _share_scores(self, cur: VersionMonitor) -> None:
        """Another worker's scores, written for the checker (atomically)."""
        d = self._version_dir(cur)
        if d is None or not cur.pending:
            return
        scores = np.concatenate(cur.pending)
        cur.pending = []
        cur.seq += 1
        path = d / f"scores-{self.worker}-{cur.seq:08d}.npy"
        tmp = d / f".scores-{self.worker}.tmp"
        with tmp.open("wb") as f:
            np.save(f, scores, allow_pickle=False)
        os.replace(tmp, path)

    # ---------------------------------------------------------------- sharing
    def _version_dir(self, cur: VersionMonitor) -> Path | None:
        if self.directory is None:
            return None
        d = self.directory / f"{cur.model.name}-v{cur.model.version}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _share(self, cur: VersionMonitor, closed: list[Bucket]) -> None:
        """Write this worker's newly closed buckets and its state (when it changed) to
        the version's folder, and remove its buckets that no window needs any more."""
        d = self._version_dir(cur)
        if d is None:
            return
        for bucket in closed:
            cur.seq += 1
            name = f"bucket-{self.worker}-{cur.seq:08d}.json"
            _write_json(d / name, bucket.to_dict())
            cur.files[name] = bucket
        if closed or cur.records != cur.shared_records:
            _write_json(d / f"worker-{self.worker}.json", cur.own_state())
            cur.shared_records = cur.records
        kept = {id(b) for b in cur.buckets}
        for name, bucket in list(cur.files.items()):
            if id(bucket) not in kept:
                (d / name).unlink(missing_ok=True)
                del cur.files[name]

    def _is_checker(self) -> bool:
        if self.directory is None:
            self.checker = True
            return True
        if self._lock_file is None:
            handle = (self.directory / "checker.lock").open("a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                return False
            self._lock_file = handle
            self.checker = True
            log.info("this worker (%s) runs the drift checks", self.worker)
        return True

    def _gather(self, cur: VersionMonitor, now: float) -> tuple[list[Bucket], list[dict[str, Any]]]:
        """Every worker's buckets and martingale states for ``cur``'s version."""
        buckets = list(cur.buckets)
        if cur.open is not None:
            buckets.append(cur.open)
        states = [cur.own_state()]
        d = self._version_dir(cur)
        if d is None or cur.reference is None:
            return buckets, states
        pid = self.worker
        names = set()
        for path in sorted(d.glob("bucket-*.json")):
            if path.name.startswith(f"bucket-{pid}-"):
                continue
            names.add(path.name)
            if path.name not in self._seen:
                doc = _read_json(path)
                if doc is not None:
                    self._seen[path.name] = Bucket.from_dict(cur.reference, doc)
            b = self._seen.get(path.name)
            if b is not None:
                buckets.append(b)
        for name in [
            n for n in self._seen if n not in names and not n.startswith(f"bucket-{pid}-")
        ]:
            del self._seen[name]
        for path in d.glob("worker-*.json"):
            if path.name == f"worker-{pid}.json":
                continue
            doc = _read_json(path)
            if doc is None:
                continue
            states.append(doc)
            if doc.get("open"):
                buckets.append(Bucket.from_dict(cur.reference, doc["open"]))
        return buckets, states

    # ---------------------------------------------------------------- checking
    def check(self, cur: VersionMonitor, now: float) -> None:
        """The window checks and the combined martingale, for every worker's records;
        sets the drift gauges and the state ``GET /v1/drift`` answers with."""
        s = self.settings
        buckets, states = self._gather(cur, now)
        m = cur.martingale
        combined = cur.combined
        combined.update(
            log_value=m.log_value, log_max=m.log_max, threshold=m.threshold, alarm=m.alarm,
            records=m.n, workers=len(states), level=m.level, slack=m.slack,
        )  # fmt: skip
        labels = cur.labels
        reports: dict[str, DriftReport] = {}
        if cur.reference is not None and buckets:
            by_end = sorted(buckets, key=lambda b: b.end, reverse=True)
            count: list[Bucket] = []
            n = 0
            for b in by_end:
                if n >= s.drift_window_records:
                    break
                count.append(b)
                n += b.stats.n
            timed = [b for b in by_end if b.end >= now - s.drift_window_seconds]
            for window, part in (("count", count), ("time", timed)):
                stats = WindowStats(cur.reference)
                for b in part:
                    stats.merge(b.stats)
                if stats.n == 0:
                    continue
                report = evaluate(
                    stats, cur.model.detector.calibration_, level=s.drift_window_level
                )
                report.model = {"name": labels[0], "version": cur.model.version}
                extra = {
                    "start": min(b.start for b in part),
                    "end": max(b.end for b in part),
                    "buckets": len(part),
                }
                report.model.update(window=extra)
                reports[window] = report
                since = combined.setdefault("drift_since", {})
                if report.verdict == "drift":
                    since.setdefault(window, now)
                else:
                    since.pop(window, None)
                self._export(cur, window, report)
        cur.reports = reports
        cur.last_check = now
        metrics.DRIFT_LAST_CHECK.labels(*labels).set(now)
        if self.directory is not None:
            d = self._version_dir(cur)
            assert d is not None
            _write_json(d / "state.json", self.state(cur))

    def _export(self, cur: VersionMonitor, window: str, report: DriftReport) -> None:
        labels = cur.labels
        metrics.DRIFT_WINDOW_RECORDS.labels(*labels, window).set(report.n)
        for signal, row in report.signals.items():
            metrics.DRIFT_STATISTIC.labels(*labels, window, signal).set(row["statistic"])
            metrics.DRIFT_P_VALUE.labels(*labels, window, signal).set(row["p_holm"])
            metrics.DRIFT_EFFECT.labels(*labels, window, signal).set(row["effect"])
            metrics.DRIFT_THRESHOLD.labels(*labels, window, signal).set(row["threshold"])
            metrics.DRIFT_ALARM.labels(*labels, window, signal).set(
                1 if row["verdict"] == "drift" else 0
            )
        drifted = [f for f in report.features if f["verdict"] == "drift"]
        metrics.DRIFT_ALARM.labels(*labels, window, "features").set(1 if drifted else 0)
        metrics.DRIFT_ALARM.labels(*labels, window, "any").set(
            1 if report.verdict == "drift" else 0
        )
        cap = self.settings.drift_max_features
        named, rest = report.features[:cap], report.features[cap:]
        metrics.DRIFT_FEATURES_CAPPED.labels(*labels).set(1 if rest else 0)
        for f in named:
            self._export_feature(labels, window, f["feature"], [f])
        if rest:
            self._export_feature(labels, window, metrics.OVERFLOW_FEATURE, rest)

    @staticmethod
    def _export_feature(
        labels: tuple[str, str], window: str, name: str, rows: list[dict[str, Any]]
    ) -> None:
        """One feature label's gauges; the overflow label gets the least q-value, the
        largest effect and contribution shift, and an alarm if any of its features has."""
        q = min(r["q_value"] for r in rows)
        effect = max(abs(r["effect"]) for r in rows)
        shift = max((abs(r.get("contribution", {}).get("effect", 0.0)) for r in rows), default=0.0)
        alarm = any(r["verdict"] == "drift" for r in rows)
        metrics.FEATURE_Q_VALUE.labels(*labels, window, name).set(q)
        metrics.FEATURE_EFFECT.labels(*labels, window, name).set(effect)
        metrics.FEATURE_CONTRIBUTION_SHIFT.labels(*labels, window, name).set(shift)
        metrics.FEATURE_ALARM.labels(*labels, window, name).set(1 if alarm else 0)

    # ---------------------------------------------------------------- reading
    def state(self, cur: VersionMonitor | None = None) -> dict[str, Any]:
        """The current drift state (``GET /v1/drift``'s body) for the monitored version."""
        cur = cur or self.current
        if cur is None:
            return {
                "status": "no_records", "model": None, "reference": None,
                "reference_missing": False, "checked_at": None,
                "interval_seconds": self.settings.drift_interval_seconds, "reset_at": None,
                "martingale": None, "windows": {},
            }  # fmt: skip
        windows: dict[str, Any] = {}
        since = cur.combined.get("drift_since", {})
        for window, report in cur.reports.items():
            windows[window] = summarize(report) | {"drift_since": since.get(window)}
        return finite(
            {
                "status": "checked" if cur.last_check is not None else "waiting_for_check",
                "model": {"name": cur.model.name, "version": cur.model.version},
                "reference": reference_id(cur.model) if cur.reference is not None else None,
                "reference_missing": cur.reference is None,
                "checked_at": cur.last_check,
                "interval_seconds": self.settings.drift_interval_seconds,
                "reset_at": cur.reset_at or None,
                "martingale": {
                    k: cur.combined.get(k)
                    for k in (
                        "log_value",
                        "log_max",
                        "threshold",
                        "alarm",
                        "records",
                        "workers",
                        "level",
                        "slack",
                        "alarm_at",
                        "alarm_after_records",
                    )
                },
                "windows": windows,
            }
        )

    def published(self, model: LoadedModel) -> dict[str, Any]:
        """The state of ``model``'s version as this worker knows it: its own when it is
        the checker, else the checker's last published file."""
        cur = self.current
        if self.checker and cur is not None and cur.model is model:
            return self.state(cur)
        if self.directory is not None:
            path = self.directory / f"{model.name}-v{model.version}" / "state.json"
            doc = _read_json(path)
            if doc is not None:
                return doc
        return {
            "status": "waiting_for_check",
            "model": {"name": model.name, "version": model.version},
            "reference": None,
            "reference_missing": not getattr(model.detector, "reference_", None),
            "checked_at": None,
            "interval_seconds": self.settings.drift_interval_seconds,
            "martingale": None,
            "windows": {},
        }


def summarize(report: DriftReport) -> dict[str, Any]:
    """A window report cut to what an operator reads: per signal the statistic, p-value
    (Holm-adjusted), effect, threshold and verdict; the top drifted features."""
    signals = {
        name: {
            "statistic": row["statistic"], "p_value": row["p_holm"], "effect": row["effect"],
            "margin": row["margin"], "threshold": row["threshold"], "verdict": row["verdict"],
            "test": row.get("test"),
        }
        for name, row in report.signals.items()
    }  # fmt: skip
    features = [
        {
            "feature": f["feature"], "kind": f["kind"], "q_value": f["q_value"],
            "p_value": f["p_holm"], "effect": f["effect"], "verdict": f["verdict"],
            "contribution_shift_nats": f.get("contribution", {}).get("effect"),
        }
        for f in report.features[:TOP_FEATURES]
    ]  # fmt: skip
    window = report.model.get("window", {})
    return {
        "verdict": report.verdict,
        "records": report.n,
        "start": window.get("start"),
        "end": window.get("end"),
        "level": report.level,
        "fired": report.fired,
        "signals": signals,
        "features": features,
        "score_counts": {
            "reference": report.signals["scores"]["reference_counts"],
            "window": report.signals["scores"]["window_counts"],
        },
        "outlier_rate": report.signals["outlier_rate"].get("rate"),
        "alpha": report.signals["outlier_rate"].get("alpha"),
    }


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    """Atomically (a reader sees the old file or the new one, never half of one)."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc, default=_plain))
    os.replace(tmp, path)


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) as None: JSON has no such numbers."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if isinstance(value, np.integer | np.bool_):
        return value.item()
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value).__name__)


def _read_json(path: Path) -> dict[str, Any] | None:
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        doc = json.loads(path.read_text())
        return doc if isinstance(doc, dict) else None
    return None


__all__ = ["Bucket", "DriftMonitor", "VersionMonitor"]
