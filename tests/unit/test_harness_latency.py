"""The demo app's latency law: a lognormal whose p50 and p95 are the scenario's."""

from __future__ import annotations

import random

import pytest

from harness.latency import Spread, fit


@pytest.mark.parametrize(("p50", "p95"), [(20, 80), (22, 90), (900, 2600), (50, 50)])
def test_fit_hits_both_quantiles(p50: float, p95: float) -> None:
    law = fit(p50, p95)
    assert law.quantile(0.5) == pytest.approx(p50 / 1000)
    assert law.quantile(0.95) == pytest.approx(p95 / 1000)
    rng = random.Random(7)
    draws = sorted(law.sample(rng) for _ in range(20000))
    assert draws[10000] == pytest.approx(p50 / 1000, rel=0.05)
    assert draws[19000] == pytest.approx(p95 / 1000, rel=0.05)


def test_zero_latency_and_bad_input() -> None:
    assert fit(0, 0).sample(random.Random(1)) == 0.0
    with pytest.raises(ValueError):
        fit(100, 50)
    with pytest.raises(ValueError):
        fit(-1, 5)


def test_spread_gives_exact_error_counts_and_quantiles() -> None:
    spread, law = Spread(), fit(20, 80)
    draws = [spread.draw(law, 0.08) for _ in range(1000)]
    for start in range(0, 1000, 100):  # every window of 100 requests has 8 errors, give or take one
        assert 7 <= sum(fail for _, fail in draws[start:start + 100]) <= 9
    lat = sorted(d for d, _ in draws[:200])
    assert lat[100] == pytest.approx(0.020, rel=0.05)
    assert lat[190] == pytest.approx(0.080, rel=0.1)
    healthy = Spread()
    assert not any(healthy.draw(law, 0.001)[1] for _ in range(999))  # the first error comes after 1/rate requests
    assert healthy.draw(law, 0.001)[1]
