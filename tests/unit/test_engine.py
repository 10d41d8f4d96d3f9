"""Every transition of the decision core, played in a simulated world with a deterministic clock."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from saferollout.core import actions as a
from saferollout.core.engine import Inputs, decide, iso, parse_time
from saferollout.core.models import Phase, SafeRolloutSpec, SafeRolloutStatus, Step
from tests.unit import world as world_module
from tests.unit.world import T0, MetricFn, World, make_spec


@pytest.fixture(autouse=True, params=["every-second", "on-wake"])
def clock(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs twice: ticking every second, and ticking only when the core asked to be woken (the
    operator's scheduler). The outcomes, and the times in them, must not differ."""
    if request.param == "on-wake":
        run = world_module.World.run

        def on_wake(self: World, seconds: float, until: Any = None, step: float | None = 1.0) -> World:
            return run(self, seconds, until, None)
        monkeypatch.setattr(world_module.World, "run", on_wake)
    return str(request.param)


def canary_error(rate: float) -> MetricFn:
    def fn(name: str, target: str, weight: int, t: float) -> float | None:
        if name == "error-rate":
            return rate if target == "canary" else 0.001
        return 0.1
    return fn


def test_healthy_canary_walks_every_stage_and_is_promoted() -> None:
    w = World(make_spec()).run(200, until=World.done)
    assert w.phase() == "Succeeded"
    assert w.weights_seen == [5, 25, 50, 100]
    assert w.target_images == {"web": "demo/web:2.0"}
    assert w.canary is None and w.weight == 0
    assert w.reasons().count("StageAdvanced") == 4
    assert "Promoted" in w.reasons() and "RolloutSucceeded" in w.reasons()
    ready = next(c for c in w.status.conditions if c.type == "Ready")
    assert ready.status == "True"
    # four 10 s stages and a 10 s post-promotion watch, each ending on an analysis tick
    assert 50 <= w.t <= 56


def test_default_stages_are_5_25_50_100() -> None:
    spec = make_spec(**{"strategy.canary.stages": None})
    w = World(spec).run(20 * 60, until=World.done, step=10)
    assert w.weights_seen == [5, 25, 50, 100]
    assert w.phase() == "Succeeded"
    assert 13 * 60 <= w.t <= 19 * 60  # 2m + 3m + 3m + 5m stages + 5m watch


def test_breach_on_the_very_first_check_rolls_back_after_failure_limit() -> None:
    w = World(make_spec(), metrics=canary_error(0.5)).run(60, until=World.done)
    assert w.phase() == "RolledBack"
    assert w.weights_seen == [5]
    assert [h.action for h in w.status.history] == ["rollback"]
    inc = w.status.incident
    assert inc is not None and inc.metric == "error-rate" and inc.weight_at_breach == 5
    assert inc.first_failed_at == "2026-01-01T00:00:00.000000Z"  # first check at t=0 already failed
    assert inc.decided_at == "2026-01-01T00:00:04.000000Z"  # third consecutive failure, interval 2 s
    assert w.target_images == {"web": "demo/web:1.0"} and w.canary is None
    assert w.reasons()[w.reasons().index("RollbackStarted"):] == [
        "RollbackStarted", "TrafficReverted", "ImagesReverted", "RollbackVerified", "RolledBack"]
    assert inc.report_ref == "web-incident-1" and "error-rate" in w.reports["web-incident-1"]


def test_rollback_writes_weight_zero_before_anything_else() -> None:
    w = World(make_spec(), metrics=canary_error(0.5)).run(60, until=World.done)
    decision = next(i for i, line in enumerate(w.log) if "AnalysisFailed" in line)
    following = [line for line in w.log[decision:] if "Event" not in line and "Notify" not in line]
    assert "SetWeight(weight=0)" in following[0], following


