"""Live drift monitoring, in process: the monitor fed as the routes feed it, stepped by
hand (no clock in the assertions); a hot swap starts a new version's state; two workers
sharing a drift folder are checked once, together; and the app's /v1/drift and /monitor."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest
from anomaly_vae.service import metrics
from anomaly_vae.service.app import create_app
from anomaly_vae.service.model_store import LoadedModel
from anomaly_vae.service.monitor import DriftMonitor
from anomaly_vae.service.settings import Settings

from tests.conftest import make_mixed


def loaded(det, version: int) -> LoadedModel:
    return LoadedModel(det, "mixed", version, "champion", "test", "now")


def feed(monitor: DriftMonitor, model: LoadedModel, frame, chunk: int = 50) -> None:
    """Score ``frame`` as the /v1/score route does and hand each request to the monitor,
    with contributions when the monitor asks for them."""
    det = model.detector
    for start in range(0, len(frame), chunk):
        arrays = det.encode_rows(frame.iloc[start : start + chunk], allow_extra=False)
        sampled = monitor.wants_contributions()
        res = det.score_encoded(arrays, contributions=sampled)
        flags = det.result_columns(res, arrays)["is_outlier"]
        monitor.submit(
            model, arrays, res.log_likelihood, k=None, kl=res.kl, latent=res.latent_mean,
            contributions=res.contributions if sampled else None, flags=flags,
        )  # fmt: skip


def settings(tmp_path, **kw) -> Settings:
    base = {
        "bundle_path": tmp_path, "drift_interval_seconds": 1.0, "drift_window_records": 400,
        "drift_bucket_records": 100, "drift_window_level": 0.001, "drift_level": 1e-6,
    }  # fmt: skip
    return Settings(**(base | kw))


def shifted(n: int, seed: int):
    frame = make_mixed(n, seed=seed)
    frame["c"] = frame["c"] + 3.0  # 1.5 sd
    return frame


def test_unchanged_traffic_is_quiet_and_a_shifted_feature_alarms_and_is_named(fitted, tmp_path):
    monitor = DriftMonitor(settings(tmp_path))
    model = loaded(fitted, 1)
    feed(monitor, model, make_mixed(600, seed=11))
    monitor.step(1000.0)
    state = monitor.state()
    assert state["status"] == "checked"
    assert state["martingale"]["records"] == 600 and not state["martingale"]["alarm"]
    for window in ("count", "time"):
        assert state["windows"][window]["verdict"] == "no_drift", state["windows"][window]["fired"]
    assert state["windows"]["count"]["records"] >= 400
    assert state["windows"]["time"]["records"] == 600

    feed(monitor, model, shifted(600, seed=12))
    monitor.step(1002.0)
    state = monitor.state()
    m = state["martingale"]
    assert m["alarm"] and m["log_value"] >= m["threshold"] == pytest.approx(np.log(1 / 1e-6))
    assert 600 < m["alarm_after_records"] <= 800  # within 200 records of the change
    count = state["windows"]["count"]
    assert count["verdict"] == "drift"
    assert count["features"][0]["feature"] == "c" and count["features"][0]["verdict"] == "drift"
    assert count["drift_since"] == 1002.0
    # the gauges the rules read
    labels = ("mixed", "1", "count", "any")
    assert metrics.DRIFT_ALARM.labels(*labels)._value.get() == 1
    assert metrics.FEATURE_ALARM.labels("mixed", "1", "count", "c")._value.get() == 1
    assert metrics.MARTINGALE_ALARM.labels("mixed", "1")._value.get() == 1


def test_a_hot_swap_starts_the_new_version_from_its_own_state(fitted, tmp_path):
    monitor = DriftMonitor(settings(tmp_path))
    v1, v2 = loaded(fitted, 11), loaded(fitted, 12)
    feed(monitor, v1, shifted(400, seed=13))
    monitor.step(10.0)
    assert monitor.state()["martingale"]["alarm"]
    feed(monitor, v2, make_mixed(300, seed=14))
    monitor.step(20.0)
    state = monitor.state()
    assert state["model"]["version"] == 12
    assert state["martingale"]["records"] == 300 and not state["martingale"]["alarm"]
    assert state["windows"]["time"]["records"] == 300  # none of version 11's records
    # version 11's alarms are withdrawn, version 12's are its own
    assert metrics.DRIFT_ALARM.labels("mixed", "11", "count", "any")._value.get() == 0
    assert metrics.MARTINGALE_ALARM.labels("mixed", "11")._value.get() == 0
    assert metrics.MARTINGALE_ALARM.labels("mixed", "12")._value.get() == 0


def test_two_workers_sharing_a_folder_are_checked_once_on_all_their_records(fitted, tmp_path):
    s = settings(tmp_path, drift_dir=tmp_path / "drift")
    a, b = DriftMonitor(s, worker="a"), DriftMonitor(s, worker="b")
    model = loaded(fitted, 21)
    frame = make_mixed(500, seed=15)
    feed(a, model, frame.iloc[:300])
    feed(b, model, frame.iloc[300:])
    a.step(100.0)  # a takes the checker's lock
    b.step(100.0)  # b cannot: it shares its records
    assert a.checker and not b.checker
    a._next_check = 0.0
    a.step(101.0)  # a's next check sees both
    state = b.published(model)  # what worker b answers: the checker's file
    # one martingale, run by the checker, has bet on every worker's records
    assert state["martingale"]["workers"] == 2 and state["martingale"]["records"] == 500
    assert b.current.martingale.n == 0 and not list((tmp_path / "drift").rglob("scores-*"))
    assert state["windows"]["time"]["records"] == 500
    # and the window statistics are the merge of both: one pass over all the records
    one = DriftMonitor(settings(tmp_path / "one"), worker="one")
    feed(one, model, frame)
    one.step(100.0)
    assert one.state()["windows"]["time"]["signals"]["scores"]["statistic"] == pytest.approx(
        state["windows"]["time"]["signals"]["scores"]["statistic"]
    )
    a.stop()  # the checker goes: b takes over at its next check
    b._next_check = 0.0
    b.step(200.0)
    assert b.checker


def test_records_at_another_k_are_not_monitored_and_a_full_queue_drops_the_oldest(fitted, tmp_path):
    monitor = DriftMonitor(settings(tmp_path, drift_queue_records=100))
    model = loaded(fitted, 31)
    arrays = fitted.encode_rows(make_mixed(60, seed=16))
    res = fitted.score_encoded(arrays)
    monitor.submit(model, arrays, res.log_likelihood, k=fitted.sampler_.k + 1)
    assert not monitor.queue
    for _ in range(3):
        monitor.submit(model, arrays, res.log_likelihood, k=None, kl=res.kl)
    assert monitor.queued == 60 and len(monitor.queue) == 1
    assert metrics.DRIFT_DROPPED.labels("mixed", "31")._value.get() == 120
    assert metrics.DRIFT_SKIPPED.labels("mixed", "31")._value.get() == 60


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, fitted):
    return fitted.save(tmp_path_factory.mktemp("b") / "bundle")


def test_the_app_serves_drift_state_and_the_monitoring_page(bundle):
    s = Settings(
        bundle_path=bundle, poll_seconds=0, drift_interval_seconds=0.2,
        drift_bucket_records=50, drift_window_records=200,
    )  # fmt: skip
    app = create_app(s)
    frame = make_mixed(200, seed=17)
    records = frame.astype(object).to_dict(orient="records")

    async def run() -> tuple[dict, str, dict]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                r = await client.post("/v1/score", json={"records": records})
                assert r.status_code == 200
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    state = (await client.get("/v1/drift")).json()
                    if state["status"] == "checked" and state["martingale"]["records"] == 200:
                        break
                    await asyncio.sleep(0.1)
                page = (await client.get("/monitor")).text
                schema = (await client.get("/openapi.json")).json()
                return state, page, schema

    state, page, schema = asyncio.run(run())
    assert state["martingale"]["records"] == 200
    assert state["windows"]["time"]["records"] == 200
    assert "<script>" in page and "http" not in page.split("<script>")[0].replace("http-equiv", "")
    assert "/v1/drift" in schema["paths"]
    props = schema["components"]["schemas"]["DriftState"]["properties"]
    assert {"martingale", "windows", "reference_missing"} <= set(props)


class FakeCPU:
    """A CPU clock that moves only when read (``tick`` seconds a read) or told to: the
    budget's arithmetic without the machine's load in it."""

    def __init__(self, tick: float = 1e-3) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_over_budget_requests_leave_the_windows_but_not_the_martingale(fitted, tmp_path):
    # 1.5 ms banked (1.5e-4 of a core over 10 s): the first request's check has spent
    # 1 ms of it, the second's 2 ms, so only the first of six gets into the windows
    monitor = DriftMonitor(settings(tmp_path, drift_budget=1.5e-4), cpu_clock=FakeCPU())
    model = loaded(fitted, 41)
    feed(monitor, model, make_mixed(300, seed=18))
    monitor.step(50.0)
    state = monitor.state()
    assert state["martingale"]["records"] == 300
    assert state["windows"]["time"]["records"] == 50  # the first request only
    assert metrics.DRIFT_UNWINDOWED.labels("mixed", "41")._value.get() == 250
    assert monitor._budget < 0  # the martingale's work was spent too, past the balance


def test_the_drift_threads_cpu_is_counted_ingest_and_checks_alike(fitted, tmp_path):
    monitor = DriftMonitor(settings(tmp_path), cpu_clock=FakeCPU())
    checked: list[float] = []
    monitor.check = lambda cur, now: checked.append(now)  # type: ignore[method-assign]
    before = metrics.DRIFT_CPU._value.get()
    banked = monitor._budget
    feed(monitor, loaded(fitted, 43), make_mixed(200, seed=21))
    monitor.step(30.0)
    assert checked == [30.0]
    # the ingest's CPU is what left the budget; the check's is one tick of the fake clock
    rise = metrics.DRIFT_CPU._value.get() - before
    assert rise == pytest.approx(banked - monitor._budget + 1e-3, rel=1e-9)
    assert banked - monitor._budget > 4e-3  # a tick per request at least


def test_contributions_are_a_share_of_the_windowed_requests_from_the_first(fitted, tmp_path):
    monitor = DriftMonitor(
        settings(tmp_path, drift_contribution_share=0.25, drift_bucket_records=10_000),
        cpu_clock=FakeCPU(tick=0.0),
    )
    model = loaded(fitted, 42)
    frame = make_mixed(400, seed=19)
    assert monitor.wants_contributions()  # the first request: a window soon has some
    assert not any(monitor.wants_contributions() for _ in range(5))  # nothing windowed yet
    feed(monitor, model, frame.iloc[:200])  # four requests, none asking: credit 0 so far
    monitor.step(10.0)
    stats = monitor.current.open.stats
    assert (stats.n, stats.contrib_n) == (200, 0)
    assert [monitor.wants_contributions() for _ in range(3)] == [True, False, False]
    # requests the budget leaves out of the windows grant nothing
    monitor._budget = -1.0
    monitor._last_step = 20.0
    feed(monitor, model, frame.iloc[200:400])
    monitor.step(20.0)
    assert not any(monitor.wants_contributions() for _ in range(8))
    assert metrics.DRIFT_UNWINDOWED.labels("mixed", "42")._value.get() == 200
    # a request scored with contributions goes into the windows whatever the balance
    monitor._credit = 1.0
    feed(monitor, model, frame.iloc[:50])
    monitor.step(20.0)
    assert (stats.n, stats.contrib_n) == (250, 50)
    assert metrics.DRIFT_UNWINDOWED.labels("mixed", "42")._value.get() == 200
    # monitoring off, or no share: never
    off = DriftMonitor(settings(tmp_path, drift=False))
    assert not any(off.wants_contributions() for _ in range(5))
    none = DriftMonitor(settings(tmp_path, drift_contribution_share=0.0))
    assert not any(none.wants_contributions() for _ in range(5))
    # a share of 1 is every request the windows take, not every request: the budget holds
    full = DriftMonitor(settings(tmp_path, drift_contribution_share=1.0))
    assert [full.wants_contributions() for _ in range(3)] == [True, False, False]


@pytest.mark.parametrize("shared", [False, True])
def test_a_reset_starts_a_fresh_martingale_in_the_checker(fitted, tmp_path, shared):
    s = settings(tmp_path, drift_dir=tmp_path / "drift" if shared else None)
    checker = DriftMonitor(s, worker="c")
    model = loaded(fitted, 51 + shared)
    feed(checker, model, shifted(300, seed=20))
    checker.step(10.0)
    assert checker.state()["martingale"]["alarm"]
    # any worker may take the request: with a shared folder, another one does
    (DriftMonitor(s, worker="o") if shared else checker).request_reset(model)
    checker._next_check = 0.0
    checker.step(11.0)
    state = checker.state()
    assert state["martingale"]["records"] == 0 and not state["martingale"]["alarm"]
    assert state["reset_at"] is not None
    assert state["windows"]["time"]["records"] == 300  # the windows slide on


def test_reset_needs_the_admin_token(bundle):
    from fastapi.testclient import TestClient

    app = create_app(Settings(bundle_path=bundle, poll_seconds=0, admin_token="t" * 20))
    with TestClient(app) as client:
        r = client.post("/v1/drift/reset")
        assert r.status_code == 401 and r.json()["detail"][0]["loc"] == ["header", "authorization"]
        r = client.post("/v1/drift/reset", headers={"authorization": "Bearer " + "t" * 20})
        assert r.status_code == 200 and r.json()["reset"]


def test_image_models_are_monitored_too(tmp_path):
    from anomaly_vae import ImageDetector
    from tests.test_image_detector import squares

    small = {"max_epochs": 6, "k": 8, "latent_dim": 4, "width_mult": 8, "batch_size": 64}
    det = ImageDetector(**small).fit(squares(300, 0))
    monitor = DriftMonitor(settings(tmp_path, drift_bucket_records=50, drift_window_records=100))
    model = LoadedModel(det, "squares", 1, None, "test", "now")
    for seed in (1, 2):
        images = squares(100, seed)
        scored = det.score(images)
        monitor.submit(
            model, images, -scored["score"].to_numpy(), k=None,
            flags=scored["is_outlier"].to_numpy(dtype=bool),
        )  # fmt: skip
    monitor.step(5.0)
    state = monitor.state()
    assert state["martingale"]["records"] == 200
    assert state["windows"]["time"]["records"] == 200
    assert set(state["windows"]["time"]["signals"]) == {"scores", "outlier_rate", "latent", "kl"}
    assert state["windows"]["time"]["features"] == []


def test_frequent_checks_do_not_starve_the_windows_of_a_quiet_server(fitted, tmp_path):
    """The budget is for the work that grows with traffic: a check after every request
    that costs a second of CPU (far more than the budget accrues between them) leaves
    every record in the windows (charged to the budget, such checks left a test server's
    windows empty)."""
    cpu = FakeCPU()
    monitor = DriftMonitor(settings(tmp_path, drift_interval_seconds=0.001), cpu_clock=cpu)
    check = monitor.check

    def costly_check(cur, now):
        cpu.now += 1.0
        check(cur, now)

    monitor.check = costly_check  # type: ignore[method-assign]
    model = loaded(fitted, 43)
    frame = make_mixed(300, seed=19)
    for i, start in enumerate(range(0, 300, 10)):  # 30 requests, a check after each
        feed(monitor, model, frame.iloc[start : start + 10])
        monitor.step(100.0 + 0.01 * i)  # 10 ms apart: the budget accrues 0.3 ms each
    monitor.step(1000.0)  # the next check: a costly check spaces them by cost / budget
    assert monitor.state()["windows"]["time"]["records"] == 300
    assert metrics.DRIFT_UNWINDOWED.labels("mixed", "43")._value.get() == 0


def test_costly_checks_are_spaced_to_stay_within_the_budget(fitted, tmp_path):
    """A check that costs 2 s of CPU at a budget of 0.05 of a core: the next one waits
    40 s, not the 1 s interval."""
    cpu = FakeCPU(tick=0.0)
    monitor = DriftMonitor(
        settings(tmp_path, drift_interval_seconds=1.0, drift_budget=0.05), cpu_clock=cpu
    )
    check = monitor.check
    times: list[float] = []

    def costly_check(cur, now):
        times.append(now)
        cpu.now += 2.0
        check(cur, now)

    monitor.check = costly_check  # type: ignore[method-assign]
    model = loaded(fitted, 44)
    feed(monitor, model, make_mixed(100, seed=20))
    for t in range(0, 100, 5):
        monitor.step(1000.0 + t)
    assert times == [1000.0, 1040.0, 1080.0]


def test_a_steps_requests_go_into_the_windows_in_one_update_as_if_one_at_a_time(fitted, tmp_path):
    """The drift task merges a step's windowed requests into one update (two: with and
    without contributions); the window statistics are those of one update per request,
    including requests whose flags or latent means the route did not hand over."""
    model = loaded(fitted, 61)
    det = model.detector
    frame = make_mixed(240, seed=23)
    requests = []
    for i, start in enumerate(range(0, 240, 40)):
        arrays = det.encode_rows(frame.iloc[start : start + 40], allow_extra=False)
        with_contributions = i % 3 == 1
        res = det.score_encoded(arrays, contributions=with_contributions)
        given = i != 4  # one request as a route without the scoring pass's outputs
        requests.append({
            "arrays": arrays, "normality": res.log_likelihood, "k": None,
            "kl": res.kl if given else None, "latent": res.latent_mean if given else None,
            "contributions": res.contributions if with_contributions else None,
            "flags": det.result_columns(res, arrays)["is_outlier"] if given else None,
        })  # fmt: skip
    s = settings(tmp_path, drift_bucket_records=10_000)
    one_by_one = DriftMonitor(s, cpu_clock=FakeCPU(tick=0.0))
    merged = DriftMonitor(s, cpu_clock=FakeCPU(tick=0.0))
    for req in requests:
        one_by_one.submit(model, **req)
        one_by_one.step(10.0)
        merged.submit(model, **req)
    merged.step(10.0)
    a, b = one_by_one.current.open.stats, merged.current.open.stats
    assert (a.n, a.flagged, a.contrib_n) == (b.n, b.flagged, b.contrib_n) == (240, a.flagged, 80)
    for name in ("score_counts", "kl_counts", "latent_counts", "contrib_counts", "latent_sample"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    for name in a.feature_counts:
        assert np.array_equal(a.feature_counts[name], b.feature_counts[name]), name
        assert a.feature_missing[name] == b.feature_missing[name], name
    for name in a.feature_fine:
        assert np.array_equal(a.feature_fine[name], b.feature_fine[name]), name
    # sums in another order: equal to rounding
    assert b.score_sum == pytest.approx(a.score_sum, rel=1e-12)
    assert np.allclose(a.contrib_sum, b.contrib_sum, rtol=1e-12)
    # the martingale still bets request by request: the same bits
    ma, mb = one_by_one.current.martingale, merged.current.martingale
    assert (ma.n, ma.log_value, ma.log_max) == (mb.n, mb.log_value, mb.log_max)
    assert ma.n == 240
