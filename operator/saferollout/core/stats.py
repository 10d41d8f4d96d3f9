"""Small-sample honesty for rates: one failed request out of fifty is not proof of a 2% error rate."""

from __future__ import annotations

import math

Z_95_ONE_SIDED = 1.6449


def wilson_lower(rate: float, n: float, z: float = Z_95_ONE_SIDED) -> float:
    """Lower bound of the Wilson score interval for a proportion `rate` observed over `n` trials."""
    if not math.isfinite(n) or n < 1e-6:  # no requests (or a count so small its square underflows): no evidence
        return 0.0
    p = min(1.0, max(0.0, rate))
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / denom)