def test_breach_on_the_last_stage_rolls_back() -> None:
    def late(name: str, target: str, weight: int, t: float) -> float | None:
        return 0.2 if target == "canary" and weight == 100 else 0.001
    w = World(make_spec(), metrics=late).run(200, until=World.done)
    assert w.phase() == "RolledBack"
    assert w.weights_seen == [5, 25, 50, 100]
    assert w.status.incident is not None and w.status.incident.weight_at_breach == 100
    assert w.target_images == {"web": "demo/web:1.0"}


def test_breach_after_promotion_reverts_the_target_images() -> None:
    w = World(make_spec())

    def after_promotion(name: str, target: str, weight: int, t: float) -> float | None:
        return 0.3 if target == "stable" and w.target_images["web"] == "demo/web:2.0" else 0.001
    w.metrics = after_promotion
    w.run(200, until=lambda x: x.status.promoted_at is not None)
    assert w.target_images == {"web": "demo/web:2.0"}
    w.run(200, until=World.done)
    assert w.phase() == "RolledBack"
    assert w.target_images == {"web": "demo/web:1.0"}
    assert "ImagesReverted" in w.reasons()
    # the canary went at the promotion: the revert of the target's images does not wait for scaleDownDelay
    off = _at(w, "SetWeight(weight=0)")[-1]
    assert _at(w, "SetTargetImages")[-1] - off < 1.0, w.log


def test_step_back_then_second_breach_rolls_back() -> None:
    metrics = [{"name": "p95-latency", "template": "p95-latency", "max": 2.0, "onBreach": "stepBack"}]
    spec = make_spec(**{"analysis.metrics": metrics, "analysis.failureLimit": 2})

    def slow_at_25(name: str, target: str, weight: int, t: float) -> float | None:
        return 2.6 if target == "canary" and weight >= 25 else 0.09
    w = World(spec, metrics=slow_at_25).run(200, until=World.done)
    assert [h.action for h in w.status.history] == ["stepBack", "rollback"]
    assert w.weights_seen == [5, 25, 5, 25]
    assert w.phase() == "RolledBack"
    assert max(w.weights_seen) == 25
    assert "StageSteppedBack" in w.reasons()


def test_step_back_on_the_first_stage_rolls_back() -> None:
    metrics = [{"name": "error-rate", "template": "error-rate", "max": 0.01, "onBreach": "stepBack"}]
    w = World(make_spec(**{"analysis.metrics": metrics}), metrics=canary_error(0.5)).run(60, until=World.done)
    assert [h.action for h in w.status.history] == ["rollback"]
    assert w.phase() == "RolledBack"


def test_pause_on_breach_waits_for_a_person_and_resume_continues() -> None:
    metrics = [{"name": "error-rate", "template": "error-rate", "max": 0.01, "onBreach": "pause"}]
    bad = {"on": True}

    def fn(name: str, target: str, weight: int, t: float) -> float | None:
        return 0.5 if bad["on"] and target == "canary" else 0.001
    w = World(make_spec(**{"analysis.metrics": metrics}), metrics=fn).run(30)
    assert w.phase() == "Paused" and w.status.pause_reason == "breach"
    assert w.weight == 5
    w.run(60)
    assert w.phase() == "Paused"  # a breach pause never resumes by itself
    bad["on"] = False
    w.command = "resume/1"
    w.run(200, until=World.done)
    assert w.phase() == "Succeeded"
    assert [h.action for h in w.status.history] == ["pause"]


def test_notify_on_breach_only_notifies() -> None:
    metrics = [{"name": "error-rate", "template": "error-rate", "max": 0.01, "onBreach": "notify",
                "severity": "low"}]
    w = World(make_spec(**{"analysis.metrics": metrics}), metrics=canary_error(0.5)).run(200, until=World.done)
    assert w.phase() == "Succeeded"
    assert "notify" in [h.action for h in w.status.history]
    assert any(n.severity == "low" and "error-rate" in n.title for n in w.notes)


