"""Back-testing: what a rollout's analysis would have decided over a past window of Prometheus history.

The live decision core runs on a simulated clock, driven by the same loop as the operator (core.loop.drive), and
every metric is measured by the operator's own providers, templates and label settings (adapters.metrics). Only the
Prometheus API under them is replaced: each query is fetched once over the whole window with `query_range` at the
analysis interval (an instant query at each step, as Prometheus evaluates it) and the replay reads the step at or
just before its simulated time; a judge's samples come from a `query_range` at the judge's own step. A week of
history is a few range requests, not one request per analysis. Nothing is written to the cluster.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from saferollout.adapters.metrics import context, measure_all
from saferollout.adapters.prometheus import PrometheusApi, PrometheusProvider, QueryFailed
from saferollout.config import OperatorConfig
from saferollout.core import actions as a
from saferollout.core.clock import iso, parse_time
from saferollout.core.durations import format_duration
from saferollout.core.engine import Inputs, Settings
from saferollout.core.loop import drive
from saferollout.core.models import (
    Metric,
    Phase,
    PodTemplate,
    SafeRolloutSpec,
    SafeRolloutStatus,
    Verdict,
)

MAX_POINTS = 10_000  # Prometheus refuses a range of more than 11,000 points per series
Series = list[tuple[float, str]]


class BacktestError(ValueError):
    """Input the back-test cannot replay, in words for the user."""


# ------------------------------------------------------------------------------------- Prometheus, from history


@dataclass
class _Fetched:
    series: list[tuple[dict[str, str], dict[float, str]]]
    error: str | None = None


class HistoryApi(PrometheusApi):
    """PrometheusApi's two calls, answered from range data of [start, end] fetched once per query and step."""

    def __init__(self, api: PrometheusApi, start: datetime, end: datetime, step: float) -> None:
        self.real = api
        self.start, self.end, self.step = start, end, step
        self.now = start
        self.cache: dict[tuple[str, float], _Fetched] = {}
        self.requests = 0  # range requests sent to Prometheus

    def origin(self, step: float) -> float:
        """Steps fall on multiples of the step since the epoch, whatever the window: every release in it and every
        back-test of it read the same evaluations."""
        return math.floor(self.start.timestamp() / step) * step

    def fetch(self, text: str, step: float) -> _Fetched:
        key = (text, step)
        if key in self.cache:
            return self.cache[key]
        got: dict[str, tuple[dict[str, str], dict[float, str]]] = {}
        out = _Fetched([])
        t0, end = self.origin(step), self.end.timestamp()
        try:
            while t0 <= end:
                t1 = min(end, t0 + step * (MAX_POINTS - 1))
                self.requests += 1
                for s in self.real.query_range(text, _dt(t0), _dt(t1), f"{step:g}s"):
                    labels = dict(s.get("metric") or {})
                    entry = got.setdefault(repr(sorted(labels.items())), (labels, {}))
                    entry[1].update((round(float(ts), 3), str(v)) for ts, v in s.get("values") or [])
                t0 = t1 + step
        except QueryFailed as e:
            out.error = str(e)
        out.series = list(got.values())
        self.cache[key] = out
        return out

    def query(self, text: str) -> list[Any]:
        """The instant query at the replay's time: the latest step at or before it, as the last evaluation was."""
        fetched = self.fetch(text, self.step)
        if fetched.error:
            raise QueryFailed(fetched.error)
        t0 = self.origin(self.step)
        at = round(t0 + math.floor((self.now.timestamp() - t0) / self.step + 1e-9) * self.step, 3)
        return [{"metric": labels, "value": [at, points[at]]} for labels, points in fetched.series if at in points]

    def query_range(self, text: str, start: datetime, end: datetime, step: str) -> list[Any]:
        fetched = self.fetch(text, float(step.rstrip("s")))
        if fetched.error:
            raise QueryFailed(fetched.error)
        lo, hi = start.timestamp(), end.timestamp()
        out = []
        for labels, points in fetched.series:
            values = [[ts, v] for ts, v in sorted(points.items()) if lo <= ts <= hi]
            if values:
                out.append({"metric": labels, "values": values})
        return out


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def history_provider(cfg: OperatorConfig, url: str, start: datetime, end: datetime, step: float,
                     api: PrometheusApi | None = None) -> tuple[PrometheusProvider, HistoryApi]:
    """The operator's provider (its templates and label settings), ungrouped, over history instead of now."""
    prom = PrometheusProvider(url, cfg.prometheus_timeout, cfg.labels, group_ttl=0.0, pool_size=1)
    hist = HistoryApi(api or prom.api, start, end, step)
    prom.api = hist
    prom.clock = lambda: hist.now
    return prom, hist


