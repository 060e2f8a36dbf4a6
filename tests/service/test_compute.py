"""The torch thread: one OS thread for all scoring, cheap work run at a costly item's
yield points, announced work waited for, abandoned and stopped work ended there.

Order is observed from logs the items write (no clock): where a property only holds if
the thread blocked, the test fails when it did not block, it never passes by waiting.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from anomaly_vae.service.compute import Abandoned, TorchThread, one_thread


@pytest.fixture
def thread():
    t = TorchThread(threads=1)
    yield t
    t.stop()


@pytest.fixture(scope="module")
def arrays(fitted, mixed_test):
    frame, _ = mixed_test
    return fitted.encode_rows(frame.iloc[:64])


def test_every_item_runs_on_one_thread_with_the_threads_it_names(thread):
    seen = [
        thread.submit(lambda: (threading.get_ident(), torch.get_num_threads()), threads=n)
        for n in (1, 2, 1, 2)
    ]
    got = [f.result(60) for f in seen]
    assert len({ident for ident, _ in got}) == 1
    assert got[0][0] != threading.get_ident()
    assert [n for _, n in got] == [1, 2, 1, 2]


def test_a_cheap_item_runs_at_the_costly_items_next_yield_point(thread, fitted, arrays):
    log: list[str] = []
    started, go = threading.Event(), threading.Event()

    def costly():
        log.append("costly start")
        started.set()
        go.wait(60)
        res = fitted.score_encoded(arrays, k=64)  # yield points before its sample chunks
        log.append("costly end")
        return res

    big = thread.submit(costly, threads=2, costly=True)
    started.wait(60)

    def cheap() -> int:
        log.append("cheap")
        return torch.get_num_threads()

    small = thread.submit(cheap)
    go.set()
    res = big.result(60)
    assert log == ["costly start", "cheap", "costly end"]
    assert small.result(60) == 1  # the cheap item's own thread count, not the costly one's
    # running other work in between does not change the costly item's bits
    np.testing.assert_array_equal(
        res.log_likelihood, fitted.score_encoded(arrays, k=64).log_likelihood
    )


def test_announced_cheap_work_is_waited_for_at_the_yield_point(thread, fitted, arrays):
    log: list[str] = []

    def costly():
        fitted.score_encoded(arrays, k=64)  # parks at its first yield point
        log.append("costly end")

    thread.expect(1)
    big = thread.submit(costly, costly=True)
    _until(lambda: thread.parked)  # never true (and fails) if the item did not wait
    small = thread.submit(lambda: log.append("cheap"), settles=1)
    big.result(60)
    small.result(60)
    assert log == ["cheap", "costly end"]
    assert not thread.parked


def _until(condition, limit: float = 60.0) -> None:
    """Poll ``condition`` until it holds; fail after ``limit`` seconds (a hang guard,
    not a timing assumption: the condition holds at once when the code is right)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.001)


def test_an_abandoned_costly_item_stops_at_its_yield_point(thread, fitted, arrays):
    gone = threading.Event()
    reached = []

    def costly():
        gone.set()  # the client goes away before the first sample chunk
        fitted.score_encoded(arrays, k=64)
        reached.append("end")

    with pytest.raises(Abandoned):
        thread.submit(costly, costly=True, abandoned=gone).result(60)
    assert reached == []
    assert thread.submit(lambda: 1).result(60) == 1  # the thread goes on


def test_stop_fails_what_is_pending_and_refuses_what_comes(fitted, arrays):
    t = TorchThread(threads=1)
    started, go = threading.Event(), threading.Event()

    def costly():
        started.set()
        go.wait(60)
        fitted.score_encoded(arrays, k=64)

    big = t.submit(costly, costly=True)
    started.wait(60)
    queued = t.submit(lambda: 1, costly=True)
    t.stop()
    go.set()
    with pytest.raises(Abandoned):
        big.result(60)
    with pytest.raises(RuntimeError, match="stopped"):
        queued.result(60)
    with pytest.raises(RuntimeError, match="stopped"):
        t.submit(lambda: 1).result(60)


def test_an_exception_reaches_the_caller_and_the_thread_goes_on(thread):
    def bad():
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        thread.submit(bad).result(60)
    assert thread.submit(lambda: 2).result(60) == 2


def test_one_thread_sets_one_intra_op_thread_in_the_calling_thread():
    got: list[int] = []

    def where() -> None:
        got.append(torch.get_num_threads())

    t = threading.Thread(target=one_thread(where))
    t.start()
    t.join(60)
    assert got == [1]
