"""spec.migration: a Job run after the snapshot is verified and before any traffic moves.

The Job's name is derived from the rollout and its attempt, and written to `status.migration` (state Creating)
before the Job is created: a restarted operator finds the name, and creating it again finds the Job that is
there, so there is never a second one. The timeout counts from the Job's creation; the Job also carries it as
`activeDeadlineSeconds`, so Kubernetes stops it while no operator runs. A failed or timed-out Job rolls back:
weight 0 (nothing moved yet), and the database restored from the snapshot; a `forwardOnly` database is never
restored.
"""

from __future__ import annotations

import hashlib

from saferollout.core import actions as a
from saferollout.core import transitions as go
from saferollout.core.clock import iso
from saferollout.core.durations import format_duration
from saferollout.core.models import MigrationStatus, Phase, Severity, Step
from saferollout.core.run import Run

SUFFIX = "-migrate-"
STOP_WAIT_SECONDS = 120.0  # a stop (the Job and its pods gone) not confirmed in this time is given up on
JOB_NAME_MAX = 63  # the Job controller puts the Job's name in a label (job-name) of its pods


def job_name(rollout: str, attempt: int) -> str:
    """<rollout>-migrate-<attempt>; a long rollout name is cut and made unique by a hash of the whole."""
    tail = f"{SUFFIX}{attempt}"
    if len(rollout) + len(tail) <= JOB_NAME_MAX:
        return rollout + tail
    digest = hashlib.sha256(rollout.encode()).hexdigest()[:8]
    head = rollout[:JOB_NAME_MAX - len(tail) - len(digest) - 1].rstrip("-")
    return f"{head}-{digest}{tail}"


def step(run: Run) -> None:
    """Preflight's Migrate step: create the Job once, then look at it until it ends or its time is up."""
    mig = run.spec.migration
    ms = run.s.migration
    if mig is None:
        if ms is not None and ms.state in ("Creating", "Running"):  # removed while its Job may run: stop it first
            if not _stop(run, ms):
                failed(run, ms)
            return
        run.s.step = Step.canary
        return
    if ms is None:
        ms = run.s.migration = MigrationStatus(job=job_name(run.inp.name, run.s.attempt))
        run.s.message = f"creating migration Job {ms.job}"
    if ms.state == "Creating":
        if a.RunMigration not in run.polled:
            run.act(a.RunMigration(ms.job, run.s.attempt, mig.timeout_seconds))
        return
    if ms.state == "Running":
        timed_out = ms.stop_requested_at is not None or (
            ms.created_at is not None and run.since(ms.created_at) >= mig.timeout_seconds)
        if timed_out:
            if not _stop(run, ms):
                failed(run, ms)
        elif a.CheckMigration not in run.polled:
            run.act(a.CheckMigration(ms.job))
        elif ms.created_at is not None:
            run.wake_in(max(0.0, mig.timeout_seconds - run.since(ms.created_at)))
        return
    if ms.state == "Succeeded":
        run.s.step = Step.canary


def _stop(run: Run, ms: MigrationStatus) -> bool:
    """Ask for the Job to be stopped, every poll, until the executor says it and its pods are gone. True while
    that is asked for. After STOP_WAIT_SECONDS without that answer, False, with the state NotStopped: the Job may
    still write to the database, so nothing restores it (core.phases.rollback) and a person is paged."""
    ms.stop_requested_at = ms.stop_requested_at or iso(run.now)
    if run.since(ms.stop_requested_at) >= STOP_WAIT_SECONDS:
        _not_stopped(run, ms)
        return False
    if a.CheckMigration not in run.polled:
        run.act(a.CheckMigration(ms.job, stop=True))
    return True


def _not_stopped(run: Run, ms: MigrationStatus) -> None:
    last = run.s.message if (run.s.message or "").startswith("CheckMigration failed") else None
    ms.state, ms.finished_at = "NotStopped", iso(run.now)
    ms.message = (f"asked to stop at {ms.stop_requested_at}, and not confirmed gone (the Job and its pods) within "
                  f"{format_duration(STOP_WAIT_SECONDS)}" + (f"; the last answer: {last}" if last else ""))[:1000]
    text = (f"migration Job {ms.job} {ms.message}: it may still write to the database, which is therefore NOT "
            f"restored; delete the Job and its pods by hand (kubectl delete job {ms.job} --cascade=foreground), "
            "then restore the database from the snapshot if needed")
    run.event("MigrationNotStopped", text, warning=True)
    run.condition("Degraded", "True", "MigrationNotStopped", text)
    run.notify(Severity.critical, "migration Job not stopped: database not restored", f"{run.inp.name}: {text}")
    if run.s.phase == Phase.rolling_back:
        run.s.failure = f"{run.s.failure}; {text}" if run.s.failure else text


