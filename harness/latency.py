"""Latency distribution of the demo app: a lognormal fitted to the scenario's p50 and p95.

A lognormal has the long right tail real services show, and two quantiles fix its two parameters exactly, so the
p95 Prometheus computes from the histogram lands where the scenario says.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from statistics import NormalDist

# Standard normal quantile at 0.95: ln(p95) = mu + Z95 * sigma.
Z95 = 1.6448536269514722
_STD_NORMAL = NormalDist()
# Fractional parts of n * (golden ratio - 1) fill (0, 1) evenly in every stretch of consecutive n (Weyl sequence).
GOLDEN = (math.sqrt(5) - 1) / 2
MAX_SECONDS = 30.0


@dataclass(frozen=True)
class LogNormal:
    """ln(latency in seconds) ~ N(mu, sigma); zero p50 means no latency at all."""

    mu: float
    sigma: float
    zero: bool = False

    def sample(self, rng: random.Random) -> float:
        """One latency in seconds, capped so a freak draw cannot hold a worker for minutes."""
        if self.zero:
            return 0.0
        return min(MAX_SECONDS, rng.lognormvariate(self.mu, self.sigma))

    def quantile(self, q: float) -> float:
        """The latency (seconds) at quantile q; drawing q evenly over (0, 1) reproduces the distribution."""
        if self.zero:
            return 0.0
        q = min(max(q, 1e-9), 1 - 1e-9)
        return min(MAX_SECONDS, math.exp(self.mu + self.sigma * _STD_NORMAL.inv_cdf(q)))


class Spread:
    """Low-discrepancy draws: any window of n requests has within one of n * errorRate errors and latencies
    spread over the whole distribution, so a 10 s rate window at 2 rps shows the configured rates, not luck.

    Errors come from an accumulator (the first one after exactly 1/errorRate requests); latency quantiles come
    from the golden-ratio Weyl sequence.
    """

    def __init__(self) -> None:
        self.n = 0
        self.errors = 0.0

    def draw(self, law: LogNormal, error_rate: float) -> tuple[float, bool]:
        self.n += 1
        self.errors += error_rate
        fail = self.errors >= 1.0 - 1e-9
        if fail:
            self.errors -= 1.0
        return law.quantile((0.5 + self.n * GOLDEN) % 1.0), fail


def fit(p50_ms: float, p95_ms: float) -> LogNormal:
    """The lognormal whose median is p50 and whose 95th percentile is p95 (milliseconds in, seconds out)."""
    if p50_ms < 0 or p95_ms < 0:
        raise ValueError("latencies must not be negative")
    if p95_ms < p50_ms:
        raise ValueError(f"p95 ({p95_ms}) must not be below p50 ({p50_ms})")
    if p50_ms == 0:
        return LogNormal(0.0, 0.0, zero=True)
    mu = math.log(p50_ms / 1000.0)
    sigma = math.log(p95_ms / p50_ms) / Z95
    return LogNormal(mu, sigma)
