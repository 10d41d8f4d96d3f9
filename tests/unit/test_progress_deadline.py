"""spec.progressDeadlineSeconds in the simulated world: a rollout waiting on the cluster without progress ends.

Every test runs under both clocks of test_engine (ticking every second, and only when the core asked to be woken):
the deadline must be hit at the same instant either way.
"""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from pydantic import ValidationError

from saferollout.core.clock import iso, parse_time
from saferollout.core.models import SafeRolloutSpec, SafeRolloutStatus
from saferollout.crdgen import crd
from tests.unit.test_engine import clock  # noqa: F401  (the autouse fixture: both clocks)
from tests.unit.world import BASE, T0, World, make_spec, spec_from

NEVER = math.inf


def _spec(seconds: int = 30, on: str | None = None, **overrides: object) -> SafeRolloutSpec:
    extra = {"progressDeadlineSeconds": seconds, **({"onProgressDeadline": on} if on else {})}
    return make_spec(**extra, **overrides)


def _at(seconds: float) -> str:
    return iso(T0 + timedelta(seconds=seconds))


def _condition(w: World, type_: str) -> tuple[str, str]:
    c = next(c for c in w.status.conditions if c.type == type_)
    return c.status, c.reason


def _event(w: World, reason: str) -> str:
    return next(e.message for e in w.events if e.reason == reason)


def test_defaults_and_bounds_are_the_models_and_the_crds() -> None:
    spec = spec_from(BASE)
    assert spec.progress_deadline_seconds == 600 and spec.on_progress_deadline == "rollback"
    for bad in (9, 0, -1, 86401, "ten"):
        with pytest.raises(ValidationError, match=r"progressDeadlineSeconds|progress_deadline_seconds"):
            _spec(bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"onProgressDeadline|on_progress_deadline"):
        _spec(30, "abort")
    props = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    field = props["progressDeadlineSeconds"]
    assert (field["type"], field["minimum"], field["maximum"], field["default"]) == ("integer", 10, 86400, 600)
    assert props["onProgressDeadline"]["enum"] == ["rollback", "fail"]


def test_a_canary_that_never_becomes_available_rolls_back_at_the_deadline() -> None:
    w = World(_spec(30), canary_available_at=NEVER).run(120, until=World.done)
    assert w.phase() == "RolledBack"
    inc, rec = w.status.incident, w.status.progress_deadline
    assert inc is not None and inc.reason == "ProgressDeadlineExceeded"
    assert rec is not None and rec.key == "canary" and rec.since == _at(0) and rec.action == "rollback"
    assert inc.decided_at == rec.exceeded_at == rec.deadline_at == _at(30)  # measured from when the wait began
    assert w.weights_seen == [] and w.weight == 0 and w.canary is None  # the canary workload went with the rollback
    assert "waited 30s for the canary workload to become available, longer than progressDeadlineSeconds (30)" in _event(
        w, "ProgressDeadlineExceeded")
    reasons = w.reasons()
    assert reasons.index("ProgressDeadlineExceeded") < reasons.index("RollbackStarted") < reasons.index("RolledBack")
    assert _condition(w, "Progressing") == ("False", "ProgressDeadlineExceeded")  # kept to the end
    assert [h.action for h in w.status.history] == ["rollback"]
    report = w.reports["web-incident-1"]
    assert "ProgressDeadlineExceeded" in report and "the canary workload to become available" in report


def test_fail_sets_weight_zero_and_keeps_the_canary_for_inspection() -> None:
    w = World(_spec(30, "fail"), canary_available_at=NEVER).run(120, until=World.done)
    assert w.phase() == "Failed"
    assert w.canary is not None and not any("DeleteCanary" in line for line in w.log)  # kept
    assert any("SetWeight(weight=0)" in line for line in w.log) and w.weight == 0  # traffic first, anyway
    assert w.target_images == {"web": "demo/web:1.0"}
    assert [h.action for h in w.status.history] == ["fail"]
    assert _condition(w, "Progressing") == ("False", "ProgressDeadlineExceeded")
    assert "kept for inspection" in (w.status.failure or "") and "RolloutFailed" in w.reasons()
    assert "RollbackVerified" not in w.reasons() and "RollbackStarted" not in w.reasons() and "web-incident-1" in w.reports
    assert any(n.title.startswith("rollout failing") for n in w.notes)


