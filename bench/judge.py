"""The Mann-Whitney judge on synthetic latency samples: false positives on identical versions and detection of a
20% shift, over 200 runs each. Prints figures; not a test.

Run: .venv/bin/python bench/judge.py [--runs 200] [--samples 24] [--shift 0.2]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator")]

from saferollout.core.judge import judge  # noqa: E402


def window(rng: random.Random, n: int, scale: float) -> list[float]:
    """p95 latency seen every 5 s over a window: lognormal around 80 ms, as a service's tail looks."""
    return [scale * rng.lognormvariate(-2.5, 0.25) for _ in range(n)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--samples", type=int, default=24, help="samples per side (a 2m window at a 5s step)")
    p.add_argument("--shift", type=float, default=0.2)
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=2026)
    a = p.parse_args()
    rng = random.Random(a.seed)
    print(f"{a.runs} runs, {a.samples} samples per side, confidence {a.confidence}, seed {a.seed}")
    for label, scale in (("identical versions", 1.0), (f"canary {a.shift:.0%} slower", 1 + a.shift)):
        verdicts = {"pass": 0, "fail": 0, "inconclusive": 0}
        for _ in range(a.runs):
            stable = window(rng, a.samples, 1.0)
            canary = window(rng, a.samples, scale)
            verdicts[judge(canary, stable, min_samples=20, confidence=a.confidence).verdict] += 1
        rate = verdicts["fail"] / a.runs
        name = "false-positive rate" if scale == 1.0 else "detection rate"
        print(f"{label:22s} {name:20s} {rate:6.1%}   {verdicts}")
    few = judge(window(rng, 10, 1.2), window(rng, 10, 1.0), min_samples=20)
    print(f"with 10 samples a side: {few.verdict} ({few.message})")


if __name__ == "__main__":
    main()
