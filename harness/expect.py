"""The expectations of a scenario, checked against what the run observed.

Each `expect` key (a field of harness.format.Expect) has one checker here, registered with `@checks(field)`; it
turns the key's value into Checks with a PASS/FAIL and a detail that says what was seen, so a failing scenario
explains itself without rerunning it.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.format import Bounds, Expect, NotificationExpect, RequestsExpect, StatefulSetExpect, named_field
from harness.timeline import WeightChange, longest_hold, merged_intervals, weights_seen
from harness.webhook import RANK, Received


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {self.detail}"


@dataclass(frozen=True)
class Advance:
    """A forward move of the rollout, known to have happened between two observations."""

    after: float  # the last observation before it (time.monotonic)
    seen: float  # the observation that showed it
    what: str


@dataclass
class Observed:
    """Everything the run saw, gathered for the checks."""

    end: float = 0.0
    finished_in: float | None = None  # seconds from the apply to the finish condition, None when not reached
    phase: str | None = None
    router_changes: list[WeightChange] = field(default_factory=list)
    # requests: (the router's plan: weight, match or mirror; carried load.tagged's headers; stable, canary, mirror)
    requests_seen: dict[tuple[str, bool, str, bool], int] = field(default_factory=dict)
    advances: list[Advance] = field(default_factory=list)
    outages: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # kind: (downs, ups)
    conditions_seen: set[tuple[str, str, str]] = field(default_factory=set)
    promoted_seen: bool = False
    partitions_seen: list[int] = field(default_factory=list)  # a StatefulSet target's partition, each change
    statefulset: dict[str, Any] | None = None  # ... as it was at the end
    initial_revision: str | None = None  # ... its status.currentRevision before the rollout
    rollout: dict[str, Any] | None = None
    target_images: dict[str, str] = field(default_factory=dict)
    target_replicas: int | None = None  # spec.replicas at the end
    canary_present: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] | None = None
    report_name: str | None = None
    store: Path | None = None
    checksum_before: str | None = None
    checksum_after: str | None = None
    checksum_error: str | None = None
    operator_log: str = ""
    password: str | None = None
    target_changes: list[str] = field(default_factory=list)  # spec changes and missing pods of the target
    selectors: dict[str, dict[str, str] | None] = field(default_factory=dict)  # Service: selector at the end
    notifications: list[Received] = field(default_factory=list)  # what the webhook receiver got, in order
    webhooks: list[dict[str, Any]] = field(default_factory=list)  # the rollout's webhooks, URLs filled in
    paths_present: dict[str, str | None] = field(default_factory=dict)  # pathAbsent: what is there at the end
    cases: list[CaseOutcome] = field(default_factory=list)  # a bad-manifest file: what each apply did

    @property
    def status(self) -> dict[str, Any]:
        s = (self.rollout or {}).get("status")
        return s if isinstance(s, dict) else {}


def _sub(d: dict[str, Any], key: str) -> dict[str, Any]:
    v = d.get(key)
    return v if isinstance(v, dict) else {}


def snapshot_files(store: Path | None, ns: str, name: str, pattern: str) -> list[Path]:
    if store is None:
        return []
    d = store / ns / name
    return sorted(d.glob(pattern)) if d.is_dir() else []


def resolve_dump(store: Path | None, ns: str, name: str, ref: str) -> Path | None:
    """The pre-restore dump the status names: an absolute path, or a name relative to the store or rollout dir; a
    path in an operator pod's store is looked for by its name in the rollout's directory of the store's volume."""
    candidates = [Path(ref)] if Path(ref).is_absolute() else []
    if store is not None:
        candidates += [store / ref, store / ns / name / ref, store / ns / name / Path(ref).name]
    return next((c for c in candidates if c.is_file()), None)


@dataclass(frozen=True)
class CaseOutcome:
    """What `kubectl apply` did with one case of a bad-manifest file."""

    index: int
    why: str
    patch: dict[str, Any]
    returncode: int
    message: str  # kubectl's stderr and stdout
    created: bool  # a SafeRollout existed afterwards

    @property
    def refused(self) -> bool:
        return self.returncode != 0 and not self.created

    @property
    def label(self) -> str:
        return f"case {self.index} ({self.why})"