def apply(run: Run, r: a.MigrationState) -> None:
    ms = run.s.migration
    if ms is None or ms.job != r.job or ms.state not in ("Creating", "Running"):
        return
    if r.state in ("Created", "Running"):
        if ms.state == "Creating" and r.state == "Created":
            ms.state, ms.created_at = "Running", r.created_at or iso(run.now)
            timeout = run.spec.migration.timeout if run.spec.migration else "?"
            run.s.message = f"migration Job {ms.job} running (timeout {timeout})"
            run.event("MigrationStarted", f"migration Job {ms.job} created; it has {timeout} to complete")
        else:
            _keep_logs(ms, r)  # a stop under way: the log read while its pods end
            run.polled.add(a.CheckMigration)
        return
    ms.finished_at = iso(run.now)
    ms.duration_seconds = round(run.since(ms.created_at), 3) if ms.created_at else None
    _keep_logs(ms, r)
    took = format_duration(ms.duration_seconds or 0.0)
    if r.state == "Succeeded":
        ms.state, ms.message = "Succeeded", r.message or None
        run.s.message = f"migration Job {ms.job} succeeded in {took}"
        run.event("MigrationSucceeded", run.s.message)
        return
    if run.spec.migration is None:  # spec.migration removed while the Job ran: what it did is undone
        ms.state = "Failed"
        ms.message = ("spec.migration was removed while the Job ran; the Job was stopped" if r.state == "Stopped"
                      else f"spec.migration was removed while the Job ran; it ended: {r.message or r.state}")
        failed(run, ms)
        return
    timed_out = r.state == "Stopped"
    ms.state = "TimedOut" if timed_out else "Failed"
    limit = run.spec.migration.timeout
    ms.message = (f"did not complete within its timeout of {limit}; stopped" if timed_out
                  else r.message or "the Job failed")
    failed(run, ms)


def _keep_logs(ms: MigrationStatus, r: a.MigrationState) -> None:
    """A log once read is kept: the pods of a stopped Job are gone by the time the stop is confirmed."""
    if r.logs or not ms.logs:
        ms.logs, ms.logs_source = r.logs, r.logs_source or ms.logs_source


def failed(run: Run, ms: MigrationStatus) -> None:
    """Roll back. Nothing moved yet, so the rollback's work is the database: restored from the snapshot, or, for
    a forwardOnly database, left as the Job left it (and said so, at critical severity)."""
    forward_only = bool(run.spec.database and run.spec.database.forward_only)
    text = f"migration Job {ms.job} {'timed out' if ms.state == 'TimedOut' else 'failed'}: {ms.message}"
    if forward_only:
        text += "; the database is forwardOnly: it is not restored, and keeps what the Job left"
    run.event("MigrationFailed", text, warning=True)
    run.history("rollback", message=text[:500])
    go.rollback(run, "MigrationFailed", text, Severity.critical)
    if ms.state == "NotStopped":
        run.s.failure = f"migration Job {ms.job} {ms.message}: it may still write, so the database is NOT restored"


def stop_before_restore(run: Run) -> bool:
    """A rollback (an abort, a deadline, onProgressDeadline: fail) while the Job may still run: stop it, and wait
    until it and its pods are gone, before the database is touched or the rollout ends. True while waiting; False
    once stopped, or given up on (state NotStopped: the rollback then never restores the database)."""
    ms = run.s.migration
    if ms is None or ms.state not in ("Creating", "Running"):
        return False
    return _stop(run, ms)


def stopped(run: Run, r: a.MigrationState) -> None:
    """The result of stop_before_restore's stop (or of a look that found the Job ended)."""
    ms = run.s.migration
    if ms is None or ms.job != r.job or ms.state not in ("Creating", "Running"):
        return
    if r.state in ("Created", "Running"):
        _keep_logs(ms, r)
        run.polled.add(a.CheckMigration)
        return
    ms.finished_at = iso(run.now)
    ms.duration_seconds = round(run.since(ms.created_at), 3) if ms.created_at else None
    _keep_logs(ms, r)
    ms.state = "Succeeded" if r.state == "Succeeded" else "Failed"
    ms.message = (f"stopped by the rollback: {r.message}" if r.message else "stopped by the rollback") \
        if r.state == "Stopped" else (r.message or None)


# --------------------------------------------------------------------- a Job an earlier attempt left running


def stop_previous(run: Run) -> bool:
    """Pending: the last attempt's Job is stopped and gone before this attempt reads the target. True while
    waiting; a Job that cannot be confirmed stopped blocks the attempt (a retry tries again)."""
    ms = run.s.migration
    if ms is None:
        return False
    if ms.state == "NotStopped":  # left so by an earlier attempt: this one asks again, with a wait of its own
        ms.state, ms.stop_requested_at = "Running", None
    if ms.state not in ("Creating", "Running"):
        run.s.migration = None
        return False
    if _stop(run, ms):
        run.s.message = f"stopping migration Job {ms.job} of an earlier attempt before attempt {run.s.attempt} starts"
        return True
    go.block(run, "MigrationNotStopped", f"migration Job {ms.job} of an earlier attempt {ms.message}; it may still "
             "write to the database, so this attempt does not start (no snapshot, no Job): delete it by hand, "
             "then retry")
    return True


def previous_stopped(run: Run, r: a.MigrationState) -> None:
    """Pending: the answer to stop_previous's stop."""
    ms = run.s.migration
    if ms is None or ms.job != r.job or ms.state not in ("Creating", "Running"):
        return
    if r.state in ("Created", "Running"):
        run.polled.add(a.CheckMigration)
        return
    run.event("MigrationStopped", f"migration Job {ms.job} of an earlier attempt "
              f"{'stopped' if r.state == 'Stopped' else 'ended: ' + r.state}, before attempt {run.s.attempt} "
              "takes its snapshot; the database keeps what that Job wrote", warning=True)
    run.s.migration = None
