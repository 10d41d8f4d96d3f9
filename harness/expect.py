"""The expectations of a scenario, checked against what the run observed.

Each `expect` key becomes one Check with a PASS/FAIL and a detail that says what was seen, so a failing scenario
explains itself without rerunning it.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.format import Bounds, NotificationExpect
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
    advances: list[Advance] = field(default_factory=list)
    outages: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # kind: (downs, ups)
    conditions_seen: set[tuple[str, str, str]] = field(default_factory=set)
    promoted_seen: bool = False
    rollout: dict[str, Any] | None = None
    target_images: dict[str, str] = field(default_factory=dict)
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
    """The pre-restore dump the status names: an absolute path, or a name relative to the store or rollout dir."""
    candidates = [Path(ref)] if Path(ref).is_absolute() else []
    if store is not None:
        candidates += [store / ref, store / ns / name / ref]
    return next((c for c in candidates if c.is_file()), None)


def check_all(expect: dict[str, Any], obs: Observed, ns: str, name: str) -> list[Check]:
    """One Check per expect key, in the order of the file."""
    out: list[Check] = []
    status = obs.status
    weights = [w for _, w in obs.router_changes]
    for key, want in expect.items():
        if key == "phase":
            out.append(Check(key, obs.phase == want, f"final phase {obs.phase!r}, want {want!r}"))
        elif key == "withinSeconds":
            ok = obs.finished_in is not None and obs.finished_in <= want
            seen = "never" if obs.finished_in is None else f"in {obs.finished_in:.1f}s"
            out.append(Check(key, ok, f"finished {seen}, limit {want:g}s"))
        elif key == "maxWeight":
            assert isinstance(want, Bounds)
            top = max(weights, default=0)
            out.append(Check(key, want.holds(top), f"highest canary weight {top}, want {want.describe()}"))
        elif key == "finalWeight":
            assert isinstance(want, Bounds)
            last = weights[-1] if weights else 0
            out.append(Check(key, want.holds(last), f"final canary weight {last}, want {want.describe()}"))
        elif key == "weightsSeen":
            applied = weights_seen(obs.router_changes)
            out.append(Check(key, applied == want, f"router applied {applied}, want {want}"))
        elif key == "weightHeldSeconds":
            weight, at_least = want
            held = longest_hold(obs.router_changes, weight, obs.end)
            out.append(Check(key, held >= at_least, f"weight {weight} held at most {held:.1f}s in one go, "
                                                    f"want >= {at_least:g}s"))
        elif key == "neverAdvancedWhile":
            out.append(_never_advanced(want, obs))
        elif key == "neverPromoted":
            ok = obs.promoted_seen != want
            out.append(Check(key, ok, "the target ran the new template at some point" if obs.promoted_seen
                             else "the target never ran the new template"))
        elif key == "targetImages":
            got = {k: obs.target_images.get(k) for k in want}
            out.append(Check(key, got == want, f"target images {obs.target_images}, want {want}"))
        elif key == "canaryWorkload":
            seen = "present" if obs.canary_present else "absent"
            out.append(Check(key, seen == want, f"canary Deployment {seen}, want {want}"))
        elif key == "history":
            actions = [e.get("action") for e in status.get("history") or [] if isinstance(e, dict)]
            out.append(Check(key, actions == want, f"status.history actions {actions}, want {want}"))
        elif key == "events":
            reasons = [e.get("reason") for e in obs.events if _about(e, name)]
            missing = [r for r in want if r not in reasons]
            detail = (f"missing {missing}; " if missing else "") + \
                f"reasons on the SafeRollout: {sorted(set(filter(None, reasons)))}"
            out.append(Check(key, not missing, detail))
        elif key == "conditionSeen":
            hits = [c for c in obs.conditions_seen if c[0] == want["type"] and c[1] == want["reason"]
                    and ("status" not in want or c[2] == want["status"])]
            out.append(Check(key, bool(hits), f"want {want}; seen {sorted(obs.conditions_seen)}"))
        elif key == "incidentReport":
            ref = _sub(status, "incident").get("reportRef")
            present = obs.report is not None
            detail = (f"status.incident.reportRef={ref!r}, ConfigMap {obs.report_name!r} "
                      f"{'exists' if present else 'not found'}")
            out.append(Check(key, present == (want == "present"), detail))
        elif key == "preRestoreDump":
            ref = _sub(status, "restore").get("preRestoreDump")
            path = resolve_dump(obs.store, ns, name, str(ref)) if ref else None
            detail = f"status.restore.preRestoreDump={ref!r}" + (f", file {path}" if path else ", no such file")
            out.append(Check(key, (path is not None) == (want == "present"), detail))
        elif key == "snapshotTakenOnce":
            snaps = snapshot_files(obs.store, ns, name, "snap-*.dump")
            ok = (len(snaps) == 1) == want
            out.append(Check(key, ok, f"{len(snaps)} snap-*.dump file(s) in the store: {[p.name for p in snaps]}"))
        elif key == "database":
            if obs.checksum_error:
                out.append(Check(key, False, f"could not compute the checksum: {obs.checksum_error}"))
            else:
                same = obs.checksum_before is not None and obs.checksum_before == obs.checksum_after
                out.append(Check(key, same, f"checksum before {str(obs.checksum_before)[:12]}, "
                                            f"after {str(obs.checksum_after)[:12]}"))
        elif key == "restoreAttempts":
            assert isinstance(want, Bounds)
            attempts = int(_sub(status, "restore").get("attempts") or 0)
            out.append(Check(key, want.holds(attempts), f"status.restore.attempts={attempts}, want {want.describe()}"))
        elif key == "secretAbsentFrom":
            out.append(_secret_absent(want, obs))
        elif key == "serviceSelector":
            for svc, equals in want:
                selector = obs.selectors.get(svc)
                detail = f"Service {svc} " + ("not found" if selector is None else f"selects {selector}") + f", want {equals}"
                out.append(Check(f"{key} {svc}", selector == equals, detail))
        elif key == "targetUnchanged":
            changes = obs.target_changes
            ok = (not changes) == want
            out.append(Check(key, ok, "; ".join(changes) if changes else
                             "the target's spec never changed and all its pods stayed available"))
        elif key == "eventsInOrder":
            out.append(events_in_order(want, [e for e in obs.events if _about(e, name)]))
        elif key == "notifications":
            out += _notifications(want, obs)
        elif key == "pathAbsent":
            for path in want:
                found = obs.paths_present.get(path, "not looked at")
                out.append(Check(f"{key} {path}", found is None,
                                 "nothing there at the end" if found is None else f"{found}"))
        elif key == "incidentReportContains":
            text = "\n".join(str(v) for v in ((obs.report or {}).get("data") or {}).values())
            missing = [w for w in want if w not in text]
            detail = (f"report {obs.report_name!r} lacks {missing}" if missing else
                      f"report {obs.report_name!r} contains {want}") if obs.report else "no incident report"
            out.append(Check(key, obs.report is not None and not missing, detail))
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
