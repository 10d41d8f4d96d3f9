"""spec.progressDeadlineSeconds: a rollout that waits on the cluster without progress does not wait forever.

Two waits count: the canary workload becoming available (from when the wait began), and an action the cluster
keeps failing, such as a router write or the canary's scaling (from its first failure). The record lives in
`status.progressDeadline`, so a restarted operator keeps the same deadline. Progress (the canary available, the
failing action succeeding) clears it. Time paused (`spec.paused`, or phase Paused) does not count: the clock stands
while paused and goes on from where it stood, like a stage's clock.

At the deadline `spec.onProgressDeadline` decides: `rollback` is the whole rollback; `fail` sends all traffic to
the stable version (weight 0, retried until it holds, as every rollback's first write is) and ends Failed with the
canary workload kept for inspection. In Promoting the target already has the new version, so there it always rolls
back. A rollback itself has no deadline: it never stops trying to put the traffic back.
"""

from __future__ import annotations

from datetime import timedelta

from saferollout.core import actions as a
from saferollout.core import transitions as go
from saferollout.core.clock import iso, parse_time
from saferollout.core.durations import format_duration
from saferollout.core.models import Phase, ProgressDeadlineAction, ProgressDeadlineStatus, Severity
from saferollout.core.run import Run

REASON = go.PROGRESS_DEADLINE_EXCEEDED
CANARY = "canary"
TARGET = "target"  # the promoted target running the new version
CANARY_WORDS = "the canary workload to become available"
# the phases in which a rollout waits for progress; a rollback (and anything terminal) has no deadline
GUARDED = (Phase.preflight, Phase.progressing, Phase.paused, Phase.promoting)
# failures that are not a stall of the rollout: a failed query is inconclusive analysis (inconclusiveLimit); pruning
# is housekeeping; the canary's removal after a promotion is clean-up once no traffic goes to it (a rollback for it
# would undo a verified promotion, and would need the same removal); the target's label and hold are bookkeeping of
# the webhook's, retried every poll, and a healthy canary is not rolled back because the label is refused
NOT_COUNTED = (a.QueryMetrics, a.PruneSnapshots, a.DeleteCanary, a.LabelTarget, a.HoldTarget)


def _key(act: a.Action) -> str:
    return CANARY if isinstance(act, a.EnsureCanary) else type(act).__name__


def _words(act: a.Action) -> str:
    if isinstance(act, a.EnsureCanary):
        return CANARY_WORDS
    if isinstance(act, a.SetWeight):
        return f"the router to take canary weight {act.weight}% (SetWeight keeps failing)"
    return f"{type(act).__name__} to succeed (it keeps failing)"


def waiting(run: Run, key: str, words: str) -> None:
    """The rollout waits on the cluster for `key`: the clock starts now unless a wait is already running (a wait
    that began with failures of the same thing, or an older one not yet ended by progress)."""
    if run.s.phase not in GUARDED:
        return
    if run.s.progress_deadline is None:
        run.s.progress_deadline = ProgressDeadlineStatus(key=key, waiting_for=words, since=iso(run.now),
                                                         began=iso(run.now))
    account(run)


def failed(run: Run, act: a.Action, message: str) -> None:
    """An action failed (not refused: a refusal rolls back at once). Its first failure starts the clock."""
    if run.s.phase not in GUARDED or isinstance(act, NOT_COUNTED):
        return
    rec = run.s.progress_deadline
    if rec is None:
        rec = run.s.progress_deadline = ProgressDeadlineStatus(key=_key(act), waiting_for=_words(act),
                                                               since=iso(run.now), began=iso(run.now))
    if rec.exceeded_at is None and rec.key == _key(act):  # another action's failures wait for this wait to end
        rec.failures += 1
        rec.last_error = f"{type(act).__name__}: {message}"[:300]


def progressed(run: Run, r: a.Result) -> None:
    """Progress of the thing waited for ends the wait: the canary available, or the failing action succeeding. The
    promoted target's wait ends in the promotion phase (`done`), which knows what it waits for."""
    rec = run.s.progress_deadline
    if rec is None or rec.exceeded_at is not None:
        return
    if (rec.key == CANARY and isinstance(r, a.CanaryState) and r.ready) or (
            isinstance(r, a.Outcome) and r.ok and _key(r.action) == rec.key):
        run.s.progress_deadline = None