def test_inconclusive_pauses_without_advancing_and_resumes_by_itself() -> None:
    down = {"from": 12.0, "to": 40.0}

    def fn(name: str, target: str, weight: int, t: float) -> float | None:
        return None if down["from"] <= t < down["to"] else 0.001
    w = World(make_spec(), metrics=fn)
    stages_while_down: set[int | None] = set()

    def watch(x: World) -> bool:
        if down["from"] <= x.t < down["to"]:
            stages_while_down.add(x.status.stage)
        return x.done()
    w.run(300, until=watch)
    assert w.phase() == "Succeeded"
    assert len(stages_while_down) == 1  # never advanced while Prometheus gave nothing
    assert "AnalysisInconclusive" in w.reasons() and "RolloutResumed" in w.reasons()
    assert w.weights_seen == [5, 25, 50, 100]


def test_inconclusive_with_rollback_policy_rolls_back() -> None:
    spec = make_spec(**{"analysis.onInconclusive": "rollback"})
    w = World(spec, metrics=lambda *_: None).run(300, until=World.done)
    assert w.status.incident is not None and w.status.incident.reason == "AnalysisInconclusive"
    assert w.weight == 0 and w.canary is None
    # no data at all is not proof of an unhealthy stable version: the rollback is done, its verification
    # inconclusive, and the status says exactly that
    assert w.phase() == "RolledBack" and "RollbackNotVerified" not in w.reasons()
    assert "RollbackVerificationInconclusive" in w.reasons()
    verified = next(c for c in w.status.conditions if c.type == "Verified")
    assert (verified.status, verified.reason) == ("Unknown", "VerificationInconclusive")
    assert w.status.incident.verified_at is None and "verification inconclusive" in (w.status.message or "")


def test_inconclusive_counts_are_consecutive_per_metric() -> None:
    seq = iter([None, None, 0.001, None, None, 0.001] * 40)
    w = World(make_spec(), metrics=lambda *_: next(seq)).run(40)
    assert w.phase() == "Progressing"  # never three in a row


def test_spec_paused_holds_weight_and_stops_the_stage_clock() -> None:
    w = World(make_spec()).run(8)
    assert w.status.stage == 1
    w.spec = make_spec(paused=True)
    w.run(60)
    assert w.phase() == "Paused" and w.weight == 5 and w.status.pause_reason == "user"
    elapsed = w.status.stage_elapsed_seconds
    assert elapsed < 10
    w.spec = make_spec()
    w.run(200, until=World.done)
    assert w.phase() == "Succeeded"


def test_abort_command_rolls_back_and_promote_command_skips_stages() -> None:
    w = World(make_spec()).run(5)
    w.command = "abort/1"
    w.run(60, until=World.done)
    assert w.phase() == "RolledBack" and [h.action for h in w.status.history] == ["abort"]
    w2 = World(make_spec()).run(5)
    w2.command = "promote/7"
    w2.run(60, until=World.done)
    assert w2.phase() == "Succeeded" and w2.weights_seen == [5]
    assert w2.target_images == {"web": "demo/web:2.0"}


def test_a_command_is_taken_once() -> None:
    w = World(make_spec()).run(3)
    status = w.status
    d1 = decide(w.spec, status, Inputs(now=w.now, command="abort/1"))
    assert d1.status.phase == Phase.rolling_back
    d2 = decide(w.spec, d1.status, Inputs(now=w.now, command="abort/1"))
    assert [x for x in d2.actions if isinstance(x, a.Event) and x.reason == "RollbackStarted"] == []


def test_retry_after_rollback_starts_a_new_attempt() -> None:
    w = World(make_spec(), metrics=canary_error(0.5)).run(60, until=World.done)
    assert w.phase() == "RolledBack"
    w.metrics = canary_error(0.0)
    w.command = "retry/2"
    w.run(200, until=World.done)
    assert w.phase() == "Succeeded" and w.status.attempt == 2


def test_new_template_mid_rollout_starts_over_from_a_clean_state() -> None:
    w = World(make_spec()).run(15)
    assert w.status.stage == 2
    w.spec = make_spec(**{"template.containers": [{"name": "web", "image": "demo/web:3.0"}]})
    w.run(1)
    assert w.status.attempt == 2
    w.run(200, until=World.done)
    assert w.phase() == "Succeeded" and w.target_images == {"web": "demo/web:3.0"}


