"""The Simple Jumper martingale: one step has mean 1 on uniform p-values, streams of
uniform p-values rarely ever reach 1/level (Ville), shifted ones do, in either
direction; smoothed conformal p-values are uniform where plain ones are not."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import integrate

from anomaly_vae.drift.martingale import (
    BETS,
    OnlineConformal,
    SimpleJumper,
    calibration_slack,
    smoothed_p_values,
)


def test_each_bet_integrates_to_one_so_one_step_has_mean_one():
    for e in BETS:
        value, _ = integrate.quad(lambda p, e=e: 1.0 + e * (p - 0.5), 0.0, 1.0)
        assert value == pytest.approx(1.0)
    # and the mixture after a jump: the expected capital ratio of one step is 1
    m = SimpleJumper(jump=0.3)
    m.weights = np.array([0.7, 0.2, 0.1])
    w = (1 - m.jump) * m.weights + m.jump / 3
    value, _ = integrate.quad(lambda p: float((w * (1 + BETS * (p - 0.5))).sum()), 0, 1)
    assert value == pytest.approx(1.0)


def test_uniform_streams_rarely_ever_alarm():
    """300 streams of 2,000 uniform p-values at level 0.05: the share that ever reaches
    1/level stays within the binomial bound of 0.05 (Ville's inequality)."""
    rng = np.random.default_rng(0)
    streams = 300
    ever = sum(SimpleJumper(level=0.05).update(rng.random(2000)).alarm for _ in range(streams))
    assert ever / streams <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / streams)


@pytest.mark.parametrize("side", ["small", "large"])
def test_a_shifted_stream_alarms_in_either_direction(side):
    rng = np.random.default_rng(1)
    p = rng.beta(0.6, 1.0, 3000)  # small p-values: unusual records
    if side == "large":
        p = 1.0 - p  # large p-values: records more typical than the reference
    m = SimpleJumper(level=0.01).update(p)
    assert m.alarm and m.log_max > m.threshold


def test_a_change_after_a_long_quiet_stretch_is_still_followed():
    rng = np.random.default_rng(2)
    quiet = SimpleJumper(level=0.01).update(rng.random(20_000))
    assert not quiet.alarm
    quiet.update(rng.beta(0.6, 1.0, 2000))
    assert quiet.alarm


def test_smoothed_p_values_are_uniform_where_plain_ones_are_biased():
    rng = np.random.default_rng(3)
    reference = rng.integers(0, 5, 200).astype(float)  # heavy ties
    window = rng.integers(0, 5, 100_000).astype(float)
    p = smoothed_p_values(window, reference, rng)
    assert p.min() > 0.0 and p.max() < 1.0
    # uniform given this reference? only on average over references; over many draws
    means = []
    for _ in range(200):
        ref = rng.integers(0, 5, 200).astype(float)
        means.append(smoothed_p_values(rng.integers(0, 5, 500).astype(float), ref, rng).mean())
    assert np.mean(means) == pytest.approx(0.5, abs=0.005)
    plain = (np.searchsorted(np.sort(reference), window, side="right") + 1) / 201
    assert plain.mean() > 0.55  # ties counted in the record's favour: biased high


def test_state_round_trips_and_bad_input_is_refused():
    rng = np.random.default_rng(4)
    m = SimpleJumper(level=0.05).update(rng.random(100))
    again = SimpleJumper.from_dict(m.to_dict())
    a, b = m.update(np.full(50, 0.1)), again.update(np.full(50, 0.1))
    assert a.log_value == b.log_value and a.n == b.n == 150
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        SimpleJumper().update(np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="level"):
        SimpleJumper(level=0.0)


def test_online_p_values_rank_each_record_against_the_calibration_and_every_earlier_one():
    rng = np.random.default_rng(5)
    cal = rng.integers(0, 6, 40).astype(float)  # ties on purpose
    stream = rng.integers(0, 7, 700).astype(float)
    u = rng.random(700)
    online = OnlineConformal(cal)
    got = np.concatenate(
        [online.p_values(stream[:300], u[:300]), online.p_values(stream[300:], u[300:])]
    )
    want = []
    for t, (a, ut) in enumerate(zip(stream, u, strict=True)):
        ref = np.concatenate([cal, stream[:t]])
        want.append(((ref < a).sum() + ut * ((ref == a).sum() + 1)) / (len(ref) + 1))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert online.size == 740 and not online.frozen


