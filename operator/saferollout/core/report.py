"""The incident report written after every rollback: what happened, when, and what it cost."""

from __future__ import annotations

from datetime import datetime

from saferollout.core import partition
from saferollout.core.durations import format_duration
from saferollout.core.models import IncidentStatus, SafeRolloutSpec, SafeRolloutStatus
from saferollout.core.run import fmt


def _t(s: str | None) -> datetime | None:
    return datetime.fromisoformat(s.replace("Z", "+00:00")) if s else None


def _between(a: str | None, b: str | None) -> str:
    ta, tb = _t(a), _t(b)
    return format_duration(max(0.0, (tb - ta).total_seconds())) if ta and tb else "n/a"


def incident_report(name: str, spec: SafeRolloutSpec, s: SafeRolloutStatus, now: datetime) -> str:
    inc = s.incident
    assert inc is not None
    lines = _summary(name, s, inc) + _timeline(s, inc) + _migration(s) + _metrics(inc) + _dry_run(s) + _templates(s)
    lines += _database(spec, s)
    lines += ["", f"_Written by SafeRollout at {now.strftime('%Y-%m-%dT%H:%M:%SZ')}._", ""]
    return "\n".join(lines)


def _outcome(s: SafeRolloutStatus, inc: IncidentStatus) -> str:
    if s.progress_deadline is not None and s.progress_deadline.action == "fail" and s.failure:
        return "failed, not rolled back: " + s.failure
    if s.failure:
        return "rollback incomplete: " + s.failure
    if inc.verified_at:
        return "rolled back, stable version verified"
    return "rolled back; verification inconclusive (no data showed the stable version healthy or unhealthy)"


def _summary(name: str, s: SafeRolloutStatus, inc: IncidentStatus) -> list[str]:
    images_new = ", ".join(f"`{k}={v}`" for k, v in (s.canary_images or {}).items())
    images_old = ", ".join(f"`{k}={v}`" for k, v in (s.stable_images or {}).items())
    return [
        f"# Incident: rollback of {name} (rollout {s.attempt})",
        "",
        f"- **Outcome:** {_outcome(s, inc)}",
        f"- **Reason:** {inc.reason}" + (f" — `{inc.metric}` = {fmt(inc.value)} (threshold {inc.threshold})"
                                          if inc.metric else ""),
        *_deadline(s),
        f"- **New version:** {images_new}",
        f"- **Restored version:** {images_old}",
        f"- **At breach:** stage {inc.stage_at_breach}, canary weight {inc.weight_at_breach}%",
        *_partition(s, inc),
        f"- **Time to detect** (first failed check → decision): {_between(inc.first_failed_at, inc.decided_at)}",
        f"- **Time to revert traffic** (decision → weight 0 written): {_between(inc.decided_at, inc.traffic_reverted_at)}",
        f"- **Time to recover** (decision → stable verified): {_between(inc.decided_at, inc.verified_at)}",
    ]


def _partition(s: SafeRolloutStatus, inc: IncidentStatus) -> list[str]:
    """A StatefulSet target: where its partition stood at the breach, and where the rollback left it."""
    p = s.partition
    if p is None:
        return []
    at = inc.weight_at_breach or 0
    pods = partition.canary_pods(p.replicas, at)
    return [f"- **StatefulSet partition at breach:** {partition.partition_for(p.replicas, at)} of {p.replicas} "
            f"({pods} pod{'s' if pods != 1 else ''} on revision {p.canary_revision or 'the new revision'}, the "
            f"others on {p.stable_revision})",
            f"- **StatefulSet now:** {partition.describe(p)}; the controller replaces the new revision's pods "
            "at the stable one, highest ordinal first"]


def _deadline(s: SafeRolloutStatus) -> list[str]:
    """spec.progressDeadlineSeconds ran out: what was waited for, and how long."""
    rec = s.progress_deadline
    if rec is None or rec.exceeded_at is None:
        return []
    return [f"- **Progress deadline:** {rec.message or rec.waiting_for} (the wait began {rec.began or rec.since}; time paused "
            f"is not counted); then: {rec.action}"]


def _timeline(s: SafeRolloutStatus, inc: IncidentStatus) -> list[str]:
    lines = ["", "## Timeline", "", "| time (UTC) | event |", "|---|---|"]
    rec = s.progress_deadline if s.progress_deadline is not None and s.progress_deadline.exceeded_at else None
    timeline: list[tuple[str, str]] = [
        (t, what) for t, what in (
            (s.started_at, "rollout started"),
            (s.snapshot.taken_at if s.snapshot else None, f"snapshot `{s.snapshot.id}` taken" if s.snapshot else ""),
            (s.migration.created_at if s.migration else None,
             f"migration Job `{s.migration.job}` created" if s.migration else ""),
            (s.migration.finished_at if s.migration else None,
             f"migration Job `{s.migration.job}`: {s.migration.state}" if s.migration else ""),
            (inc.first_failed_at, f"breach first seen: `{inc.metric}` failed its threshold"),
            ((rec.began or rec.since) if rec else None, f"began waiting for {rec.waiting_for}" if rec else ""),
            (rec.exceeded_at if rec else None, "progress deadline exceeded"),
            (inc.detected_at, "failure limit reached"),
            (inc.decided_at, "decision: fail (weight 0, canary kept)" if rec and rec.action == "fail"
             else "decision: roll back"),
            (inc.traffic_reverted_at, "traffic reverted: canary weight 0"),
            (inc.images_reverted_at, "images reverted on the target, canary removed"),
            (s.restore.started_at if s.restore else None, "database restore started"),
            (inc.restored_at, "database restored and verified"),
            (inc.verified_at, "stable version verified healthy"),
        ) if t
    ]
    timeline += [(h.at, f"{h.action}" + (f" on `{h.metric}`: {h.message}" if h.metric else "")) for h in s.history]
    lines += [f"| {t} | {what} |" for t, what in sorted(timeline, key=lambda x: x[0])]
    return lines


