"""Property tests of the product's safety invariant: no input and no fault leaves a rollout wedged with traffic on an
unverified canary.

* The spec models refuse what they cannot take with a ValidationError, never another exception, and the core copes
  with everything they accept.
* A stateful fuzz of the core: a valid spec, then any sequence of clock jumps, spec edits, commands, operator
  restarts and reconciles in which every action is answered with success, failure, a random plausible result or a
  crash. After every decision: (a) `decide` did not raise; (b) weights stay within 0..100; (c) the status is strict
  JSON; (d) a stage advance or a promotion rests on passing verdicts; (e) `abort` reverts traffic in the same
  decision; (f) a rollback is never undone without `retry` or a new template; (g) an active rollout always asks to be
  woken, unless it waits for a person. decide() turns its own exceptions into a rollback (an InternalError event):
  that counts as a failure of (a), and the assertion shows the traceback the fail-safe caught.
* Focused properties for the known failure modes (stages edited mid-rollout, huge durations, non-finite metric
  values), and liveness in a working world: a healthy canary is always promoted, a failing one always ends with its
  traffic back on stable (or paused for a person, as its onBreach says).

Deterministic by default (profile "ci": derandomized, no example database); SAFEROLLOUT_HYPOTHESIS_PROFILE=thorough
explores with a random seed and many more examples.
"""

from __future__ import annotations

import json
import math
import os
import traceback
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import Phase as Stage
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule
from pydantic import ValidationError

from saferollout.core import actions as a
from saferollout.core import engine as engine_module
from saferollout.core.durations import parse_duration
from saferollout.core.engine import DEFAULT_STAGES, Decision, Inputs, Settings, decide, iso, template_hash
from saferollout.core.models import (
    PHASE_STEPS,
    BreachAction,
    Metric,
    Phase,
    SafeRolloutSpec,
    SafeRolloutStatus,
    Verdict,
)
from tests.unit import strategies as s
from tests.unit.world import T0, World, make_spec