def test_online_p_values_stay_exact_across_merges_and_a_cap_reached_inside_a_batch(
    monkeypatch,
):
    """Ties, a weighted calibration set, buffer merges (a small buffer) and a cap crossed
    in the middle of a batch: every p-value equals the definition's, record by record."""
    from anomaly_vae.drift import martingale

    monkeypatch.setattr(martingale, "_BUFFER", 50)
    rng = np.random.default_rng(8)
    cal = rng.integers(0, 9, 30).astype(float)
    stream = rng.integers(0, 10, 900).astype(float)
    u = rng.random(900)
    cap = 610
    online = OnlineConformal(cal, weight=2.0, cap=cap)
    cuts = [0, 1, 130, 200, 600, 700, 900]  # batches of 1, 129, 70, 400, 100, 200 records
    got = np.concatenate(
        [online.p_values(stream[a:b], u[a:b]) for a, b in itertools.pairwise(cuts)]
    )
    want = []
    for t, (a, ut) in enumerate(zip(stream, u, strict=True)):
        ref = stream[: min(t, cap)]
        below = 2.0 * (cal < a).sum() + (ref < a).sum()
        ties = 2.0 * (cal == a).sum() + (ref == a).sum()
        want.append((below + ut * (ties + 1)) / (2.0 * cal.size + ref.size + 1))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert online.frozen and online.seen == cap and online.size == 60 + cap


def test_online_ranks_keep_the_alarm_valid_where_a_fixed_calibration_set_does_not():
    """Calibration sets of 30 scores and 3,000-record streams, all exchangeable: ranked
    against the calibration set alone, the p-values carry its noise and the martingale
    ever alarms far above its level; ranked online, within the binomial bound."""
    rng = np.random.default_rng(6)
    streams, level = 200, 0.05
    fixed = online = 0
    for _ in range(streams):
        cal, stream = rng.random(30), rng.random(3000)
        u = rng.random(3000)
        fixed += SimpleJumper(level=level).update(smoothed_p_values(stream, cal, rng)).alarm
        p = OnlineConformal(cal).p_values(stream, u)
        online += SimpleJumper(level=level).update(p).alarm
    bound = level + 3 * math.sqrt(level * (1 - level) / streams)
    assert online / streams <= bound
    assert fixed / streams > 2 * bound  # the failure the online ranks remove


def test_a_frozen_reference_stops_growing_and_the_slack_bounds_its_noise():
    online = OnlineConformal(np.arange(10.0), cap=100)
    online.p_values(np.random.default_rng(7).random(150) * 10, np.full(150, 0.5))
    assert online.frozen and online.size == 110 and online.seen == 100
    assert calibration_slack(10**7, 1e-6) < 1e-3
    with pytest.raises(ValueError, match="at least one"):
        calibration_slack(0, 0.1)


def test_counts_below_and_tied_are_the_two_searches_counts():
    """The one-search count (a second search only for keys present) against both
    searches: keys below, above and equal to the ends, ties, float32 neighbours."""
    from anomaly_vae.drift.martingale import _below_and_ties

    rng = np.random.default_rng(11)
    arr = np.sort(rng.integers(0, 50, 5000).astype(np.float32))
    keys = np.concatenate([
        rng.integers(-3, 53, 2000).astype(np.float32),
        np.nextafter(arr[[0, -1]], np.float32(np.inf)),
        np.nextafter(arr[[0, -1]], np.float32(-np.inf)),
        arr[[0, -1]],
    ])  # fmt: skip
    lo, tied = _below_and_ties(arr, keys)
    want_lo = np.searchsorted(arr, keys, side="left")
    np.testing.assert_array_equal(lo, want_lo)
    np.testing.assert_array_equal(tied, np.searchsorted(arr, keys, side="right") - want_lo)
    lo, tied = _below_and_ties(np.array([1.0]), np.array([0.5, 1.0, 2.0]))
    np.testing.assert_array_equal(lo, [0, 0, 1])
    np.testing.assert_array_equal(tied, [0, 1, 0])
    lo, tied = _below_and_ties(np.zeros(0), np.array([0.5]))
    assert lo.tolist() == [0] and tied.tolist() == [0]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 64, 65, 257, 1000])
def test_earlier_counts_are_the_batchs_pairwise_counts(n):
    """Each record against the batch's records before it, level by level, against the
    definition compared pair by pair: ties (a few values), signed zeros, float32
    neighbours, sizes on and off a power of two."""
    from anomaly_vae.drift.martingale import earlier_counts

    rng = np.random.default_rng(n)
    for values in (
        rng.normal(size=n).astype(np.float32),
        rng.integers(-2, 3, n).astype(np.float32),
        rng.choice(
            np.array([-0.0, 0.0, 1.0, np.nextafter(np.float32(1), np.float32(2))], np.float32),
            n,
        ),
    ):
        below, ties = earlier_counts(values)
        earlier = np.tri(n, k=-1, dtype=bool)
        np.testing.assert_array_equal(below, (earlier & (values[None, :] < values[:, None])).sum(1))
        np.testing.assert_array_equal(ties, (earlier & (values[None, :] == values[:, None])).sum(1))