@dataclass(frozen=True)
class Seen:
    """What a checker looks at: the run's observations and the SafeRollout (`ns`/`name`) they are about."""

    obs: Observed
    ns: str
    name: str


Checker = Callable[[Any, Seen], list[Check]]
CHECKERS: dict[str, Checker] = {}  # Expect field -> its checker; tests/unit/test_harness_expect.py: one each


def checks(field_name: str) -> Callable[[Checker], Checker]:
    """Register the checker of one Expect field (by its Python name). It gets the field's value as parsed."""
    if field_name not in Expect.model_fields:
        raise ValueError(f"{field_name!r} is not a field of harness.format.Expect")

    def register(fn: Checker) -> Checker:
        if field_name in CHECKERS:
            raise ValueError(f"{field_name!r} has a checker already: {CHECKERS[field_name].__name__}")
        CHECKERS[field_name] = fn
        return fn

    return register


def check_all(expect: Mapping[str, Any], obs: Observed, ns: str, name: str) -> list[Check]:
    """The Checks of each expect key (as a file writes it, value as parsed), in the order of the file."""
    fields = Expect.keys()
    seen = Seen(obs, ns, name)
    out: list[Check] = []
    for key, want in expect.items():
        if key not in fields:
            raise ValueError(f"unknown expect key {key!r}")
        out += CHECKERS[fields[key]](want, seen)
    return out


def _weights(obs: Observed) -> list[int]:
    return [w for _, w in obs.router_changes]


@checks("phase")
def _phase(want: str, s: Seen) -> list[Check]:
    return [Check("phase", s.obs.phase == want, f"final phase {s.obs.phase!r}, want {want!r}")]


@checks("within_seconds")
def _within_seconds(want: float, s: Seen) -> list[Check]:
    took = s.obs.finished_in
    seen = "never" if took is None else f"in {took:.1f}s"
    return [Check("withinSeconds", took is not None and took <= want, f"finished {seen}, limit {want:g}s")]


@checks("max_weight")
def _max_weight(want: Bounds, s: Seen) -> list[Check]:
    top = max(_weights(s.obs), default=0)
    return [Check("maxWeight", want.holds(top), f"highest canary weight {top}, want {want.describe()}")]


@checks("final_weight")
def _final_weight(want: Bounds, s: Seen) -> list[Check]:
    weights = _weights(s.obs)
    last = weights[-1] if weights else 0
    return [Check("finalWeight", want.holds(last), f"final canary weight {last}, want {want.describe()}")]


@checks("requests")
def _requests(want: tuple[RequestsExpect, ...], s: Seen) -> list[Check]:
    out = []
    for r in want:
        n = sum(count for (during, tagged, to, bearer), count in s.obs.requests_seen.items()
                if r.during in ("any", during) and r.tagged in (None, tagged) and to == r.to
                and r.cookie in (None, bearer))
        which = "" if r.tagged is None else " tagged" if r.tagged else " untagged"
        which += "" if r.cookie is None else " cookie-bearing" if r.cookie else " cookieless"
        out.append(Check("requests", r.count.holds(n), f"{n}{which} requests to {r.to} while {r.during}, "
                                                         f"want {r.count.describe()}"))
    return out


@checks("weights_seen")
def _weights_seen(want: list[int], s: Seen) -> list[Check]:
    applied = weights_seen(s.obs.router_changes)
    return [Check("weightsSeen", applied == want, f"router applied {applied}, want {want}")]


@checks("weight_held_seconds")
def _weight_held_seconds(want: tuple[int, float], s: Seen) -> list[Check]:
    weight, at_least = want
    held = longest_hold(s.obs.router_changes, weight, s.obs.end)
    return [Check("weightHeldSeconds", held >= at_least, f"weight {weight} held at most {held:.1f}s in one go, "
                                                         f"want >= {at_least:g}s")]


@checks("never_advanced_while")
def _never_advanced_while(want: str, s: Seen) -> list[Check]:
    return [_never_advanced(want, s.obs)]


@checks("never_promoted")
def _never_promoted(want: bool, s: Seen) -> list[Check]:
    promoted = s.obs.promoted_seen
    return [Check("neverPromoted", promoted != want, "the target ran the new template at some point" if promoted
                  else "the target never ran the new template")]


