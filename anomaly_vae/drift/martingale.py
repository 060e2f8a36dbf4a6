"""A conformal test martingale over a stream of p-values: an anytime-valid drift alarm.

Vovk's Simple Jumper (Vovk, Nouretdinov and Gammerman, "Testing exchangeability
on-line", 2003; Volkhonskiy et al., "Inductive conformal martingales for change-point
detection", 2017): the capital is split over three bets on each p-value,
f_e(p) = 1 + e (p - 1/2) for e in {-1, 0, 1}. e = -1 wins on small p-values (records
less likely than the reference: anomalies, new content), e = 1 on large ones (records
*more* typical than the reference, as out-of-distribution data can be); each step a
share ``jump`` of the capital is spread evenly over the three again, so the martingale
follows a change that comes late. Every f_e integrates to 1 on [0, 1]: on independent
uniform p-values the capital is a nonnegative martingale with mean 1, and by Ville's
inequality the probability that it *ever* reaches 1/level is at most level, however
long the stream.

What that assumes: independent p-values exactly uniform. Conformal p-values against a
fixed calibration set are independent and uniform only on average over calibration
draws; given the set, their distribution is off uniform by its sampling noise (order
1/sqrt(n)), which a long stream can bet on. Ties make plain conformal p-values
discrete with mean 1/2 + 1/(2(n + 1)), a bias the e = 1 bet would compound without
limit: :func:`smoothed_p_values` breaks ties at random so that the p-values are
uniform on [0, 1].

Against a *fixed* calibration set that is not enough: given the set, the p-values are off
uniform by its sampling noise, which the bets compound (benchmarks/drift.py's streaming
part measures it: with 200 calibration scores, 29% of 100,000-record no-drift streams
ever alarmed at level 0.05, against 4.7% with the online ranks below).
:class:`OnlineConformal` removes the problem the way Vovk's conformal test martingales
do: each record is ranked against the calibration scores *and every record of the
stream before it*. If the calibration set and the stream are
exchangeable together (drawn from one distribution), these smoothed p-values are
independent and exactly uniform (Vovk, Nouretdinov and Gammerman 2003), so Ville's
bound holds over the draw of the calibration set and the stream alike. A drift makes
the records after it unusual against everything before them, and the martingale grows;
as drifted records pile up in the reference they look less unusual, so the alarm comes
early after a change or not at all (the window checks see a lasting change).

The reference grows by one float32 per record (storing the score as float32 is a fixed
function of the record, so the ranks stay exact, ties smoothed) up to
:data:`ONLINE_CAP` records; after that it is frozen, and the p-values are conditional on
it. The bets then carry a ``slack`` (:func:`calibration_slack`) that bounds the frozen
reference's noise but with probability :data:`FROZEN_DELTA`, so the chance of ever
alarming stays at most level + FROZEN_DELTA. Tested in tests/drift/test_martingale.py
and measured over 10^5-record streams in benchmarks/drift.py's streaming part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The bets: on small p-values, none, on large p-values.
BETS = np.array([-1.0, 0.0, 1.0])


def smoothed_p_values(
    normality: np.ndarray, reference: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Smoothed conformal p-values [N] of ``normality`` [N] (higher is more normal)
    against the calibration ``reference`` [n]: (#{ref < s} + U (#{ref == s} + 1)) /
    (n + 1) with U uniform on (0, 1), so that a record exchangeable with the reference
    gets a p-value exactly uniform on (0, 1)."""
    ref = np.sort(np.asarray(reference, dtype=np.float64))
    s = np.asarray(normality, dtype=np.float64)
    below = np.searchsorted(ref, s, side="left")
    ties = np.searchsorted(ref, s, side="right") - below
    u = rng.random(s.shape)
    return (below + u * (ties + 1)) / (len(ref) + 1)


