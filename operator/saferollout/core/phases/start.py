"""Pending and Preflight: what the target runs now, the gates, the snapshot, and the canary workload.

Nothing here moves traffic: a failed gate blocks the rollout with all traffic still on the stable version.
"""

from __future__ import annotations

from saferollout.core import actions as a
from saferollout.core import analysis, deadline, migration
from saferollout.core import transitions as go
from saferollout.core.clock import iso
from saferollout.core.durations import parse_duration
from saferollout.core.models import PartitionStatus, Phase, SnapshotStatus, Step, Verdict
from saferollout.core.run import Run, images


def step(run: Run) -> None:
    if run.s.phase == Phase.pending:
        _pending(run)
        return
    if run.s.step == Step.gate_database:
        _gate_database(run)
    if run.s.step == Step.gate_stable:
        _gate_stable(run)
    if run.s.step == Step.snapshot:
        _snapshot(run)
    if run.s.step == Step.migrate:
        migration.step(run)
    if run.s.step == Step.canary:
        _canary(run)


def _pending(run: Run) -> None:
    """A new template: first undo what an earlier attempt left (a migration Job, weight, canary), then read the
    target. The Job is stopped, and gone, first: this attempt's snapshot and Job must not run beside it."""
    if migration.stop_previous(run):
        return
    if run.spec.paused:
        run.s.message = "paused before start"
        return
    if run.s.weight != 0 or run.s.routing:
        run.act(a.SetWeight(0))
    elif run.s.canary_ready:
        run.act(a.DeleteCanary())
    elif a.ReadTarget not in run.polled and a.ReleaseTarget not in run.polled:  # a failed release: next reconcile
        run.act(a.ReadTarget())


def _gate_database(run: Run) -> None:
    pf, db = run.spec.preflight, run.spec.database
    if pf.database_reachable and db is not None:
        if a.CheckDatabase not in run.polled:
            run.act(a.CheckDatabase(parse_duration(pf.timeout)))
        return
    run.s.step = Step.gate_stable


def _gate_stable(run: Run) -> None:
    if run.spec.preflight.stable_healthy:
        if run.analysis_due():
            run.act(a.QueryMetrics("stable", "preflight", analysis.metric_names(run, "stable", with_dry_run=False)))
        return
    run.s.step = Step.snapshot


def _snapshot(run: Run) -> None:
    """Taken once (a marker first, so a restart never takes a second), verified when asked, then pruned."""
    db = run.spec.database
    if db is None or not db.snapshot_before_rollout:
        run.s.step = Step.migrate
        return
    snap = run.s.snapshot
    if snap is None:
        sid = f"snap-{run.s.attempt}-{run.now.strftime('%Y%m%dT%H%M%S')}"
        provider = "postgres" if db.postgres else "volumeSnapshot"
        run.s.snapshot = snap = SnapshotStatus(id=sid, provider=provider, state="Taking")
        run.s.message = f"taking snapshot {sid}"
    if snap.state == "Taking":
        run.act(a.TakeSnapshot(snap.id))
        return
    if snap.state == "Taken" and db.verify_snapshot:
        snap.state = "Verifying"
    if snap.state == "Verifying":
        run.act(a.VerifySnapshot(snap.id))
        return
    run.act(a.PruneSnapshots(db.retain, snap.id))
    run.s.step = Step.migrate


def _canary(run: Run) -> None:
    if run.s.canary_ready:
        run.s.phase, run.s.step, run.s.stage = Phase.progressing, None, 0 if run.blue_green else 1
        run.reset_analysis()
        run.event("CanaryReady", f"canary workload available with {images(run.s.canary_images)}")
    else:
        deadline.waiting(run, deadline.CANARY, deadline.CANARY_WORDS)  # from the first wait, kept in status
        if a.EnsureCanary not in run.polled:
            run.act(a.EnsureCanary(dict(run.s.canary_images or {}), run.stages[0].weight,
                                   run.s.template_hash if run.spec.target_template else None))
            run.s.message = "waiting for the canary workload to become available"


# ------------------------------------------------------------------------------------------------- results


def apply(run: Run, r: a.Result) -> None:
    if isinstance(r, a.TargetState) and run.s.step == Step.init:
        if run.spec.target_template:
            _target_template(run, r)
        else:
            _target(run, r)
    elif isinstance(r, a.Outcome) and isinstance(r.action, a.ReleaseTarget) and r.action.reason == "revert" \
            and run.s.step == Step.init:
        if r.ok:
            _nothing_to_roll_out(run)
    elif isinstance(r, a.Outcome) and isinstance(r.action, a.ReadTarget) and not r.ok:
        if run.s.step == Step.init and run.failure_is_news:
            run.event("TargetNotFound", r.message, warning=True)
    elif isinstance(r, a.Outcome) and isinstance(r.action, a.CheckDatabase):
        if r.ok:
            run.s.step = Step.gate_stable if run.spec.preflight.stable_healthy else Step.snapshot
        else:
            go.block(run, "DatabaseUnreachable", f"database not reachable: {r.message}")
    elif isinstance(r, a.MetricValues) and r.purpose == "preflight":
        _stable_health(run, r)
    elif isinstance(r, a.SnapshotResult):
        _snapshot_result(run, r)
    elif isinstance(r, a.MigrationState) and run.s.step == Step.migrate:
        migration.apply(run, r)
    elif isinstance(r, a.MigrationState) and run.s.phase == Phase.pending:
        migration.previous_stopped(run, r)