settings.register_profile(
    "ci", derandomize=True, deadline=None, print_blob=True, database=None,
    phases=[Stage.explicit, Stage.reuse, Stage.generate, Stage.target, Stage.shrink],  # no slow "explain" phase
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
settings.register_profile("thorough", settings.get_profile("ci"), derandomize=False)
PROFILE = os.environ.get("SAFEROLLOUT_HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
SCALE = 20 if PROFILE == "thorough" else 1

ACTIVE = (Phase.pending, Phase.preflight, Phase.progressing, Phase.paused, Phase.promoting)
WAITS_FOR_A_PERSON = ("user", "breach", "approval")
MAX_STEPS = 40  # as saferollout.core.loop.drive


# ------------------------------------------------------------------------------------------------- checks


def non_finite(node: Any, path: str = "status") -> Iterator[str]:
    if isinstance(node, float) and not math.isfinite(node):
        yield f"{path}={node}"
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from non_finite(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from non_finite(v, f"{path}[{i}]")


def strict_json(status: SafeRolloutStatus) -> str:
    """The status as the handler writes it to the API server, which takes strict JSON only."""
    body = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    bad = list(non_finite(body))
    assert not bad, f"(c) status is not strict JSON: {', '.join(bad)}"
    return json.dumps(body, allow_nan=False)


def verb_taken(prev: SafeRolloutStatus, inputs: Inputs) -> str | None:
    """The command this decision acts on: a new annotation value (an old one was taken already)."""
    cmd = inputs.command
    if not cmd or cmd == prev.last_command:
        return None
    return cmd.split("/", 1)[0]


def stage_weight(spec: SafeRolloutSpec, engine: Settings, stage: int | None) -> int | None:
    if spec.strategy.blue_green is not None:
        return 100 if stage == 1 else None
    assert spec.strategy.canary is not None
    stages = spec.strategy.canary.stages or engine.default_stages
    return stages[stage - 1].weight if stage is not None and 1 <= stage <= len(stages) else None


def applicable(spec: SafeRolloutSpec, target: str) -> list[Metric]:
    """As engine.metrics_for: comparative metrics (baseline, judge) sit out where there is no canary beside stable;
    dryRun metrics have no say in anything."""
    return [m for m in spec.analysis.metrics
            if (target != "stable" or m.kind not in ("baseline", "judge")) and not m.dry_run]


def recorded_verdicts(spec: SafeRolloutSpec, prev: SafeRolloutStatus, inputs: Inputs,
                      engine: Settings) -> SafeRolloutStatus:
    """The status once this decision's results were recorded, before its phase acted on them (a switch resets the
    analysis in the same call): the same decision with the rollout paused by its spec, where the phase handlers
    only pause and leave status.analysis as the results made it."""
    probe = Inputs(now=inputs.now, name=inputs.name, generation=inputs.generation, command=None,
                   results=list(inputs.results))
    return decide(spec.model_copy(update={"paused": True}), prev, probe, engine).status


def _reraise(status: SafeRolloutStatus, inputs: Inputs, settings: Settings, error: Exception) -> Decision:
    raise error


def internal_traceback(spec: SafeRolloutSpec, prev: SafeRolloutStatus, inputs: Inputs, engine: Settings) -> str:
    """The error decide's fail-safe caught, with its traceback: the same decision again, the fail-safe re-raising."""
    original = getattr(engine_module, "fail_safe", None)
    if original is None:
        return ""
    setattr(engine_module, "fail_safe", _reraise)  # noqa: B010 - restored below
    try:
        decide(spec, prev, inputs, engine)
    except Exception:
        return traceback.format_exc(limit=-3)
    finally:
        setattr(engine_module, "fail_safe", original)  # noqa: B010
    return "(not reproduced)"


def check_decision(spec: SafeRolloutSpec, prev: SafeRolloutStatus, inputs: Inputs, d: Decision,
                   engine: Settings) -> None:
    new = d.status
    verb = verb_taken(prev, inputs)
    note(f"decision at {inputs.now.isoformat()} command={inputs.command!r}: {prev.phase} stage {prev.stage} "
         f"weight {prev.weight} -> {new.phase} stage {new.stage} weight {new.weight}; "
         f"actions {[type(x).__name__ for x in d.actions if not isinstance(x, a.Event | a.Notify)]}")

    # (a) decide raised nothing, not even into its own fail-safe (which rolls back on an internal error)
    internal = [x.message for x in d.actions if isinstance(x, a.Event) and x.reason == "InternalError"]
    assert not internal, f"(a) the core failed inside decide: {internal[0]}\n{internal_traceback(spec, prev, inputs, engine)}"

    # (b) weights within 0..100
    assert 0 <= new.weight <= 100, f"(b) status.weight {new.weight}"
    for x in d.actions:
        if isinstance(x, a.SetWeight):
            assert 0 <= x.weight <= 100, f"(b) {x!r}"
        if isinstance(x, a.EnsureCanary):
            assert 0 <= x.first_weight <= 100, f"(b) {x!r}"

    # (c) strict JSON
    strict_json(new)

    # (d) an advance or a promotion rests on passing verdicts (a person's `promote` is an override)
    if prev.phase is not None and new.attempt == prev.attempt and verb != "promote":
        bg = spec.strategy.blue_green is not None
        advanced = prev.stage is not None and new.stage is not None and new.stage > prev.stage
        # more traffic on the canary, other than its first weight (stage 1 entered from 0%: the start itself)
        first = new.stage == 1 and prev.weight == 0
        raised = [x.weight for x in d.actions if isinstance(x, a.SetWeight) and x.weight > prev.weight
                  and not (first and x.weight == stage_weight(spec, engine, 1))]
        # a pause while the promoted target was watched resumes the watch: nothing new is promoted
        resumed_watch = prev.phase == Phase.paused and prev.step in PHASE_STEPS[Phase.promoting]
        promoted = new.phase == Phase.promoting and prev.phase != Phase.promoting and not resumed_watch
        if advanced or (raised and new.phase == Phase.progressing) or promoted:
            event("(d) checked a promotion" if promoted else "(d) checked an advance")
            what = "promotion" if promoted else f"advance from stage {prev.stage} to {new.stage} (weights {raised})"
            seen = {m.name: m for m in recorded_verdicts(spec, prev, inputs, engine).analysis.metrics}
            target = ("preview" if prev.stage == 0 else "stable") if bg else "canary"
            for m in applicable(spec, target):
                ms = seen.get(m.name)
                ok = ms is not None and (ms.verdict == Verdict.passed or (
                    ms.verdict == Verdict.fail and m.on_breach == BreachAction.notify))
                assert ok, (f"(d) {what} with metric {m.name!r} (onBreach {m.on_breach.value}) at verdict "
                            f"{ms.verdict.value if ms else 'never measured'}")

    # (e) abort reverts traffic in the same decision
    if verb == "abort" and prev.phase in ACTIVE:
        event("(e) checked an abort")
        zero = any(isinstance(x, a.SetWeight) and x.weight == 0 for x in d.actions)
        settled = new.weight == 0 and new.phase is not None and (new.phase == Phase.rolling_back or new.phase.terminal)
        assert zero or settled, f"(e) abort in {prev.phase.value if prev.phase else None} gave no SetWeight(0): " \
                                f"{new.phase}, weight {new.weight}"

    # a new attempt only on retry, a new template or the first sight of the object
    if new.attempt != prev.attempt:
        assert prev.phase is None or verb == "retry" or template_hash(spec) != prev.template_hash, \
            f"(f) attempt {prev.attempt} -> {new.attempt} without retry or a new template"

    # (g) never asleep while something is due, unless a person has to act
    phase = new.phase
    waits = phase is None or phase.terminal or (phase == Phase.paused and new.pause_reason in WAITS_FOR_A_PERSON)
    if not waits:
        assert d.wake_after is not None and math.isfinite(d.wake_after) and d.wake_after >= 0, \
            f"(g) {phase} ({new.step}, pause {new.pause_reason}) asks to be woken after {d.wake_after}"


class PhaseTracker:
    """Checks over a rollout's history of decisions: (f) once a rollback started, that attempt never becomes active
    again; (h) once its promotion started (the canary's traffic goes to the target, the canary is removed), that
    attempt never returns to Progressing, which routes traffic to the canary."""

    def __init__(self) -> None:
        self.rolled_back_attempt: int | None = None
        self.promoted_attempt: int | None = None

    def check(self, prev: SafeRolloutStatus, inputs: Inputs, new: SafeRolloutStatus) -> None:
        phase = new.phase.value if new.phase else None
        if new.phase == Phase.rolling_back:
            self.rolled_back_attempt = new.attempt
        elif new.phase in ACTIVE:
            if self.rolled_back_attempt is not None:
                event("(f) checked after a rollback")
            assert self.rolled_back_attempt != new.attempt, \
                f"(f) attempt {new.attempt} went from RollingBack back to {phase} (command {inputs.command!r})"
        if new.phase == Phase.promoting:
            self.promoted_attempt = new.attempt
        elif new.phase == Phase.progressing and self.promoted_attempt == new.attempt:
            raise AssertionError(f"(h) attempt {new.attempt} went from Promoting back to Progressing (from "
                                 f"{prev.phase.value if prev.phase else None}, pause {prev.pause_reason}, command "
                                 f"{inputs.command!r}): traffic to a canary that was removed")


def cooperative(spec: SafeRolloutSpec, world: s.WorldView, act: a.Action, canary_fails: bool = False) -> a.Result | None:
    """An executor where every action works and every metric passes, or, with `canary_fails`, every metric of the
    new version fails (the canary, the preview, and the target once it runs the new version)."""
    if isinstance(act, a.Event | a.Notify):
        return None
    if isinstance(act, a.ReadTarget):
        return a.TargetState(dict(world.target_images), True, "1")
    if isinstance(act, a.QueryMetrics):
        bad = canary_fails and act.purpose == "analysis"  # analysis is of the new version, wherever it runs
        by_name = {m.name: m for m in spec.analysis.metrics}
        if act.max_error_rate is not None:
            return a.MetricValues(act.target, act.purpose, {s.VERIFY_ERROR_RATE: 0.0}, asked_at=None)
        values = {n: (s.failing_value if bad else s.passing_value)(by_name.get(n)) for n in act.metrics}
        series: dict[str, tuple[list[float], list[float]]] = {}
        for n in act.metrics:
            j = by_name[n].judge if n in by_name else None
            if j is not None:
                worse = 10.0 if j.direction == "increase" else 0.1
                series[n] = ([worse] * 30, [1.0] * 30) if bad else ([1.0] * 30, [1.0] * 30)
        return a.MetricValues(act.target, act.purpose, dict(values), series=series)
    if isinstance(act, a.TakeSnapshot | a.VerifySnapshot):
        return a.SnapshotResult(act.snapshot_id, True, "ok", size_bytes=1, sha256="ab")
    if isinstance(act, a.RestoreDatabase | a.CheckRestored):
        return a.RestoreResult(act.snapshot_id, True, "ok", pre_restore_dump="pre.dump", verified=True)
    if isinstance(act, a.EnsureCanary):
        return a.CanaryState(True, "c1")
    if isinstance(act, a.WriteReport):
        return a.ReportWritten(act.name)
    if isinstance(act, a.SetTargetImages):
        world.target_images = dict(act.images)
    return a.Outcome(act, True)


def run_cooperatively(spec: SafeRolloutSpec, reconciles: int, command_at: int | None = None,
                      command: str | None = None, canary_fails: bool = False) -> SafeRolloutStatus:
    """Reconcile as the operator does, sleeping as long as the core asks (at most a day), checking every decision.
    A blue-green rollout that waits for approval is approved (the `promote` command)."""
    assert spec.template is not None
    images = {c.name: f"{c.name}:old" for c in spec.template.containers}
    world = s.WorldView(images, T0)
    engine = Settings()
    status = SafeRolloutStatus()
    now = T0
    for n in range(reconciles):
        results: list[a.Result] = []
        wake: float | None = None
        for _ in range(MAX_STEPS):
            given = command if command_at == n else "promote/approve" if status.pause_reason == "approval" else None
            inputs = Inputs(now=now, name="web", generation=1, command=given, results=results)
            d = decide(spec, status, inputs, engine)
            check_decision(spec, status, inputs, d, engine)
            status, wake, results = d.status, d.wake_after, []
            for act in d.actions:
                r = cooperative(spec, world, act, canary_fails)
                if r is not None:
                    results.append(r)
            if not results:
                break
        if (status.phase is not None and status.phase.terminal) or (wake is None and status.pause_reason != "approval"):
            break
        now += timedelta(seconds=max(0.001, min(wake if wake is not None else 1.0, 86400.0)))
    return status


def reconciles_needed(spec: SafeRolloutSpec) -> float:
    """About how many analysis ticks a rollout takes, at one per interval."""
    bg = spec.strategy.blue_green
    stages = [st_.seconds for st_ in (spec.strategy.canary.stages or DEFAULT_STAGES)] if spec.strategy.canary else \
        [parse_duration(bg.preview_duration), parse_duration(bg.post_promotion_duration),
         parse_duration(bg.scale_down_delay)] if bg else []
    verify = parse_duration(spec.rollback.verify.duration)
    return (sum(stages) + 2 * max(stages) + verify) / max(spec.analysis.interval_seconds, 1e-3) + 30


# --------------------------------------------------------------------------------------------- 1. spec fuzz


@settings(max_examples=300 * SCALE)
@given(doc=s.spec_dicts())
def test_spec_validation_either_accepts_or_raises_validation_error(doc: dict[str, Any]) -> None:
    try:
        spec = SafeRolloutSpec.model_validate(doc)
    except ValidationError:
        return
    inputs = Inputs(now=T0, name="web", generation=1)
    d = decide(spec, SafeRolloutStatus(), inputs)
    check_decision(spec, SafeRolloutStatus(), inputs, d, Settings())


@settings(max_examples=150 * SCALE)
@given(doc=s.spec_dicts())
def test_an_accepted_spec_reads_back_from_its_own_wire_form(doc: dict[str, Any]) -> None:
    """The operator and the API server hand a spec back and forth with its defaults filled in: what was accepted
    once, with its defaults spelt out, is accepted again, as the same spec."""
    spec = s.validated(doc)
    if spec is None:
        return
    wire = spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert SafeRolloutSpec.model_validate(wire) == spec


@settings(max_examples=150 * SCALE)
@given(doc=s.spec_dicts())
def test_every_accepted_spec_survives_a_healthy_rollout(doc: dict[str, Any]) -> None:
    """What the models accept, the core can roll out: every action works, every metric passes."""
    spec = s.validated(doc)
    if spec is None:
        return
    run_cooperatively(spec, reconciles=40)


@settings(max_examples=120 * SCALE)
@given(field=st.sampled_from(["stage", "interval", "preview", "post-promotion", "scale-down", "verify"]),
       duration=st.one_of(st.sampled_from(s.EDGE_DURATIONS), s.durations()))
def test_every_duration_the_models_accept_is_one_the_core_can_count(field: str, duration: Any) -> None:
    bg = {"activeService": "web", "previewService": "web-preview"}
    docs = {
        "stage": {"strategy.canary.stages": [{"weight": 5, "duration": duration}, {"weight": 100, "duration": "1s"}]},
        "interval": {"analysis.interval": duration},
        "preview": {"strategy": {"blueGreen": {**bg, "previewDuration": duration}}},
        "post-promotion": {"strategy": {"blueGreen": {**bg, "postPromotionDuration": duration}}},
        "scale-down": {"strategy": {"blueGreen": {**bg, "scaleDownDelay": duration}}},
        "verify": {"rollback": {"verify": {"duration": duration}}},
    }
    try:
        spec = make_spec(**docs[field])
    except ValidationError:
        return
    status = run_cooperatively(spec, reconciles=12)
    if field == "verify":  # through a rollback too
        run_cooperatively(spec, reconciles=12, command_at=3, command="abort/1")
    assert status.phase is not None


# ------------------------------------------------------------------------------------- liveness, working world


@settings(max_examples=60 * SCALE)
@given(pair=s.valid_specs())
def test_a_healthy_canary_is_always_promoted(pair: tuple[dict[str, Any], SafeRolloutSpec]) -> None:
    """Every action works and every metric passes: the rollout is never wedged, it ends Succeeded."""
    _, spec = pair
    needed = reconciles_needed(spec)
    can_pass = all(m.judge is not None or m.verdict(s.passing_value(m)) == Verdict.passed for m in spec.analysis.metrics)
    if spec.paused or needed > 400 or not can_pass:
        return
    status = run_cooperatively(spec, reconciles=int(needed) + 60)
    assert status.phase == Phase.succeeded, f"ended {status.phase} ({status.step}): {status.message}"
    assert status.weight == 0


@settings(max_examples=60 * SCALE)
@given(pair=s.valid_specs())
def test_a_failing_canary_always_ends_with_its_traffic_back_on_stable(
        pair: tuple[dict[str, Any], SafeRolloutSpec]) -> None:
    """Every action works and every metric of the new version fails: the strongest onBreach of the metrics that can
    fail decides: rollback or stepBack end with all traffic on stable, pause waits for a person, notify only
    notifies. Never a rollout left at its weight with nobody told."""
    _, spec = pair
    needed = reconciles_needed(spec)
    can_fail = [m for m in spec.analysis.metrics if m.judge is not None or m.verdict(s.failing_value(m)) == Verdict.fail]
    if spec.paused or needed > 400 or not can_fail:
        return
    status = run_cooperatively(spec, reconciles=int(needed) + 60, canary_fails=True)
    actions = {m.on_breach for m in can_fail}
    note(f"onBreach of the failing metrics: {sorted(x.value for x in actions)}; ended {status.phase} "
         f"({status.step}) at {status.weight}%: {status.message}")
    reverted = status.phase in (Phase.rolled_back, Phase.failed) and status.weight == 0
    if status.phase == Phase.blocked:  # a pre-flight gate refused it: nothing was ever moved
        assert status.weight == 0 and status.max_weight == 0
    elif actions == {BreachAction.notify}:
        assert status.phase == Phase.succeeded
    elif BreachAction.pause in actions:  # whichever breaches first: a pause waits for a person
        assert reverted or (status.phase == Phase.paused and status.pause_reason == "breach")
    else:
        assert reverted


# --------------------------------------------------------------------------------------- focused core fuzz


def _progressing(spec: SafeRolloutSpec, seconds: float) -> World:
    w = World(spec)
    assert spec.template is not None
    w.target_images = {c.name: f"{c.name}:old" for c in spec.template.containers}
    return w.run(seconds)


@settings(max_examples=100 * SCALE)
@given(at=st.integers(0, 45), weights=st.sets(st.integers(1, 100), min_size=1, max_size=5).map(sorted),
       duration=st.sampled_from(["1s", "10s", "1m"]), latest=st.sampled_from([0.001, 0.5, None]))
def test_editing_the_stages_mid_rollout_never_crashes(at: int, weights: list[int], duration: str,
                                                      latest: float | None) -> None:
    """Shortening or reshaping `stages` (same template) while a stage runs: the core goes on deciding, and raises
    the weight only on passing verdicts. `latest` is the last analysis before the edit (0.5 fails error-rate's
    max 0.01 once, short of failureLimit 3; None is no data)."""
    w = _progressing(make_spec(), at)
    if w.phase() == "Progressing":
        result = a.MetricValues("canary", "analysis", {"error-rate": latest}, asked_at=iso(w.now))
        w.status = decide(w.spec, w.status, Inputs(now=w.now, name="web", generation=1, results=[result])).status
    note(f"before the edit: {w.phase()} stage {w.status.stage} weight {w.status.weight}")
    w.spec = make_spec(**{"strategy.canary.stages": [{"weight": x, "duration": duration} for x in weights]})
    for _ in range(60):
        prev = w.status
        inputs = Inputs(now=w.now, name="web", generation=2)
        check_decision(w.spec, prev, inputs, decide(w.spec, prev, inputs, w.settings), w.settings)
        w.tick()
        w.now += timedelta(seconds=1)
        if w.done():
            break


def drive_checked(w: World, seconds: float, tracker: PhaseTracker) -> World:
    """Tick `w` every second as its operator would, through the same loop as saferollout.core.loop.drive, checking
    every decision."""
    end = w.now + timedelta(seconds=seconds)
    while w.now < end and not w.done():
        command, w.command = w.command, None
        results: list[a.Result] = []
        for _ in range(MAX_STEPS):
            inputs = Inputs(now=w.now, name="web", generation=1, command=command, results=results)
            d = decide(w.spec, w.status, inputs, w.settings)
            check_decision(w.spec, w.status, inputs, d, w.settings)
            tracker.check(w.status, inputs, d.status)
            w.status, results = d.status, []
            for act in d.actions:
                r = w.execute(act)
                if r is not None:
                    results.append(r)
            if not results:
                break
        w.now += timedelta(seconds=1)
    return w


@settings(max_examples=60 * SCALE)
@given(strategy=st.sampled_from(["canary", "blueGreen"]), blip_at=st.integers(0, 70), blip=st.integers(1, 4),
       how=st.sampled_from(["no data, onInconclusive pause", "breach, onBreach pause, then resume"]))
def test_a_pause_resumes_where_the_rollout_paused(strategy: str, blip_at: int, blip: int, how: str) -> None:
    """A pause at any moment (no data for a few seconds, or a breach a person resumes) resumes the rollout where it
    was: a pause after the promotion never sends traffic back to the removed canary."""
    pause_on_breach = how.startswith("breach")
    metric = {"name": "error-rate", "template": "error-rate", "max": 0.01, "failureLimit": 1,
              "onBreach": "pause" if pause_on_breach else "rollback"}
    overrides: dict[str, Any] = {"analysis.metrics": [metric], "analysis.inconclusiveLimit": 1,
                                 "analysis.interval": "1s"}
    if strategy == "blueGreen":
        overrides["strategy"] = {"blueGreen": {"activeService": "web", "previewService": "web-preview",
                                               "previewDuration": "5s", "postPromotionDuration": "10s",
                                               "scaleDownDelay": "5s"}}
    spec = make_spec(**overrides)
    w = World(spec)
    bad = 0.5 if pause_on_breach else None

    def blip_metrics(name: str, target: str, weight: int, t: float) -> float | None:
        return bad if blip_at <= t < blip_at + blip else 0.001
    w.metrics = blip_metrics
    tracker = PhaseTracker()
    drive_checked(w, blip_at + blip + 2, tracker)
    note(f"after the blip: {w.phase()} ({w.status.step}) pause {w.status.pause_reason}")
    if w.status.pause_reason == "breach":
        w.command = "resume/1"
    drive_checked(w, 120, tracker)
    assert w.phase() == "Succeeded", f"ended {w.phase()} ({w.status.step}): {w.status.message}"


METRICS_OF_EACH_KIND: dict[str, dict[str, Any]] = {
    "max": {"name": "error-rate", "template": "error-rate", "max": 0.01},
    "min": {"name": "throughput", "query": "sum(rate(x[1m]))", "min": 1.0},
    "http": {"name": "health", "httpGet": {"url": "http://x/healthz"}},
    "maxRatio": {"name": "latency-ratio", "query": "q", "baseline": {"maxRatio": 1.2}},
    "maxDifference": {"name": "memory", "query": "q", "baseline": {"maxDifference": 50e6}},
    "judge": {"name": "judged", "query": "q", "judge": {"minSamples": 3}},
}


@settings(max_examples=200 * SCALE)
@given(kind=st.sampled_from(sorted(METRICS_OF_EACH_KIND)),
       value=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, math.inf])),
       requests=st.one_of(st.none(), st.floats(min_value=0, max_value=1e12),
                          st.sampled_from([math.nan, math.inf, 5e-324, 1e-170])),
       purpose=st.sampled_from(["analysis", "verify"]))