@checks("target_images")
def _target_images(want: dict[str, str], s: Seen) -> list[Check]:
    got = {k: s.obs.target_images.get(k) for k in want}
    return [Check("targetImages", got == want, f"target images {s.obs.target_images}, want {want}")]


@checks("target_replicas")
def _target_replicas(want: Bounds, s: Seen) -> list[Check]:
    got = s.obs.target_replicas
    return [Check("targetReplicas", got is not None and want.holds(got),
                  f"target spec.replicas {got}, want {want.describe()}")]


@checks("canary_workload")
def _canary_workload(want: str, s: Seen) -> list[Check]:
    seen = "present" if s.obs.canary_present else "absent"
    return [Check("canaryWorkload", seen == want, f"canary Deployment {seen}, want {want}")]


@checks("history")
def _history(want: list[str], s: Seen) -> list[Check]:
    actions = [e.get("action") for e in s.obs.status.get("history") or [] if isinstance(e, dict)]
    return [Check("history", actions == want, f"status.history actions {actions}, want {want}")]


@checks("events")
def _events(want: list[str], s: Seen) -> list[Check]:
    reasons = [e.get("reason") for e in s.obs.events if _about(e, s.name)]
    missing = [r for r in want if r not in reasons]
    detail = (f"missing {missing}; " if missing else "") + \
        f"reasons on the SafeRollout: {sorted(set(filter(None, reasons)))}"
    return [Check("events", not missing, detail)]


@checks("condition_seen")
def _condition_seen(want: dict[str, str], s: Seen) -> list[Check]:
    hits = [c for c in s.obs.conditions_seen if c[0] == want["type"] and c[1] == want["reason"]
            and ("status" not in want or c[2] == want["status"])]
    return [Check("conditionSeen", bool(hits), f"want {want}; seen {sorted(s.obs.conditions_seen)}")]


@checks("incident_report")
def _incident_report(want: str, s: Seen) -> list[Check]:
    ref = _sub(s.obs.status, "incident").get("reportRef")
    present = s.obs.report is not None
    detail = (f"status.incident.reportRef={ref!r}, ConfigMap {s.obs.report_name!r} "
              f"{'exists' if present else 'not found'}")
    return [Check("incidentReport", present == (want == "present"), detail)]


@checks("pre_restore_dump")
def _pre_restore_dump(want: str, s: Seen) -> list[Check]:
    ref = _sub(s.obs.status, "restore").get("preRestoreDump")
    path = resolve_dump(s.obs.store, s.ns, s.name, str(ref)) if ref else None
    detail = f"status.restore.preRestoreDump={ref!r}" + (f", file {path}" if path else ", no such file")
    return [Check("preRestoreDump", (path is not None) == (want == "present"), detail)]


@checks("snapshot_taken_once")
def _snapshot_taken_once(want: bool, s: Seen) -> list[Check]:
    snaps = snapshot_files(s.obs.store, s.ns, s.name, "snap-*.dump")
    return [Check("snapshotTakenOnce", (len(snaps) == 1) == want,
                  f"{len(snaps)} snap-*.dump file(s) in the store: {[p.name for p in snaps]}")]


@checks("database")
def _database(want: str, s: Seen) -> list[Check]:  # equalsSnapshot, the only value
    obs = s.obs
    if obs.checksum_error:
        return [Check("database", False, f"could not compute the checksum: {obs.checksum_error}")]
    same = obs.checksum_before is not None and obs.checksum_before == obs.checksum_after
    return [Check("database", same, f"checksum before {str(obs.checksum_before)[:12]}, "
                                    f"after {str(obs.checksum_after)[:12]}")]


@checks("restore_attempts")
def _restore_attempts(want: Bounds, s: Seen) -> list[Check]:
    attempts = int(_sub(s.obs.status, "restore").get("attempts") or 0)
    return [Check("restoreAttempts", want.holds(attempts), f"status.restore.attempts={attempts}, want {want.describe()}")]


@checks("secret_absent_from")
def _secret_absent_from(want: list[str], s: Seen) -> list[Check]:
    return [_secret_absent(want, s.obs)]


