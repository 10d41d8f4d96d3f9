"""The back-test replays the live core: on the same data it decides what the live rollout decided, when it did."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from saferollout import backtest as bt
from saferollout import cli
from saferollout.adapters.metrics import context
from saferollout.adapters.prometheus import PrometheusApi, PrometheusProvider
from saferollout.config import OperatorConfig
from saferollout.core.engine import Settings
from saferollout.core.models import Metric, SafeRolloutSpec
from saferollout.core.queries import REQUESTS
from tests.unit.world import T0, World, make_spec

# (metric, target, seconds since T0) -> value; None: no sample
Fn = Callable[[str, str, float], float | None]
CFG = OperatorConfig(settings=Settings())


class RangeApi(PrometheusApi):
    """Prometheus' range API over a function of time: what a query_range would return for the rendered query."""

    def __init__(self, spec: SafeRolloutSpec, fn: Fn) -> None:
        self.fn = fn
        self.calls: list[tuple[str, float, float, str]] = []
        prom = PrometheusProvider("http://unused", 1.0, CFG.labels)
        self.texts: dict[str, tuple[str, str]] = {}
        for target in ("canary", "stable"):
            ctx = context(spec, "default", "web", target, CFG.rate_window)
            for m in [*spec.analysis.metrics, Metric(name=REQUESTS, template=REQUESTS, min=0)]:
                self.texts[prom.query_text(m, ctx)] = (m.name, target)

    def query(self, text: str) -> list[Any]:
        raise AssertionError("a back-test sends no instant query")

    def query_range(self, text: str, start: datetime, end: datetime, step: str) -> list[Any]:
        self.calls.append((text, start.timestamp(), end.timestamp(), step))
        name, target = self.texts[text]
        values = []
        t, dt = start.timestamp(), float(step.rstrip("s"))
        while t <= end.timestamp() + 1e-9:
            v = 1000.0 if name == REQUESTS else self.fn(name, target, t - T0.timestamp())
            if v is not None:
                values.append([t, str(v)])
            t += dt
        return [{"metric": {}, "values": values}] if values else []


def failing_from(t_bad: float, bad: float = 0.08) -> Fn:
    def fn(name: str, target: str, t: float) -> float | None:
        if name == "error-rate":
            return bad if target == "canary" and t >= t_bad else 0.001
        return 0.1
    return fn


def live(spec: SafeRolloutSpec, fn: Fn) -> World:
    return World(spec, metrics=lambda n, target, w, t: fn(n, target, t)).run(600, until=World.done, step=None)


def backtest(spec: SafeRolloutSpec, fn: Fn, seconds: float = 600) -> tuple[bt.Outcome, RangeApi]:
    api = RangeApi(spec, fn)
    run = bt.Backtest(spec, CFG, "http://unused", T0, T0 + timedelta(seconds=seconds), "web", "default", api=api)
    return run.once(), api


def offset(stamp: str | datetime | None) -> float:
    assert stamp is not None
    at = stamp if isinstance(stamp, datetime) else datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return (at - T0).total_seconds()


@pytest.mark.parametrize("t_bad", [0.0, 7.0, 15.0, 31.0])
def test_a_failure_is_decided_when_the_live_core_decided_it(t_bad: float) -> None:
    spec = make_spec()
    world = live(spec, failing_from(t_bad))
    out, _ = backtest(spec, failing_from(t_bad))
    assert world.phase() == out.phase == "RolledBack"
    assert world.status.incident is not None and out.metric == world.status.incident.metric == "error-rate"
    live_decided = offset(world.status.incident.decided_at)
    # the replay reads the step at or before its time: at most one interval behind what the live query saw
    assert 0 <= offset(out.decided_at) - live_decided <= spec.analysis.interval_seconds
    assert out.first_bad is not None and offset(out.first_bad) == math.ceil(t_bad / 2) * 2  # the first bad step
    assert out.time_to_detect == offset(out.decided_at) - offset(out.first_bad)
    assert any(e.kind == "phase" and e.text.startswith("RolledBack") for e in out.timeline)