# ------------------------------------------------------------------------------------------------- the replay


@dataclass
class Entry:
    at: datetime
    kind: str  # analysis, weight, phase, event
    text: str


@dataclass
class Outcome:
    name: str
    start: datetime
    phase: str  # the phase the replay ended in ("Progressing" and the like: the window ended first)
    ended_at: datetime
    timeline: list[Entry] = field(default_factory=list)
    analyses: int = 0
    metric: str | None = None  # the metric whose breach decided, if one did
    first_bad: datetime | None = None  # its first sample that breached its threshold
    decided_at: datetime | None = None
    paused: str | None = None
    window_ended: bool = False  # the replay's time ran out before the rollout ended

    @property
    def detected(self) -> bool:
        """The policy acted on the release: rolled it back, or stopped it for a person."""
        return self.phase == Phase.rolled_back or self.paused == "breach"

    @property
    def time_to_detect(self) -> float | None:
        if self.decided_at is None or self.first_bad is None:
            return None
        return max(0.0, (self.decided_at - self.first_bad).total_seconds())

    def summary(self) -> str:
        head = f"{self.name}: {self.phase}" + (f" ({self.paused})" if self.paused else "")
        head += f" at +{_rel(self.ended_at, self.start)}" + (" (end of the window)" if self.window_ended else "")
        head += f", {self.analyses} analyses"
        if self.metric:
            head += f"; decided by {self.metric} at +{_rel(self.decided_at, self.start)}"
            if self.first_bad is not None:
                head += f", first bad sample at +{_rel(self.first_bad, self.start)}, time to detect " \
                        f"{format_duration(self.time_to_detect or 0.0)}"
        return head


def _rel(t: datetime | None, start: datetime) -> str:
    return format_duration((t - start).total_seconds()) if t is not None else "-"


def replayable(spec: SafeRolloutSpec) -> tuple[SafeRolloutSpec, list[str]]:
    """The spec as the replay runs it, and what it left out: an httpGet probe has no history, a database is not
    touched (its snapshot and restore are answered as done), and a spec without `template` gets a stand-in one
    (the version's content does not matter to the analysis, only its metrics do)."""
    notes: list[str] = []
    data = spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    metrics = data.get("analysis", {}).get("metrics", [])
    kept = [m for m in metrics if "httpGet" not in m]
    for m in metrics:
        if "httpGet" in m:
            notes.append(f"metric {m['name']}: an httpGet probe has no history; left out")
    if metrics and not kept:
        raise BacktestError("every metric is an httpGet probe: there is nothing in Prometheus to replay")
    data.setdefault("analysis", {})["metrics"] = kept
    if data.pop("migration", None) is not None:
        notes.append("spec.migration left out: a back-test runs no Job and touches no database")
    if data.pop("paused", False):
        notes.append("spec.paused ignored: the replay runs the rollout")
    if "template" not in data:
        data["template"] = PodTemplate.model_validate({"containers": [{"name": "backtest", "image": "backtest"}]}
                                                      ).model_dump(by_alias=True, exclude_none=True, mode="json")
    return SafeRolloutSpec.model_validate(data), notes


