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

The calibration set's noise is bounded, not ignored. Given the set, a smoothed p-value's
mean is 1/2 + S/(n + 1), S the sum of n centred uniforms (the calibration scores'
ranks under the data's own distribution), and every bet here is linear in p, so one
step's expected factor is 1 + e S/(n + 1). S is sub-Gaussian with variance proxy n/12
(a centred uniform is strictly sub-Gaussian), so |S|/(n + 1) <= ``slack`` =
sqrt(n log(2/delta)/6)/(n + 1) but with probability delta (:func:`calibration_slack`).
Dividing each bet by 1 + |e| slack makes every step's factor at most 1 in expectation
on that event: the capital is a supermartingale given the set, and the chance of ever
reaching 1/level is at most level + delta over calibration draws and stream together.
The price is that a drift moving the mean p-value by less than ``slack`` cannot be
told from the calibration set's own noise; it falls as 1/sqrt(n). Tested in
tests/drift/test_martingale.py and measured over 10^5-record streams in
benchmarks/drift.py's streaming part.
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
    """The bound on |E[p | calibration set] - 1/2| that holds but with probability
    ``delta`` over draws of a calibration set of ``n`` exchangeable scores (see the
    module docstring): sqrt(n log(2/delta) / 6) / (n + 1)."""
    if n < 1:
        msg = f"the calibration set must have at least one score, got n={n}"
        raise ValueError(msg)
    if not 0.0 < delta < 1.0:
        msg = f"delta must be in (0, 1), got {delta!r}"
        raise ValueError(msg)
    return math.sqrt(n * math.log(2.0 / delta) / 6.0) / (n + 1)


@dataclass
class SimpleJumper:
    """The Simple Jumper martingale at alarm ``level`` (it alarms when the capital
    reaches 1 / level) with jumping rate ``jump``. ``log_value`` is the log of the
    capital; ``log_max`` the largest it has been (the alarm is on that, once crossed
    it stays). ``slack`` (:func:`calibration_slack`) makes the bets conservative for
    p-values against one fixed calibration set; 0 bets on exact uniforms. Feed p-values
    in the order the records came."""

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
        w = self.weights.copy()
        log_value, log_max = self.log_value, self.log_max
        scale = 1.0 / (1.0 + np.abs(BETS) * self.slack)
        for value in p.tolist():
            # weights are the bets' shares of the capital (they sum to 1): jump, then bet
            w = (1.0 - self.jump) * w + self.jump / 3.0
            w = w * (1.0 + BETS * (value - 0.5)) * scale
            total = float(w.sum())
            w /= total
            log_value += math.log(total)
            log_max = max(log_max, log_value)
        self.weights, self.log_value, self.log_max = w, log_value, log_max
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
