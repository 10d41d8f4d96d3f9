"""dryRun metrics: queried, judged and shown (status, plugin, report, operator metrics), and never acted on.

The safety claim is a comparison: a rollout with dryRun metrics takes exactly the actions it takes without them
(the queries aside, which also ask for the dryRun metrics, and the DryRunBreach Events, which only tell). Every
test here plays the same world twice, with and without the dryRun metrics, and compares the two.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from pydantic import ValidationError

from saferollout import crdgen, observability
from saferollout.cli import render_status
from saferollout.core import actions as a
from saferollout.core.models import (
    IncidentStatus,
    MetricStatus,
    Phase,
    SafeRolloutSpec,
    SafeRolloutStatus,
    Step,
    Verdict,
)
from saferollout.core.report import incident_report
from tests.unit import strategies as s
from tests.unit.test_engine import canary_error
from tests.unit.test_engine import clock as clock  # every test under both clocks
from tests.unit.test_properties import SCALE
from tests.unit.world import BASE, T0, MetricFn, World, make_spec

REAL = {"name": "error-rate", "template": "error-rate", "max": 0.01, "onBreach": "rollback", "severity": "critical"}
# impossible to meet: the canary's error rate is never below 0
DRY_FAILING = {"name": "strict-errors", "query": "sum(x)", "max": -1.0, "dryRun": True, "onBreach": "rollback",
               "severity": "critical"}
DRY_PASSING = {"name": "lenient-errors", "query": "sum(x)", "max": 1e9, "dryRun": True}


def with_metrics(*metrics: dict[str, Any], **overrides: Any) -> SafeRolloutSpec:
    return make_spec(**{"analysis.metrics": list(metrics), **overrides})


class Recorded(World):
    """A World that keeps every action it was asked to carry out, with its time."""

    acts: list[tuple[float, a.Action]]

    def execute(self, act: a.Action) -> a.Result | None:
        if not hasattr(self, "acts"):
            self.acts = []
        self.acts.append((self.t, act))
        return super().execute(act)


def acting(w: Recorded, dry: set[str]) -> list[tuple[float, Any]]:
    """The actions as they would be without the dryRun metrics: their names left out of the queries, their Events
    dropped, and a report compared by its name (its text has a section on them)."""
    out: list[tuple[float, Any]] = []
    for t, act in getattr(w, "acts", []):
        if isinstance(act, a.Event) and act.reason == "DryRunBreach":
            continue
        if isinstance(act, a.QueryMetrics):
            act = dataclasses.replace(act, metrics=tuple(n for n in act.metrics if n not in dry))
        if isinstance(act, a.WriteReport):
            act = dataclasses.replace(act, markdown="")
        out.append((t, act))
    return out


def twice(spec: SafeRolloutSpec, dry: list[dict[str, Any]], metrics: MetricFn,
          errors: dict[str, str] | None = None, seconds: float = 300) -> tuple[Recorded, Recorded]:
    """The same world without and with the dryRun metrics; asserts that both took the same actions."""
    doc = spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    doc["analysis"]["metrics"] = doc["analysis"]["metrics"] + dry
    with_dry = SafeRolloutSpec.model_validate(doc)
    plain = Recorded(spec, metrics=metrics)
    dried = Recorded(with_dry, metrics=metrics, metric_errors=dict(errors or {}))
    if spec.template is not None and len(spec.template.containers) > 1:  # the target has every container
        for w in (plain, dried):
            w.target_images = {c.name: f"{c.name}:old" for c in spec.template.containers}
    plain.run(seconds, until=World.done)
    dried.run(seconds, until=World.done)
    names = {m["name"] for m in dry}
    assert acting(dried, names) == acting(plain, names)
    assert dried.status.phase == plain.status.phase
    assert [h.model_dump() for h in dried.status.history] == [h.model_dump() for h in plain.status.history]
    assert dried.weights_seen == plain.weights_seen and dried.t == plain.t
    return plain, dried


def tally(w: World, name: str) -> Any:
    return next(t for t in w.status.analysis.dry_run if t.name == name)


def dry_value(value: float | None) -> MetricFn:
    """The real error-rate healthy; every other metric reads `value`."""
    def fn(name: str, target: str, weight: int, t: float) -> float | None:
        return 0.001 if name == "error-rate" else value
    return fn


# ------------------------------------------------------------------------------------------- the model


def test_dry_run_defaults_to_false_and_is_in_the_crd() -> None:
    spec = with_metrics(REAL)
    assert spec.analysis.metrics[0].dry_run is False
    schema = yaml.safe_dump(crdgen.crd())
    assert "dryRun" in schema and "nothing would guard the rollout" in schema


@pytest.mark.parametrize("metrics", [[DRY_FAILING], [DRY_FAILING, DRY_PASSING]])
def test_a_rollout_whose_only_metrics_are_dry_run_is_refused(metrics: list[dict[str, Any]]) -> None:
    with pytest.raises(ValidationError, match="every metric is dryRun: nothing would guard the rollout"):
        with_metrics(*metrics)


def test_one_real_metric_beside_dry_run_ones_is_accepted() -> None:
    spec = with_metrics(REAL, DRY_FAILING, DRY_PASSING)
    assert [m.dry_run for m in spec.analysis.metrics] == [False, True, True]


# ------------------------------------------------------------------------------------------- the core


def test_dry_run_failing_beside_a_passing_real_metric_promotes_and_shows_the_failure() -> None:
    _, w = twice(with_metrics(REAL), [DRY_FAILING], dry_value(0.001))
    assert w.phase() == "Succeeded" and w.weights_seen == [5, 25, 50, 100]
    assert w.target_images == {"web": "demo/web:2.0"} and w.status.history == []
    shown = {m.name: m for m in w.status.analysis.metrics}
    assert shown["strict-errors"].dry_run and shown["strict-errors"].verdict == Verdict.fail
    assert not shown["error-rate"].dry_run and shown["error-rate"].verdict == Verdict.passed
    t = tally(w, "strict-errors")
    assert t.checks == t.failures == w.status.analysis.runs and t.passes == t.inconclusive == 0
    assert t.would_breach >= 4 and t.on_breach == "rollback"  # once in each stage (a stage starts the count afresh)
    assert (t.first_breach_stage, t.first_breach_weight) == (1, 5)
    assert t.first_failed_at == "2026-01-01T00:00:00.000000Z" and t.first_breach_at == "2026-01-01T00:00:04.000000Z"
    assert "DryRunBreach" in w.reasons() and "AnalysisFailed" not in w.reasons()
    breach = next(e for e in w.events if e.reason == "DryRunBreach")
    assert breach.type == "Normal" and "was not taken" in breach.message
    assert not any("strict-errors" in n.title or "strict-errors" in n.text for n in w.notes)


def test_real_failing_beside_a_passing_dry_run_rolls_back_exactly_as_without_it() -> None:
    plain, w = twice(with_metrics(REAL), [DRY_PASSING], canary_error(0.5))
    assert w.phase() == "RolledBack" and w.weights_seen == [5]
    assert w.status.incident is not None and plain.status.incident is not None
    assert w.status.incident.metric == "error-rate"
    assert w.status.incident.model_dump(exclude={"metrics"}) == plain.status.incident.model_dump(exclude={"metrics"})
    report = w.reports["web-incident-1"]
    assert "## Dry-run metrics" in report and "lenient-errors" in report
    assert "| lenient-errors |" in report and "pass (dry run)" in report
    assert "## Dry-run metrics" not in plain.reports["web-incident-1"]


def test_a_failing_dry_run_metric_never_masks_a_real_failure() -> None:
    """The dryRun metric's onBreach (rollback, critical) is stronger than the real one's (stepBack): were it
    counted, the strongest action would be its rollback; it is not, so the real stepBack happens, as without."""
    step_back = {**REAL, "onBreach": "stepBack", "severity": "low"}

    def fn(name: str, target: str, weight: int, t: float) -> float | None:
        if name == "error-rate":
            return 0.5 if target == "canary" and weight >= 25 else 0.001
        return 0.3  # the dryRun metric fails everywhere
    _, w = twice(with_metrics(step_back, **{"analysis.failureLimit": 2}), [DRY_FAILING], fn)
    assert [h.action for h in w.status.history] == ["stepBack", "rollback"]
    assert w.weights_seen == [5, 25, 5, 25] and w.phase() == "RolledBack"
    assert w.status.incident is not None and w.status.incident.metric == "error-rate"


@pytest.mark.parametrize("error", ["ValueError: bad_data: parse error at char 5", "ConnectionError: refused"])
@pytest.mark.parametrize("on_inconclusive", ["pause", "rollback"])
def test_a_dry_run_metric_erroring_changes_nothing(error: str, on_inconclusive: str) -> None:
    """A bad query or an unreachable source of a dryRun metric: inconclusive for it (shown), never a hold, never a
    rollback under onInconclusive: rollback, and never a pass or a fail of the analysis."""
    spec = with_metrics(REAL, **{"analysis.onInconclusive": on_inconclusive, "analysis.inconclusiveLimit": 1})
    _, w = twice(spec, [DRY_FAILING], dry_value(0.5), errors={"strict-errors": error})
    assert w.phase() == "Succeeded"
    assert "AnalysisInconclusive" not in w.reasons() and "RolloutPaused" not in w.reasons()
    t = tally(w, "strict-errors")
    assert t.checks == t.inconclusive > 0 and t.failures == t.would_breach == 0
    assert t.last_verdict == Verdict.inconclusive and t.last_message == error
    # and with a failing real metric, the same rollback as without
    _, failing = twice(spec, [DRY_FAILING], canary_error(0.5), errors={"strict-errors": error})
    assert failing.phase() == "RolledBack" and failing.status.incident is not None
    assert failing.status.incident.reason == "AnalysisFailed" and failing.status.incident.metric == "error-rate"


def test_a_passing_dry_run_metric_never_makes_missing_data_look_conclusive() -> None:
    """The real metric has no data for a while: the rollout holds (inconclusive pause) and resumes exactly as it
    does without the dryRun metric, which passes all along."""
    def fn(name: str, target: str, weight: int, t: float) -> float | None:
        if name == "error-rate":
            return None if 12 <= t < 40 else 0.001
        return 0.0
    _, w = twice(with_metrics(REAL), [DRY_PASSING], fn)
    assert w.phase() == "Succeeded"
    assert "AnalysisInconclusive" in w.reasons() and "RolloutResumed" in w.reasons()


def test_missing_data_of_a_dry_run_metric_never_keeps_an_inconclusive_pause() -> None:
    """Paused for the real metric's missing data, the rollout resumes when the real metric is back, whatever the
    dryRun metric says (here: nothing, all along)."""
    def fn(name: str, target: str, weight: int, t: float) -> float | None:
        if name == "error-rate":
            return None if 12 <= t < 40 else 0.001
        return None
    _, w = twice(with_metrics(REAL), [DRY_FAILING], fn)
    assert w.phase() == "Succeeded" and "RolloutResumed" in w.reasons()


def test_the_pre_flight_gate_and_the_rollback_verification_ask_only_real_metrics() -> None:
    spec = with_metrics(REAL, **{"preflight": {"stableHealthy": True}})
    _, w = twice(spec, [DRY_FAILING], canary_error(0.5))
    assert w.phase() == "RolledBack" and "RollbackVerified" in w.reasons()
    purposes = [act for _, act in w.acts if isinstance(act, a.QueryMetrics) and act.purpose != "analysis"]
    assert {q.purpose for q in purposes} == {"preflight", "verify"}
    assert all("strict-errors" not in q.metrics for q in purposes)


def test_blue_green_preview_with_a_failing_dry_run_metric_switches() -> None:
    doc = yaml.safe_load(BASE)
    doc["strategy"] = {"blueGreen": {"activeService": "web", "previewService": "web-preview",
                                     "previewDuration": "10s", "postPromotionDuration": "10s"}}
    _, w = twice(SafeRolloutSpec.model_validate(doc), [DRY_FAILING], dry_value(0.5))
    assert w.phase() == "Succeeded" and tally(w, "strict-errors").would_breach >= 1


def test_a_metric_made_real_mid_rollout_starts_its_count_afresh() -> None:
    """Failing as a dry run for a whole stage, then made real: it acts only on failures seen as a real metric."""
    dry = {**DRY_FAILING, "failureLimit": 3}
    w = World(with_metrics(REAL, dry), metrics=dry_value(0.5)).run(9)
    before = next(m for m in w.status.analysis.metrics if m.name == "strict-errors")
    assert before.dry_run and before.consecutive_failures >= 4
    w.spec = with_metrics(REAL, {**dry, "dryRun": False})
    checks = w.status.analysis.runs
    w.run(60, until=lambda x: x.status.phase == Phase.rolling_back)
    assert w.status.analysis.runs - checks == 3  # three real failures, not the first one after the edit
    assert w.status.incident is not None and w.status.incident.metric == "strict-errors"


def test_a_metric_made_dry_run_mid_rollout_stops_acting_at_once() -> None:
    real = {**DRY_FAILING, "dryRun": False, "onBreach": "pause"}
    w = World(with_metrics(REAL, real, **{"analysis.failureLimit": 5}), metrics=dry_value(0.5)).run(5)
    assert w.phase() == "Progressing"
    w.spec = with_metrics(REAL, {**real, "dryRun": True}, **{"analysis.failureLimit": 5})
    w.run(300, until=World.done)
    assert w.phase() == "Succeeded" and w.status.history == []


# --------------------------------------------------------------------------- plugin, report, operator metrics


def test_the_plugin_marks_dry_run_verdicts_and_shows_the_tally() -> None:
    w = World(with_metrics(REAL, DRY_FAILING), metrics=dry_value(0.001)).run(300, until=World.done)
    obj = {"metadata": {"name": "web", "namespace": "demo"}, "spec": {},
           "status": w.status.model_dump(by_alias=True, exclude_none=True, mode="json")}
    text = render_status(obj, T0)
    assert "fail (dry run)" in text and "pass (dry run)" not in text
    line = next(x for x in text.splitlines() if x.strip().startswith("strict-errors:"))
    assert "fail" in line and "would have breached" in line and "(rollback; first at stage 1, 5%)" in line
    assert "Dry run:   judged, never acted on" in text


def test_the_report_names_the_dry_run_metrics_and_says_they_did_nothing() -> None:
    status = SafeRolloutStatus(phase=Phase.rolling_back, attempt=1, incident=IncidentStatus(
        reason="AnalysisFailed", metric="error-rate", metrics=[
            MetricStatus(name="error-rate", value=0.5, verdict=Verdict.fail, threshold="<= 0.01"),
            MetricStatus(name="strict-errors", value=None, verdict=Verdict.inconclusive, dry_run=True,
                         message="a | b")]))
    status.analysis.dry_run = [
        SafeRolloutStatus.model_validate({"analysis": {"dryRun": [
            {"name": "strict-errors", "checks": 3, "inconclusive": 3, "lastVerdict": "inconclusive",
             "lastMessage": "query | failed"}]}}).analysis.dry_run[0]]
    text = incident_report("web", with_metrics(REAL, DRY_FAILING), status, T0)
    assert "| strict-errors | no data |  | inconclusive (dry run) |" in text
    assert "none of these caused or hastened this rollback" in text
    assert "| strict-errors | 3 | 0 | 0 | 3 | no | - | inconclusive no data (query \\| failed) |" in text
    assert "**Reason:** AnalysisFailed — `error-rate`" in text  # the breach is the real metric's


def _sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_the_operator_exports_values_and_verdicts_and_removes_them() -> None:
    key = "ns-x/web-x"
    old = SafeRolloutStatus(phase=Phase.progressing)
    new = SafeRolloutStatus(phase=Phase.progressing)
    new.analysis.runs = 1
    new.analysis.metrics = [MetricStatus(name="error-rate", value=0.002, verdict=Verdict.passed),
                            MetricStatus(name="strict", value=None, verdict=Verdict.inconclusive, dry_run=True)]
    before = _sample("saferollout_analysis_results_total", metric="strict", verdict="inconclusive", dry_run="true")
    observability.observe(key, old, new)
    ids = {"namespace": "ns-x", "rollout": "web-x"}
    assert _sample("saferollout_analysis_value", **ids, metric="error-rate") == 0.002
    assert _sample("saferollout_analysis_value", **ids, metric="strict") is None  # no value: no series
    assert _sample("saferollout_analysis_verdict", **ids, metric="error-rate", verdict="pass", dry_run="false") == 1
    assert _sample("saferollout_analysis_verdict", **ids, metric="error-rate", verdict="fail", dry_run="false") == 0
    assert _sample("saferollout_analysis_verdict", **ids, metric="strict", verdict="inconclusive", dry_run="true") == 1
    after = _sample("saferollout_analysis_results_total", metric="strict", verdict="inconclusive", dry_run="true")
    assert (after or 0) - (before or 0) == 1
    # the dryRun metric removed from the spec: its series go with the next analysis
    newer = new.model_copy(deep=True)
    newer.analysis.runs = 2
    newer.analysis.metrics = newer.analysis.metrics[:1]
    observability.observe(key, new, newer)
    assert _sample("saferollout_analysis_verdict", **ids, metric="strict", verdict="inconclusive", dry_run="true") is None
    assert _sample("saferollout_analysis_value", **ids, metric="error-rate") == 0.002
    # ended: nothing of it is left
    done = newer.model_copy(update={"phase": Phase.succeeded})
    observability.observe(key, newer, done)
    assert _sample("saferollout_analysis_value", **ids, metric="error-rate") is None
    assert _sample("saferollout_analysis_verdict", **ids, metric="error-rate", verdict="pass", dry_run="false") is None
    # deleted while progressing
    observability.observe(key, old, new)
    observability.forget(key)
    assert _sample("saferollout_analysis_value", **ids, metric="error-rate") is None


def _rollback(reason: str, weight: int, **status: Any) -> tuple[SafeRolloutStatus, SafeRolloutStatus]:
    old = SafeRolloutStatus(phase=status.pop("old_phase", Phase.progressing), step=status.pop("old_step", None))
    new = SafeRolloutStatus(phase=Phase.rolling_back, step=Step.revert_traffic, incident=IncidentStatus(
        reason=reason, metric="error-rate", weight_at_breach=weight), **status)
    return old, new


@pytest.mark.parametrize(("case", "prevented"), [
    (_rollback("AnalysisFailed", 25), True),
    (_rollback("AnalysisFailed", 0), True),  # a blue-green preview: no user had it
    (_rollback("AnalysisFailed", 100), False),  # every user had it
    (_rollback("AnalysisFailed", 0, old_phase=Phase.promoting, old_step=Step.watch), False),  # promoted
    (_rollback("AnalysisFailed", 0, promoted_at="2026-01-01T00:00:00Z"), False),
    (_rollback("AnalysisInconclusive", 25), False),  # no data is no proof of a bad version
    (_rollback("Aborted", 25), False),
])
def test_prevented_incidents(case: tuple[SafeRolloutStatus, SafeRolloutStatus], prevented: bool) -> None:
    assert observability.prevented(*case) is prevented


def test_aborts_and_prevented_incidents_are_counted() -> None:
    aborts = _sample("saferollout_aborts_total") or 0
    prevented = _sample("saferollout_prevented_incidents_total", metric="error-rate") or 0
    old, new = _rollback("AnalysisFailed", 5)
    observability.observe("ns-y/a", old, new)
    assert _sample("saferollout_prevented_incidents_total", metric="error-rate") == prevented + 1
    old, new = _rollback("Aborted", 5)
    new.history = [*new.history, *SafeRolloutStatus.model_validate(
        {"history": [{"action": "abort", "at": "2026-01-01T00:00:00Z"}]}).history]
    observability.observe("ns-y/b", old, new)
    assert _sample("saferollout_aborts_total") == aborts + 1
    assert _sample("saferollout_prevented_incidents_total", metric="error-rate") == prevented + 1


def test_an_abort_in_the_simulated_world_is_an_abort() -> None:
    w = World(with_metrics(REAL)).run(5)
    before = w.status.model_copy(deep=True)
    w.command = "abort/1"
    w.tick()
    aborts = _sample("saferollout_aborts_total") or 0
    observability.observe("ns-z/web", before, w.status)
    assert _sample("saferollout_aborts_total") == aborts + 1


# ------------------------------------------------------------------------------------------- the property


def _value(m: Any, what: str) -> float | None:
    return {"pass": s.passing_value(m), "fail": s.failing_value(m), "none": None}[what]


@settings(max_examples=20 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])
@given(pair=s.valid_specs(), data=st.data())
def test_adding_dry_run_metrics_never_changes_what_the_rollout_does(pair: tuple[dict[str, Any], SafeRolloutSpec],
                                                                   data: st.DataObject) -> None:
    """Any valid spec, any behaviour of its metrics over time; then one to three dryRun metrics of any kind, each
    passing, failing, without data or erroring over time: the rollout takes the same actions, at the same times."""
    _, spec = pair
    if spec.paused:
        return
    real = {m.name: data.draw(st.lists(st.sampled_from(["pass", "pass", "pass", "fail", "none"]), min_size=1,
                                       max_size=6),
                              label=f"schedule of {m.name}") for m in spec.analysis.metrics}
    n = data.draw(st.integers(1, 3), label="dryRun metrics")
    dry = [{**data.draw(s.valid_metric_dicts(f"dry-{i}")), "dryRun": True} for i in range(n)]
    dry_schedules = {d["name"]: data.draw(st.lists(st.sampled_from(["fail", "fail", "pass", "none"]), min_size=1,
                                                   max_size=6),
                                          label=f"schedule of {d['name']}") for d in dry}
    errors = {d["name"]: "ValueError: bad query" for d in dry if data.draw(st.booleans(), label=f"{d['name']} errs")}
    doc = spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    dried = SafeRolloutSpec.model_validate({**doc, "analysis": {**doc["analysis"],
                                                                "metrics": doc["analysis"]["metrics"] + dry}})
    by_name = {m.name: m for m in dried.analysis.metrics}
    schedules = {**real, **dry_schedules}

    def fn(name: str, target: str, weight: int, t: float) -> float | None:
        if name not in schedules:  # rollback.verify.maxErrorRate's own check
            return 0.0
        plan = schedules[name]
        if target == "stable" and t < 4 and name in real:  # mostly past the pre-flight gate, into the stages
            return _value(by_name[name], "pass")
        return _value(by_name[name], plan[int(t // 4) % len(plan)])
    note(f"dry: {dry}; schedules: {schedules}; errors: {errors}")
    _, w = twice(spec, dry, fn, errors=errors, seconds=150)
    event(f"ended {w.phase()}")
    event("a dryRun metric would have breached" if any(t.would_breach for t in w.status.analysis.dry_run)
          else "no dryRun breach")


def test_the_property_sees_dry_run_breaches() -> None:
    """The property above compares like with like only if its dryRun metrics can fail: here one does, and breaches."""
    spec = with_metrics(REAL)
    _, w = twice(spec, [{**DRY_FAILING, "failureLimit": 1}], dry_value(0.5), seconds=150)
    assert tally(w, "strict-errors").would_breach > 0 and w.phase() == "Succeeded"
    assert w.now > T0


# ------------------------------------------------------------------------------------------- the harness


def test_the_harness_checks_that_a_dry_run_metric_failed_and_was_shown_as_one() -> None:
    from harness.expect import Observed, check_all

    def seen(status: dict[str, Any]) -> dict[str, bool]:
        obs = Observed(rollout={"status": status})
        return {c.name: c.passed for c in check_all({"dryRunFailed": ["strict", "other"]}, obs, "ns", "web")}

    tallies = [{"name": "strict", "checks": 4, "failures": 4, "wouldBreach": 1, "onBreach": "rollback"},
               {"name": "other", "checks": 4, "failures": 0}]
    marked = [{"name": "strict", "verdict": "fail", "dryRun": True}]
    assert seen({"analysis": {"dryRun": tallies, "metrics": marked}}) == {
        "dryRunFailed strict": True, "dryRunFailed other": False}
    unmarked = [{"name": "strict", "verdict": "fail"}]  # shown as if it were a real metric
    assert not seen({"analysis": {"dryRun": tallies, "metrics": unmarked}})["dryRunFailed strict"]
    assert seen({}) == {"dryRunFailed strict": False, "dryRunFailed other": False}


@pytest.mark.parametrize("where", ["_verdict", "_tally"])
def test_an_internal_error_in_a_dry_run_metric_is_said_and_never_acts(where: str, monkeypatch: pytest.MonkeyPatch
                                                                      ) -> None:
    from saferollout.core import analysis

    real = getattr(analysis, where)

    def broken(run: Any, *rest: Any) -> Any:
        name = rest[1] if where == "_verdict" else rest[0].name
        if name == DRY_FAILING["name"]:
            raise ZeroDivisionError("boom")
        return real(run, *rest)

    monkeypatch.setattr(analysis, where, broken)
    w = World(with_metrics(REAL, DRY_FAILING), metrics=dry_value(0.001)).run(120, until=World.done)
    assert w.phase() == "Succeeded" and w.status.history == [] and "InternalError" not in w.reasons()
    if where == "_tally":
        assert "DryRunError" in w.reasons()
    else:
        shown = next(m for m in w.status.analysis.metrics if m.name == DRY_FAILING["name"])
        assert shown.verdict == Verdict.inconclusive and shown.message == "internal error: ZeroDivisionError"