@dataclass
class Replay:
    """One rollout of `spec` that starts at `start`: the world's answers are all "done", except Prometheus'."""

    spec: SafeRolloutSpec
    prom: PrometheusProvider
    hist: HistoryApi
    name: str
    namespace: str
    rate_window: str
    settings: Settings
    templates: list[a.TemplateRead] = field(default_factory=list)  # the shared analysis templates it names
    _images: dict[str, str] = field(default_factory=dict)  # the target's, as the replay's promotion left them

    def run(self, start: datetime, until: datetime, label: str | None = None) -> Outcome:
        out = Outcome(label or self.name, start, "Pending", start)
        assert self.spec.template is not None  # the stable version has the containers the new one changes
        self._images = {c.name: "stable" for c in self.spec.template.containers}
        self.hist.now = now = start
        status = SafeRolloutStatus()
        seen: dict[str, Any] = {"runs": 0, "weight": 0, "phase": None}

        def inputs(results: list[a.Result]) -> Inputs:
            return Inputs(now=now, name=self.name, generation=1, results=results, namespace=self.namespace,
                          templates=self.templates)

        def execute(act: a.Action) -> a.Result | None:
            return self._execute(act, now, out)

        def write(s: SafeRolloutStatus) -> None:
            if s.analysis.runs != seen["runs"] and s.analysis.metrics:
                seen["runs"] = s.analysis.runs
                out.analyses += 1
                out.timeline.append(Entry(now, "analysis", f"stage {s.stage or '-'} at {s.weight}%: " + "; ".join(
                    f"{m.name}={_val(m.value)} {m.verdict.value}" + (" (dry run)" if m.dry_run else "")
                    + (f" [{m.message}]" if m.message and m.verdict != Verdict.passed else "")
                    for m in s.analysis.metrics)))
            if s.weight != seen["weight"]:
                seen["weight"] = s.weight
                out.timeline.append(Entry(now, "weight", f"canary weight {s.weight}%"))
            if s.phase != seen["phase"]:
                seen["phase"] = s.phase
                reason = f" ({s.pause_reason})" if s.pause_reason else ""
                out.timeline.append(Entry(now, "phase", f"{s.phase}{reason}: {s.message or ''}".rstrip(": ")))

        for _ in range(1_000_000):
            decision = drive(self.spec, status, inputs, execute, write, self.settings)
            status = decision.status
            phase = status.phase
            if phase is not None and phase.terminal:
                break
            if phase == Phase.paused and status.pause_reason != "inconclusive":
                out.paused = status.pause_reason
                break
            if decision.wake_after is None:
                break
            nxt = now + timedelta(seconds=max(decision.wake_after, 0.05))
            if nxt > until:
                now = until
                break
            now = self.hist.now = nxt
        out.phase, out.ended_at = str(status.phase or "Pending"), now
        out.paused = status.pause_reason if status.phase == Phase.paused else None
        out.window_ended = not (status.phase is not None and status.phase.terminal) and out.paused != "breach"
        if status.incident is not None and status.incident.metric:
            out.metric = status.incident.metric
            out.decided_at = parse_time(status.incident.decided_at) if status.incident.decided_at else now
        elif out.paused == "breach":
            out.metric = next((h.metric for h in reversed(status.history) if h.action == "pause"), None)
            out.decided_at = now
        if out.metric is not None:
            out.first_bad = self.first_bad(out.metric, start, out.decided_at or now,
                                           status.incident.first_failed_at if status.incident else None)
        return out

    def _execute(self, act: a.Action, now: datetime, out: Outcome) -> a.Result | None:
        match act:
            case a.QueryMetrics():
                ctx = context(self.spec, self.namespace, self.name, act.target, self.rate_window)
                return measure_all(self.prom, self.spec, act, ctx, now)
            case a.ReadTarget():
                return a.TargetState(dict(self._images), True, None)
            case a.SetTargetImages():  # the promotion: the target runs the new version from now on
                self._images = dict(act.images)
                return a.Outcome(act, True)
            case a.EnsureCanary():
                return a.CanaryState(True)
            case a.TakeSnapshot() | a.VerifySnapshot():
                return a.SnapshotResult(act.snapshot_id, True, size_bytes=0, sha256="0" * 64, location="backtest",
                                        tables=0, taken_at=iso(now))
            case a.RestoreDatabase() | a.CheckRestored():
                return a.RestoreResult(act.snapshot_id, True, "not restored: a back-test touches no database",
                                       verified=True)
            case a.WriteReport():
                return a.ReportWritten(act.name)
            case a.Event():
                if act.type == "Warning" or act.reason in ("StepBack", "Promoted", "RolledBack"):
                    out.timeline.append(Entry(now, "event", f"{act.reason}: {act.message}"))
                return None
            case a.Notify():
                return None
            case _:
                return a.Outcome(act, True)

    def first_bad(self, name: str, start: datetime, until: datetime, failing_since: str | None) -> datetime | None:
        """The first step of the window whose value breaches the metric's threshold; a comparison (baseline,
        judge) has no one value to scan, and a shared template's is resolved inside the core: for those the first
        analysis that failed stands for it."""
        metric = next((m for m in self.spec.analysis.metrics if m.name == name), None)
        if metric is None or metric.kind != "value" or (metric.query is None and metric.template is None):
            return parse_time(failing_since) if failing_since else None  # a comparison, or a template's metric
        ctx = context(self.spec, self.namespace, self.name, "canary", self.rate_window)
        try:
            text = self.prom.query_text(metric, ctx)
        except ValueError:
            return None
        fetched = self.hist.fetch(text, self.hist.step)
        if len(fetched.series) != 1:
            return parse_time(failing_since) if failing_since else None
        for ts, raw in sorted(fetched.series[0][1].items()):
            if start.timestamp() <= ts <= until.timestamp() and _breaches(metric, raw):
                return _dt(ts)
        return parse_time(failing_since) if failing_since else None


