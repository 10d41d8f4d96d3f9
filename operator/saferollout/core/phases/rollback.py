"""RollingBack: traffic to stable (already sent by the transition), the canary removed, the target's images
back, the database restored when asked, the stable version verified, the incident report written.

The restore is destructive: it writes a marker before it starts, and after a restart it checks the database
instead of restoring again.
"""

from __future__ import annotations

from datetime import timedelta

from saferollout.core import actions as a
from saferollout.core import analysis, deadline, migration, source
from saferollout.core import transitions as go
from saferollout.core.clock import iso, parse_time
from saferollout.core.durations import format_duration, parse_duration
from saferollout.core.models import CANARY_SUFFIX, IncidentStatus, Phase, RestoreStatus, Severity, Step, Verdict
from saferollout.core.report import incident_report
from saferollout.core.run import Run, images

RESTORE_BACKOFF_SECONDS = 5.0


def step(run: Run) -> None:
    match run.s.step:
        case Step.revert_traffic:
            if not any(isinstance(x, a.SetWeight) for x in run.actions):
                run.act(a.SetWeight(0))
        case Step.revert_workload:
            if not migration.stop_before_restore(run):  # a migration Job that may still run is stopped first
                # scaleDownDelay: the data plane lets go of the canary first. Not from a promotion: the target may
                # run the new version already, and reverting its images must not wait
                inc = run.s.incident
                promoting = run.s.promoted_at or (inc is not None and inc.rolled_back_from == Phase.promoting.value)
                if not run.canary_kept_for(None if promoting or inc is None else inc.traffic_reverted_at):
                    run.act(a.DeleteCanary())
        case Step.revert_images:
            if run.spec.target_template:
                _keep_target(run)
            else:
                run.act(a.SetTargetImages(dict(run.s.stable_images or {}), "revert"))
        case Step.restore_database:
            _restore(run)
        case Step.verify:
            _verify(run)
        case Step.report:
            if not migration.stop_before_restore(run):  # onProgressDeadline: fail comes here straight: stop it too
                _report(run)


def _keep_target(run: Run) -> None:
    """spec.template omitted: nothing is written to the target. Before a promotion its stable pods never left the
    stable version (the Deployment stays paused on the refused template, which is what Git says); after one,
    the operator does not write an older template over Git's: the revert is a commit."""
    assert run.s.incident is not None
    refused = source.refuse(run, run.s.incident.reason or "rolled back")
    what = source.describe(run)
    if run.s.promoted_at:
        run.s.failure = (f"{what} breached after its promotion; the target runs it and Git holds it, so the operator "
                         "does not write an older template over it: revert the commit")
        run.event("TemplateRefused", run.s.failure, warning=True)
    else:
        run.event("TemplateRefused", f"{what} refused: the stable version serves; Deployment "
                  f"{run.spec.target_ref.name} stays paused on it until its template changes (revert the commit)",
                  warning=True)
    run.s.incident.images_reverted_at = refused.at  # the target never ran it (or, promoted, is left as Git says)
    _after_images(run)
    step(run)


def _needs_restore(run: Run) -> bool:
    """Never for a forwardOnly database (in any rollback: a breach, an abort, the deadline, a refusal, an internal
    error), nor while a migration Job that could not be confirmed stopped may still write."""
    db, snap, ms = run.spec.database, run.s.snapshot, run.s.migration
    if ms is not None and ms.state == "NotStopped":
        return False
    return bool(db and db.restore_on_rollback and not db.forward_only and snap and snap.state in ("Taken", "Verified"))


def _after_images(run: Run) -> None:
    """The workload is back: restore the database next when asked, else verify. A forwardOnly database is left as
    the rollout left it, and the stable version now runs on it: said, at critical severity."""
    run.s.step = Step.restore_database if _needs_restore(run) else Step.verify
    db = run.spec.database
    if db is not None and db.forward_only:
        text = ("the database is forwardOnly: it is not restored, and the stable version now runs on it as the "
                "rollout left it (migrated, if the migration ran); check that the stable version works on it")
        run.event("DatabaseNotRestored", text, warning=True)
        run.notify(Severity.critical, "forwardOnly database: stable version runs on the migrated database",
                   f"{run.inp.name}: {text}")


