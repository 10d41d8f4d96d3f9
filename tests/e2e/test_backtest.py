"""The back-test on a real Prometheus: the harness's demo app serves a good release and then a bad one while the
live decision core (the operator's providers and loop, on the wall clock) judges each; afterwards the back-test
replays both from Prometheus' history and must reach the same decisions at the same times, through the CLI too."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.demoapp import Behaviour, DemoApp
from harness.services import Prometheus, ScrapeTarget
from saferollout import backtest as bt
from saferollout.adapters.metrics import context, measure_all
from saferollout.adapters.prometheus import PrometheusProvider
from saferollout.config import OperatorConfig
from saferollout.core import actions as a
from saferollout.core.engine import Inputs
from saferollout.core.loop import drive
from saferollout.core.models import SafeRolloutSpec, SafeRolloutStatus

pytestmark = pytest.mark.e2e
NS = "bt"
INTERVAL = 2.0
ROLLOUT = {
    "apiVersion": "saferollout.dev/v1alpha1", "kind": "SafeRollout", "metadata": {"name": "web", "namespace": NS},
    "spec": {
        "targetRef": {"name": "web"},
        "template": {"containers": [{"name": "web", "image": "demo/web:2.0"}]},
        "strategy": {"canary": {
            "stages": [{"weight": 5, "duration": "8s"}, {"weight": 50, "duration": "8s"},
                       {"weight": 100, "duration": "8s"}],
            "traffic": {"gatewayAPI": {"httpRoute": "web", "stableService": "web", "canaryService": "web-canary"}}}},
        "analysis": {"interval": "2s", "failureLimit": 2, "metrics": [
            {"name": "error-rate", "template": "error-rate", "max": 0.01, "onBreach": "rollback"}]},
    },
}
BAD_AFTER = 8.0  # the bad release starts failing this long after it starts


def cfg() -> OperatorConfig:
    return OperatorConfig.from_env({"SAFEROLLOUT_RATE_WINDOW": "10s"})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prometheus, dict[str, DemoApp]]]:
    root = tmp_path_factory.mktemp("backtest")
    apps = {svc: DemoApp(0, svc, NS, svc, Behaviour(0.001, 5, 20)) for svc in ("web", "web-canary")}
    for app in apps.values():
        threading.Thread(target=app.server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    prom = Prometheus(root)
    prom.set_targets([ScrapeTarget(svc, app.port, svc, NS) for svc, app in apps.items()])
    prom.start()
    stop = threading.Event()

    def load() -> None:  # ~40 requests a second to each version, for as long as the module runs (bounded below)
        deadline = time.monotonic() + 600
        while not stop.is_set() and time.monotonic() < deadline:
            for app in apps.values():
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{app.port}/", timeout=2) as r:
                        r.read()
                except OSError:
                    pass  # a 500 is an HTTPError: counted by the app all the same
            time.sleep(0.025)

    threading.Thread(target=load, daemon=True).start()
    time.sleep(12)  # a rate window of data before the first release
    yield prom, apps
    stop.set()
    for app in apps.values():
        app.server.shutdown()
    prom.stop()


def live(spec: SafeRolloutSpec, prom_url: str, seconds: float) -> tuple[SafeRolloutStatus, datetime]:
    """The decision core on the wall clock, measuring with the operator's provider: a live rollout whose world's
    writes all succeed, as in the back-test (only Prometheus is real in either)."""
    c = cfg()
    prom = PrometheusProvider(prom_url, c.prometheus_timeout, c.labels, group_ttl=0.0)
    status = SafeRolloutStatus()
    images = {"web": "stable"}
    started = datetime.now(UTC)

    def execute(act: a.Action) -> a.Result | None:
        nonlocal images
        match act:
            case a.QueryMetrics():
                return measure_all(prom, spec, act, context(spec, NS, "web", act.target, c.rate_window),
                                   datetime.now(UTC))
            case a.ReadTarget():
                return a.TargetState(dict(images), True, None)
            case a.SetTargetImages():
                images = dict(act.images)
                return a.Outcome(act, True)
            case a.EnsureCanary():
                return a.CanaryState(True)
            case a.WriteReport():
                return a.ReportWritten(act.name)
            case a.Event() | a.Notify():
                return None
            case _:
                return a.Outcome(act, True)

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        decision = drive(spec, status, lambda r: Inputs(now=datetime.now(UTC), name="web", generation=1, results=r),
                         execute, lambda s: None, c.settings)
        status = decision.status
        if status.phase is not None and status.phase.terminal:
            break
        time.sleep(max(0.05, min(decision.wake_after or 1.0, 1.0)))
    return status, started


def offset(at: datetime | str | None, start: datetime) -> float:
    assert at is not None
    t = at if isinstance(at, datetime) else datetime.fromisoformat(at.replace("Z", "+00:00"))
    return (t - start).total_seconds()


def test_the_backtest_finds_the_bad_release_when_the_live_core_did_and_not_the_good_one(
        world: tuple[Prometheus, dict[str, DemoApp]], tmp_path: Path) -> None:
    prom, apps = world
    spec = SafeRolloutSpec.model_validate(ROLLOUT["spec"])
    good, good_at = live(spec, prom.url, 60)
    # the next release replaces this one in the replay: a replayed decision may come up to an interval after the
    # live one, so the bad release starts a little later than the good one ended, not at once
    time.sleep(2 * INTERVAL)

    def go_bad() -> None:
        time.sleep(BAD_AFTER)
        apps["web-canary"].behaviour.update({"errorRate": 0.08})

    threading.Thread(target=go_bad, daemon=True).start()
    bad, bad_at = live(spec, prom.url, 60)
    apps["web-canary"].behaviour.update({"errorRate": 0.001})
    time.sleep(3)  # the last scrapes
    assert good.phase == "Succeeded", good.message
    assert bad.phase == "RolledBack" and bad.incident is not None, bad.message
    live_decided = offset(bad.incident.decided_at, bad_at)

    start, end = good_at - timedelta(seconds=5), datetime.now(UTC)
    releases = [bt.Release("good", good_at, "good"), bt.Release("bad", bad_at, "bad")]
    run = bt.Backtest(spec, cfg(), prom.url, start, end, "web", NS)
    outcomes = dict((r.name, o) for r, o in run.releases(releases))
    assert outcomes["good"].phase == "Succeeded" and not outcomes["good"].detected
    replayed = outcomes["bad"]
    assert replayed.phase == "RolledBack" and replayed.metric == "error-rate"
    decided = offset(replayed.decided_at, bad_at)
    first_bad = offset(replayed.first_bad, bad_at)
    print(f"\nbad release: live decision at +{live_decided:.1f}s, back-test at +{decided:.1f}s; first bad sample "
          f"+{first_bad:.1f}s (errors began at +{BAD_AFTER:g}s); {run.range_requests} range requests, "
          f"{run.wall:.2f}s")
    # the errors began at BAD_AFTER; a 10 s rate window over 8% errors is above 1% within ~2-3 s of scrapes (a late
    # scrape on a busy machine: 12.04 s was seen), and the replay's samples are INTERVAL apart: the first bad one
    # is at most one step after that
    assert BAD_AFTER <= first_bad <= BAD_AFTER + 3 + INTERVAL
    assert abs(decided - live_decided) <= INTERVAL + 1.5  # one analysis interval and a scrape apart at most
    assert replayed.time_to_detect is not None and replayed.time_to_detect <= (2 + 1) * INTERVAL + 1.5

    # the same through the command line, with a sweep: the threshold that misses it, the one that catches it
    manifest, rel = tmp_path / "rollout.yaml", tmp_path / "releases.yaml"
    manifest.write_text(yaml.safe_dump(ROLLOUT))
    rel.write_text(yaml.safe_dump({"releases": [{"name": r.name, "at": r.at.isoformat(), "label": r.label}
                                                for r in releases]}))
    base = [sys.executable, "-m", "saferollout.cli", "backtest", "-f", str(manifest), "--prometheus", prom.url,
            "--from", start.isoformat(), "--to", end.isoformat(), "--releases", str(rel)]
    env: dict[str, Any] = {"SAFEROLLOUT_RATE_WINDOW": "10s", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(base, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("good: Succeeded") for line in lines), out.stdout
    assert any(line.startswith("bad: RolledBack") and "decided by error-rate" in line for line in lines), out.stdout
    swept = subprocess.run([*base, "--sweep", "error-rate.max=0.01,0.2"], capture_output=True, text=True,
                           timeout=120, env=env, check=False)
    assert swept.returncode == 0, swept.stderr
    rows = {line.split()[0]: line.split() for line in swept.stdout.splitlines() if line[:1].isdigit()}
    assert rows["0.01"][1:3] == ["1/1", "0/1"] and rows["0.2"][1:3] == ["0/1", "0/1"], swept.stdout
