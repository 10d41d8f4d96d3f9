"""The Mann-Whitney judge: correct statistics, inconclusive on too few samples."""

from __future__ import annotations

import random

from saferollout.core.judge import judge, mann_whitney_greater


def test_u_and_p_against_a_hand_computed_case() -> None:
    # canary all greater than stable: U = n1*n2, one-sided p is small
    u, p = mann_whitney_greater([5, 6, 7, 8, 9], [1, 2, 3, 4, 4.5])
    assert u == 25 and p < 0.01
    u, p = mann_whitney_greater([1, 2, 3], [1, 2, 3])
    assert u == 4.5 and 0.45 < p < 0.65


def test_ties_only_is_not_significant() -> None:
    assert judge([1.0] * 30, [1.0] * 30).verdict == "pass"


def test_too_few_samples_is_inconclusive() -> None:
    j = judge([1.0] * 5, [1.0] * 30, min_samples=20)
    assert j.verdict == "inconclusive" and "5 canary" in j.message


def test_detects_a_clear_shift_and_not_a_null_one() -> None:
    rng = random.Random(7)
    stable = [rng.lognormvariate(0, 0.3) for _ in range(40)]
    same = [rng.lognormvariate(0, 0.3) for _ in range(40)]
    worse = [x * 1.5 for x in (rng.lognormvariate(0, 0.3) for _ in range(40))]
    assert judge(same, stable).verdict == "pass"
    assert judge(worse, stable).verdict == "fail"
    assert judge(worse, stable, direction="decrease").verdict == "pass"  # higher is better for throughput


def test_nan_samples_are_dropped() -> None:
    j = judge([float("nan")] * 30, [1.0] * 30)
    assert j.verdict == "inconclusive"