def _restore(run: Run) -> None:
    if not _needs_restore(run):  # checked again at the destructive step itself: forwardOnly is never restored
        run.s.step = Step.verify
        return
    snap = run.s.snapshot
    assert snap is not None
    rs = run.s.restore
    got_result = any(isinstance(r, a.RestoreResult) for r in run.inp.results)
    if rs is None:
        run.s.restore = RestoreStatus(state="Restoring", attempts=1, started_at=iso(run.now))
        run.event("RestoreStarted", f"restoring the database from snapshot {snap.id}")
        run.act(a.RestoreDatabase(snap.id, 1))
    elif rs.state == "Restoring" and not got_result:
        if rs.next_attempt_at is None:
            # we were interrupted while a restore ran: look before restoring again
            run.act(a.CheckRestored(snap.id))
        elif run.now >= parse_time(rs.next_attempt_at):
            rs.attempts += 1
            rs.next_attempt_at = None
            run.act(a.RestoreDatabase(snap.id, rs.attempts))


def _verify(run: Run) -> None:
    v = run.spec.rollback.verify
    if run.spec.target_template and run.s.promoted_at:  # nothing was reverted (_keep_target): nothing to verify
        run.s.step = Step.report
        _report(run)
        return
    if run.s.verify_started_at is None:
        run.s.verify_started_at = iso(run.now)
        run.s.verify_successes = run.s.verify_failures = 0
        run.s.analysis.last_run = run.s.analysis.next_run = None
    if run.s.verify_successes >= v.successes:
        assert run.s.incident is not None
        run.s.incident.verified_at = iso(run.now)
        run.event("RollbackVerified", f"the stable version passed {v.successes} checks in a row")
        run.condition("Verified", "True", "RollbackVerified", f"passed {v.successes} checks in a row")
        run.condition("Degraded", "True", "RolledBack", "rolled back; the stable version is healthy")
        run.s.step = Step.report
        _report(run)
        return
    if run.since(run.s.verify_started_at) > parse_duration(v.duration):
        _unverified(run, v.duration)
        run.s.step = Step.report
        _report(run)
        return
    names = ("error-rate",) if v.max_error_rate is not None else analysis.metric_names(run, "stable",
                                                                                        with_dry_run=False)
    if not names:  # every metric compares canary with stable: there is nothing to check the stable version by
        run.s.verify_successes = v.successes
        run.s.message = "no metric applies to the stable version alone; rollback verification skipped"
        _verify(run)
        return
    if run.analysis_due():
        run.act(a.QueryMetrics("stable", "verify", names, v.max_error_rate))


def _unverified(run: Run, duration: str) -> None:
    """The window ended without proof: unhealthy only if some data showed it; no data is no verdict."""
    if run.s.verify_failures:
        run.s.failure = f"the stable version was not healthy within {duration} of the rollback"
        run.event("RollbackNotVerified", run.s.failure, warning=True)
        return
    text = f"no data proved the stable version healthy or unhealthy within {duration}; " \
           "the rollback itself is complete"
    run.condition("Verified", "Unknown", "VerificationInconclusive", text)
    run.condition("Degraded", "True", "RolledBack", "rolled back; verification inconclusive")
    run.event("RollbackVerificationInconclusive", text, warning=True)


def _report(run: Run) -> None:
    inc = run.s.incident
    assert inc is not None
    if inc.report_ref:
        phase = Phase.failed if run.s.failure else Phase.rolled_back
        unproven = "" if inc.verified_at else "; verification inconclusive (no data)"
        if run.spec.target_template and not run.s.failure:
            text = (f"rolled back: {source.describe(run)} of Deployment {run.spec.target_ref.name} refused; the stable "
                    f"version serves, and the Deployment stays paused on the refused template{unproven}")
            run.condition("Degraded", "True", "RolledBack", text)
        else:
            text = run.s.failure or f"rolled back to {images(run.s.stable_images)}{unproven}"
        reason = "RollbackFailed" if run.s.failure else "RolledBack"
        if run.s.migration is not None and run.s.migration.state == "NotStopped":  # said last, where it is seen
            reason = "MigrationNotStopped"
            run.condition("Degraded", "True", reason, text)
        go.finish(run, phase, "RolloutFailed" if deadline.keeps_canary(run) else reason, text)
        return
    name = f"{run.inp.name}-incident-{run.s.attempt}"
    run.act(a.WriteReport(name, incident_report(run.inp.name, run.spec, run.s, run.now)))