def test_nothing_to_roll_out_when_target_already_runs_the_template() -> None:
    w = World(make_spec(), target_images={"web": "demo/web:2.0"}).run(5, until=World.done)
    assert w.phase() == "Succeeded" and w.weights_seen == []


def test_unknown_container_blocks() -> None:
    spec = make_spec(**{"template.containers": [{"name": "api", "image": "x:1"}]})
    w = World(spec).run(5, until=World.done)
    assert w.phase() == "Blocked" and "no container named api" in (w.status.message or "")


def test_a_failed_router_write_is_retried_and_the_stage_clock_waits_for_it() -> None:
    w = World(make_spec(), fail_set_weight=3).run(200, until=World.done)
    assert w.phase() == "Succeeded" and w.weights_seen == [5, 25, 50, 100]


def test_operator_restart_resumes_at_the_same_stage() -> None:
    w = World(make_spec()).run(25)
    stage = w.status.stage
    saved = SafeRolloutStatus.model_validate(w.status.model_dump(by_alias=True, mode="json"))
    w.status = saved  # a new process reads status from the API server
    w.run(1)
    assert w.status.stage == stage
    w.run(200, until=World.done)
    assert w.weights_seen == [5, 25, 50, 100]


def test_preflight_database_unreachable_blocks_and_changes_nothing() -> None:
    spec = make_spec(database={"postgres": {"secretRef": {"name": "db", "key": "dsn"}}, "snapshotBeforeRollout": True},
                     preflight={"databaseReachable": True})
    w = World(spec, database_up=False).run(10, until=World.done)
    assert w.phase() == "Blocked"
    assert w.canary is None and w.weights_seen == [] and w.snapshots_taken == 0
    assert "PreflightFailed" in w.reasons()
    assert any(c.type == "Degraded" and c.reason == "DatabaseUnreachable" for c in w.status.conditions)


def test_preflight_stable_unhealthy_blocks() -> None:
    def stable_bad(name: str, target: str, weight: int, t: float) -> float | None:
        return 0.5 if target == "stable" else 0.001
    w = World(make_spec(preflight={"stableHealthy": True}), metrics=stable_bad).run(10, until=World.done)
    assert w.phase() == "Blocked" and "stable version does not meet" in (w.status.message or "")


def _db_spec() -> SafeRolloutSpec:
    return make_spec(database={"postgres": {"secretRef": {"name": "db", "key": "dsn"}},
                               "snapshotBeforeRollout": True, "verifySnapshot": True, "restoreOnRollback": True},
                     preflight={"databaseReachable": True})


def test_snapshot_is_taken_and_restored_once_on_rollback() -> None:
    w = World(_db_spec(), metrics=canary_error(0.5), migration="v2-migrated")
    w.run(60, until=World.done)
    assert w.status.snapshot and w.status.snapshot.verified
    assert w.phase() == "RolledBack"
    assert w.db_state == "v1" and w.restores == 1 and w.snapshots_taken == 1
    assert w.status.restore is not None and w.status.restore.pre_restore_dump == "pre-1.dump"
    report = w.reports["web-incident-1"]
    assert "Data-loss window" in report and "pre-1.dump" in report


def test_operator_killed_during_restore_checks_before_restoring_again() -> None:
    w = World(_db_spec(), metrics=canary_error(0.5), crash_after=a.RestoreDatabase)
    w.run(60, until=World.done)
    assert w.phase() == "RolledBack"
    assert w.restores == 1  # the restarted loop found the database restored and did not restore again
    assert any("CheckRestored" in line for line in w.log)


def test_operator_killed_during_snapshot_never_takes_it_twice() -> None:
    w = World(_db_spec(), crash_after=a.TakeSnapshot)
    w.run(200, until=World.done)
    assert w.phase() == "Succeeded" and w.snapshots_taken == 1