def test_fail_after_traffic_moved_puts_the_weight_back_first() -> None:
    w = World(_spec(30, "fail")).run(8)
    assert w.weight == 5
    w.fail_set_weight = 10**9  # stage 2's SetWeight(25) fails from t=10, and so does the weight 0 at first
    w.run(120, until=lambda x: x.phase() == "RollingBack")
    w.run(5)
    assert w.phase() == "RollingBack" and w.weight == 5  # not Failed before the traffic is back
    w.fail_set_weight = 0
    w.run(30, until=World.done)
    assert w.phase() == "Failed" and w.weight == 0 and w.canary is not None
    assert w.weights_seen == [5]


def test_availability_before_the_deadline_goes_on() -> None:
    w = World(_spec(30), canary_available_at=25).run(200, until=World.done)
    assert w.phase() == "Succeeded" and w.weights_seen == [5, 25, 50, 100]
    assert "ProgressDeadlineExceeded" not in w.reasons()
    assert w.status.progress_deadline is None  # progress ended the wait


def test_a_router_write_that_keeps_failing_rolls_back_and_the_weight_zero_write_is_never_given_up() -> None:
    w = World(_spec(30)).run(9)
    assert w.status.stage == 1 and w.weight == 5
    w.fail_set_weight = 10**9  # from now on every router write fails: stage 2's 25%, and the rollback's 0%
    w.run(200, until=lambda x: x.phase() == "RollingBack")
    rec, inc = w.status.progress_deadline, w.status.incident
    assert rec is not None and inc is not None and rec.key == "SetWeight"
    first_failure = next(float(line.split()[0]) for line in w.log if "SetWeight(weight=25)" in line)
    assert rec.since == _at(first_failure) and inc.decided_at == _at(first_failure + 30)  # from its first failure
    assert rec.failures >= 5 and "HTTPRoute write refused" in (rec.last_error or "")
    assert "the router to take canary weight 25%" in _event(w, "ProgressDeadlineExceeded")
    # the rollback has no deadline: five minutes (ten deadlines) on it still tries to put the traffic back, every poll
    tries = sum("SetWeight(weight=0)" in line for line in w.log)
    w.run(300)
    assert w.phase() == "RollingBack" and w.status.step == "RevertTraffic" and w.weight == 5
    assert sum("SetWeight(weight=0)" in line for line in w.log) - tries >= 290
    assert w.wake_after == w.settings.poll_seconds
    w.fail_set_weight = 0  # the router heals
    w.run(120, until=World.done)
    assert w.phase() == "RolledBack" and w.weight == 0 and w.canary is None
    assert w.status.incident is not None and w.status.incident.reason == "ProgressDeadlineExceeded"


def test_canary_scaling_that_keeps_failing_counts_from_its_first_failure() -> None:
    w = World(_spec(30), fail_ensure_canary=10**9).run(120, until=World.done)
    assert w.phase() == "RolledBack"
    rec = w.status.progress_deadline
    assert rec is not None and rec.key == "canary" and rec.since == _at(0) and rec.exceeded_at == _at(30)
    assert "exceeded quota" in (rec.last_error or "") and "failed attempt(s)" in _event(w, "ProgressDeadlineExceeded")


def test_a_restarted_operator_keeps_the_original_deadline() -> None:
    w = World(_spec(30), canary_available_at=NEVER).run(20)
    assert w.phase() == "Preflight" and w.status.progress_deadline is not None
    saved = SafeRolloutStatus.model_validate(w.status.model_dump(by_alias=True, mode="json"))
    w.status = saved  # a new process reads status from the API server, after 5 s down
    w.now += timedelta(seconds=5)
    w.run(120, until=World.done)
    assert w.phase() == "RolledBack"
    assert w.status.incident is not None and w.status.incident.decided_at == _at(30)  # not 20 + 30


def test_time_paused_does_not_count_while_waiting_for_the_canary() -> None:
    w = World(_spec(30), canary_available_at=NEVER).run(10)
    w.spec = _spec(30, paused=True)
    w.run(1)
    rec = w.status.progress_deadline
    assert rec is not None and rec.paused_at == _at(10)
    w.now += timedelta(seconds=60)  # paused for a minute: longer than the deadline
    w.run(1)
    assert w.phase() == "Preflight" and "ProgressDeadlineExceeded" not in w.reasons()
    w.spec = _spec(30)
    w.run(120, until=World.done)
    rec = w.status.progress_deadline
    assert rec is not None and rec.since == _at(62)  # moved on by the 62 s paused (t=10 to the tick at t=72)
    assert w.status.incident is not None and w.status.incident.decided_at == _at(92)