def _metrics(inc: IncidentStatus) -> list[str]:
    lines = ["", "## Metrics at the breach", "", "| metric | value | threshold | verdict | consecutive failures |",
             "|---|---|---|---|---|"]
    lines += [f"| {m.name} | {fmt(m.value)} | {m.threshold} | {m.verdict.value}{' (dry run)' if m.dry_run else ''} | "
              f"{m.consecutive_failures} |" for m in inc.metrics]
    if not inc.metrics:
        lines.append("| (no analysis had run) | | | | |")
    return lines


def _dry_run(s: SafeRolloutStatus) -> list[str]:
    """dryRun metrics over the whole rollout: judged and shown, never a cause of anything in it."""
    if not s.analysis.dry_run:
        return []
    lines = ["", "## Dry-run metrics", "",
             "Judged at every analysis and never acted on: none of these caused or hastened this rollback "
             "(their queries run in the same analysis: a slow one delays it by up to its timeout).",
             "", "| metric | checks | pass | fail | inconclusive | would have breached | first failure | latest |",
             "|---|---|---|---|---|---|---|---|"]
    for t in s.analysis.dry_run:
        would = (f"{t.would_breach}x ({t.on_breach}; first at stage {t.first_breach_stage}, "
                 f"{t.first_breach_weight}%, {t.first_breach_at})") if t.would_breach else "no"
        latest = f"{t.last_verdict.value if t.last_verdict else '-'} {fmt(t.last_value)}" + (
            f" ({t.last_message[:200]})".replace("|", "\\|") if t.last_message else "")
        lines.append(f"| {t.name} | {t.checks} | {t.passes} | {t.failures} | {t.inconclusive} | {would} | "
                     f"{t.first_failed_at or '-'} | {latest} |")
    return lines


def _templates(s: SafeRolloutStatus) -> list[str]:
    """The shared analysis templates as this rollout judged by them: the versions pinned at its start."""
    if not s.analysis_templates:
        return []
    lines = ["", "## Analysis templates", "", "Pinned when the rollout started; an edit since applies to the next "
             "rollout.", "", "| template | resourceVersion | hash | changed since |", "|---|---|---|---|"]
    for p in s.analysis_templates:
        what = f"{p.kind} {p.namespace}/{p.name}" if p.namespace else f"{p.kind} {p.name}"
        lines.append(f"| {what} | {p.resource_version or '-'} | {p.hash} | "
                     f"{'deleted' if p.seen == 'deleted' else 'yes' if p.seen else 'no'} |")
    return lines


def _migration(s: SafeRolloutStatus) -> list[str]:
    """spec.migration's Job: its name, how it ended, how long it ran, and the tail of its log, quoted."""
    m = s.migration
    if m is None:
        return []
    took = format_duration(m.duration_seconds) if m.duration_seconds is not None else "n/a"
    source = {"log": "its pod's log", "terminationMessage": "its pod's termination message (the log could not be "
              "read)", "none": "none could be read"}.get(m.logs_source or "none", "none could be read")
    lines = ["", "## Migration", "", f"- **Job:** `{m.job}`", f"- **Outcome:** {m.state}" +
             (f" — {m.message}" if m.message else ""), f"- **Duration:** {took} (created {m.created_at or 'n/a'}, "
             f"ended {m.finished_at or 'n/a'})", f"- **Log** (the tail; secrets masked), from {source}:", ""]
    fence = "~~~~" if "```" in (m.logs or "") else "```"
    text = (m.logs or "(no log)").replace("~~~~", "~ ~ ~ ~")
    lines += [fence, *text.splitlines(), fence]
    return lines


def _database(spec: SafeRolloutSpec, s: SafeRolloutStatus) -> list[str]:
    lines = ["", "## Database", ""]
    if s.restore is not None and s.snapshot is not None:
        window = _between(s.snapshot.taken_at, s.restore.started_at)
        lines += [
            f"- Snapshot `{s.snapshot.id}` ({s.snapshot.size_bytes} bytes, sha256 `{s.snapshot.sha256}`), "
            f"taken {s.snapshot.taken_at}, verified: {'yes' if s.snapshot.verified else 'no'}.",
            f"- Restore: {s.restore.state} after {s.restore.attempts} attempt(s)"
            + (f"; {s.restore.message}" if s.restore.message else "") + ".",
            f"- **Data-loss window:** {window} (from the snapshot at {s.snapshot.taken_at} to the restore at "
            f"{s.restore.started_at}). Rows written in that window are not in the restored database; they are "
            f"kept in the pre-restore dump `{s.restore.pre_restore_dump}`, so nothing is lost.",
        ]
    elif spec.database is not None and spec.database.forward_only:
        lines.append("- The database is `forwardOnly`: it is never restored. It keeps what the migration (and the "
                     "new version) wrote" + (f"; snapshot `{s.snapshot.id}` taken {s.snapshot.taken_at} is kept "
                                            "for a person" if s.snapshot else "") + ".")
    elif spec.database is not None and s.snapshot is not None:
        lines.append(f"- Snapshot `{s.snapshot.id}` taken; the rollout did not ask to restore it.")
    else:
        lines.append("- No database action was part of this rollout.")
    return lines