def test_failed_restore_is_retried_with_backoff_then_fails_without_looping() -> None:
    w = World(_db_spec(), metrics=canary_error(0.5), restore_fails=99)
    w.run(120, until=World.done)
    assert w.phase() == "Failed"
    assert w.restores == 3 and w.status.restore is not None and w.status.restore.attempts == 3
    assert "RestoreFailed" in w.reasons()
    assert any(n.severity == "critical" and "restore" in n.title.lower() for n in w.notes)
    assert w.weight == 0  # traffic was reverted before any restore was tried


def test_restore_succeeds_on_second_attempt() -> None:
    w = World(_db_spec(), metrics=canary_error(0.5), restore_fails=1)
    w.run(120, until=World.done)
    assert w.phase() == "RolledBack" and w.restores == 2 and "RestoreRetry" in w.reasons()


def test_verify_fails_when_stable_stays_unhealthy() -> None:
    spec = make_spec(rollback={"verify": {"duration": "20s", "maxErrorRate": 0.001}})
    w = World(spec, metrics=lambda *_: 0.5).run(120, until=World.done)
    assert w.phase() == "Failed" and "RollbackNotVerified" in w.reasons()


@pytest.mark.parametrize("limit", [1, 3, 5])
def test_failure_limit_is_the_number_of_consecutive_failures(limit: int) -> None:
    w = World(make_spec(**{"analysis.failureLimit": limit}), metrics=canary_error(0.5)).run(60, until=World.done)
    inc = w.status.incident
    assert inc is not None and inc.first_failed_at and inc.decided_at
    first = T0 + timedelta(seconds=0)
    assert inc.decided_at == (first + timedelta(seconds=2 * (limit - 1))).strftime("%Y-%m-%dT%H:%M:%S.%fZ")




# ------------------------------------------------------------------------------------------------ blue-green


def _bg_spec(**bg: object) -> SafeRolloutSpec:
    return make_spec(strategy={"blueGreen": {"activeService": "web", "previewService": "web-preview",
                                             "previewDuration": "10s", "postPromotionDuration": "10s",
                                             "scaleDownDelay": "20s", **bg}})


def test_blue_green_previews_switches_in_one_write_and_promotes() -> None:
    targets: list[str] = []

    def fn(name: str, target: str, weight: int, t: float) -> float | None:
        targets.append(target)
        return 0.001
    w = World(_bg_spec(), metrics=fn).run(200, until=World.done)
    assert w.phase() == "Succeeded"
    assert w.weights_seen == [100]  # one switch of the active Service
    assert targets[0] == "preview" and "stable" in targets
    assert w.target_images == {"web": "demo/web:2.0"} and w.canary is None
    switch = next(i for i, line in enumerate(w.log) if "SetWeight(weight=100)" in line)
    promote = next(i for i, line in enumerate(w.log) if "SetTargetImages" in line)
    t_switch, t_promote = float(w.log[switch].split()[0]), float(w.log[promote].split()[0])
    assert t_promote - t_switch >= 20  # the old version stays for scaleDownDelay after the switch


def test_blue_green_breach_after_switch_switches_back_while_old_is_up() -> None:
    def fn(name: str, target: str, weight: int, t: float) -> float | None:
        return 0.3 if target == "stable" and weight == 100 else 0.001
    w = World(_bg_spec(), metrics=fn).run(200, until=World.done)
    assert w.phase() == "RolledBack"
    assert w.weights_seen == [100] and w.weight == 0
    assert w.target_images == {"web": "demo/web:1.0"}  # blue was never touched


def test_blue_green_without_auto_promote_waits_for_promote() -> None:
    w = World(_bg_spec(autoPromote=False)).run(60)
    assert w.phase() == "Paused" and w.status.pause_reason == "approval" and w.weights_seen == []
    w.command = "promote/1"
    w.run(200, until=World.done)
    assert w.phase() == "Succeeded" and w.weights_seen == [100]