def calibration_slack(n: int, delta: float) -> float:
    """The bound on |E[p | reference] - 1/2| that holds but with probability ``delta``
    over draws of a fixed reference of ``n`` exchangeable scores: sqrt(n log(2/delta) / 6)
    / (n + 1). Given the reference, a smoothed p-value's mean is 1/2 + S/(n + 1), S the
    sum of n centred uniforms (the reference scores' ranks under the data's own law),
    sub-Gaussian with variance proxy n/12 (a centred uniform is strictly sub-Gaussian).
    Every bet here is linear in p, so a bet divided by 1 + |e| slack has expected factor
    at most 1 on that event."""
    if n < 1:
        msg = f"the calibration set must have at least one score, got n={n}"
        raise ValueError(msg)
    if not 0.0 < delta < 1.0:
        msg = f"delta must be in (0, 1), got {delta!r}"
        raise ValueError(msg)
    return math.sqrt(n * math.log(2.0 / delta) / 6.0) / (n + 1)


#: Stream records an :class:`OnlineConformal` reference takes before it freezes (float32:
#: 40 MB at the cap).
ONLINE_CAP = 10_000_000
#: The chance, once frozen, that the reference's noise exceeds the bets' slack.
FROZEN_DELTA = 1e-6
#: Stream records kept in a small sorted buffer before they are merged into the main
#: sorted array (an insert into 10^7 floats costs ~10 ms; into the buffer, microseconds).
_BUFFER = 65_536


