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
from saferollout.core.models import MigrationStatus, Severity, Step
from saferollout.core.run import Run

SUFFIX = "-migrate-"
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
    if mig is None:
        run.s.step = Step.canary
        return
    ms = run.s.migration
    if ms is None:
        ms = run.s.migration = MigrationStatus(job=job_name(run.inp.name, run.s.attempt))
        run.s.message = f"creating migration Job {ms.job}"
    if ms.state == "Creating":
        if a.RunMigration not in run.polled:
            run.act(a.RunMigration(ms.job, run.s.attempt, mig.timeout_seconds))
        return
    if ms.state == "Running":
        if a.CheckMigration not in run.polled:
            timed_out = ms.created_at is not None and run.since(ms.created_at) >= mig.timeout_seconds
            run.act(a.CheckMigration(ms.job, stop=timed_out))
        elif ms.created_at is not None:
            run.wake_in(max(0.0, mig.timeout_seconds - run.since(ms.created_at)))
        return
    if ms.state == "Succeeded":
        run.s.step = Step.canary


def apply(run: Run, r: a.MigrationState) -> None:
    ms = run.s.migration
    if ms is None or ms.job != r.job or ms.state not in ("Creating", "Running"):
        return
    if r.state in ("Created", "Running"):
        if ms.state == "Creating":
            ms.state, ms.created_at = "Running", r.created_at or iso(run.now)
            timeout = run.spec.migration.timeout if run.spec.migration else "?"
            run.s.message = f"migration Job {ms.job} running (timeout {timeout})"
            run.event("MigrationStarted", f"migration Job {ms.job} created; it has {timeout} to complete")
        else:
            run.polled.add(a.CheckMigration)
        return
    ms.finished_at = iso(run.now)
    ms.duration_seconds = round(run.since(ms.created_at), 3) if ms.created_at else None
    ms.logs, ms.logs_source = r.logs, r.logs_source
    took = format_duration(ms.duration_seconds or 0.0)
    if r.state == "Succeeded":
        ms.state, ms.message = "Succeeded", r.message or None
        run.s.message = f"migration Job {ms.job} succeeded in {took}"
        run.event("MigrationSucceeded", run.s.message)
        return
    timed_out = r.state == "Stopped"
    ms.state = "TimedOut" if timed_out else "Failed"
    limit = run.spec.migration.timeout if run.spec.migration else "?"
    ms.message = (f"did not complete within its timeout of {limit}; stopped" if timed_out
                  else r.message or "the Job failed")
    failed(run, ms)


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


def stop_before_restore(run: Run) -> bool:
    """A rollback (an abort, a deadline) while the Job may still run: stop it before the database is touched.
    True while the stop is asked for."""
    ms = run.s.migration
    if ms is None or ms.state not in ("Creating", "Running"):
        return False
    if a.CheckMigration not in run.polled:
        run.act(a.CheckMigration(ms.job, stop=True))
    return True


def stopped(run: Run, r: a.MigrationState) -> None:
    """The result of stop_before_restore's stop (or of a look that found the Job ended)."""
    ms = run.s.migration
    if ms is None or ms.job != r.job or ms.state not in ("Creating", "Running"):
        return
    if r.state in ("Created", "Running"):
        run.polled.add(a.CheckMigration)
        return
    ms.finished_at = iso(run.now)
    ms.duration_seconds = round(run.since(ms.created_at), 3) if ms.created_at else None
    ms.logs, ms.logs_source = r.logs, r.logs_source
    ms.state = "Succeeded" if r.state == "Succeeded" else "Failed"
    ms.message = r.message or ("stopped by the rollback" if r.state == "Stopped" else None)