def test_blue_green_preview_breach_rolls_back_without_switching() -> None:
    def fn(name: str, target: str, weight: int, t: float) -> float | None:
        return 0.3 if target == "preview" else 0.001
    w = World(_bg_spec(), metrics=fn).run(100, until=World.done)
    assert w.phase() == "RolledBack" and w.weights_seen == []


# --------------------------------------------------------------------------------------- graded and judged


def test_health_check_warns_after_two_failures_and_acts_after_three() -> None:
    metrics = [{"name": "health", "httpGet": {"url": "http://x/healthz"}, "warnAfter": 2, "failureLimit": 3,
                "onBreach": "rollback", "severity": "critical"}]

    def fn(name: str, target: str, weight: int, t: float) -> float | None:
        return 0.0 if target == "canary" and t >= 4 else 1.0
    w = World(make_spec(**{"analysis.metrics": metrics}), metrics=fn).run(60, until=World.done)
    reasons = w.reasons()
    assert reasons.index("AnalysisDegraded") < reasons.index("AnalysisFailed")
    degraded = next(line for line in w.log if "AnalysisDegraded" in line)
    failed = next(line for line in w.log if "'AnalysisFailed'" in line)
    assert float(failed.split()[0]) - float(degraded.split()[0]) == 2.0  # one interval later
    assert w.phase() == "RolledBack"


def test_baseline_comparison_fails_on_difference() -> None:
    metrics = [{"name": "memory", "query": 'sum(container_memory_working_set_bytes{pod=~"{{ service }}.*"})',
                "baseline": {"maxDifference": 50e6}, "onBreach": "rollback"}]

    def fn(name: str, target: str, weight: int, t: float) -> float | None:
        return 80e6 if t >= 10 else 10e6  # the executor reports canary - stable
    w = World(make_spec(**{"analysis.metrics": metrics}), metrics=fn).run(60, until=World.done)
    assert w.phase() == "RolledBack"
    assert w.status.incident is not None and w.status.incident.threshold == "canary - stable <= 5e+07"


def test_error_rate_needs_confidence_not_one_unlucky_request() -> None:
    from saferollout.core.models import Metric, Verdict
    from saferollout.core.stats import wilson_lower

    m = Metric(name="error-rate", template="error-rate", max=0.01)
    assert m.verdict(0.0119, requests=84) == Verdict.passed  # 1 error in 84 requests: not proof of > 1%
    assert m.verdict(0.08, requests=120) == Verdict.fail  # ~10 errors in 120: clearly above
    assert m.verdict(0.0119) == Verdict.fail  # without a request count the rate is taken as it is
    assert m.verdict(0.005, requests=10) == Verdict.passed
    assert 0.0 < wilson_lower(0.1, 20) < 0.1 and wilson_lower(0.0, 100) == 0.0
    custom = Metric(name="x", query="q", max=0.01)
    assert custom.verdict(0.0119, requests=84) == Verdict.fail  # only the built-in error-rate is judged so


def test_after_a_step_back_the_analysis_waits_for_the_window_to_refill() -> None:
    from saferollout.core.engine import Settings

    metrics = [{"name": "p95-latency", "template": "p95-latency", "max": 2.0, "onBreach": "stepBack"}]
    spec = make_spec(**{"analysis.metrics": metrics, "analysis.failureLimit": 2,
                        "strategy.canary.stages": [{"weight": 5, "duration": "12s"}, {"weight": 25, "duration": "12s"},
                                                   {"weight": 50, "duration": "12s"}]})
    state = {"slow_until": 0.0}

    def window(name: str, target: str, weight: int, t: float) -> float | None:
        # a 10 s rate window: slow samples taken at 25% linger for 10 s after the weight goes back down
        if target == "canary" and weight >= 25:
            state["slow_until"] = t + 10
        return 2.6 if target == "canary" and t < state["slow_until"] else 0.09

    w = World(spec, metrics=window)
    w.settings = Settings(settle_seconds=10)
    w.run(200, until=World.done)
    assert w.weights_seen == [5, 25, 5, 25]  # passed at 5% once the window held only 5% data, tried 25% again
    assert [h.action for h in w.status.history] == ["stepBack", "rollback"]
    assert w.status.history[1].weight == 25