def _target_template(run: Run, r: a.TargetState) -> None:
    """spec.template omitted: the version is the pod template the target holds now (the webhook paused it)."""
    v, src = r.view, run.s.source
    if v is None or src is None:
        run.polled.add(a.ReadTarget)
        return
    if v.template_hash != run.s.template_hash:  # changed again since this decision began: the next one restarts
        run.s.message = f"the target's pod template changed again ({v.template_hash}); starting over"
        run.polled.add(a.ReadTarget)
        return
    src.generation, src.revision, src.application = v.generation, v.revision, v.application or src.application
    run.s.stable_images = dict(src.stable_images) if src.stable_images else None
    run.s.stable_revision = r.revision
    run.s.canary_images = dict(v.images)
    if v.template_hash == src.stable_template_hash:
        if v.paused and v.held_hash:  # the webhook did not end its hold (it was down, or is not installed)
            run.act(a.ReleaseTarget(v.template_hash, "revert"))
            run.polled.add(a.ReadTarget)  # its outcome ends the attempt
        else:
            _nothing_to_roll_out(run)
        return
    run.s.phase, run.s.step = Phase.preflight, Step.gate_database
    run.s.message = f"pre-flight gates for pod template {v.template_hash} ({images(run.s.canary_images)})"


def _nothing_to_roll_out(run: Run) -> None:
    go.finish(run, Phase.succeeded, "TemplateReverted",
              f"Deployment {run.spec.target_ref.name} has its stable pod template "
              f"{run.s.source.stable_template_hash if run.s.source else ''} again; nothing to roll out")


def _target(run: Run, r: a.TargetState) -> None:
    assert run.spec.template is not None
    missing = [c.name for c in run.spec.template.containers if c.name not in r.images]
    if missing:
        go.block(run, "ContainerNotInTarget",
                 f"the target has no container named {', '.join(missing)}; it has {', '.join(r.images)}")
        return
    run.s.stable_images = dict(r.images)
    run.s.stable_revision = r.revision
    run.s.canary_images = {**r.images, **{c.name: c.image for c in run.spec.template.containers}}
    if run.s.canary_images == run.s.stable_images:
        go.finish(run, Phase.succeeded, "NothingToRollOut", "the target already runs this template")
        return
    if run.spec.partition and not _partition_start(run, r):
        return
    run.s.phase, run.s.step = Phase.preflight, Step.gate_database
    run.s.message = f"pre-flight gates for {images(run.s.canary_images)}"


def _partition_start(run: Run, r: a.TargetState) -> bool:
    """A StatefulSet: its partition must be 0 (all pods on the current revision: no update held by someone
    else), and what its pods run now is recorded before anything is written."""
    name = run.spec.target_ref.name
    if r.replicas is None:
        go.block(run, "TargetNotStatefulSet", f"StatefulSet {name}: its replicas could not be read")
        return False
    if r.partition:
        go.block(run, "PartitionHeld", f"StatefulSet {name} has updateStrategy.rollingUpdate.partition "
                 f"{r.partition}: an update is held by someone else; set it to 0 and the rollout starts")
        return False
    run.s.partition = PartitionStatus(replicas=r.replicas, stable_revision=r.revision)
    return True


def _stable_health(run: Run, r: a.MetricValues) -> None:
    bad = analysis.verdicts(run, r, record=False)
    if not bad:
        run.s.step = Step.snapshot
        return
    run.s.preflight_attempts += 1
    inconclusive_only = all(v == Verdict.inconclusive for _, v, _ in bad)
    if inconclusive_only and run.s.preflight_attempts < run.spec.analysis.inconclusive_limit:
        run.ran(r.asked_at)
        run.s.message = "stable version: no data yet, asking again"
        return
    detail = "; ".join(f"{n} {v.value}: {msg}" for n, v, msg in bad)
    go.block(run, "StableUnhealthy", f"the stable version does not meet the analysis: {detail}")


def _snapshot_result(run: Run, r: a.SnapshotResult) -> None:
    snap = run.s.snapshot
    if snap is None or snap.id != r.snapshot_id:
        return
    if not r.ok:
        snap.state, snap.message = "Failed", r.message
        go.block(run, "SnapshotFailed", f"snapshot {snap.id}: {r.message}")
        return
    if snap.state == "Taking":
        snap.state, snap.taken_at = "Taken", r.taken_at or iso(run.now)
        snap.size_bytes, snap.sha256, snap.location, snap.tables = r.size_bytes, r.sha256, r.location, r.tables
        run.event("SnapshotTaken", f"snapshot {snap.id} taken: {r.size_bytes} bytes, sha256 {r.sha256}")
    elif snap.state == "Verifying":
        snap.state, snap.verified = "Verified", True
        run.event("SnapshotVerified", f"snapshot {snap.id} restores and matches the source: {r.message}")