def done(run: Run, key: str) -> None:
    """The wait for `key` ended with progress."""
    rec = run.s.progress_deadline
    if rec is not None and rec.exceeded_at is None and rec.key == key:
        run.s.progress_deadline = None


def _observed(run: Run, key: str) -> bool:
    """This decision saw the thing waited for still not there: the deadline acts on a fresh look at the cluster,
    never on what the status said before a restart or an outage (the canary may be available by now)."""
    for r in run.inp.results:
        if key == CANARY and isinstance(r, a.CanaryState) and not r.ready:
            return True
        if key == TARGET and isinstance(r, a.TargetState):
            return True
        if isinstance(r, a.Outcome) and not r.ok and _key(r.action) == key:
            return True
    return False


def _paused(run: Run) -> bool:
    return run.spec.paused or run.s.phase == Phase.paused


def _clock(run: Run, rec: ProgressDeadlineStatus) -> float | None:
    """Seconds left (None while paused); the clock stands while paused and `since` moves on by the pause."""
    if _paused(run):
        rec.paused_at = rec.paused_at or iso(run.now)
        return None
    if rec.paused_at is not None:
        rec.since = iso(parse_time(rec.since) + (run.now - parse_time(rec.paused_at)))
        rec.paused_at = None
    limit = run.spec.progress_deadline_seconds
    deadline_at = iso(parse_time(rec.since) + timedelta(seconds=limit))
    if rec.deadline_at != deadline_at:
        rec.deadline_at = deadline_at
    return limit - run.since(rec.since)


def account(run: Run) -> None:
    """After a decision's step: the clock's bookkeeping, and a wake-up at the deadline. A wait that did not run out
    ends with its phase (a rollback decided by analysis, an abort): the status shows no deadline for a finished
    rollout."""
    rec = run.s.progress_deadline
    if rec is None or rec.exceeded_at is not None:
        return
    if run.s.phase not in GUARDED:
        run.s.progress_deadline = None
        return
    left = _clock(run, rec)
    if left is not None:
        run.wake_in(max(left, 0.0))


def check(run: Run) -> None:
    """Before a decision's step: the deadline, if it has passed, is acted on before anything else is issued."""
    rec = run.s.progress_deadline
    if rec is None or rec.exceeded_at is not None or run.s.phase not in GUARDED:
        return
    left = _clock(run, rec)
    if left is None or left > 1e-6 or not _observed(run, rec.key):
        return  # not yet; or past it, and the phase looks at the cluster once more first (acted on in the next turn)
    limit = run.spec.progress_deadline_seconds
    fail = run.spec.on_progress_deadline == ProgressDeadlineAction.fail and run.s.phase != Phase.promoting
    rec.exceeded_at, rec.action = iso(run.now), "fail" if fail else "rollback"
    text = (f"progress deadline exceeded: waited {format_duration(run.since(rec.since))} for {rec.waiting_for}, "
            f"longer than progressDeadlineSeconds ({limit})")
    if rec.failures:
        text += f"; {rec.failures} failed attempt(s), the last: {rec.last_error}"
    rec.message = text
    if fail:
        then = "canary weight 0, the canary workload kept for inspection (onProgressDeadline: fail)"
    elif run.s.phase == Phase.promoting and run.spec.on_progress_deadline == ProgressDeadlineAction.fail:
        then = "rolling back (onProgressDeadline: fail does not apply after the promotion)"
    else:
        then = "rolling back (onProgressDeadline: rollback)"
    run.event(REASON, f"{text}; {then}", warning=True)
    run.history("fail" if fail else "rollback", message=text)
    go.rollback(run, REASON, text, Severity.high, keep_canary=fail)  # traffic first: weight 0 in this decision
    run.condition("Progressing", "False", REASON, text)
    if fail:
        run.s.message = f"failing: {text}; canary weight 0 first, the canary workload is kept for inspection"


def keeps_canary(run: Run) -> bool:
    """The rollback under way is onProgressDeadline: fail's: after the weight, nothing more is undone."""
    rec = run.s.progress_deadline
    return rec is not None and rec.action == "fail"
