"""The operator's own metrics (/metrics) and liveness (/healthz), derived from the status transitions it writes."""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from saferollout.core.models import PHASE_STEPS, Phase, SafeRolloutStatus

ROLLOUTS = Gauge("saferollout_rollouts", "SafeRollouts by phase", ["phase"])
ANALYSIS = Counter("saferollout_analysis_results_total", "Analysis verdicts", ["metric", "verdict", "dry_run"])
ANALYSIS_VALUE = Gauge("saferollout_analysis_value", "Latest value of each analysed metric of each rollout (no "
                       "series while it has no value)", ["namespace", "rollout", "metric"])
ANALYSIS_VERDICT = Gauge("saferollout_analysis_verdict", "1 for the latest verdict of each analysed metric of each "
                         "rollout, 0 for the other two", ["namespace", "rollout", "metric", "verdict", "dry_run"])
ROLLBACKS = Counter("saferollout_rollbacks_total", "Rollbacks started", ["reason"])
ABORTS = Counter("saferollout_aborts_total", "Rollouts aborted by a person (the abort command)")
PREVENTED = Counter("saferollout_prevented_incidents_total", "Rollbacks decided by a failed analysis while some "
                    "users had never been sent the new version (before promotion, canary weight below 100)", ["metric"])
TIME_TO_DETECT = Histogram("saferollout_time_to_detect_seconds", "First failed check to the rollback decision",
                           buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600))
