"""Entering a phase: the status, conditions, events and notifications that go with it, written once here.

A transition only changes state (and, for a rollback, sends the traffic back at once); the entered phase's own
module issues what follows when the engine dispatches to it in the same decision.
"""

from __future__ import annotations

from saferollout.core import actions as a
from saferollout.core.clock import iso
from saferollout.core.models import PHASE_STEPS, IncidentStatus, PauseReason, Phase, SafeRolloutStatus, Severity, Step
from saferollout.core.run import Run, images

PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"  # the reason of a rollout that ran out of its deadline
MIGRATION_MAY_RUN = ("Creating", "Running", "NotStopped")  # a migration Job in these states may still be running


def start(run: Run, template_hash: str, why: str, revert: bool = False) -> None:
    """A new attempt. `revert` (spec.template omitted: the target's template is the stable one again) starts no
    rollout: the attempt only undoes what a rollout under way left (weight, canary) and ends."""
    old = run.s
    source = old.source.model_copy(update={"target_writes": 0}) if old.source is not None else None
    run.s = SafeRolloutStatus(
        phase=Phase.pending, step=Step.init, template_hash=template_hash, attempt=old.attempt + 1,
        # what the last attempt left on the router (a weight, a match or mirror at weight 0) until Pending undoes it
        weight=old.weight, routing=old.routing, last_command=old.last_command, conditions=old.conditions,
        started_at=iso(run.now), canary_ready=old.canary_ready, source=source,
        # a StatefulSet: the pods' stable revision and the partition written stay known until Pending undoes them
        partition=old.partition,
        # a migration Job that may still run (core.migration.stop_previous): Pending stops it before anything else
        migration=old.migration if old.migration and old.migration.state in MIGRATION_MAY_RUN else None,
    )
    if revert:
        run.s.message = f"attempt {run.s.attempt}: {why}; nothing to roll out"
        run.event("TemplateReverted", run.s.message)
        run.condition("Progressing", "True", "TemplateReverted", run.s.message)
        return
    run.s.message = f"rollout {run.s.attempt} started: {why}"
    run.event("RolloutStarted", run.s.message)
    run.condition("Progressing", "True", "RolloutStarted", run.s.message)
    run.condition("Ready", "False", "RolloutInProgress", "a new version is being rolled out")
    run.condition("Degraded", "False", "RolloutStarted", "")


def block(run: Run, reason: str, text: str) -> None:
    """Nothing moved yet (traffic is all on stable): stop here and say why; only the telling goes out. If an
    earlier attempt's weight, match or mirror is still on the router, this is no block but a rollback: Blocked is
    terminal, and nothing would take that traffic off the canary any more."""
    if run.s.weight or run.s.routing:
        run.history("rollback", message=text)
        rollback(run, reason, text, Severity.high)
        return
    run.s.phase, run.s.step, run.s.message = Phase.blocked, None, text
    run.s.finished_at = iso(run.now)
    run.condition("Progressing", "False", reason, text)
    run.condition("Degraded", "True", reason, text)
    run.event("PreflightFailed", f"{reason}: {text}", warning=True)
    run.notify(Severity.high, f"rollout blocked: {reason}", f"{run.inp.name}: {text}")
    run.actions = [x for x in run.actions if isinstance(x, a.Event | a.Notify)]


def finish(run: Run, phase: Phase, reason: str, text: str) -> None:
    run.s.phase, run.s.step, run.s.message = phase, None, text
    run.s.finished_at = iso(run.now)
    if phase == Phase.succeeded:
        run.condition("Progressing", "True", reason, text)
        run.condition("Ready", "True", reason, text)
        run.condition("Degraded", "False", reason, "")
        run.event("RolloutSucceeded", text)
        return
    # a rollout that ran out of spec.progressDeadlineSeconds says so on Progressing to the end, as a Deployment does
    deadline = run.s.incident is not None and run.s.incident.reason == PROGRESS_DEADLINE_EXCEEDED
    run.condition("Progressing", "False", PROGRESS_DEADLINE_EXCEEDED if deadline else reason, text)
    run.condition("Ready", "False", reason, text)
    run.event(reason, text, warning=phase == Phase.failed)
    sev = Severity.critical if phase == Phase.failed else Severity(run.s.incident_severity or "high")
    ref = run.s.incident.report_ref if run.s.incident else None
    run.notify(sev, f"rollout {phase.value}", f"{run.inp.name}: {text}", ref)