def test_time_paused_does_not_count_for_a_failing_router_write() -> None:
    w = World(_spec(30)).run(9)
    w.fail_set_weight = 10**9
    w.run(10)
    first = w.status.progress_deadline
    assert first is not None and first.key == "SetWeight"
    failing_since = parse_time(first.since)
    w.spec = _spec(30, paused=True)
    w.run(1)
    assert w.phase() == "Paused"
    rec = w.status.progress_deadline
    assert rec is not None and rec.paused_at is not None
    paused_at = parse_time(rec.paused_at)
    w.now += timedelta(seconds=300)
    w.run(1)
    assert w.phase() == "Paused"
    w.spec = _spec(30)
    resumed = w.now  # the next decision resumes, and the clock goes on from where it stood
    w.run(200, until=lambda x: x.phase() == "RollingBack")
    rec = w.status.progress_deadline
    assert rec is not None and rec.exceeded_at is not None
    assert parse_time(rec.since) == failing_since + (resumed - paused_at)
    assert parse_time(rec.exceeded_at) == parse_time(rec.since) + timedelta(seconds=30)
    w.fail_set_weight = 0
    w.run(120, until=World.done)
    assert w.phase() == "RolledBack"


def test_the_decision_at_the_deadline_sends_weight_zero_first() -> None:
    w = World(_spec(30)).run(9)
    w.fail_set_weight = 10**9
    w.run(200, until=lambda x: x.phase() == "RollingBack")
    decision = max(i for i, line in enumerate(w.log) if "'ProgressDeadlineExceeded'" in line)
    following = [line for line in w.log[decision:] if "Event" not in line and "Notify" not in line]
    assert "SetWeight(weight=0)" in following[0] and not any("weight=25" in x for x in following)


@pytest.mark.parametrize("on", ["rollback", "fail"])
def test_a_promoted_target_that_never_becomes_available_rolls_back_whatever_on_progress_deadline_says(on: str) -> None:
    """In Promoting the target already has the new images: `fail` would leave it so, so there it rolls back too."""
    w = World(_spec(30, on), target_available_at=NEVER).run(300, until=World.done)
    assert w.phase() == "RolledBack" and w.weights_seen == [5, 25, 50, 100]
    rec = w.status.progress_deadline
    assert rec is not None and rec.key == "target" and rec.action == "rollback"
    assert "Deployment web to run the promoted version" in _event(w, "ProgressDeadlineExceeded")
    assert w.target_images == {"web": "demo/web:1.0"} and w.weight == 0 and w.canary is None


def test_a_deadline_passed_while_the_operator_was_away_is_acted_on_only_after_a_fresh_look() -> None:
    """Down for 15 minutes while the canary came up: the first decision looks at the canary instead of rolling back
    on the status's word; a canary still not available at that look rolls back."""
    from saferollout.core import actions as a
    from saferollout.core.engine import Inputs, decide, template_hash

    spec = _spec(600)
    status = SafeRolloutStatus.model_validate({
        "phase": "Preflight", "step": "Canary", "templateHash": template_hash(spec), "attempt": 1,
        "observedGeneration": 1, "startedAt": iso(T0), "canaryImages": {"web": "demo/web:2.0"},
        "stableImages": {"web": "demo/web:1.0"},
        "progressDeadline": {"key": "canary", "waitingFor": "the canary workload to become available",
                             "since": iso(T0)}})
    now = T0 + timedelta(seconds=900)
    first = decide(spec, status, Inputs(now=now, name="web", generation=1))
    assert first.status.phase == "Preflight" and not any(isinstance(x, a.SetWeight) for x in first.actions)
    assert any(isinstance(x, a.EnsureCanary) for x in first.actions)
    ready = decide(spec, first.status, Inputs(now=now, name="web", generation=1, results=[a.CanaryState(True)]))
    assert ready.status.phase == "Progressing" and ready.status.progress_deadline is None
    still = decide(spec, first.status, Inputs(now=now, name="web", generation=1, results=[a.CanaryState(False)]))
    assert still.status.phase == "RollingBack" and a.SetWeight(0) in still.actions


def test_an_unrelated_success_does_not_end_the_wait_on_a_failing_router_write() -> None:
    from saferollout.core import actions as a
    from saferollout.core import deadline
    from saferollout.core.models import ProgressDeadlineStatus

    status = SafeRolloutStatus.model_validate({"phase": "Progressing", "stage": 1})
    status.progress_deadline = ProgressDeadlineStatus(key="SetWeight", waiting_for="the router", since=iso(T0))

    class Run:  # what progressed() reads of a run
        s = status

    deadline.progressed(Run, a.Outcome(a.LabelTarget(), True))  # type: ignore[arg-type]
    assert status.progress_deadline is not None
    deadline.progressed(Run, a.Outcome(a.SetWeight(5), True))  # type: ignore[arg-type]
    assert status.progress_deadline is None
