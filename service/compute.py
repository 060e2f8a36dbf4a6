"""The one thread that runs torch in a worker process.

torch's CPU kernels run on OpenMP (libgomp), which keeps a team of threads for every
thread that enters a parallel region. Once two threads of the process have had teams,
libgomp manages more threads than there are cores and throttles every team's spinning
to about a hundred iterations, so each of the scorer's many small parallel regions
waits for its workers to wake from sleep. Measured on 2 cores (WDBC detector, 1000
records, K=64, 2 threads): 11.6 ms in a thread that alone ever used torch, 32 ms once
a second thread had scored as well (slower than 1 thread's 18 ms). Starlette's thread
pool hands each call to whichever of its threads is free, so every scoring call,
whatever its lane, runs here instead, on one thread.

Cheap work never waits for costly work: a costly item (scored with a yield point
before every sample chunk, :func:`~anomaly_vae.scoring.iwae.yield_point`) runs the
cheap items queued meanwhile at its next yield point, on this same thread, then goes
on. While cheap work is announced (:meth:`TorchThread.expect`) but not yet submitted
(the batcher may still be gathering a batch), the costly item waits at its yield point,
so a cheap request waits for one sample chunk, not for the costly request. Running
other items in between does not change the costly item's arithmetic (the sampler's
noise is fixed per model), so its bits are the same.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from anomaly_vae.scoring.iwae import yield_point

T = TypeVar("T")


class Abandoned(Exception):
    """Raised at a yield point: the costly item's client went away (or the thread is
    stopping)."""


@dataclass
class _Item:
    fn: Callable[[], Any]
    threads: int
    future: Future[Any] = field(default_factory=Future)
    costly: bool = False
    done_count: int = 0  # announced cheap work this item settles
    abandoned: threading.Event = field(default_factory=threading.Event)


def _no_yield() -> None:
    """The yield hook of cheap items run inside a costly one: they never park."""


class TorchThread:
    """One daemon thread running submitted callables: cheap ones in order, costly ones
    one at a time with the cheap ones run at their yield points."""

    def __init__(self, threads: int = 0, name: str = "torch") -> None:
        """``threads``: intra-op threads for items that name none (0: torch's count
        when the thread starts)."""
        self.threads = threads or torch.get_num_threads()
        self._cond = threading.Condition()
        self._cheap: deque[_Item] = deque()
        self._costly: deque[_Item] = deque()
        self._announced = 0  # cheap work announced and not yet run
        self._stopping = False
        self._parked = False  # a costly item waits at a yield point for announced work
        # started at the first item: an app built and never served starts no thread
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    # ------------------------------------------------------------------ submitting
    def expect(self, n: int = 1) -> None:
        """Announce ``n`` units of cheap work that will be submitted soon: a costly
        item reaching a yield point waits for them instead of computing on."""
        with self._cond:
            self._announced += n

    def submit(
        self,
        fn: Callable[[], T],
        *,
        threads: int = 0,
        costly: bool = False,
        settles: int = 0,
        abandoned: threading.Event | None = None,
    ) -> Future[T]:
        """Run ``fn`` on the thread with ``threads`` intra-op threads (0: the thread's
        default). ``costly`` items park at yield points for cheap ones (``abandoned``
        set: they stop there with :class:`Abandoned`); a cheap item ``settles`` that
        many announced units once it has run."""
        item = _Item(fn, threads or self.threads, costly=costly, done_count=settles)
        if abandoned is not None:
            item.abandoned = abandoned
        with self._cond:
            if self._stopping:
                item.future.set_exception(RuntimeError("the torch thread is stopped"))
                return item.future
            (self._costly if costly else self._cheap).append(item)
            if not self._thread.is_alive() and self._thread.ident is None:
                self._thread.start()
            self._cond.notify_all()
        return item.future

    @property
    def cheap_waiting(self) -> int:
        """Cheap items submitted and not yet started."""
        with self._cond:
            return len(self._cheap)

    @property
    def parked(self) -> bool:
        """Whether a costly item is waiting at a yield point for announced cheap work."""
        with self._cond:
            return self._parked

    async def run(self, fn: Callable[[], T], **kw: Any) -> T:
        """:meth:`submit`, awaited from the event loop."""
        return await asyncio.wrap_future(self.submit(fn, **kw))

    def stop(self) -> None:
        """Stop after the current item; a costly one stops at its next yield point."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    # ------------------------------------------------------------------ the thread
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._cheap or self._costly or self._stopping):
                    self._cond.wait()
                if self._stopping:
                    pending = [*self._cheap, *self._costly]
                    self._cheap.clear()
                    self._costly.clear()
                    for item in pending:
                        item.future.set_exception(RuntimeError("the torch thread is stopped"))
                    return
                item = self._cheap.popleft() if self._cheap else self._costly.popleft()
            if item.costly:
                self._run_costly(item)
            else:
                self._run(item)

    def _run(self, item: _Item) -> None:
        if not item.future.set_running_or_notify_cancel():
            self._settle(item)
            return
        try:
            if torch.get_num_threads() != item.threads:
                torch.set_num_threads(item.threads)
            result = item.fn()
        except BaseException as exc:  # handed to the waiting caller
            self._settle(item)
            item.future.set_exception(exc)
        else:
            self._settle(item)
            item.future.set_result(result)

    def _settle(self, item: _Item) -> None:
        if item.done_count:
            with self._cond:
                self._announced -= item.done_count
                self._cond.notify_all()

    def _run_costly(self, item: _Item) -> None:
        abandoned = item.abandoned

        def between() -> None:
            if abandoned.is_set():
                raise Abandoned
            while True:
                with self._cond:
                    while self._announced > 0 and not self._cheap and not self._stopping:
                        self._parked = True
                        self._cond.wait()
                    self._parked = False
                    if self._stopping:
                        raise Abandoned
                    if not self._cheap:
                        break
                    cheap = self._cheap.popleft()
                with yield_point(_no_yield):
                    self._run(cheap)
            if abandoned.is_set():
                raise Abandoned
            if torch.get_num_threads() != item.threads:
                torch.set_num_threads(item.threads)

        with yield_point(between):
            self._run(item)


def one_thread(fn: Callable[[], T]) -> Callable[[], T]:
    """``fn`` run with one intra-op thread in whatever thread calls it: for the little
    torch work off the torch thread (building a loaded model's modules), which must not
    start an OpenMP team of its own (the module docstring says why). torch's thread
    count is per thread once a thread has used torch; the torch thread sets its own
    for every item."""

    def run() -> T:
        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)
        return fn()

    return run