@checks("refused_at_apply")
def _refused_at_apply(want: bool, s: Seen) -> list[Check]:
    out = []
    for c in s.obs.cases:
        what = "refused, nothing created" if c.refused else ("created" if c.created else "not refused")
        out.append(Check(f"refusedAtApply {c.label}", c.refused == want, what))
    return out


@checks("message_names_field")
def _message_names_field(want: bool, s: Seen) -> list[Check]:
    out = []
    for c in s.obs.cases:
        named = named_field(c.message, c.patch) if c.returncode != 0 else None
        out.append(Check(f"messageNamesField {c.label}", (named is not None) == want,
                         f"names {named}" if named else f"names none of the patch's fields: {c.message}"))
    return out


@checks("service_selector")
def _service_selector(want: list[tuple[str, dict[str, str]]], s: Seen) -> list[Check]:
    out = []
    for svc, equals in want:
        selector = s.obs.selectors.get(svc)
        detail = f"Service {svc} " + ("not found" if selector is None else f"selects {selector}") + f", want {equals}"
        out.append(Check(f"serviceSelector {svc}", selector == equals, detail))
    return out


@checks("target_unchanged")
def _target_unchanged(want: bool, s: Seen) -> list[Check]:
    changes = s.obs.target_changes
    return [Check("targetUnchanged", (not changes) == want, "; ".join(changes) if changes else
                  "the target's spec never changed and all its pods stayed available")]


@checks("stateful_set")
def _stateful_set(want: StatefulSetExpect, s: Seen) -> list[Check]:
    out = []
    seen = [p for i, p in enumerate(s.obs.partitions_seen) if i == 0 or p != s.obs.partitions_seen[i - 1]]
    if want.partitions_seen is not None:
        out.append(Check("statefulSet partitionsSeen", seen == want.partitions_seen, f"saw {seen}"))
    sts = s.obs.statefulset or {}
    spec, st = sts.get("spec") or {}, sts.get("status") or {}
    if want.final_partition is not None:
        part = int(((spec.get("updateStrategy") or {}).get("rollingUpdate") or {}).get("partition") or 0)
        out.append(Check("statefulSet finalPartition", part == want.final_partition, f"partition {part}"))
    if want.pods_on is not None:
        settled = st.get("currentRevision") == st.get("updateRevision") and \
            int(st.get("updatedReplicas") or 0) >= int(spec.get("replicas") or 1)
        initial = st.get("currentRevision") == s.obs.initial_revision
        ok = settled and (initial if want.pods_on == "initial" else not initial)
        out.append(Check("statefulSet podsOn", ok, f"every pod on {st.get('currentRevision')}" if settled else
                         f"{st.get('updatedReplicas')} pod(s) on {st.get('updateRevision')}, the others on "
                         f"{st.get('currentRevision')}" + f" (initial {s.obs.initial_revision})"))
    return out


@checks("events_in_order")
def _events_in_order(want: list[str], s: Seen) -> list[Check]:
    return [events_in_order(want, [e for e in s.obs.events if _about(e, s.name)])]


@checks("notifications")
def _notifications_check(want: NotificationExpect, s: Seen) -> list[Check]:
    return _notifications(want, s.obs)


@checks("incident_report_contains")
def _incident_report_contains(want: list[str], s: Seen) -> list[Check]:
    report = s.obs.report
    text = "\n".join(str(v) for v in ((report or {}).get("data") or {}).values())
    missing = [w for w in want if w not in text]
    detail = (f"report {s.obs.report_name!r} lacks {missing}" if missing else
              f"report {s.obs.report_name!r} contains {want}") if report else "no incident report"
    return [Check("incidentReportContains", report is not None and not missing, detail)]