def test_any_metric_value_keeps_the_status_strict_json(kind: str, value: float | None, requests: float | None,
                                                         purpose: str) -> None:
    """Whatever number the executor reports (a baseline ratio over a stable value of 0 is inf), the core decides and
    its status can still be written."""
    metric = METRICS_OF_EACH_KIND[kind]
    spec = make_spec(**{"analysis.metrics": [metric]})
    w = _progressing(spec, 3)
    if purpose == "verify":
        w.command = "abort/1"
        w.run(2, until=lambda x: x.status.step == "Verify")
    name = metric["name"]
    samples = {name: requests} if requests is not None else {}
    target: a.AnalysisTarget = "canary" if purpose == "analysis" else "stable"
    result = a.MetricValues(target, "analysis" if purpose == "analysis" else "verify", {name: value},
                            samples=samples, series={name: ([value or 0.0] * 3, [1.0] * 3)})
    prev = w.status
    inputs = Inputs(now=w.now + timedelta(seconds=2), name="web", generation=1, results=[result])
    d = decide(spec, prev, inputs, w.settings)
    check_decision(spec, prev, inputs, d, w.settings)
    SafeRolloutStatus.model_validate(json.loads(strict_json(d.status)))  # and a restarted operator can read it


# ---------------------------------------------------------------------------------------- 2. stateful fuzz


