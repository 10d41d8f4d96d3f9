"""How long the core takes to decide one analysis tick of one rollout (microseconds per decision).

Prints figures; not a test. Run: make bench  (or .venv/bin/python bench/decide.py)
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT)]

from saferollout.core import actions as a  # noqa: E402
from saferollout.core.engine import Inputs, decide  # noqa: E402
from tests.unit.world import World, make_spec  # noqa: E402


def main() -> None:
    world = World(make_spec()).run(12)  # stage 2, analysis running
    spec, status = world.spec, world.status
    now = world.now + timedelta(seconds=2)
    metrics = a.MetricValues("canary", "analysis", {"error-rate": 0.001})
    runs, rounds = 2000, 5
    per_round = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(runs):
            decide(spec, status, Inputs(now=now, name="web", generation=1, results=[metrics]))
        per_round.append((time.perf_counter() - start) / runs * 1e6)
    idle = time.perf_counter()
    for _ in range(runs):
        decide(spec, status, Inputs(now=now, name="web", generation=1))
    idle_us = (time.perf_counter() - idle) / runs * 1e6
    print(f"decide() with one metric result (an analysis tick): median {statistics.median(per_round):.1f} us, "
          f"min {min(per_round):.1f} us over {rounds}x{runs} calls")
    print(f"decide() with no result (a tick between analyses): {idle_us:.1f} us")


if __name__ == "__main__":
    main()