@checks("dry_run_failed")
def _dry_run_failed(want: list[str], s: Seen) -> list[Check]:
    """Each metric is a dryRun one that failed at least once, as the final status shows it: in its tally
    (status.analysis.dryRun) and, when it has a latest verdict, marked dryRun there (status.analysis.metrics)."""
    analysis = _sub(s.obs.status, "analysis")
    tallies = {t.get("name"): t for t in analysis.get("dryRun") or [] if isinstance(t, dict)}
    latest = {m.get("name"): m for m in analysis.get("metrics") or [] if isinstance(m, dict)}
    out = []
    for name in want:
        tally, last = tallies.get(name), latest.get(name)
        failures = int((tally or {}).get("failures") or 0)
        marked = last is None or last.get("dryRun") is True
        if tally is None:
            detail = f"no dryRun tally for it; tallies: {sorted(str(k) for k in tallies)}"
        else:
            detail = (f"{tally.get('checks', 0)} checks, {failures} failed, would have breached "
                      f"{tally.get('wouldBreach', 0)}x ({tally.get('onBreach')}); latest "
                      + (f"{last.get('verdict')} marked dryRun={last.get('dryRun')}" if last else "verdict: none"))
        out.append(Check(f"dryRunFailed {name}", tally is not None and failures >= 1 and marked, detail))
    return out


@checks("path_absent")
def _path_absent(want: tuple[str, ...], s: Seen) -> list[Check]:
    out = []
    for path in want:
        found = s.obs.paths_present.get(path, "not looked at")
        out.append(Check(f"pathAbsent {path}", found is None, "nothing there at the end" if found is None else f"{found}"))
    return out


def event_order_key(event: dict[str, Any]) -> tuple[str, int]:
    """When an Event was made: its timestamp (seconds) and, within a second, its resourceVersion.

    Timestamps have one-second resolution; the resourceVersion is opaque by contract but on one etcd it is the
    write's revision, so it orders the operator's Events (each one a create) in the order they were written.
    """
    stamp = str(event.get("eventTime") or event.get("firstTimestamp") or event.get("lastTimestamp")
                or (event.get("metadata") or {}).get("creationTimestamp") or "")
    rv = str((event.get("metadata") or {}).get("resourceVersion") or "")
    return stamp, int(rv) if rv.isdigit() else 0


def events_in_order(want: list[str], events: list[dict[str, Any]]) -> Check:
    """The reasons occur in this order: each one has an Event after (or with) the previous one's first match."""
    ordered = sorted(events, key=event_order_key)
    reasons = [str(e.get("reason")) for e in ordered]
    pos = 0
    for i, reason in enumerate(want):
        hit = next((j for j in range(pos, len(reasons)) if reasons[j] == reason), None)
        if hit is None:
            before = reason in reasons[:pos]
            why = "only before " + repr(want[i - 1]) if before else "never"
            return Check("eventsInOrder", False, f"{reason!r} came {why}; reasons in order: {_compact(reasons)}")
        pos = hit + 1
    return Check("eventsInOrder", True, f"{' < '.join(want)}; reasons in order: {_compact(reasons)}")


def _compact(reasons: list[str]) -> str:
    """Repeats collapsed: A, B x3, C."""
    out: list[str] = []
    for r in reasons:
        if out and out[-1].split(" x")[0] == r:
            n = int(out[-1].split(" x")[1]) + 1 if " x" in out[-1] else 2
            out[-1] = f"{r} x{n}"
        else:
            out.append(r)
    return ", ".join(out)


