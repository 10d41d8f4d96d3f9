"""The pure decision core: (spec, status, results, clock) -> (next status, actions).

The handler calls `decide` in a loop: it writes the returned status (so intent is recorded before anything acts),
executes the actions, and feeds their results into the next call. Idempotent actions are re-issued until their result
confirms them in status; the two destructive ones (snapshot, restore) write a marker first, and on resume the core
checks the world instead of acting again.

This module is the dispatcher: results go to the phase that issued their actions, commands and new templates are
taken, then the current phase (picked here, once, by phase and strategy) takes its step; a phase entered during
that step takes its own in the same decision. The phases live in `core.phases`, one module each.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel

from saferollout.core import actions as a
from saferollout.core import analysis_templates, commands, deadline, partition, source
from saferollout.core import transitions as go
from saferollout.core.clock import iso, parse_time
from saferollout.core.models import (
    HistoryEntry,
    IncidentStatus,
    Phase,
    SafeRolloutSpec,
    SafeRolloutStatus,
    Severity,
    Step,
)
from saferollout.core.phases import bluegreen, canary, pause, promotion, rollback, start
from saferollout.core.run import DEFAULT_STAGES, Inputs, Run, Settings, set_condition

__all__ = ["DEFAULT_STAGES", "Decision", "Inputs", "Settings", "decide", "iso", "parse_time", "template_hash"]
HISTORY_KEPT = 50  # the status must stay small: the oldest breach actions go first
MAX_ENTRIES = 8  # phases entered in one decision (Pending -> Preflight -> Progressing -> ... is at most 5)


class PhaseModule(Protocol):
    def step(self, run: Run, /) -> None: ...

    def apply(self, run: Run, result: a.Result, /) -> None: ...


def _module(run: Run) -> PhaseModule | None:
    """The one place that picks the code for the rollout's phase and strategy."""
    phase = run.s.phase
    if phase == Phase.progressing:
        return bluegreen if run.blue_green else canary
    return {Phase.pending: start, Phase.preflight: start, Phase.paused: pause, Phase.promoting: promotion,
            Phase.rolling_back: rollback}.get(phase) if phase is not None else None


@dataclass
class Decision:
    status: SafeRolloutStatus
    actions: list[a.Action]
    # seconds until this rollout needs deciding again if nothing changes; None: only when its object changes
    wake_after: float | None = None