# ------------------------------------------------------------------------------------------------- results


def apply(run: Run, r: a.Result) -> None:
    act = r.action if isinstance(r, a.Outcome) and r.ok else None
    if isinstance(act, a.SetWeight) and act.weight == 0 and run.s.step == Step.revert_traffic:
        run.s.incident = run.s.incident or IncidentStatus()
        run.s.incident.traffic_reverted_at = iso(run.now)
        run.event("TrafficReverted", "all traffic is back on the stable version")
        run.s.step = Step.revert_workload
        if deadline.keeps_canary(run):  # onProgressDeadline: fail: the weight only; the canary stays to be inspected
            said = run.s.progress_deadline.message if run.s.progress_deadline else None
            run.s.failure = (f"{said or 'progress deadline exceeded'}; all traffic is on the stable version, and the "
                             f"canary workload (Deployment {run.spec.target_ref.name}{CANARY_SUFFIX}) is kept for inspection "
                             "(onProgressDeadline: fail)")
            run.s.step = Step.report
    elif isinstance(act, a.DeleteCanary) and run.s.step == Step.revert_workload:
        run.s.step = Step.revert_images
    elif isinstance(act, a.SetTargetImages) and act.reason == "revert" and run.s.step == Step.revert_images:
        assert run.s.incident is not None
        run.s.incident.images_reverted_at = iso(run.now)
        run.event("ImagesReverted", f"the target runs {images(run.s.stable_images)}")
        _after_images(run)
    elif isinstance(r, a.RestoreResult):
        _restore_result(run, r)
    elif isinstance(r, a.MigrationState):
        migration.stopped(run, r)
    elif isinstance(r, a.MetricValues) and r.purpose == "verify":
        run.ran(r.asked_at)
        bad = analysis.verdicts(run, r, record=True)
        if bad or not r.values:
            run.s.verify_successes = 0
            run.s.verify_failures += any(v == Verdict.fail for _, v, _ in bad)
        else:
            run.s.verify_successes += 1
    elif isinstance(r, a.ReportWritten) and run.s.incident is not None:
        run.s.incident.report_ref = r.ref


def _restore_result(run: Run, r: a.RestoreResult) -> None:
    rs = run.s.restore
    if rs is None:
        return
    if r.pre_restore_dump and not rs.pre_restore_dump:
        rs.pre_restore_dump = r.pre_restore_dump
    if r.ok and r.verified:
        rs.state, rs.finished_at, rs.message = "Restored", iso(run.now), r.message
        assert run.s.incident is not None
        run.s.incident.restored_at = iso(run.now)
        run.event("DatabaseRestored", f"database restored from snapshot {r.snapshot_id} and verified; "
                  f"the state before the restore is kept in {rs.pre_restore_dump}")
        run.s.step = Step.verify
        return
    rs.message = r.message or "the database does not equal the snapshot"
    if rs.attempts >= (run.spec.database.max_restore_attempts if run.spec.database else 1):
        rs.state = "Failed"
        run.event("RestoreFailed", f"restore of snapshot {r.snapshot_id} failed after {rs.attempts} "
                  f"attempt(s): {rs.message}; snapshot and pre-restore dump are kept", warning=True)
        run.notify(Severity.critical, "Database restore failed",
                   f"{run.inp.name}: restore failed after {rs.attempts} attempt(s): {rs.message}")
        run.s.failure = f"database restore failed: {rs.message}"
        run.s.step = Step.report
    else:
        delay = RESTORE_BACKOFF_SECONDS * 2 ** (rs.attempts - 1)
        rs.next_attempt_at = iso(run.now + timedelta(seconds=delay))
        run.event("RestoreRetry", f"restore attempt {rs.attempts} failed: {rs.message}; "
                  f"next attempt in {format_duration(delay)}", warning=True)
