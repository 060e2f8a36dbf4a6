"""Adaptive batching: requests arriving within a short window are scored in one pass.

A request is validated on its own (so a bad one cannot fail its neighbours), then queued
with the model that validated it. The worker takes the first waiting job and, only while
other requests are in flight (parsed but not yet queued), waits up to ``batch_window_ms``
for them, up to ``max_batch_records``; a lone request is scored at once, so sequential
traffic pays no window. Each group (same model, K and contribution setting) is scored in
a worker thread, off the event loop.

Two lanes keep a costly request from stalling the others. A request whose cost (records
x K) exceeds ``lane_cost`` goes to the costly lane, scored with a yield point before
every sample chunk (:func:`~anomaly_vae.scoring.iwae.yield_point`). Every scoring call
of both lanes runs on the process's one torch thread (:mod:`.compute`, which says why):
a cheap request announces itself as it is queued, the costly scoring stops at its next
yield point (one 64-row x 64-sample chunk away), the cheap batch is scored there, and
the costly one goes on. A cheap request therefore waits for one sample chunk, not for
the costly request. Stopping in between does not change the arithmetic, so a record's
bits are the same. A costly request whose client went away stops at its next yield
point.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from anomaly_vae.data.preprocessing import TabularArrays
from anomaly_vae.scoring.iwae import ScoreResult

from . import metrics
from .compute import TorchThread
from .model_store import LoadedModel
from .settings import Settings


class QueueFull(Exception):
    """More requests are waiting than ``max_queue``: answer 503 with Retry-After."""


@dataclass
class _Job:
    model: LoadedModel
    arrays: TabularArrays
    k: int | None
    contributions: bool
    future: asyncio.Future[ScoreResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    abandoned: threading.Event = field(default_factory=threading.Event)

    @property
    def cost(self) -> int:
        """Importance samples this job asks for: records x K."""
        return len(self.arrays) * (self.k or self.model.detector.sampler_.k)


class Batcher:
    def __init__(self, settings: Settings, torch_thread: TorchThread | None = None) -> None:
        self.settings = settings
        self.torch = torch_thread or TorchThread(settings.torch_threads)
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.costly: deque[_Job] = deque()
        self._wake = asyncio.Event()
        self._costly_wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._costly_task: asyncio.Task[None] | None = None
        self.inflight = 0  # requests between entering a scoring route and getting a result
        self.bulk_threads = settings.bulk_thread_count()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run())
        self._costly_task = loop.create_task(self._run_costly())

    async def stop(self) -> None:
        self.torch.stop()
        for task in (self._task, self._costly_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Mark a request in flight for its whole handling (parsing included), so the
        worker knows whether waiting for company can pay off."""
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1

    async def score(
        self, model: LoadedModel, arrays: TabularArrays, k: int | None, contributions: bool
    ) -> ScoreResult:
        if self.queue.qsize() + len(self.costly) >= self.settings.max_queue:
            raise QueueFull
        job = _Job(model, arrays, k, contributions)
        if job.cost > self.settings.lane_cost:
            job.future.add_done_callback(lambda _: job.abandoned.set())
            self.costly.append(job)
            metrics.COSTLY.inc()
            self._costly_wake.set()
        else:
            self.torch.expect(1)  # a costly scoring stops at its next yield point for it
            await self.queue.put(job)
            self._wake.set()
        return await job.future

    async def _run(self) -> None:
        """The cheap lane: batches, scored in between a costly scoring's sample chunks."""
        while True:
            if self.queue.empty():
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._serve_cheap()

    async def _run_costly(self) -> None:
        """The costly lane: one request at a time, in order."""
        while True:
            if not self.costly:
                self._costly_wake.clear()
                await self._costly_wake.wait()
                continue
            job = self.costly[0]
            if not job.future.done():
                metrics.BATCH.observe(len(job.arrays))
                try:
                    res = await self.torch.run(
                        functools.partial(
                            _score, job.model.detector, job.arrays, job.k, job.contributions
                        ),
                        threads=self.bulk_threads,
                        costly=True,
                        abandoned=job.abandoned,
                    )
                except Exception as exc:  # Abandoned included: nobody is waiting then
                    if not job.future.done():
                        job.future.set_exception(exc)
                else:
                    if not job.future.done():
                        job.future.set_result(res)
            self.costly.popleft()

    async def _serve_cheap(self) -> None:
        window = self.settings.batch_window_ms / 1000.0
        first = self.queue.get_nowait()
        jobs = [first]
        n = len(first.arrays)
        deadline = time.monotonic() + window
        # requests still being parsed may join; costly ones in flight never will
        while n < self.settings.max_batch_records and self.inflight - len(self.costly) > len(jobs):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                job = await asyncio.wait_for(self.queue.get(), remaining)
            except TimeoutError:
                break
            jobs.append(job)
            n += len(job.arrays)
        groups: dict[tuple[int, int | None, bool], list[_Job]] = {}
        for job in jobs:
            groups.setdefault((id(job.model), job.k, job.contributions), []).append(job)
        for group in groups.values():
            await self._score_group(group)

    async def _score_group(self, group: list[_Job]) -> None:
        head = group[0]
        arrays = TabularArrays.concat([j.arrays for j in group]) if len(group) > 1 else head.arrays
        metrics.BATCH.observe(len(arrays))
        # a small batch gets the bulk threads too while no other request is in flight:
        # the event loop then has nothing to do with the cores (one record at K=64 took
        # 0.81 ms on two threads against 1.13 ms on one); under load it keeps one thread
        # so that the loop, parsing the next requests, has a core of its own
        alone = self.inflight <= len(group)
        threads = (
            self.bulk_threads
            if len(arrays) >= self.settings.bulk_records or alone
            else self.settings.torch_threads
        )
        try:
            res = await self.torch.run(
                functools.partial(_score, head.model.detector, arrays, head.k, head.contributions),
                threads=threads,
                settles=len(group),
            )
        except Exception as exc:  # hand the failure to every waiting request
            for job in group:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        start = 0
        for job in group:
            stop = start + len(job.arrays)
            part = ScoreResult(
                *(getattr(res, f)[start:stop] for f in ScoreResult.__dataclass_fields__)
            )
            start = stop
            if not job.future.done():
                job.future.set_result(part)


def _score(detector: Any, arrays: TabularArrays, k: int | None, contributions: bool) -> ScoreResult:
    """One scoring pass of encoded rows, on the torch thread."""
    result: ScoreResult = detector.score_encoded(arrays, k=k, contributions=contributions)
    return result