def template_hash(spec: SafeRolloutSpec) -> str:
    """The version of a spec.template rollout; without `template` the version is the target's (core.source)."""
    body = json.dumps(spec.template.wire() if spec.template is not None else None, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def decide(spec: SafeRolloutSpec, status: SafeRolloutStatus, inputs: Inputs,
           settings: Settings | None = None) -> Decision:
    """Never raises: an error inside the core is itself an outcome (traffic back to stable, a condition naming it),
    never an exception that would leave the rollout at its weight on every reconcile."""
    settings = settings or Settings()
    try:
        run = Run(spec, status.model_copy(deep=True), inputs, settings)
        _step(run)
        run.actions = [analysis_templates.attach(run, x) for x in run.actions]
        del run.s.history[:-HISTORY_KEPT]
        finite(run.s)
        return Decision(run.s, run.actions, run.wake_after())
    except Exception as e:  # the point: no input may wedge a rollout
        return fail_safe(status, inputs, settings, e)


def _step(run: Run) -> None:
    analysis_templates.resolve(run)  # shared templates filled in (pinned ones from status) before results are read
    for result in run.inp.results:
        _apply(run, result)
    verb = commands.take(run)
    phase = run.s.phase
    new = source.version(run) if run.spec.target_template else _spec_version(run)
    if verb == "retry" and phase is not None and phase.terminal and phase != Phase.succeeded:
        go.start(run, _current_version(run), "retry requested")
    elif new is not None:
        go.start(run, *new)
    run.s.observed_generation = run.inp.generation
    analysis_templates.resolve(run)  # again: a rollout started just now pins its templates
    analysis_templates.gate(run, _current_version(run))
    _clamp_stage(run)
    if verb in ("abort", "promote", "resume"):
        commands.carry_out(run, verb)
    deadline.check(run)  # a wait past spec.progressDeadlineSeconds ends before the phase issues anything more
    for _ in range(MAX_ENTRIES):
        module = _module(run)
        if module is None:
            break
        before = (run.s.phase, run.s.stage)
        module.step(run)
        after = run.s.phase
        if (after, run.s.stage) == before or after is None or after.terminal or after == Phase.paused:
            break  # a pause waits; only a phase or stage entered just now takes its step in this decision
    deadline.account(run)


def _spec_version(run: Run) -> tuple[str, str, bool] | None:
    """spec.template: a new version when its hash changes (a rollback finishes first)."""
    h, phase = template_hash(run.spec), run.s.phase
    if phase is None or (h != run.s.template_hash and phase != Phase.rolling_back):
        return h, "new template" if phase is not None else "first version seen", False
    return None


def _current_version(run: Run) -> str:
    if not run.spec.target_template:
        return template_hash(run.spec)
    return run.inp.target.template_hash if run.inp.target is not None else run.s.template_hash or ""


def _apply(run: Run, r: a.Result) -> None:
    """What every result means whatever the phase, then the phase's own reading of it."""
    r = analysis_templates.complete(run, r)
    source.apply(run, r)
    module = _module(run)
    if isinstance(r, a.Outcome) and not r.ok:
        act = r.action
        if isinstance(act, a.QueryMetrics):  # a failed query is no data: inconclusive, and counted
            why = f"query failed: {r.message}"
            r = a.MetricValues(act.target, act.purpose, dict.fromkeys(act.metrics), dict.fromkeys(act.metrics, why),
                               asked_at=iso(run.now))
        elif r.refused and run.s.phase in commands.ACTIVE:
            go.refused(run, act, r.message)
            return
        else:
            message = f"{type(act).__name__} failed: {r.message}"
            run.failure_is_news = message != run.s.message
            run.s.message = message
            run.polled.add(type(act))
            deadline.failed(run, act, r.message)
    elif isinstance(r, a.CanaryState):
        run.s.canary_ready = r.ready
        if r.revision:
            run.s.canary_revision = r.revision
        if not r.ready:
            run.polled.add(a.EnsureCanary)
    deadline.progressed(run, r)
    if module is not None:
        module.apply(run, r)  # before the bookkeeping below: a stage sees the weight it is leaving
    if isinstance(r, a.Outcome) and r.ok and isinstance(r.action, a.SetWeight):
        run.s.weight = r.action.weight
        run.s.routing = r.action.routing.key if r.action.routing else None
        run.s.max_weight = max(run.s.max_weight, r.action.weight)
    elif isinstance(r, a.Outcome) and r.ok and isinstance(r.action, a.DeleteCanary):
        run.s.canary_ready = False
    if isinstance(r, a.Outcome) and r.ok:
        partition.written(run, r.action)
    elif isinstance(r, a.CanaryState) and run.s.partition is not None:
        partition.written(run, a.EnsureCanary({}))
        run.s.partition.canary_revision = r.revision or run.s.partition.canary_revision


def _clamp_stage(run: Run) -> None:
    """`stages` edited to fewer than the current stage (the template unchanged, so the rollout goes on): it
    continues at the new last stage, whose weight is lower, and says so."""
    if run.s.stage is not None and run.s.stage > len(run.stages):
        gone, run.s.stage = run.s.stage, len(run.stages)
        last = run.stages[-1]
        run.event("StagesChanged", f"spec.strategy.canary.stages now has {len(run.stages)} stages; stage {gone} "
                  f"is gone: the rollout continues at stage {run.s.stage} ({last.weight}%)", warning=True)


def fail_safe(status: SafeRolloutStatus, inputs: Inputs, settings: Settings, error: Exception) -> Decision:
    """The core could not decide. A rollout that was moving goes back to stable through the ordinary rollback
    (whose steps need no stage, metric or clock arithmetic); one that fails even there, or had not started, ends
    Failed with all traffic on stable. Either way the condition names the error."""
    s = status.model_copy(deep=True)
    now = iso(inputs.now)
    text = f"internal error: {type(error).__name__}: {str(error)[:300]}"
    s.message = text
    s.observed_generation = inputs.generation
    actions: list[a.Action] = [a.SetWeight(0), a.Event("InternalError", text, "Warning")]
    wake: float | None = None
    if s.phase in commands.ACTIVE and s.phase is not None:
        s.phase, s.step, s.pause_reason = Phase.rolling_back, Step.revert_traffic, None
        s.incident = s.incident or IncidentStatus(reason="InternalError", weight_at_breach=s.weight,
                                                  stage_at_breach=s.stage, decided_at=now)
        s.history.append(HistoryEntry(action="rollback", at=now, stage=s.stage, weight=s.weight, message=text))
        actions.append(a.Notify(Severity.critical.value, "rolling back: internal error", f"{inputs.name}: {text}"))
        wake = settings.poll_seconds
    elif s.phase is not None and s.phase.terminal:  # nothing is moving: say it once, touch nothing
        said = any(c.type == "Degraded" and c.message == text for c in s.conditions)
        actions = [] if said else actions[1:]
    else:
        s.phase, s.step, s.failure, s.finished_at = Phase.failed, None, text, now
        actions.append(a.Notify(Severity.critical.value, "rollout failed: internal error", f"{inputs.name}: {text}"))
    set_condition(s, "Degraded", "True", "InternalError", text, inputs)
    del s.history[:-HISTORY_KEPT]
    finite(s)
    return Decision(s, actions, wake)


def finite(model: BaseModel) -> None:
    """Status is strict JSON: a NaN or an infinity (a ratio against 0) becomes 'no value', never `Infinity`,
    which the API server refuses, and with it the write that every following action waits on."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, float) and not math.isfinite(value):
            setattr(model, name, None if info.default is None else 0.0)
        elif isinstance(value, BaseModel):
            finite(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, BaseModel):
                    finite(item)