def test_analysis_queries_say_when_the_stage_weight_was_set() -> None:
    """The judge must not sample data from the previous weight: every analysis query carries the stage's start."""
    w = World(make_spec()).run(25)
    queries = [line for line in w.log if "QueryMetrics(target='canary'" in line]
    assert queries and all("since='2026-01-01T00:00:" in q for q in queries)
    assert w.status.stage_started_at is not None and f"since='{w.status.stage_started_at}'" in queries[-1]


def test_the_core_says_when_it_next_needs_a_tick(clock: str) -> None:
    """Idle rollouts cost nothing: the core asks to be woken at its next deadline, not every second."""
    w = World(make_spec()).run(200, until=World.done)
    assert w.phase() == "Succeeded"
    if clock == "on-wake":
        # four 10 s stages and a 10 s watch, analysis every 2 s: about one tick per analysis, not one per second
        assert w.ticks <= 35, w.ticks
    else:
        assert w.ticks >= 50
    assert w.wake_after is None  # done: asleep until the object changes


def test_waits_on_the_world_are_polled_and_waits_on_people_sleep() -> None:
    w = World(make_spec(**{"analysis.metrics": [
        {"name": "error-rate", "template": "error-rate", "max": 0.01, "onBreach": "pause", "severity": "high"}]}),
        metrics=canary_error(0.5))
    w.run(60, until=lambda x: x.phase() == "Paused")
    assert w.status.pause_reason == "breach" and w.wake_after is None  # only `resume` moves it on
    w = World(make_spec())
    w.fail_set_weight = 100
    w.run(5)
    assert w.phase() == "Progressing" and w.wake_after == w.settings.poll_seconds  # the router write is retried


def _analysed(w: World, asked: datetime, answered: datetime) -> tuple[SafeRolloutStatus, float | None]:
    values = a.MetricValues("canary", "analysis", {"error-rate": 0.001}, asked_at=iso(asked))
    d = decide(w.spec, w.status, Inputs(now=answered, name="web", generation=1, results=[values]))
    assert d.status.analysis.last_run == values.asked_at
    return d.status, d.wake_after


def test_the_next_analysis_is_an_interval_after_the_queries_went_out() -> None:
    """Slow answers must not stretch every interval by the queries' duration."""
    w = World(make_spec()).run(5)  # progressing at 5%, analysing every 2 s
    assert w.status.analysis.next_run is not None
    asked = parse_time(w.status.analysis.next_run)
    _, wake = _analysed(w, asked, asked + timedelta(seconds=0.8))
    assert wake is not None and abs(wake - 1.2) < 1e-3


@pytest.mark.parametrize(("late", "next_in"), [(0.0, 2.0), (0.7, 1.3), (1.9, 0.1), (2.5, 2.0), (30.0, 2.0)])
def test_a_late_analysis_does_not_move_the_later_ones(late: float, next_in: float) -> None:
    """The grid holds for a run late by less than an interval (2 s here): the next one is due on its slot. Later
    than that (a stalled operator, a pause) a new grid starts from the run."""
    w = World(make_spec(**{"strategy.canary.stages": [{"weight": 5, "duration": "5m"}]})).run(5)
    assert w.status.analysis.next_run is not None
    slot = parse_time(w.status.analysis.next_run)
    asked = slot + timedelta(seconds=late)
    status, wake = _analysed(w, asked, asked)
    assert status.analysis.next_run is not None
    assert abs((parse_time(status.analysis.next_run) - asked).total_seconds() - next_in) < 1e-3
    assert wake is not None and abs(wake - next_in) < 1e-3