TIME_TO_REVERT = Histogram("saferollout_time_to_revert_seconds", "Rollback decision to traffic back on stable",
                           buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
RECONCILE_ERRORS = Counter("saferollout_reconcile_errors_total", "Reconciles that raised")
RECONCILE_SECONDS = Histogram("saferollout_reconcile_duration_seconds", "One reconcile (all of its steps)",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

STATUS_WRITE_SECONDS = Histogram("saferollout_status_write_seconds", "One write of a rollout's status",
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
ANALYSIS_LAG = Histogram("saferollout_analysis_lag_seconds", "How late an analysis ran after it was due",
                         buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1, 1.25, 1.5, 2, 3, 5, 10, 30))
PROM_QUERIES = Counter("saferollout_prometheus_queries_total", "Queries sent to Prometheus")
TARGET_WRITES = Counter("saferollout_target_writes_total", "Writes to target Deployments of rollouts without "
                        "spec.template (label, hold, release)", ["action"])
API_REQUESTS = Counter("saferollout_api_requests_total", "Requests the adapters sent to the API server", ["verb"])

_phases: dict[str, str] = {}
_lock = threading.Lock()
# per rollout (namespace/name), the label values of its analysis series now exported: bounded by rollouts x
# metrics, and removed when the rollout ends, is deleted or is no longer worked by this replica
_series: dict[str, tuple[set[tuple[str, ...]], set[tuple[str, ...]]]] = {}
VERDICTS = ("pass", "fail", "inconclusive")
ANALYSING = (Phase.progressing, Phase.paused, Phase.promoting)  # the phases whose analysis series are exported
_last_tick = time.monotonic()


def _seconds(a: str | None, b: str | None) -> float | None:
    if not a or not b:
        return None
    ta, tb = (datetime.fromisoformat(x.replace("Z", "+00:00")) for x in (a, b))
    return max(0.0, (tb - ta).total_seconds())


def observe(key: str, old: SafeRolloutStatus, new: SafeRolloutStatus, interval: float | None = None) -> None:
    """Count what changed between two writes of one rollout's status."""
    if interval and old.analysis.next_run and new.analysis.last_run and new.analysis.last_run != old.analysis.last_run:
        late = _seconds(old.analysis.next_run, new.analysis.last_run)
        if late is not None and late < 2 * interval:  # after a pause or a stage change, a run is not late
            ANALYSIS_LAG.observe(max(0.0, late))
    if new.analysis.runs > old.analysis.runs or (new.analysis.last_run != old.analysis.last_run and new.analysis.metrics):
        for m in new.analysis.metrics:
            ANALYSIS.labels(m.name, m.verdict.value, _flag(m.dry_run)).inc()
        if new.phase in ANALYSING:
            _export(key, new)
    if new.phase not in ANALYSING:  # ended, rolling back (its verification is not the rollout's analysis), or a
        forget_analysis(key)        # new attempt before its first stage
    if new.phase == Phase.rolling_back and old.phase != Phase.rolling_back:
        reason = (new.incident.reason if new.incident else None) or "unknown"
        ROLLBACKS.labels(reason).inc()
        if reason == "Aborted":  # the abort command, also after a breach paused it (history is capped: not it)
            ABORTS.inc()
        if prevented(old, new):
            assert new.incident is not None
            PREVENTED.labels(new.incident.metric or "unknown").inc()
    inc_old, inc = old.incident, new.incident
    if inc and inc.traffic_reverted_at and not (inc_old and inc_old.traffic_reverted_at):
        detect = _seconds(inc.first_failed_at, inc.decided_at)
        revert = _seconds(inc.decided_at, inc.traffic_reverted_at)
        if detect is not None:
            TIME_TO_DETECT.observe(detect)
        if revert is not None:
            TIME_TO_REVERT.observe(revert)
    set_phase(key, new.phase.value if new.phase else None)


def prevented(old: SafeRolloutStatus, new: SafeRolloutStatus) -> bool:
    """A rollback that prevented an incident: decided by a failed analysis (not a person, not missing data, not a
    refused action) before the new version had every user: before promotion (the target never ran it) and at a
    canary weight below 100 (a blue-green preview counts, its weight is 0; the post-switch stage does not)."""
    inc = new.incident
    return inc is not None and inc.reason == "AnalysisFailed" and new.promoted_at is None \
        and (inc.weight_at_breach or 0) < 100 and old.step not in PHASE_STEPS[Phase.promoting]


def _flag(dry_run: bool) -> str:
    return "true" if dry_run else "false"


def _export(key: str, status: SafeRolloutStatus) -> None:
    """The latest value and verdict of each metric of one rollout; series of metrics it no longer has go."""
    namespace, _, rollout = key.partition("/")
    values: set[tuple[str, ...]] = set()
    verdicts: set[tuple[str, ...]] = set()
    for m in status.analysis.metrics:
        if m.value is not None:
            values.add((namespace, rollout, m.name))
            ANALYSIS_VALUE.labels(namespace, rollout, m.name).set(m.value)
        for v in VERDICTS:
            verdicts.add((namespace, rollout, m.name, v, _flag(m.dry_run)))
            ANALYSIS_VERDICT.labels(namespace, rollout, m.name, v, _flag(m.dry_run)).set(
                1 if m.verdict.value == v else 0)
    with _lock:
        old_values, old_verdicts = _series.get(key, (set(), set()))
        _series[key] = (values, verdicts)
    for labels in old_values - values:
        _remove(ANALYSIS_VALUE, labels)
    for labels in old_verdicts - verdicts:
        _remove(ANALYSIS_VERDICT, labels)


def _remove(gauge: Gauge, labels: tuple[str, ...]) -> None:
    with contextlib.suppress(KeyError):  # never exported, or already removed
        gauge.remove(*labels)


def forget_analysis(key: str) -> None:
    """Remove one rollout's analysis series: it ended, it was deleted, or another replica works it now."""
    with _lock:
        values, verdicts = _series.pop(key, (set(), set()))
    for labels in values:
        _remove(ANALYSIS_VALUE, labels)
    for labels in verdicts:
        _remove(ANALYSIS_VERDICT, labels)


def forget(key: str) -> None:
    """A deleted rollout: its phase and its analysis series."""
    set_phase(key, None)
    forget_analysis(key)


def set_phase(key: str, phase: str | None) -> None:
    with _lock:
        if phase is None:
            _phases.pop(key, None)
        else:
            _phases[key] = phase
        counts: dict[str, int] = {}
        for p in _phases.values():
            counts[p] = counts.get(p, 0) + 1
        for p in ("Pending", "Preflight", "Progressing", "Paused", "Promoting", "Succeeded", "RollingBack",
                  "RolledBack", "Failed", "Blocked"):
            ROLLOUTS.labels(p).set(counts.get(p, 0))


def heartbeat() -> None:
    global _last_tick
    _last_tick = time.monotonic()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/metrics"):
            body, ctype, code = generate_latest(), CONTENT_TYPE_LATEST, 200
        elif self.path.startswith("/healthz"):
            stale = bool(_phases) and time.monotonic() - _last_tick > 120
            body, ctype, code = (b"stale\n" if stale else b"ok\n"), "text/plain", 503 if stale else 200
        else:
            body, ctype, code = b"not found\n", "text/plain", 404
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # probes every few seconds are not news
        return


def serve(port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), _Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