DEFAULT_SPEC = make_spec()


def engine_settings() -> st.SearchStrategy[Settings]:
    return st.builds(Settings, settle_seconds=st.sampled_from([0.0, 0.0, 5.0]), due_slack=st.sampled_from([0.0, 0.5]),
                     poll_seconds=st.sampled_from([1.0, 0.2]))


class RolloutMachine(RuleBasedStateMachine):
    """One SafeRollout, its operator and a world that answers anything plausible."""

    def __init__(self) -> None:
        super().__init__()
        self.doc: dict[str, Any] = {}
        self.spec = DEFAULT_SPEC
        self.engine = Settings()
        self.status = SafeRolloutStatus()
        self.now: datetime = T0
        self.command: str | None = None
        self.generation = 1
        self.world = s.WorldView({}, T0)
        self.tracker = PhaseTracker()

    @initialize(pair=s.valid_specs(), engine=engine_settings(), extra_container=st.booleans())
    def begin(self, pair: tuple[dict[str, Any], SafeRolloutSpec], engine: Settings, extra_container: bool) -> None:
        self.doc, self.spec = pair
        self.engine = engine
        assert self.spec.template is not None
        images = {c.name: f"{c.name}:1" for c in self.spec.template.containers}
        if extra_container:
            images["istio-proxy"] = "proxy:1"
        self.world = s.WorldView(images, T0)

    @rule(edit=s.spec_edits())
    def edit_spec(self, edit: tuple[Any, ...]) -> None:
        doc = s.apply_edit(self.doc, edit)
        spec = s.validated(doc)
        if spec is not None:
            self.doc, self.spec = doc, spec
            self.generation += 1

    @rule(command=s.commands())
    def annotate(self, command: str | None) -> None:
        self.command = command

    @rule()
    def restart_operator(self) -> None:
        """A new process reads the status back from the API server."""
        self.status = SafeRolloutStatus.model_validate(json.loads(strict_json(self.status)))

    @rule(seconds=s.clock_steps(), data=st.data())
    def tick(self, seconds: float, data: st.DataObject) -> None:
        """`seconds` later the operator reconciles; then a few more times, each when the core asked to be woken."""
        self.now += timedelta(seconds=seconds)
        wake = self.reconcile(data)
        for _ in range(data.draw(st.integers(0, 4), label="more reconciles")):
            self.now += timedelta(seconds=min(wake if wake is not None else 3600.0, 86400.0))
            wake = self.reconcile(data)
        # what the fuzz reaches: --hypothesis-show-statistics
        event(f"reached {self.status.phase.value if self.status.phase else None} {self.status.step or ''}")

    def reconcile(self, data: st.DataObject) -> float | None:
        """One reconcile as saferollout.core.loop.drive runs it; the last decision's wake_after."""
        results: list[a.Result] = []
        wake: float | None = None
        for _ in range(MAX_STEPS):
            inputs = Inputs(now=self.now, name="web", generation=self.generation, command=self.command,
                            results=results)
            prev = self.status
            d = decide(self.spec, prev, inputs, self.engine)  # (a): raises nothing
            check_decision(self.spec, prev, inputs, d, self.engine)
            self.tracker.check(prev, inputs, d.status)
            self.status, wake = d.status, d.wake_after
            self.world.now, self.world.asked_at = self.now, self.world.now.isoformat()
            results = []
            for act in d.actions:
                answer = data.draw(s.answer_for(act, self.spec, self.world), label=type(act).__name__)
                if isinstance(answer, s.Crash):
                    return self.engine.poll_seconds  # the operator comes back and looks at once
                if answer is None:
                    continue
                if isinstance(act, a.SetTargetImages) and isinstance(answer, a.Outcome) and answer.ok:
                    self.world.target_images = dict(act.images)
                results.append(answer)
            if not results:
                return wake
            self.now += timedelta(seconds=data.draw(st.sampled_from([0.0, 0.05, 0.5, 2.0, 30.0]), label="took"))
        return wake


RolloutMachine.TestCase.settings = settings(max_examples=200 * SCALE, stateful_step_count=25)
TestRolloutFuzz = RolloutMachine.TestCase