def test_an_analysis_that_passes_costs_one_status_write() -> None:
    """At 1000 rollouts every write is API-server load: the stage message moves on with the results, in their
    write, not in one of its own before the query."""
    w = World(make_spec(**{"strategy.canary.stages": [{"weight": 5, "duration": "30m"}]})).run(60, step=None)
    ticks, writes, runs, message = w.ticks, w.writes, w.status.analysis.runs, w.status.message
    w.run(100, step=None)
    assert w.phase() == "Progressing" and w.status.analysis.runs - runs == 50  # every 2 s
    assert w.writes - writes == w.ticks - ticks == 50
    assert (message, w.status.message) == ("stage 1/1 at 5%: 29m2s of analysis left",
                                           "stage 1/1 at 5%: 27m22s of analysis left")  # 100 s on, up to date


def _at(w: World, text: str) -> list[float]:
    """The times (seconds from T0) of the actions whose repr contains `text`."""
    return [float(line.split()[0]) for line in w.log if text in line]


@pytest.mark.parametrize(("delay", "kept"), [(None, 5.0), ("12s", 12.0), ("0s", 0.0)])
def test_the_canary_is_deleted_scale_down_delay_after_the_promotion_took_the_traffic_off_it(
        delay: str | None, kept: float) -> None:
    spec = make_spec(**({} if delay is None else {"strategy.canary.scaleDownDelay": delay}))
    w = World(spec).run(200, until=lambda x: x.status.step == Step.remove_canary)
    if kept:  # a time, not a countdown: the status is not rewritten every second while it waits
        assert "the canary goes at" in (w.status.message or "")
        writes = w.writes
        w.run(kept / 2)
        assert w.writes == writes, "the wait rewrote the status"
    w.run(200, until=World.done)
    assert w.phase() == "Succeeded" and w.canary is None
    off = _at(w, "SetWeight(weight=0)")[-1]
    (deleted,) = _at(w, "DeleteCanary()")
    assert kept <= deleted - off <= kept + 1.0, w.log


@pytest.mark.parametrize("delay", ["5s", "0s"])
def test_a_rollback_keeps_the_canary_scale_down_delay_after_the_traffic_is_back(delay: str) -> None:
    w = World(make_spec(**{"strategy.canary.scaleDownDelay": delay}), metrics=canary_error(0.5)).run(
        60, until=World.done)
    assert w.phase() == "RolledBack" and w.canary is None
    off = _at(w, "SetWeight(weight=0)")[-1]
    (deleted,) = _at(w, "DeleteCanary()")
    kept = float(delay[:-1])
    assert kept <= deleted - off <= kept + 1.0, w.log
    assert off + kept <= _at(w, "SetTargetImages")[-1]  # traffic first; the images once the canary is gone


def test_a_restart_during_the_scale_down_delay_keeps_its_clock() -> None:
    """The delay counts from a time in the status: an operator restarted meanwhile does not start it again."""
    w = World(make_spec(**{"strategy.canary.scaleDownDelay": "20s"})).run(
        200, until=lambda x: x.status.step == Step.remove_canary)
    off = w.t
    saved = w.status.model_copy(deep=True)
    w.run(8)
    w.status = saved  # what a restarted operator reads back: the status as written then
    w.run(200, until=World.done)
    (deleted,) = _at(w, "DeleteCanary()")
    assert 20 <= deleted - off <= 21, w.log


def test_an_abort_during_the_promotion_reverts_the_target_without_waiting_for_scale_down_delay() -> None:
    """The target may run the new version from the promotion's first write: the rollback's revert of its images
    must not wait for the canary's delay."""
    w = World(make_spec(**{"strategy.canary.scaleDownDelay": "10m"})).run(
        200, until=lambda x: x.status.step == Step.remove_canary)
    assert w.target_images == {"web": "demo/web:2.0"}
    w.command = "abort/1"
    w.run(60, until=World.done)
    assert w.phase() == "RolledBack" and w.target_images == {"web": "demo/web:1.0"}
    assert w.status.incident is not None and w.status.incident.rolled_back_from == "Promoting"
    off = _at(w, "SetWeight(weight=0)")[-1]
    assert _at(w, "SetTargetImages")[-1] - off < 1.0, w.log
