"""How fast the back-test replays a week of history, and what a threshold sweep over it reports.

A week of request counters at a 30 s scrape interval (the demo app's series: a stable and a canary Service) is
written with `promtool tsdb create-blocks-from openmetrics` into a fresh Prometheus, with 28 releases in it, every
fourth bad (8% errors from 3 minutes in). Then `kubectl saferollout backtest`'s engine replays every release with
the default stages, once and per swept threshold. Prints figures; not a test.
Run: .venv/bin/python bench/backtest.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT)]

from harness.services import Prometheus  # noqa: E402
from saferollout import backtest as bt  # noqa: E402
from saferollout.config import OperatorConfig  # noqa: E402
from saferollout.core.models import SafeRolloutSpec  # noqa: E402

SCRAPE = 30  # seconds
DAYS = 7
RELEASES = 28
NS = "bench"
SPEC = {
    "targetRef": {"name": "web"},
    "template": {"containers": [{"name": "web", "image": "demo/web:2.0"}]},
    "strategy": {"canary": {"traffic": {"gatewayAPI": {"httpRoute": "web", "stableService": "web",
                                                       "canaryService": "web-canary"}}}},
    "analysis": {"interval": "30s", "failureLimit": 2, "metrics": [
        {"name": "error-rate", "template": "error-rate", "max": 0.01, "onBreach": "rollback"}]},
}


def history(start: datetime, releases: list[bt.Release], path: Path) -> int:
    """OpenMetrics text of the counters; returns the number of samples."""
    bad = [(r.at + timedelta(minutes=3), r.at + timedelta(minutes=40)) for r in releases if r.label == "bad"]
    totals = {(svc, code): 0.0 for svc in ("web", "web-canary") for code in ("200", "500")}
    lines = ["# HELP http_requests HTTP requests served.", "# TYPE http_requests counter"]
    n = 0
    t = start
    end = start + timedelta(days=DAYS)
    while t <= end:
        failing = any(a <= t < b for a, b in bad)
        for svc, per_s, rate in (("web", 20.0, 0.001), ("web-canary", 10.0, 0.08 if failing else 0.001)):
            totals[(svc, "500")] += per_s * SCRAPE * rate
            totals[(svc, "200")] += per_s * SCRAPE * (1 - rate)
            for code in ("200", "500"):
                lines.append(f'http_requests_total{{code="{code}",namespace="{NS}",service="{svc}"}} '
                             f"{totals[(svc, code)]:.1f} {t.timestamp():.0f}")
                n += 1
        t += timedelta(seconds=SCRAPE)
    lines.append("# EOF")
    path.write_text("\n".join(lines) + "\n")
    return n


def main() -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(days=DAYS, hours=1)
    releases = [bt.Release(f"r{i + 1:02d}", start + timedelta(hours=2 + 6 * i), "bad" if i % 4 == 3 else "good")
                for i in range(RELEASES)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        began = time.perf_counter()
        samples = history(start, releases, root / "history.om")
        prom = Prometheus(root / "prom", retention="30d")
        subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(root / "history.om"),
                        str(prom.data)], check=True, capture_output=True)
        prom.start()
        made = time.perf_counter() - began
        try:
            cfg = OperatorConfig.from_env({"SAFEROLLOUT_RATE_WINDOW": "2m"})
            spec = SafeRolloutSpec.model_validate(SPEC)
            run = bt.Backtest(spec, cfg, prom.url, start, start + timedelta(days=DAYS), "web", NS)
            outcomes = run.releases(releases)
            first = run.wall
            detected = sum(o.detected for r, o in outcomes if r.label == "bad")
            false = sum(o.detected for r, o in outcomes if r.label == "good")
            ttd = [o.time_to_detect for r, o in outcomes if r.label == "bad" and o.time_to_detect is not None]
            print(f"history: {DAYS} days at {SCRAPE}s, {samples} samples back-filled ({made:.1f}s to make)")
            print(f"replay of {RELEASES} releases: {first:.2f}s wall, {run.range_requests} range requests "
                  f"(fetch included); detected {detected}/{sum(r.label == 'bad' for r in releases)} bad, "
                  f"{false} false; time to detect {min(ttd):.0f}..{max(ttd):.0f}s" if ttd else "no detections")
            values = ["0.005", "0.01", "0.02", "0.05", "0.1"]
            run.wall = 0.0
            rows = run.sweep("error-rate.max", values, releases)
            print(f"sweep of {len(values)} thresholds x {RELEASES} releases: {run.wall:.2f}s wall "
                  f"(history cached: {run.range_requests} range requests in all)")
            print(bt.render_sweep("error-rate.max", rows))
        finally:
            prom.stop()


if __name__ == "__main__":
    main()