def _breaches(metric: Metric, raw: str) -> bool:
    try:
        value = float(raw)
    except ValueError:
        return False
    return metric.verdict(value) == Verdict.fail


def _val(v: float | None) -> str:
    return "no data" if v is None else f"{v:.4g}"


# ------------------------------------------------------------------------------------------ releases, sweeps


@dataclass(frozen=True)
class Release:
    name: str
    at: datetime
    label: str | None = None  # good | bad


def templates_from(docs: list[dict[str, Any]], namespace: str) -> list[a.TemplateRead]:
    """The AnalysisTemplates and ClusterAnalysisTemplates given in the rollout's file, as the handler would have
    read them from the cluster; one named and not given is Blocked in the replay as it would be live."""
    out = []
    for d in docs:
        kind = d.get("kind")
        if kind in ("AnalysisTemplate", "ClusterAnalysisTemplate"):
            meta = d.get("metadata") or {}
            out.append(a.TemplateRead(str(kind), namespace if kind == "AnalysisTemplate" else None,
                                      str(meta.get("name") or ""), d.get("spec") if isinstance(d.get("spec"), dict)
                                      else None, str(meta.get("resourceVersion") or "given")))
    return out


def releases_from(doc: Any) -> list[Release]:
    """`releases: [{name, at, label: good|bad}]`: the labelled past releases a sweep is scored against."""
    items = doc.get("releases") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise BacktestError("the releases file needs `releases:`, a list of {name, at, label: good|bad}")
    out = []
    for i, r in enumerate(items):
        if not isinstance(r, dict) or "at" not in r:
            raise BacktestError(f"releases[{i}]: needs `at` (an RFC 3339 time)")
        label = r.get("label")
        if label not in (None, "good", "bad"):
            raise BacktestError(f"releases[{i}]: label must be good or bad, not {label!r}")
        try:
            at = parse_time(str(r["at"]).replace(" ", "T"))
        except ValueError:
            raise BacktestError(f"releases[{i}].at: not an RFC 3339 time: {r['at']!r}") from None
        out.append(Release(str(r.get("name") or f"release-{i + 1}"), at, label))
    return sorted(out, key=lambda r: r.at)


def with_value(spec: SafeRolloutSpec, param: str, value: str) -> SafeRolloutSpec:
    """The spec with one setting changed: `failureLimit`, `inconclusiveLimit`, `interval` (analysis-wide) or
    `<metric>.<field>` (`error-rate.max`, `latency.judge.confidence`), validated like the spec itself."""
    data = spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    data = copy.deepcopy(data)
    parsed: Any = _number(value)
    if param in ("failureLimit", "inconclusiveLimit", "interval"):
        data["analysis"][param] = parsed
    else:
        name, _, path = param.partition(".")
        metric = next((m for m in data["analysis"].get("metrics", []) if m["name"] == name), None)
        if metric is None or not path:
            known = ", ".join(m["name"] for m in data["analysis"].get("metrics", []))
            raise BacktestError(f"--sweep {param}: not failureLimit, inconclusiveLimit, interval or "
                                f"<metric>.<field> of a metric of the rollout ({known})")
        node = metric
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = parsed
    try:
        return SafeRolloutSpec.model_validate(data)
    except ValueError as e:
        raise BacktestError(f"--sweep {param}={value}: {e}") from None


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass
class SweepRow:
    value: str
    outcomes: list[tuple[Release, Outcome]]

    def counts(self) -> tuple[int, int, int, int, int, float | None]:
        """(bad detected, bad, good rolled back, good paused, good, median time to detect)."""
        bad = [o for r, o in self.outcomes if r.label == "bad"]
        good = [o for r, o in self.outcomes if r.label == "good"]
        ttd = [o.time_to_detect for o in bad if o.detected and o.time_to_detect is not None]
        return (sum(o.detected for o in bad), len(bad), sum(o.phase == Phase.rolled_back for o in good),
                sum(o.paused == "breach" for o in good), len(good), statistics.median(ttd) if ttd else None)