def _path(url: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    return (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")


def _notifications(want: NotificationExpect, obs: Observed) -> list[Check]:
    """What the receiver got, and per target: only its own format, nothing below its minSeverity, the report last."""
    got = obs.notifications
    out: list[Check] = []
    if want.received is not None:
        out.append(Check("notifications received", want.received.holds(len(got)),
                         f"{len(got)} notification(s), want {want.received.describe()}"))
    if want.severities:
        seen = sorted({str(r.severity) for r in got})
        missing = [s for s in want.severities if s not in seen]
        out.append(Check("notifications severities", not missing,
                         (f"missing {missing}; " if missing else "") + f"severities received: {seen}"))
    if want.formats:
        seen = sorted({r.format for r in got})
        missing = [f for f in want.formats if f not in seen]
        out.append(Check("notifications formats", not missing,
                         (f"missing {missing}; " if missing else "") + f"formats received: {seen}"))
    report = obs.report_name or ""
    for hook in obs.webhooks:
        path = _path(str(hook.get("url", "")))
        fmt, floor = str(hook.get("format", "generic")), str(hook.get("minSeverity", "high"))
        mine = [r for r in got if r.path == path]
        wrong = [r.format for r in mine if r.format != fmt]
        low = [str(r.severity) for r in mine if RANK.get(str(r.severity), 0) < RANK.get(floor, 0)]
        name = f"notifications to {path} ({fmt}, minSeverity {floor})"
        problems = ([f"{len(wrong)} not {fmt}: {sorted(set(wrong))}"] if wrong else []) + (
            [f"{len(low)} below {floor}: {sorted(set(low))}"] if low else [])
        out.append(Check(name, not problems, "; ".join(problems) or
                         f"{len(mine)} received, severities {[r.severity for r in mine]}"))
        if want.report_ref_present is not None and mine:
            named = mine[-1].names_report(report)
            out.append(Check(f"{name}: the last one names the report", named == want.report_ref_present,
                             f"last notification {'names' if named else 'does not name'} the incident report "
                             f"{report or '(none in status)'}"))
    paths = {_path(str(h.get("url", ""))) for h in obs.webhooks}
    if want.report_ref_present is not None and not any(r.path in paths for r in got):
        out.append(Check("notifications reportRefPresent", False, "no notification arrived at any target"))
    return out


def _about(event: dict[str, Any], name: str) -> bool:
    obj = event.get("involvedObject") or event.get("regarding") or {}
    return bool(obj.get("kind") == "SafeRollout" and obj.get("name") == name)


def _never_advanced(kind: str, obs: Observed) -> Check:
    """No advance known to lie wholly inside an outage (an observation gap that straddles its edge is not blamed)."""
    key = f"neverAdvancedWhile: {kind}"
    source = {"prometheusDown": "prometheus", "databaseDown": "database", "operatorDown": "operator"}[kind]
    downs, ups = obs.outages.get(source, ([], []))
    intervals = merged_intervals(downs, ups, obs.end)
    if not intervals:
        return Check(key, False, f"{source} was never down during the run, nothing was tested")
    bad = [a for a in obs.advances for lo, hi in intervals if a.after >= lo and a.seen <= hi]
    total = sum(hi - lo for lo, hi in intervals)
    if bad:
        return Check(key, False, f"advanced while {source} was down: {'; '.join(a.what for a in bad)}")
    return Check(key, True, f"{source} down {len(intervals)} time(s), {total:.1f}s in all; no advance meanwhile")


def _secret_absent(places: list[str], obs: Observed) -> Check:
    key = "secretAbsentFrom"
    if not obs.password:
        return Check(key, False, "no database password was set up")
    needles = secret_needles(obs.password)
    texts = {
        "operatorLogs": obs.operator_log,
        "events": json.dumps(obs.events, default=str),
        "status": json.dumps(obs.status, default=str),
        "incidentReport": json.dumps({k: (obs.report or {}).get(k) for k in ("data", "binaryData")}, default=str),
        "notifications": "\n".join(r.raw for r in obs.notifications),
    }
    whole = {obs.password, urllib.parse.quote(obs.password, safe="")}
    leaked = []
    for p in places:
        hits = [n for n in needles if n in texts[p]]
        if hits:  # the report says what leaked, never the secret itself
            leaked.append(p + ("" if whole & set(hits) else f" (a {max(map(len, hits))}-character piece of it)"))
    checked = ", ".join(f"{p} ({len(texts[p])} chars)" for p in places)
    pieces = bool(needles - whole)
    if leaked:
        return Check(key, False, f"the database password appears in: {', '.join(leaked)}")
    return Check(key, True, f"not found in {checked}" + (" (nor its pieces between URL delimiters)" if pieces else ""))


PIECE_DELIMITERS = "@:/"
MIN_PIECE = 6


def secret_needles(password: str) -> set[str]:
    """The password as is and URL-encoded, and each piece of it between '@', ':' and '/' of at least 6 characters.

    A DSN parser that splits the password at one of these (libpq ends the user info at the first '@') quotes the
    rest as a host name or a port in its error, so a piece in a message is a leak too.
    """
    out = {password, urllib.parse.quote(password, safe="")}
    pieces = [password]
    for d in PIECE_DELIMITERS:
        pieces = [part for piece in pieces for part in piece.split(d)]
    if len(pieces) > 1:
        for piece in pieces:
            if len(piece) >= MIN_PIECE:
                out |= {piece, urllib.parse.quote(piece, safe="")}
    return out
