"""A statistical judge: is the canary worse than the stable version, beyond chance?

One-sided Mann-Whitney U over the samples of the analysis window (normal approximation with tie correction and
continuity correction), as automated canary analysis does. Too few samples is inconclusive, never a pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Judgement:
    verdict: Literal["pass", "fail", "inconclusive"]
    p_value: float | None
    effect: float | None  # P(canary > stable) - 0.5 + 0.5: the common-language effect size
    message: str


def _ranks(values: Sequence[float]) -> tuple[list[float], float]:
    """Average ranks (1-based) and the tie term sum(t^3 - t)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    ties = 0.0
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        avg = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = avg
        t = j - i + 1
        ties += t**3 - t
        i = j + 1
    return ranks, ties


def mann_whitney_greater(canary: Sequence[float], stable: Sequence[float]) -> tuple[float, float]:
    """(U of the canary, one-sided p-value for 'canary tends to be greater than stable')."""
    n1, n2 = len(canary), len(stable)
    ranks, ties = _ranks([*canary, *stable])
    r1 = sum(ranks[:n1])
    u1 = r1 - n1 * (n1 + 1) / 2
    mean = n1 * n2 / 2
    n = n1 + n2
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0:
        return u1, 1.0 if u1 <= mean else 0.0
    z = (u1 - mean - 0.5) / math.sqrt(var)
    return u1, 0.5 * math.erfc(z / math.sqrt(2))


def judge(canary: Sequence[float], stable: Sequence[float], min_samples: int = 20,
          confidence: float = 0.95, direction: Literal["increase", "decrease"] = "increase") -> Judgement:
    c = [x for x in canary if not math.isnan(x)]
    s = [x for x in stable if not math.isnan(x)]
    if len(c) < min_samples or len(s) < min_samples:
        return Judgement("inconclusive", None, None,
                         f"{len(c)} canary and {len(s)} stable samples; {min_samples} each are needed")
    if direction == "decrease":
        c, s = [-x for x in c], [-x for x in s]
    u, p = mann_whitney_greater(c, s)
    effect = u / (len(c) * len(s))
    alpha = 1 - confidence
    worse = "higher" if direction == "increase" else "lower"
    if p < alpha:
        return Judgement("fail", p, effect, f"canary is {worse} than stable: p={p:.4f} < {alpha:g}, "
                         f"P(canary {worse})={effect:.2f}")
    return Judgement("pass", p, effect, f"no significant difference: p={p:.4f}, P(canary {worse})={effect:.2f}")