@dataclass
class Backtest:
    """The rollout's replays over one window of history, sharing one fetch of every query."""

    spec: SafeRolloutSpec
    cfg: OperatorConfig
    url: str
    start: datetime
    end: datetime
    name: str = "rollout"
    namespace: str = "default"
    notes: list[str] = field(default_factory=list)
    wall: float = 0.0
    api: PrometheusApi | None = None  # where history is read from; None: Prometheus at `url`
    templates: list[a.TemplateRead] = field(default_factory=list)  # given beside the rollout (no cluster is read)
    _hist: HistoryApi | None = None

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise BacktestError("--to must be after --from")
        self.spec, self.notes = replayable(self.spec)

    def _replay(self, spec: SafeRolloutSpec) -> Replay:
        step = spec.analysis.interval_seconds
        if self._hist is None or self._hist.step != step:
            prom, hist = history_provider(self.cfg, self.url, self.start, self.end, step, self.api)
            if self._hist is not None:
                hist.cache, hist.requests = self._hist.cache, self._hist.requests
            self._hist, self._prom = hist, prom
        return Replay(spec, self._prom, self._hist, self.name, self.namespace, self.cfg.rate_window,
                      self.cfg.settings, self.templates)

    @property
    def range_requests(self) -> int:
        return self._hist.requests if self._hist is not None else 0

    def once(self, spec: SafeRolloutSpec | None = None) -> Outcome:
        began = time.perf_counter()
        out = self._replay(spec or self.spec).run(self.start, self.end)
        self.wall += time.perf_counter() - began
        return out

    def releases(self, releases: Iterable[Release], spec: SafeRolloutSpec | None = None
                 ) -> list[tuple[Release, Outcome]]:
        """Each release replayed from its time until it ends, or the next release starts (which replaces it)."""
        began = time.perf_counter()
        spec = spec or self.spec
        rs = [r for r in releases if self.start <= r.at < self.end]
        replay = self._replay(spec)
        out = []
        for i, r in enumerate(rs):
            until = rs[i + 1].at if i + 1 < len(rs) else self.end
            out.append((r, replay.run(r.at, until, r.name)))
        self.wall += time.perf_counter() - began
        return out

    def sweep(self, param: str, values: list[str], releases: list[Release]) -> list[SweepRow]:
        rows = []
        for v in values:
            rows.append(SweepRow(v, self.releases(releases, with_value(self.spec, param, v))))
        return rows


def render_timeline(out: Outcome) -> str:
    lines = [f"{'+' + _rel(e.at, out.start):>9}  {e.kind:<8}  {e.text}" for e in out.timeline]
    return "\n".join([*lines, out.summary()])


def render_sweep(param: str, rows: list[SweepRow], fmt: Callable[[float | None], str] = lambda v:
                 format_duration(v) if v is not None else "-") -> str:
    header = [param, "DETECTED", "FALSE ROLLBACKS", "FALSE PAUSES", "MEDIAN TIME TO DETECT", "MISSED"]
    table = [header]
    for row in rows:
        det, bad, fr, fp, good, ttd = row.counts()
        missed = ",".join(r.name for r, o in row.outcomes if r.label == "bad" and not o.detected) or "-"
        table.append([row.value, f"{det}/{bad}", f"{fr}/{good}", f"{fp}/{good}", fmt(ttd), missed])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table)