def _below_and_ties(arr: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(#(arr < key), #(arr == key)) for each of ``keys`` in the sorted ``arr``: the
    second search only for the keys that are in ``arr`` (scores rarely tie, and each
    search of a large array costs cache misses)."""
    lo = np.searchsorted(arr, keys, side="left")
    if not arr.size:
        return lo, np.zeros_like(lo)
    at = arr[np.minimum(lo, arr.size - 1)]
    hit = (lo < arr.size) & (at == keys)
    tied = np.zeros(lo.shape, lo.dtype)
    if hit.any():
        tied[hit] = np.searchsorted(arr, keys[hit], side="right") - lo[hit]
    return lo, tied


#: Records whose earlier-record counts :func:`earlier_counts` takes pair by pair; the
#: levels of blocks above it, by searches.
_BLOCK = 32
#: [block, block]: row i marks the records before i.
_EARLIER = np.tri(_BLOCK, k=-1, dtype=bool)


def earlier_counts(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(#{j < i: a_j < a_i}, #{j < i: a_j == a_i}) for each record i of the batch ``a``
    [N]: each record against the batch's records before it, as int64 [N] each.

    The ties are each record's place in its tie group in a stable sort. The records
    below come level by level, as in a merge sort: at the level of blocks of w records
    (the batch padded to a power of two), a record in the second block of a pair counts
    the records of the first block below it (every earlier record is counted at exactly
    one level), by one search of integer keys (pair, rank) whose first blocks are sorted
    row by row; below :data:`_BLOCK` records, by comparing every pair of a block at once.
    A few numpy calls per level, where a Python loop over chunks of the batch was a
    third of the drift thread's time at saturation."""
    a = np.asarray(a).ravel()
    n = a.size
    order = np.argsort(a, kind="stable")
    ordered = a[order]
    first = np.searchsorted(ordered, ordered, side="left")  # each tie group's start
    ties = np.empty(n, np.int64)
    ties[order] = np.arange(n) - first
    if n < 2:
        return np.zeros(n, np.int64), ties
    size = 1 << (n - 1).bit_length()
    # records of the batch strictly below each one; the padding (after every record, so
    # never in a first block before a record) ranks above all
    rank = np.full(size, n, np.int64)
    rank[order] = first
    # within blocks of _BLOCK records, every pair at once (the levels below _BLOCK)
    block = min(_BLOCK, size)
    r = rank.reshape(-1, block)
    below = ((r[:, None, :] < r[:, :, None]) & _EARLIER[:block, :block]).sum(2).ravel()
    width = block
    while width < size:
        pairs = rank.reshape(-1, 2, width)
        groups = pairs.shape[0]
        offset = np.arange(groups, dtype=np.int64)[:, None] * (n + 1)
        keys = (np.sort(pairs[:, 0, :], axis=1) + offset).ravel()
        found = np.searchsorted(keys, (pairs[:, 1, :] + offset).ravel()).reshape(groups, width)
        # the keys of the pairs before this one are all smaller: width each
        below.reshape(-1, 2, width)[:, 1, :] += found - np.arange(groups)[:, None] * width
        width *= 2
    return below[:n], ties


class OnlineConformal:
    """Smoothed conformal p-values of a stream, each record against the calibration scores
    and every earlier record (see the module docstring): under exchangeability of
    calibration set and stream they are independent and uniform on (0, 1).

    ``reference`` [n] are the calibration scores (higher is more normal); ``weight`` the
    number of calibration records each stands for (n / m when a calibration set of n was
    kept as m quantiles; 1 when kept whole, the exact case)."""

    def __init__(self, reference: np.ndarray, weight: float = 1.0, cap: int = ONLINE_CAP) -> None:
        self.calibration = np.sort(np.asarray(reference, dtype=np.float32))
        self.weight = float(weight)
        self.cap = int(cap)
        self.main = np.zeros(0, np.float32)
        self.buffer = np.zeros(0, np.float32)
        self.seen = 0  # stream records ranked so far

    @property
    def frozen(self) -> bool:
        """The reference has reached its cap and no longer grows."""
        return self.seen >= self.cap

    @property
    def size(self) -> float:
        """Records in the reference: the calibration set's (weighted) and the stream's."""
        return self.calibration.size * self.weight + self.main.size + self.buffer.size

    def _counts(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(records in the reference below each of ``a``, records equal to it)."""
        # searched in sorted order, each search starts where the last ended: in a main
        # array of millions the searches of unsorted scores were cache misses (2 ms of
        # every 1000 records at 1.3 million); the counts are the same integers
        order = np.argsort(a, kind="stable")
        keys = a[order]
        below_sorted = np.zeros(a.shape, np.float64)
        ties_sorted = np.zeros(a.shape, np.float64)
        for arr, w in ((self.calibration, self.weight), (self.main, 1.0), (self.buffer, 1.0)):
            if arr.size:
                lo, tied = _below_and_ties(arr, keys)
                below_sorted += lo * w
                ties_sorted += tied * w
        below = np.empty_like(below_sorted)
        ties = np.empty_like(ties_sorted)
        below[order], ties[order] = below_sorted, ties_sorted
        return below, ties

    def p_values(self, normality: np.ndarray, u: np.ndarray) -> np.ndarray:
        """The next records' p-values [N], in order, for scores [N] (finite) and ``u`` [N]
        uniform on (0, 1); each record joins the reference after its own p-value (until
        the cap: records past it are ranked against the frozen reference)."""
        a = np.asarray(normality, dtype=np.float32).ravel()
        u = np.asarray(u, dtype=np.float64).ravel()
        # against the reference as it stood before this batch: one search per array
        below, ties = self._counts(a)
        size = self.size
        joins = min(max(self.cap - self.seen, 0), a.size)  # the first ``joins`` records join
        # the batch's joined records before each one
        within_below, within_ties = earlier_counts(a[:joins])
        below[:joins] += within_below
        ties[:joins] += within_ties
        earlier = np.sort(a[:joins])
        if joins < a.size:  # past the cap: every joined record of the batch is earlier
            rest = a[joins:]
            lo = np.searchsorted(earlier, rest, side="left")
            below[joins:] += lo
            ties[joins:] += np.searchsorted(earlier, rest, side="right") - lo
        prior = size + np.minimum(np.arange(a.size), joins)
        self._add(earlier)
        return (below + u * (ties + 1.0)) / (prior + 1.0)

    def _add(self, c: np.ndarray) -> None:
        """Join the sorted records ``c`` (at most the room left under the cap)."""
        if not c.size:
            return
        self.seen += c.size
        self.buffer = np.insert(self.buffer, np.searchsorted(self.buffer, c), c)
        if self.buffer.size >= _BUFFER or self.frozen:
            merged = np.concatenate([self.main, self.buffer])
            merged.sort(kind="stable")
            self.main, self.buffer = merged, np.zeros(0, np.float32)

    def to_dict(self) -> dict[str, Any]:
        """The stream part of the reference (as a list: for small states and tests)."""
        return {"weight": self.weight, "cap": self.cap, "seen": self.seen,
                "stream": np.concatenate([self.main, self.buffer]).tolist()}  # fmt: skip


@dataclass
class SimpleJumper:
    """The Simple Jumper martingale at alarm ``level`` (it alarms when the capital
    reaches 1 / level) with jumping rate ``jump``. ``log_value`` is the log of the
    capital; ``log_max`` the largest it has been (the alarm is on that, once crossed
    it stays). ``slack`` (:func:`calibration_slack`) makes the bets conservative for
    p-values against a fixed reference; 0 bets on exact uniforms (those of
    :class:`OnlineConformal` before it freezes). Feed p-values in the order the records
    came."""

    level: float = 0.01
    jump: float = 0.01
    slack: float = 0.0
    log_value: float = 0.0
    log_max: float = 0.0
    n: int = 0
    weights: np.ndarray = field(default_factory=lambda: np.full(3, 1.0 / 3.0))

    def __post_init__(self) -> None:
        if not 0.0 < self.level < 1.0:
            msg = f"level must be in (0, 1), got {self.level!r}"
            raise ValueError(msg)
        if not 0.0 <= self.jump <= 1.0:
            msg = f"jump must be in [0, 1], got {self.jump!r}"
            raise ValueError(msg)
        if not 0.0 <= self.slack < 1.0:
            msg = f"slack must be in [0, 1), got {self.slack!r}"
            raise ValueError(msg)

    @property
    def threshold(self) -> float:
        """log(1 / level): the log capital at which the alarm fires."""
        return -math.log(self.level)

    @property
    def alarm(self) -> bool:
        return self.log_max >= self.threshold

    def update(self, p_values: np.ndarray) -> SimpleJumper:
        """Bet on each p-value in turn (each in [0, 1]); returns self."""
        p = np.asarray(p_values, dtype=np.float64).ravel()
        if p.size and (np.isnan(p).any() or p.min() < 0.0 or p.max() > 1.0):
            msg = "p-values must be numbers in [0, 1]"
            raise ValueError(msg)
        # the three bets' shares of the capital as plain floats: a numpy array per step
        # cost ten times more than the arithmetic (this runs beside a service)
        w0, w1, w2 = (float(v) for v in self.weights)
        log_value, log_max = self.log_value, self.log_max
        keep, spread = 1.0 - self.jump, self.jump / 3.0
        scale = 1.0 / (1.0 + self.slack)
        log = math.log
        for value in p.tolist():
            # jump (the shares sum to 1), then bet 1 - (p - 1/2), 1, 1 + (p - 1/2)
            d = value - 0.5
            w0 = (keep * w0 + spread) * (1.0 - d) * scale
            w1 = keep * w1 + spread
            w2 = (keep * w2 + spread) * (1.0 + d) * scale
            total = w0 + w1 + w2
            w0, w1, w2 = w0 / total, w1 / total, w2 / total
            log_value += log(total)
            if log_value > log_max:
                log_max = log_value
        self.weights = np.array([w0, w1, w2])
        self.log_value, self.log_max = log_value, log_max
        self.n += int(p.size)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level, "jump": self.jump, "slack": self.slack,
            "log_value": self.log_value,
            "log_max": self.log_max, "n": self.n, "weights": self.weights.tolist(),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> SimpleJumper:
        return cls(
            level=float(doc["level"]), jump=float(doc["jump"]),
            slack=float(doc.get("slack", 0.0)),
            log_value=float(doc["log_value"]), log_max=float(doc["log_max"]),
            n=int(doc["n"]), weights=np.asarray(doc["weights"], dtype=np.float64),
        )  # fmt: skip