def test_a_healthy_release_promotes_as_it_did_live_with_one_range_request_per_query() -> None:
    spec = make_spec()
    world = live(spec, failing_from(math.inf))
    out, api = backtest(spec, failing_from(math.inf))
    assert world.phase() == out.phase == "Succeeded"
    assert out.metric is None and out.time_to_detect is None
    assert abs(out.analyses - world.status.analysis.runs) <= 1
    assert len(api.calls) == len({c[0] for c in api.calls}) <= 4  # error-rate and its request count, both sides
    assert out.summary().startswith("web: Succeeded")


def test_a_long_window_is_fetched_in_chunks_prometheus_accepts() -> None:
    spec = make_spec()  # interval 2s: a day is 43,200 steps
    api = RangeApi(spec, failing_from(math.inf))
    run = bt.Backtest(spec, CFG, "http://unused", T0, T0 + timedelta(days=1), api=api)
    run.once()
    for _, start, end, step in api.calls:
        assert (end - start) / float(step.rstrip("s")) + 1 <= 11_000
    first = api.calls[0][0]
    spans = sorted((start, end) for text, start, end, _ in api.calls if text == first)
    assert spans[0][0] == T0.timestamp() and spans[-1][1] == (T0 + timedelta(days=1)).timestamp()
    assert all(b[0] - a[1] == 2.0 for a, b in itertools.pairwise(spans))  # no gap, no overlap


def test_step_back_and_pause_are_replayed() -> None:
    spec = make_spec(**{"analysis.metrics": [{"name": "error-rate", "template": "error-rate", "max": 0.01,
                                              "onBreach": "pause"}]})
    out, _ = backtest(spec, failing_from(15.0))
    assert out.phase == "Paused" and out.paused == "breach" and out.detected
    assert out.metric == "error-rate" and out.time_to_detect is not None


def test_a_query_prometheus_refuses_is_inconclusive_as_it_is_live() -> None:
    spec = make_spec(**{"analysis.metrics": [{"name": "custom", "query": "sum(rate(x[1m]))", "max": 1}],
                        "analysis.inconclusiveLimit": 2})

    class Refusing(RangeApi):
        def query_range(self, text: str, start: datetime, end: datetime, step: str) -> list[Any]:
            from saferollout.adapters.prometheus import QueryFailed
            raise QueryFailed("query failed (HTTP 400, bad_data): parse error")

    api = Refusing(spec, failing_from(math.inf))
    out = bt.Backtest(spec, CFG, "http://unused", T0, T0 + timedelta(minutes=5), api=api).once()
    assert (out.phase, out.paused, out.window_ended, out.detected) == ("Paused", "inconclusive", True, False)
    assert "(end of the window)" in out.summary()
    assert any("bad_data" in e.text for e in out.timeline if e.kind == "analysis")


def test_http_probes_have_no_history_and_are_left_out_with_a_note() -> None:
    spec = make_spec(**{"analysis.metrics": [
        {"name": "error-rate", "template": "error-rate", "max": 0.01},
        {"name": "probe", "httpGet": {"url": "http://web-canary/healthz"}}]})
    run = bt.Backtest(spec, CFG, "http://unused", T0, T0 + timedelta(minutes=1), api=RangeApi(make_spec(),
                                                                                               failing_from(1e9)))
    assert [m.name for m in run.spec.analysis.metrics] == ["error-rate"]
    assert run.notes == ["metric probe: an httpGet probe has no history; left out"]
    only_probe = make_spec(**{"analysis.metrics": [{"name": "probe", "httpGet": {"url": "http://x/"}}]})
    with pytest.raises(bt.BacktestError, match="nothing in Prometheus"):
        bt.Backtest(only_probe, CFG, "http://unused", T0, T0 + timedelta(minutes=1))


RELEASES = {"releases": [{"name": "v1", "at": "2026-01-01T00:00:00Z", "label": "good"},
                         {"name": "v2", "at": "2026-01-01T01:00:00Z", "label": "bad"},
                         {"name": "v3", "at": "2026-01-01T02:00:00Z", "label": "good"}]}


def by_release(name: str, target: str, t: float) -> float | None:
    """v2 (at 1h) fails 3% from 10 s in; v3 (at 2h) is healthy but noisy (0.9%)."""
    if name != "error-rate" or target != "canary":
        return 0.001
    if 3600 + 10 <= t < 7200:
        return 0.03
    return 0.009 if t >= 7200 else 0.001