def pause(run: Run, why: PauseReason, reason: str, text: str) -> None:
    run.s.stage_elapsed_seconds = run.stage_elapsed()
    run.s.stage_resumed_at = None
    run.s.phase, run.s.pause_reason, run.s.message = Phase.paused, why, text
    run.condition("Progressing", "Unknown", reason, text)
    if why != "inconclusive":
        run.event("RolloutPaused", text)


def resume(run: Run, text: str) -> None:
    """Back to where the pause found it: a pause while the promoted target was watched resumes the watch, never
    a stage (whose canary is gone: its weight would send traffic to nothing)."""
    watching = run.s.step in PHASE_STEPS[Phase.promoting]
    run.s.phase, run.s.pause_reason = Phase.promoting if watching else Phase.progressing, None
    run.s.stage_resumed_at = iso(run.now)
    run.s.analysis.metrics = [m.model_copy(update={"consecutive_failures": 0, "consecutive_inconclusive": 0})
                              for m in run.s.analysis.metrics]
    run.condition("Progressing", "True", "RolloutResumed", text)
    run.event("RolloutResumed", text)


def rollback(run: Run, reason: str, text: str, severity: Severity, keep_canary: bool = False) -> None:
    """`keep_canary` (onProgressDeadline: fail): the same first write, weight 0, retried until it holds; then the
    rollout ends Failed with the canary left for inspection (core.phases.rollback)."""
    was = run.s.phase
    run.s.phase, run.s.step, run.s.pause_reason = Phase.rolling_back, Step.revert_traffic, None
    run.s.incident = run.s.incident or IncidentStatus(reason=reason, weight_at_breach=run.s.weight,
                                                      stage_at_breach=run.s.stage, decided_at=iso(run.now))
    if was is not None and was != Phase.rolling_back:
        run.s.incident.rolled_back_from = run.s.incident.rolled_back_from or was.value
    run.s.incident.reason = run.s.incident.reason or reason
    run.s.incident.decided_at = run.s.incident.decided_at or iso(run.now)
    run.s.message = f"rolling back: {text}"
    run.s.incident_severity = severity.value
    run.condition("Progressing", "False", "RollingBack", text)
    run.condition("Degraded", "True", reason, text)
    run.act(a.SetWeight(0))  # traffic first, in this very call, before anything else
    if keep_canary:
        run.notify(severity, "rollout failing: canary weight 0, canary kept", f"{run.inp.name}: {text}")
        return
    run.event("RollbackStarted", text, warning=True)
    run.notify(severity, "rolling back", f"{run.inp.name}: {text}")


def promote(run: Run) -> None:
    run.s.phase, run.s.step, run.s.pause_reason = Phase.promoting, Step.promote_target, None
    run.s.message = f"promoting {images(run.s.canary_images)} to the target" + (
        f" (pod template {run.s.template_hash}: the target is unpaused)" if run.spec.target_template else "")
    run.condition("Progressing", "True", "Promoting", run.s.message)
    run.event("Promoting", run.s.message)


def refused(run: Run, act: a.Action, message: str) -> None:
    """The cluster refused an action in a way no retry can mend (an invalid object, one we do not own)."""
    text = f"{type(act).__name__} refused: {message}"
    if run.s.phase in (Phase.pending, Phase.preflight):
        block(run, "ActionRefused", text)
    else:
        run.history("rollback", message=text)
        rollback(run, "ActionRefused", text, Severity.high)