def test_a_sweep_scores_each_value_against_the_labelled_releases() -> None:
    spec = make_spec()
    releases = bt.releases_from(RELEASES)
    run = bt.Backtest(spec, CFG, "http://unused", T0, T0 + timedelta(hours=3), api=RangeApi(spec, by_release))
    rows = run.sweep("error-rate.max", ["0.005", "0.01", "0.05"], releases)
    counts = {r.value: r.counts() for r in rows}
    assert counts["0.005"][:5] == (1, 1, 1, 0, 2)  # catches v2, and rolls the noisy v3 back: a false rollback
    assert counts["0.01"][:5] == (1, 1, 0, 0, 2)
    assert counts["0.05"][:5] == (0, 1, 0, 0, 2)  # misses v2
    assert counts["0.01"][5] is not None and counts["0.01"][5] <= 3 * spec.analysis.interval_seconds
    table = bt.render_sweep("error-rate.max", rows)
    assert "0.05" in table and "v2" in table.splitlines()[-1]


def test_sweep_parameters_are_validated_like_the_spec() -> None:
    spec = make_spec()
    assert bt.with_value(spec, "failureLimit", "1").analysis.failure_limit == 1
    assert bt.with_value(spec, "error-rate.max", "0.02").analysis.metrics[0].max == 0.02
    with pytest.raises(bt.BacktestError, match="metric of the rollout"):
        bt.with_value(spec, "latency.max", "1")
    with pytest.raises(bt.BacktestError, match="failureLimit=0"):
        bt.with_value(spec, "failureLimit", "0")
    with pytest.raises(bt.BacktestError, match="label must be good or bad"):
        bt.releases_from({"releases": [{"at": "2026-01-01T00:00:00Z", "label": "meh"}]})
    with pytest.raises(bt.BacktestError, match="RFC 3339"):
        bt.releases_from({"releases": [{"at": "yesterday"}]})


def test_the_cli_checks_its_input_before_it_reads_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    assert cli.main(["backtest", "--help"]) == cli.OK
    assert "--sweep" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: SafeRollout\nspec: {targetRef: {name: web}}\n")
    assert cli.main(["backtest", "-f", str(bad), "--from", "now-1h"]) == cli.USAGE
    assert "strategy" in capsys.readouterr().err
    good = tmp_path / "r.yaml"
    good.write_text("kind: SafeRollout\nmetadata: {name: web}\nspec:\n" + "".join(
        f"  {line}\n" for line in __import__("yaml").safe_dump(make_spec().model_dump(
            by_alias=True, exclude_none=True, mode="json")).splitlines()))
    assert cli.main(["backtest", "-f", str(good), "--from", "now-1h", "--sweep", "failureLimit=1,2"]) == cli.USAGE
    assert "--sweep needs --releases" in capsys.readouterr().err
    assert cli.main(["backtest", "-f", str(good), "--from", "now-1h", "--prometheus", "http://127.0.0.1:9"]) \
        == cli.API_ERROR
    assert "unreachable" in capsys.readouterr().err


def test_shared_templates_come_from_the_file_and_one_not_given_is_blocked_as_live() -> None:
    spec = make_spec(**{"analysis.metrics": [{"name": "errors", "templateRef": {
        "kind": "ClusterAnalysisTemplate", "name": "policy"}}]})
    docs = [{"kind": "SafeRollout", "metadata": {"name": "web"}},
            {"kind": "ClusterAnalysisTemplate", "metadata": {"name": "policy"},
             "spec": {"template": "error-rate", "max": 0.01, "onBreach": "rollback"}}]
    api = RangeApi(make_spec(), failing_from(7.0))  # the built-in error-rate's queries, as the template resolves
    given = bt.Backtest(spec, CFG, "http://unused", T0, T0 + timedelta(minutes=5), "web", "default", api=api,
                        templates=bt.templates_from(docs, "default")).once()
    assert (given.phase, given.metric) == ("RolledBack", "errors")
    missing = bt.Backtest(spec, CFG, "http://unused", T0, T0 + timedelta(minutes=5), "web", "default",
                          api=api).once()
    assert missing.phase == "Blocked"
    assert any("ClusterAnalysisTemplate policy not found" in e.text for e in missing.timeline)
