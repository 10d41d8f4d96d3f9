"""The pure decision core: (spec, status, results, clock) -> (next status, actions).

The handler calls `decide` in a loop: it writes the returned status (so intent is recorded before anything acts),
executes the actions, and feeds their results into the next call. Idempotent actions are re-issued until their result
confirms them in status; the two destructive ones (snapshot, restore) write a marker first, and on resume the core
checks the world instead of acting again.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from saferollout.core import actions as a
from saferollout.core.durations import format_duration, parse_duration
from saferollout.core.judge import judge
from saferollout.core.models import (
    Baseline,
    BreachAction,
    Condition,
    HistoryEntry,
    IncidentStatus,
    InconclusiveAction,
    Metric,
    MetricStatus,
    Phase,
    RestoreStatus,
    SafeRolloutSpec,
    SafeRolloutStatus,
    Severity,
    SnapshotStatus,
    Stage,
    Verdict,
)
from saferollout.core.report import incident_report

DEFAULT_STAGES: tuple[Stage, ...] = (
    Stage(weight=5, duration="2m"),
    Stage(weight=25, duration="3m"),
    Stage(weight=50, duration="3m"),
    Stage(weight=100, duration="5m"),
)
RESTORE_BACKOFF_SECONDS = 5.0
COMMANDS = ("abort", "promote", "resume", "retry")
HISTORY_KEPT = 50  # the status must stay small: the oldest breach actions go first


@dataclass(frozen=True)
class Settings:
    """Operator-wide defaults (Helm values); the spec overrides them."""

    default_stages: tuple[Stage, ...] = DEFAULT_STAGES
    # after the canary's weight goes down (a stepBack), judge only data measured at the new weight: wait this
    # long (the metrics' rate window) before the first analysis
    settle_seconds: float = 0.0
    # an analysis due within this much runs now rather than on a later tick (ticks have jitter)
    due_slack: float = 0.0
    # while the world is catching up (a workload rolling out, a write refused) ask again this often
    poll_seconds: float = 1.0


@dataclass
class Inputs:
    now: datetime
    name: str = "rollout"
    generation: int | None = None
    command: str | None = None  # "<verb>/<id>" from the saferollout.dev/command annotation
    results: list[a.Result] = field(default_factory=list)


@dataclass
class Decision:
    status: SafeRolloutStatus
    actions: list[a.Action]
    # seconds until this rollout needs deciding again if nothing changes; None: only when its object changes
    wake_after: float | None = None


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def template_hash(spec: SafeRolloutSpec) -> str:
    body = json.dumps(spec.template.wire(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def decide(spec: SafeRolloutSpec, status: SafeRolloutStatus, inputs: Inputs,
           settings: Settings | None = None) -> Decision:
    """Never raises: an error inside the core is itself an outcome (traffic back to stable, a condition naming it),
    never an exception that would leave the rollout at its weight on every reconcile."""
    settings = settings or Settings()
    try:
        run = _Run(spec, status.model_copy(deep=True), inputs, settings)
        run.step()
        del run.s.history[:-HISTORY_KEPT]
        finite(run.s)
        return Decision(run.s, run.actions, run.wake_after())
    except Exception as e:
        return fail_safe(status, inputs, settings, e)


def fail_safe(status: SafeRolloutStatus, inputs: Inputs, settings: Settings, error: Exception) -> Decision:
    """The core could not decide. A rollout that was moving goes back to stable through the ordinary rollback
    (whose steps need no stage, metric or clock arithmetic); one that fails even there, or had not started, ends
    Failed with all traffic on stable. Either way the condition names the error."""
    s = status.model_copy(deep=True)
    now = iso(inputs.now)
    text = f"internal error: {type(error).__name__}: {str(error)[:300]}"
    s.message = text
    s.observed_generation = inputs.generation
    actions: list[a.Action] = [a.SetWeight(0), a.Event("InternalError", text, "Warning")]
    if s.phase in _ACTIVE and s.phase is not None:
        s.phase, s.step, s.pause_reason = Phase.rolling_back, "RevertTraffic", None
        s.incident = s.incident or IncidentStatus(reason="InternalError", weight_at_breach=s.weight,
                                                  stage_at_breach=s.stage, decided_at=now)
        s.history.append(HistoryEntry(action="rollback", at=now, stage=s.stage, weight=s.weight, message=text))
        actions.append(a.Notify(Severity.critical.value, "rolling back: internal error", f"{inputs.name}: {text}"))
        wake: float | None = settings.poll_seconds
    else:
        if s.phase is not None and s.phase.terminal:  # nothing is moving: say it once, touch nothing
            said = any(c.type == "Degraded" and c.message == text for c in s.conditions)
            actions = [] if said else actions[1:]
        else:
            s.phase, s.step, s.failure, s.finished_at = Phase.failed, None, text, now
            actions.append(a.Notify(Severity.critical.value, "rollout failed: internal error", f"{inputs.name}: {text}"))
        wake = None
    _set_condition(s, "Degraded", "True", "InternalError", text, inputs)
    del s.history[:-HISTORY_KEPT]
    finite(s)
    return Decision(s, actions, wake)


def finite(model: BaseModel) -> None:
    """Status is strict JSON: a NaN or an infinity (a ratio against 0) becomes 'no value', never `Infinity`,
    which the API server refuses, and with it the write that every following action waits on."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, float) and not math.isfinite(value):
            setattr(model, name, None if info.default is None else 0.0)
        elif isinstance(value, BaseModel):
            finite(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, BaseModel):
                    finite(item)


def _set_condition(s: SafeRolloutStatus, type_: str, status: str, reason: str, message: str, inputs: Inputs) -> None:
    for c in s.conditions:
        if c.type == type_:
            if c.status != status:
                c.last_transition_time = iso(inputs.now)
            c.status, c.reason, c.message = status, reason, message  # type: ignore[assignment]
            c.observed_generation = inputs.generation
            return
    s.conditions.append(Condition(type=type_, status=status, reason=reason, message=message,
                                  last_transition_time=iso(inputs.now), observed_generation=inputs.generation))


_ACTIVE = (Phase.pending, Phase.preflight, Phase.progressing, Phase.paused, Phase.promoting)
_ORDER = {BreachAction.rollback: 4, BreachAction.step_back: 3, BreachAction.pause: 2, BreachAction.notify: 1}


class _Run:
    def __init__(self, spec: SafeRolloutSpec, status: SafeRolloutStatus, inputs: Inputs, settings: Settings) -> None:
        self.spec = spec
        self.s = status
        self.inp = inputs
        self.now = inputs.now
        self.actions: list[a.Action] = []
        self.settings = settings
        self.stages = list(spec.strategy.canary.stages or settings.default_stages) if spec.strategy.canary \
            else [Stage(weight=100, duration=spec.strategy.blue_green.post_promotion_duration)] \
            if spec.strategy.blue_green else list(settings.default_stages)
        self.interval = spec.analysis.interval_seconds
        self.polled: set[type] = set()  # "not ready yet" answers seen in this call: ask again next tick, not now
        self.analysed_now = False
        self.deadlines: list[float] = []  # seconds from now at which something waited for here becomes due

    # ------------------------------------------------------------------------------------------------ helpers

    def act(self, *actions: a.Action) -> None:
        self.actions.extend(actions)

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.act(a.Event(reason, message, "Warning" if warning else "Normal"))

    def notify(self, severity: Severity | str, title: str, text: str, report: str | None = None) -> None:
        self.act(a.Notify(Severity(severity).value, title, text, report))

    def condition(self, type_: str, status: str, reason: str, message: str = "") -> None:
        _set_condition(self.s, type_, status, reason, message, self.inp)

    def history(self, action: str, metric: str | None = None, message: str | None = None) -> None:
        self.s.history.append(HistoryEntry(action=action, at=iso(self.now), stage=self.s.stage,
                                           weight=self.s.weight, metric=metric, message=message))

    def since(self, stamp: str | None) -> float:
        return (self.now - parse_time(stamp)).total_seconds() if stamp else 0.0

    def stage_elapsed(self) -> float:
        running = self.since(self.s.stage_resumed_at) if self.s.stage_resumed_at else 0.0
        return self.s.stage_elapsed_seconds + running

    def analysis_due(self) -> bool:
        an = self.s.analysis
        if an.next_run:
            left = (parse_time(an.next_run) - self.now).total_seconds() - self.settings.due_slack
        else:  # a status written before nextRun existed
            left = self.interval - self.settings.due_slack - self.since(an.last_run) if an.last_run else 0.0
        if left > 1e-6:  # timestamps have microseconds: a hair early is on time
            self.wake_in(left)
            return False
        return True

    def ran(self, asked_at: str | None) -> None:
        """Analyses keep to a grid: the next is due one interval after the slot this one was due in, not one
        interval after it ran. Counted from the run, every delay would carry into all later runs, and rollouts
        served late together would stay bunched (due together, late together again: at 1000 rollouts, bursts of
        300 due in one second)."""
        at = asked_at or iso(self.now)
        slot = parse_time(self.s.analysis.next_run) if self.s.analysis.next_run else None
        if slot is None or abs((parse_time(at) - slot).total_seconds()) >= self.interval:
            slot = parse_time(at)  # the first run, or one after a long stall: a new grid from here
        self.s.analysis.last_run = at
        self.s.analysis.next_run = iso(slot + timedelta(seconds=self.interval))

    def wake_in(self, seconds: float) -> None:
        self.deadlines.append(seconds)

    def wake_after(self) -> float | None:
        """When to decide again if nothing changes: a timer need not tick every second for every rollout.

        Phases that wait on the world (workloads rolling out, snapshots, the rollback's steps) are polled; phases
        that wait on the clock (analysis, stage ends, a settle) sleep until their earliest deadline; a terminal
        phase, or a pause only a person can end, sleeps until the object changes.
        """
        phase = self.s.phase
        if phase is None or phase.terminal or (phase == Phase.paused and self.s.pause_reason != "inconclusive"):
            return None
        self.analysis_due()  # analysis goes on in every phase left: never sleep past the next one
        due = [*self.deadlines, self.interval]
        if self.polled or phase in (Phase.pending, Phase.preflight, Phase.rolling_back) or (
                phase == Phase.promoting and self.s.step != "Watch"):
            due.append(self.settings.poll_seconds)
        return max(0.0, min(due))

    def metric(self, name: str) -> Metric:
        return next(m for m in self.spec.analysis.metrics if m.name == name)

    def reset_analysis(self) -> None:
        self.s.analysis.metrics = []
        self.s.analysis.last_run = self.s.analysis.next_run = None
        self.s.stage_checks = 0

    # --------------------------------------------------------------------------------------------- main step

    def step(self) -> None:
        for result in self.inp.results:
            self.apply(result)
        h = template_hash(self.spec)
        verb = self.take_command()
        if verb == "retry" and self.s.phase is not None and self.s.phase.terminal and self.s.phase != Phase.succeeded:
            self.start(h, "retry requested")
        elif self.s.phase is None or (h != self.s.template_hash and self.s.phase != Phase.rolling_back):
            self.start(h, "new template" if self.s.phase is not None else "first version seen")
        self.s.observed_generation = self.inp.generation
        self.clamp_stage()
        if verb in ("abort", "promote", "resume"):
            self.command(verb)
        handler = {
            Phase.pending: self.pending,
            Phase.preflight: self.preflight,
            Phase.progressing: self.progressing,
            Phase.paused: self.paused,
            Phase.promoting: self.promoting,
            Phase.rolling_back: self.rolling_back,
        }.get(self.s.phase) if self.s.phase else None
        if handler:
            handler()

    def clamp_stage(self) -> None:
        """`stages` edited to fewer than the current stage (the template unchanged, so the rollout goes on): it
        continues at the new last stage, whose weight is lower, and says so."""
        if self.s.stage is not None and self.s.stage > len(self.stages):
            gone, self.s.stage = self.s.stage, len(self.stages)
            last = self.stages[-1]
            self.event("StagesChanged", f"spec.strategy.canary.stages now has {len(self.stages)} stages; stage {gone} "
                       f"is gone: the rollout continues at stage {self.s.stage} ({last.weight}%)", warning=True)

    def take_command(self) -> str | None:
        cmd = self.inp.command
        if not cmd or cmd == self.s.last_command:
            return None
        self.s.last_command = cmd
        verb = cmd.split("/", 1)[0]
        if verb not in COMMANDS:
            self.event("CommandIgnored", f"unknown command {verb!r}; expected one of {', '.join(COMMANDS)}", True)
            return None
        return verb

    def command(self, verb: str) -> None:
        phase = self.s.phase
        if verb == "abort" and phase in _ACTIVE:
            self.history("abort", message="aborted by a person")
            self.rollback("Aborted", "aborted by a person", Severity.high)
        elif verb == "promote" and self.blue_green and self.s.stage == 0 and phase in (Phase.progressing, Phase.paused):
            self.history("promote", message="switch requested by a person")
            self.switch("promotion requested")
        elif verb == "promote" and phase in (Phase.progressing, Phase.paused):
            self.history("promote", message="promoted by a person")
            self.event("PromotionRequested", "full promotion requested; remaining stages skipped")
            self.begin_promotion()
        elif verb == "resume" and phase == Phase.paused and self.s.pause_reason in ("breach", "inconclusive"):
            self.resume("resumed by a person")
        else:
            self.event("CommandIgnored", f"{verb} does nothing in phase {phase.value if phase else 'none'}", True)

    def start(self, h: str, why: str) -> None:
        old = self.s
        self.s = SafeRolloutStatus(
            phase=Phase.pending, step="Init", template_hash=h, attempt=old.attempt + 1,
            weight=old.weight, last_command=old.last_command, conditions=old.conditions,
            started_at=iso(self.now), canary_ready=old.canary_ready,
        )
        self.s.message = f"rollout {self.s.attempt} started: {why}"
        self.event("RolloutStarted", self.s.message)
        self.condition("Progressing", "True", "RolloutStarted", self.s.message)
        self.condition("Ready", "False", "RolloutInProgress", "a new version is being rolled out")
        self.condition("Degraded", "False", "RolloutStarted", "")

    # ------------------------------------------------------------------------------------------ apply results

    def apply(self, r: a.Result) -> None:
        if isinstance(r, a.Outcome):
            self.apply_outcome(r)
        elif isinstance(r, a.TargetState):
            self.apply_target(r)
        elif isinstance(r, a.MetricValues):
            self.apply_metrics(r)
        elif isinstance(r, a.SnapshotResult):
            self.apply_snapshot(r)
        elif isinstance(r, a.RestoreResult):
            self.apply_restore(r)
        elif isinstance(r, a.CanaryState):
            self.s.canary_ready = r.ready
            if r.revision:
                self.s.canary_revision = r.revision
            if not r.ready:
                self.polled.add(a.EnsureCanary)
        elif isinstance(r, a.ReportWritten) and self.s.incident is not None:
            self.s.incident.report_ref = r.ref

    def apply_outcome(self, r: a.Outcome) -> None:
        act = r.action
        if not r.ok and isinstance(act, a.QueryMetrics):  # a failed query is no data: inconclusive, and counted
            why = f"query failed: {r.message}"
            self.apply_metrics(a.MetricValues(act.target, act.purpose, dict.fromkeys(act.metrics),
                                              dict.fromkeys(act.metrics, why), asked_at=iso(self.now)))
            return
        if not r.ok and r.refused and self.s.phase in _ACTIVE:
            self.refused(act, r.message)
            return
        if not r.ok:
            previous_message = self.s.message
            self.s.message = f"{type(act).__name__} failed: {r.message}"
            self.polled.add(type(act))
            if isinstance(act, a.CheckDatabase):
                self.block("DatabaseUnreachable", f"database not reachable: {r.message}")
            elif isinstance(act, a.ReadTarget) and self.s.step == "Init" and previous_message != self.s.message:
                self.event("TargetNotFound", r.message, warning=True)
            return
        if isinstance(act, a.SetWeight):
            previous, self.s.weight = self.s.weight, act.weight
            self.s.max_weight = max(self.s.max_weight, act.weight)
            if self.s.phase in (Phase.progressing, Phase.paused) and act.weight > 0:
                self.s.stage_started_at = self.s.stage_resumed_at = iso(self.now)
                self.s.stage_elapsed_seconds = 0
                self.s.stage_checks = 0
                # a full rate window of data at the new weight, whose first scrape may come up to an interval late
                # (slow requests started at the old weight also finish, and are counted, after the change)
                settle = self.settings.settle_seconds + self.interval if act.weight < previous and \
                    self.settings.settle_seconds > 0 else 0.0
                self.s.settle_until = iso(self.now + timedelta(seconds=settle)) if settle > 0 else None
                self.event("StageAdvanced" if act.weight > previous else "StageSteppedBack",
                           f"stage {self.s.stage}/{len(self.stages)}: canary weight {act.weight}%")
            if self.s.phase == Phase.rolling_back and self.s.step == "RevertTraffic" and act.weight == 0:
                self.s.incident = self.s.incident or IncidentStatus()
                self.s.incident.traffic_reverted_at = iso(self.now)
                self.event("TrafficReverted", "all traffic is back on the stable version")
                self.s.step = "RevertWorkload"
            if self.s.phase == Phase.promoting and self.s.step == "RouteToTarget" and act.weight == 0:
                self.s.step = "RemoveCanary"
        elif isinstance(act, a.DeleteCanary):
            self.s.canary_ready = False
            if self.s.phase == Phase.promoting and self.s.step == "RemoveCanary" and self.blue_green:
                self.s.promoted_at = iso(self.now)
                self.event("Promoted", f"the target runs {_images(self.s.canary_images)}; the old version is gone")
                self.finish(Phase.succeeded, "RolloutSucceeded",
                            f"{_images(self.s.canary_images)} promoted after post-promotion analysis")
            elif self.s.phase == Phase.promoting and self.s.step == "RemoveCanary":
                self.s.promoted_at = iso(self.now)
                self.s.step = "Watch"
                self.reset_analysis()
                self.s.stage_resumed_at = iso(self.now)
                self.s.stage_elapsed_seconds = 0
                self.event("Promoted", f"the target runs {_images(self.s.canary_images)}; canary removed")
            elif self.s.phase == Phase.rolling_back and self.s.step == "RevertWorkload":
                self.s.step = "RevertImages"
        elif isinstance(act, a.SetTargetImages):
            if act.reason == "promote" and self.s.step == "PromoteTarget":
                self.s.step = "WaitTarget"
            elif act.reason == "revert" and self.s.step == "RevertImages":
                assert self.s.incident is not None
                self.s.incident.images_reverted_at = iso(self.now)
                self.event("ImagesReverted", f"the target runs {_images(self.s.stable_images)}")
                self.s.step = "RestoreDatabase" if self.needs_restore() else "Verify"
        elif isinstance(act, a.CheckDatabase):
            self.s.step = "GateStable" if self.spec.preflight.stable_healthy else "Snapshot"

    def refused(self, act: a.Action, message: str) -> None:
        """The cluster refused an action in a way no retry can mend (an invalid object, one we do not own)."""
        text = f"{type(act).__name__} refused: {message}"
        if self.s.phase in (Phase.pending, Phase.preflight):
            self.block("ActionRefused", text)
        else:
            self.history("rollback", message=text)
            self.rollback("ActionRefused", text, Severity.high)

    def apply_target(self, r: a.TargetState) -> None:
        if self.s.step == "Init":
            missing = [c.name for c in self.spec.template.containers if c.name not in r.images]
            if missing:
                self.block("ContainerNotInTarget",
                           f"the target has no container named {', '.join(missing)}; it has {', '.join(r.images)}")
                return
            self.s.stable_images = dict(r.images)
            self.s.stable_revision = r.revision
            self.s.canary_images = {**r.images, **{c.name: c.image for c in self.spec.template.containers}}
            if self.s.canary_images == self.s.stable_images:
                self.finish(Phase.succeeded, "NothingToRollOut", "the target already runs this template")
                return
            self.s.phase, self.s.step = Phase.preflight, "GateDatabase"
            self.s.message = f"pre-flight gates for {_images(self.s.canary_images)}"
        elif self.s.step == "WaitTarget":
            if r.available and all(r.images.get(k) == v for k, v in (self.s.canary_images or {}).items()):
                self.s.step = "RouteToTarget"
            else:
                self.polled.add(a.ReadTarget)

    def apply_metrics(self, r: a.MetricValues) -> None:
        if r.purpose == "preflight":
            bad = self.judge_all(r, record=False)
            if bad:
                self.s.preflight_attempts += 1
                inconclusive_only = all(v == Verdict.inconclusive for _, v, _ in bad)
                if inconclusive_only and self.s.preflight_attempts < self.spec.analysis.inconclusive_limit:
                    self.ran(r.asked_at)
                    self.s.message = "stable version: no data yet, asking again"
                    return
                detail = "; ".join(f"{n} {v.value}: {msg}" for n, v, msg in bad)
                self.block("StableUnhealthy", f"the stable version does not meet the analysis: {detail}")
            else:
                self.s.step = "Snapshot"
            return
        if r.purpose == "verify":
            self.ran(r.asked_at)
            bad = self.judge_all(r, record=True)
            if bad or not r.values:
                self.s.verify_successes = 0
                self.s.verify_failures += any(v == Verdict.fail for _, v, _ in bad)
            else:
                self.s.verify_successes += 1
            return
        # analysis of the canary (or, after promotion, of the target)
        self.judge_all(r, record=True)
        self.ran(r.asked_at)
        self.s.analysis.runs += 1
        self.s.stage_checks += 1
        self.analysed_now = True

    def judge_all(self, r: a.MetricValues, record: bool) -> list[tuple[str, Verdict, str]]:
        """Verdict per metric; with record, update the consecutive counters in status. Returns the non-passes."""
        bad: list[tuple[str, Verdict, str]] = []
        previous = {m.name: m for m in self.s.analysis.metrics}
        out: list[MetricStatus] = []
        for name, value in r.values.items():
            metric = self.metric(name) if name in {m.name for m in self.spec.analysis.metrics} else None
            judged, note = None, None
            if metric is not None and metric.judge is not None and r.purpose != "preflight":
                canary, stable = r.series.get(name, ([], []))
                j = metric.judge
                judged = judge(canary, stable, j.min_samples, j.confidence, j.direction)
                value = judged.p_value
                verdict, threshold = Verdict(judged.verdict), metric.threshold
            elif metric is not None and metric.judge is not None:
                verdict, threshold = Verdict.passed, metric.threshold  # nothing to compare the stable version with
            elif metric is not None and metric.baseline is not None and name in r.pairs:
                value, note = compare(metric.baseline, *r.pairs[name])
                verdict, threshold = metric.verdict(value), metric.threshold
            elif metric is not None:
                verdict, threshold = metric.verdict(value, r.samples.get(name)), metric.threshold
            else:  # rollback.verify.maxErrorRate: the built-in error-rate with that maximum
                check = Metric(name=name, template="error-rate", max=self.spec.rollback.verify.max_error_rate)
                verdict, threshold = check.verdict(value, r.samples.get(name)), check.threshold
            message = r.errors.get(name) or (judged.message if judged else None) or note or (
                "no data" if verdict == Verdict.inconclusive else None)
            if verdict != Verdict.passed:
                bad.append((name, verdict, message or f"{_fmt(value)} not {threshold}"))
            prev = previous.get(name)
            ms = MetricStatus(name=name, value=value if value is not None and math.isfinite(value) else None,
                              threshold=threshold, verdict=verdict, samples=round(r.samples.get(name, 0)),
                              message=message)
            if prev is not None and r.purpose == "analysis":
                ms.consecutive_failures = prev.consecutive_failures
                ms.consecutive_inconclusive = prev.consecutive_inconclusive
                ms.failing_since = prev.failing_since
            if verdict == Verdict.fail:
                ms.consecutive_failures += 1
                ms.consecutive_inconclusive = 0
                ms.failing_since = ms.failing_since or iso(self.now)
            elif verdict == Verdict.inconclusive:
                ms.consecutive_inconclusive += 1
            else:
                ms.consecutive_failures = ms.consecutive_inconclusive = 0
                ms.failing_since = None
            out.append(ms)
            if metric is not None and metric.warn_after and verdict == Verdict.fail and r.purpose == "analysis" \
                    and ms.consecutive_failures == metric.warn_after:
                text = f"{name} failed {ms.consecutive_failures} checks in a row ({message or _fmt(ms.value)}); " \
                       f"the breach action follows at {self.failure_limit(metric)}"
                self.event("AnalysisDegraded", text, warning=True)
                self.notify(Severity.medium if metric.severity.rank > 2 else Severity.low, f"{name} degraded",
                            f"{self.inp.name}: {text}")
        if record:
            self.s.analysis.metrics = out
        return bad

    def failure_limit(self, metric: Metric) -> int:
        return metric.failure_limit or self.spec.analysis.failure_limit

    def apply_snapshot(self, r: a.SnapshotResult) -> None:
        snap = self.s.snapshot
        if snap is None or snap.id != r.snapshot_id:
            return
        if not r.ok:
            snap.state, snap.message = "Failed", r.message
            self.block("SnapshotFailed", f"snapshot {snap.id}: {r.message}")
            return
        if snap.state == "Taking":
            snap.state, snap.taken_at = "Taken", r.taken_at or iso(self.now)
            snap.size_bytes, snap.sha256, snap.location, snap.tables = r.size_bytes, r.sha256, r.location, r.tables
            self.event("SnapshotTaken", f"snapshot {snap.id} taken: {r.size_bytes} bytes, sha256 {r.sha256}")
        elif snap.state == "Verifying":
            snap.state, snap.verified = "Verified", True
            self.event("SnapshotVerified", f"snapshot {snap.id} restores and matches the source: {r.message}")

    def apply_restore(self, r: a.RestoreResult) -> None:
        rs = self.s.restore
        if rs is None:
            return
        if r.pre_restore_dump and not rs.pre_restore_dump:
            rs.pre_restore_dump = r.pre_restore_dump
        if r.ok and r.verified:
            rs.state, rs.finished_at, rs.message = "Restored", iso(self.now), r.message
            assert self.s.incident is not None
            self.s.incident.restored_at = iso(self.now)
            self.event("DatabaseRestored", f"database restored from snapshot {r.snapshot_id} and verified; "
                       f"the state before the restore is kept in {rs.pre_restore_dump}")
            self.s.step = "Verify"
            return
        rs.message = r.message or "the database does not equal the snapshot"
        if rs.attempts >= (self.spec.database.max_restore_attempts if self.spec.database else 1):
            rs.state = "Failed"
            self.event("RestoreFailed", f"restore of snapshot {r.snapshot_id} failed after {rs.attempts} "
                       f"attempt(s): {rs.message}; snapshot and pre-restore dump are kept", warning=True)
            self.notify(Severity.critical, "Database restore failed",
                        f"{self.inp.name}: restore failed after {rs.attempts} attempt(s): {rs.message}")
            self.s.failure = f"database restore failed: {rs.message}"
            self.s.step = "Report"
        else:
            delay = RESTORE_BACKOFF_SECONDS * 2 ** (rs.attempts - 1)
            rs.next_attempt_at = iso(self.now + timedelta(seconds=delay))
            self.event("RestoreRetry", f"restore attempt {rs.attempts} failed: {rs.message}; "
                       f"next attempt in {format_duration(delay)}", warning=True)

    # ----------------------------------------------------------------------------------------------- phases

    def pending(self) -> None:
        if self.spec.paused:
            self.s.message = "paused before start"
            return
        if self.s.weight != 0:
            self.act(a.SetWeight(0))
        elif self.s.canary_ready:
            self.act(a.DeleteCanary())
        elif a.ReadTarget not in self.polled:
            self.act(a.ReadTarget())

    def preflight(self) -> None:
        pf, db = self.spec.preflight, self.spec.database
        if self.s.step == "GateDatabase":
            if pf.database_reachable and db is not None:
                if a.CheckDatabase not in self.polled:
                    self.act(a.CheckDatabase(parse_duration(pf.timeout)))
                return
            self.s.step = "GateStable"
        if self.s.step == "GateStable":
            if pf.stable_healthy:
                if self.analysis_due():
                    self.act(a.QueryMetrics("stable", "preflight", self.metric_names("stable")))
                return
            self.s.step = "Snapshot"
        if self.s.step == "Snapshot":
            if db is None or not db.snapshot_before_rollout:
                self.s.step = "Canary"
            else:
                snap = self.s.snapshot
                if snap is None:
                    sid = f"snap-{self.s.attempt}-{self.now.strftime('%Y%m%dT%H%M%S')}"
                    provider = "postgres" if db.postgres else "volumeSnapshot"
                    self.s.snapshot = snap = SnapshotStatus(id=sid, provider=provider, state="Taking")
                    self.s.message = f"taking snapshot {sid}"
                if snap.state == "Taking":
                    self.act(a.TakeSnapshot(snap.id))
                    return
                if snap.state == "Taken" and db.verify_snapshot:
                    snap.state = "Verifying"
                if snap.state == "Verifying":
                    self.act(a.VerifySnapshot(snap.id))
                    return
                self.act(a.PruneSnapshots(db.retain, snap.id))
                self.s.step = "Canary"
        if self.s.step == "Canary":
            if self.s.canary_ready:
                self.s.phase, self.s.step, self.s.stage = Phase.progressing, None, 0 if self.blue_green else 1
                self.reset_analysis()
                self.event("CanaryReady", f"canary workload available with {_images(self.s.canary_images)}")
                self.progressing()
            elif a.EnsureCanary not in self.polled:
                self.act(a.EnsureCanary(dict(self.s.canary_images or {}), self.stages[0].weight))
                self.s.message = "waiting for the canary workload to become available"

    def metrics_for(self, target: a.AnalysisTarget) -> list[Metric]:
        """Comparative metrics (baseline, judge) need a canary beside the stable version; elsewhere they sit out."""
        both = target in ("canary", "preview")
        return [m for m in self.spec.analysis.metrics if both or m.kind not in ("baseline", "judge")]

    def analysis_query(self, target: a.AnalysisTarget) -> a.QueryMetrics:
        """Samples from before the stage's weight was set belong to another weight: the query says since when."""
        return a.QueryMetrics(target, "analysis", self.metric_names(target), since=self.s.stage_started_at)

    def metric_names(self, target: a.AnalysisTarget | None = None) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics_for(target or self.analysis_target()))

    @property
    def blue_green(self) -> bool:
        return self.spec.strategy.blue_green is not None

    def analysis_target(self) -> a.AnalysisTarget:
        if self.blue_green:
            return "preview" if self.s.stage == 0 else "stable"  # after the switch the active Service serves green
        return "canary"

    def progressing(self) -> None:
        if self.spec.paused:
            self.pause("user", "RolloutPaused", "spec.paused is true")
            return
        if self.blue_green and self.s.stage == 0:
            self.preview()
            return
        stage = self.stages[(self.s.stage or 1) - 1]
        if self.s.weight != stage.weight:
            if a.SetWeight not in self.polled:
                self.act(a.SetWeight(stage.weight))
            self.s.message = f"stage {self.s.stage}/{len(self.stages)}: moving canary weight to {stage.weight}%"
            return
        if self.s.settle_until and self.now < parse_time(self.s.settle_until):
            self.wake_in((parse_time(self.s.settle_until) - self.now).total_seconds())
            self.s.message = (f"stage {self.s.stage}/{len(self.stages)} at {stage.weight}%: waiting for the metrics' "
                              f"window to hold only data at {stage.weight}%")
            return
        if self.judge_breaches():
            return
        if self.stage_done(stage):
            if (self.s.stage or 1) < len(self.stages):
                self.s.stage = (self.s.stage or 1) + 1
                self.s.analysis.metrics = [m.model_copy(update={"consecutive_failures": 0})
                                           for m in self.s.analysis.metrics]
                self.progressing()
            else:
                self.begin_promotion()
            return
        if self.analysis_due():
            self.act(self.analysis_query(self.analysis_target()))
            return  # the message moves on with the results, in their write: a query needs no write of its own
        left = max(0.0, stage.seconds - self.stage_elapsed())
        self.s.message = (f"stage {self.s.stage}/{len(self.stages)} at {stage.weight}%: "
                          + (f"{format_duration(left)} of analysis left" if left > 0 else
                             "stage time is up; waiting for every metric to pass"))

    def preview(self) -> None:
        """Blue-green before the switch: the new version answers on the preview Service and is analysed there."""
        bg = self.spec.strategy.blue_green
        assert bg is not None
        if self.s.stage_started_at is None:
            self.s.stage_started_at = self.s.stage_resumed_at = iso(self.now)
            self.s.stage_elapsed_seconds, self.s.stage_checks = 0, 0
            self.event("PreviewReady", f"{_images(self.s.canary_images)} answers on {bg.preview_service}")
        if self.judge_breaches():
            return
        if self.stage_done(Stage(weight=100, duration=bg.preview_duration)):
            if bg.auto_promote:
                self.switch("pre-promotion analysis passed")
            else:
                self.pause("approval", "AwaitingPromotion",
                           f"pre-promotion analysis passed; `promote` switches {bg.active_service}")
            return
        if self.analysis_due():
            self.act(self.analysis_query("preview"))
            return  # as in progressing: the message moves on with the results
        left = max(0.0, parse_duration(bg.preview_duration) - self.stage_elapsed())
        self.s.message = f"preview on {bg.preview_service}: {format_duration(left)} of analysis left"

    def switch(self, why: str) -> None:
        assert self.spec.strategy.blue_green is not None
        self.s.stage, self.s.phase, self.s.pause_reason = 1, Phase.progressing, None
        self.reset_analysis()
        self.event("Switching", f"{why}; {self.spec.strategy.blue_green.active_service} switches to the new version")
        self.progressing()

    def stage_done(self, stage: Stage) -> bool:
        needed = stage.seconds
        if self.blue_green and self.s.stage == 1 and self.spec.strategy.blue_green:
            needed = max(needed, parse_duration(self.spec.strategy.blue_green.scale_down_delay))
        elapsed = self.stage_elapsed()
        if elapsed < needed and self.s.stage_resumed_at:
            self.wake_in(needed - elapsed)
        if elapsed < needed or self.s.stage_checks < 1:
            return False
        latest = {m.name: m for m in self.s.analysis.metrics}
        for metric in self.metrics_for(self.analysis_target()):
            ms = latest.get(metric.name)
            if ms is None or ms.verdict == Verdict.inconclusive:
                return False  # never advance on what we could not see
            if ms.verdict == Verdict.fail and metric.on_breach != BreachAction.notify:
                return False
        return True

    def judge_breaches(self) -> bool:
        """Apply the strongest breach action due; True when the phase changed."""
        breached = [(self.metric(ms.name), ms) for ms in self.s.analysis.metrics if ms.name in self.metric_names()
                    and ms.consecutive_failures >= self.failure_limit(self.metric(ms.name))]
        if breached:
            metric, ms = max(breached, key=lambda x: (_ORDER[x[0].on_breach], x[0].severity.rank))
            self.s.incident = IncidentStatus(
                reason="AnalysisFailed", metric=metric.name, value=ms.value, threshold=ms.threshold,
                weight_at_breach=self.s.weight, stage_at_breach=self.s.stage, first_failed_at=ms.failing_since,
                detected_at=self.s.analysis.last_run, decided_at=iso(self.now),
                metrics=[m.model_copy() for m in self.s.analysis.metrics],
            ) if metric.on_breach != BreachAction.notify else self.s.incident
            text = f"{metric.name} = {_fmt(ms.value)}, threshold {ms.threshold}, failed {ms.consecutive_failures}x"
            self.event("AnalysisFailed", text, warning=True)
            action = metric.on_breach
            if self.s.phase == Phase.promoting and action == BreachAction.step_back:
                action = BreachAction.rollback
            if action == BreachAction.notify:
                self.history("notify", metric.name, text)
                self.notify(metric.severity, f"{metric.name} breached", f"{self.inp.name}: {text}")
                for m in self.s.analysis.metrics:
                    if m.name == metric.name:
                        m.consecutive_failures = 0
                return False
            if action == BreachAction.pause:
                self.history("pause", metric.name, text)
                self.notify(metric.severity, f"{metric.name} breached: paused", f"{self.inp.name}: {text}")
                self.pause("breach", "AnalysisFailed", f"paused for a person: {text}")
                return True
            if action == BreachAction.step_back and not self.s.stepped_back and (self.s.stage or 1) > 1:
                self.history("stepBack", metric.name, text)
                self.s.stepped_back = True
                self.s.stage = (self.s.stage or 2) - 1
                self.reset_analysis()
                self.event("StepBack", f"{text}; back to stage {self.s.stage}", warning=True)
                self.notify(metric.severity, f"{metric.name} breached: stepped back", f"{self.inp.name}: {text}")
                self.progressing()
                return True
            self.history("rollback", metric.name, text)
            self.rollback("AnalysisFailed", text, metric.severity)
            return True
        limit_i = self.spec.analysis.inconclusive_limit
        stuck = [ms for ms in self.s.analysis.metrics if ms.consecutive_inconclusive >= limit_i]
        if stuck and self.s.phase != Phase.paused:
            names = ", ".join(ms.name for ms in stuck)
            text = f"no conclusive data for {names} in {limit_i} checks ({stuck[0].message or 'no data'})"
            if self.spec.analysis.on_inconclusive == InconclusiveAction.rollback:
                self.history("rollback", stuck[0].name, text)
                self.s.incident = IncidentStatus(reason="AnalysisInconclusive", metric=stuck[0].name,
                                                 weight_at_breach=self.s.weight, stage_at_breach=self.s.stage,
                                                 detected_at=self.s.analysis.last_run, decided_at=iso(self.now),
                                                 metrics=[m.model_copy() for m in self.s.analysis.metrics])
                self.rollback("AnalysisInconclusive", text, Severity.high)
            else:
                self.event("AnalysisInconclusive", text, warning=True)
                self.notify(Severity.medium, "analysis inconclusive: paused", f"{self.inp.name}: {text}")
                self.pause("inconclusive", "AnalysisInconclusive", text)
            return True
        return False

    def pause(self, why: str, reason: str, text: str) -> None:
        self.s.stage_elapsed_seconds = self.stage_elapsed()
        self.s.stage_resumed_at = None
        self.s.phase, self.s.pause_reason, self.s.message = Phase.paused, why, text  # type: ignore[assignment]
        self.condition("Progressing", "Unknown", reason, text)
        if why != "inconclusive":
            self.event("RolloutPaused", text)

    def resume(self, text: str) -> None:
        self.s.phase, self.s.pause_reason = Phase.progressing, None
        self.s.stage_resumed_at = iso(self.now)
        self.s.analysis.metrics = [m.model_copy(update={"consecutive_failures": 0, "consecutive_inconclusive": 0})
                                   for m in self.s.analysis.metrics]
        self.condition("Progressing", "True", "RolloutResumed", text)
        self.event("RolloutResumed", text)
        self.progressing()

    def paused(self) -> None:
        why = self.s.pause_reason
        if why == "user":
            if not self.spec.paused:
                self.resume("spec.paused is false again")
            return
        if why == "approval":
            return  # the promote command switches (see command())
        if self.spec.paused:
            self.s.pause_reason = "user"
            return
        if why == "inconclusive":
            latest = self.s.analysis.metrics
            if self.analysed_now and latest and all(m.verdict != Verdict.inconclusive for m in latest):
                self.resume("analysis is conclusive again")
                return
            if self.judge_breaches():
                return
            if self.analysis_due():
                self.act(self.analysis_query(self.analysis_target()))

    # ----------------------------------------------------------------------------------------------- promote

    def begin_promotion(self) -> None:
        self.s.phase, self.s.step, self.s.pause_reason = Phase.promoting, "PromoteTarget", None
        self.s.message = f"promoting {_images(self.s.canary_images)} to the target"
        self.condition("Progressing", "True", "Promoting", self.s.message)
        self.event("Promoting", self.s.message)
        self.promoting()

    def promoting(self) -> None:
        step = self.s.step
        if step == "PromoteTarget":
            self.act(a.SetTargetImages(dict(self.s.canary_images or {}), "promote"))
        elif step == "WaitTarget":
            if a.ReadTarget not in self.polled:
                self.act(a.ReadTarget())
        elif step == "RouteToTarget":
            self.act(a.SetWeight(0))
        elif step == "RemoveCanary":
            self.act(a.DeleteCanary())
        elif step == "Watch":
            if self.judge_breaches():
                return
            watch = self.stages[-1]
            if self.stage_elapsed() < watch.seconds and self.s.stage_resumed_at:
                self.wake_in(watch.seconds - self.stage_elapsed())
            if self.stage_elapsed() >= watch.seconds and self.s.stage_checks > 0 and self.stage_done_any():
                self.finish(Phase.succeeded, "RolloutSucceeded",
                            f"{_images(self.s.canary_images)} promoted and healthy for {watch.duration}")
                return
            if self.analysis_due():
                self.act(self.analysis_query("stable"))
                return  # as in progressing: the message moves on with the results
            left = max(0.0, watch.seconds - self.stage_elapsed())
            self.s.message = f"promoted; watching the target for {format_duration(left)}"

    def stage_done_any(self) -> bool:
        latest = {m.name: m.verdict for m in self.s.analysis.metrics}
        return all(latest.get(m.name) == Verdict.passed or
                   (latest.get(m.name) == Verdict.fail and m.on_breach == BreachAction.notify)
                   for m in self.metrics_for("stable"))

    # ---------------------------------------------------------------------------------------------- rollback

    def rollback(self, reason: str, text: str, severity: Severity) -> None:
        self.s.phase, self.s.step, self.s.pause_reason = Phase.rolling_back, "RevertTraffic", None
        self.s.incident = self.s.incident or IncidentStatus(reason=reason, weight_at_breach=self.s.weight,
                                                            stage_at_breach=self.s.stage, decided_at=iso(self.now))
        self.s.incident.reason = self.s.incident.reason or reason
        self.s.incident.decided_at = self.s.incident.decided_at or iso(self.now)
        self.s.message = f"rolling back: {text}"
        self.s.incident_severity = severity.value
        self.condition("Progressing", "False", "RollingBack", text)
        self.condition("Degraded", "True", reason, text)
        self.act(a.SetWeight(0))  # traffic first, in this very call, before anything else
        self.event("RollbackStarted", text, warning=True)
        self.notify(severity, "rolling back", f"{self.inp.name}: {text}")

    def needs_restore(self) -> bool:
        db, snap = self.spec.database, self.s.snapshot
        return bool(db and db.restore_on_rollback and snap and snap.state in ("Taken", "Verified"))

    def rolling_back(self) -> None:
        step = self.s.step
        if step == "RevertTraffic":
            if not any(isinstance(x, a.SetWeight) for x in self.actions):
                self.act(a.SetWeight(0))
        elif step == "RevertWorkload":
            self.act(a.DeleteCanary())
        elif step == "RevertImages":
            self.act(a.SetTargetImages(dict(self.s.stable_images or {}), "revert"))
        elif step == "RestoreDatabase":
            self.restore_database()
        elif step == "Verify":
            self.verify_rollback()
        elif step == "Report":
            self.write_report()

    def restore_database(self) -> None:
        snap = self.s.snapshot
        assert snap is not None
        rs = self.s.restore
        got_result = any(isinstance(r, a.RestoreResult) for r in self.inp.results)
        if rs is None:
            self.s.restore = RestoreStatus(state="Restoring", attempts=1, started_at=iso(self.now))
            self.event("RestoreStarted", f"restoring the database from snapshot {snap.id}")
            self.act(a.RestoreDatabase(snap.id, 1))
        elif rs.state == "Restoring" and not got_result:
            if rs.next_attempt_at is None:
                # we were interrupted while a restore ran: look before restoring again
                self.act(a.CheckRestored(snap.id))
            elif self.now >= parse_time(rs.next_attempt_at):
                rs.attempts += 1
                rs.next_attempt_at = None
                self.act(a.RestoreDatabase(snap.id, rs.attempts))

    def verify_rollback(self) -> None:
        v = self.spec.rollback.verify
        if self.s.verify_started_at is None:
            self.s.verify_started_at = iso(self.now)
            self.s.verify_successes = self.s.verify_failures = 0
            self.s.analysis.last_run = self.s.analysis.next_run = None
        if self.s.verify_successes >= v.successes:
            assert self.s.incident is not None
            self.s.incident.verified_at = iso(self.now)
            self.event("RollbackVerified", f"the stable version passed {v.successes} checks in a row")
            self.condition("Verified", "True", "RollbackVerified", f"passed {v.successes} checks in a row")
            self.condition("Degraded", "True", "RolledBack", "rolled back; the stable version is healthy")
            self.s.step = "Report"
            self.write_report()
            return
        if self.since(self.s.verify_started_at) > parse_duration(v.duration):
            if self.s.verify_failures:
                self.s.failure = f"the stable version was not healthy within {v.duration} of the rollback"
                self.event("RollbackNotVerified", self.s.failure, warning=True)
            else:  # nothing was measured: the rollback is done, only its proof is missing
                text = f"no data proved the stable version healthy or unhealthy within {v.duration}; " \
                       "the rollback itself is complete"
                self.condition("Verified", "Unknown", "VerificationInconclusive", text)
                self.condition("Degraded", "True", "RolledBack", "rolled back; verification inconclusive")
                self.event("RollbackVerificationInconclusive", text, warning=True)
            self.s.step = "Report"
            self.write_report()
            return
        names = ("error-rate",) if v.max_error_rate is not None else self.metric_names("stable")
        if not names:  # every metric compares canary with stable: there is nothing to check the stable version by
            self.s.verify_successes = v.successes
            self.s.message = "no metric applies to the stable version alone; rollback verification skipped"
            self.verify_rollback()
            return
        if self.analysis_due():
            self.act(a.QueryMetrics("stable", "verify", names, v.max_error_rate))

    def write_report(self) -> None:
        inc = self.s.incident
        assert inc is not None
        if inc.report_ref:
            phase = Phase.failed if self.s.failure else Phase.rolled_back
            unproven = "" if inc.verified_at else "; verification inconclusive (no data)"
            self.finish(phase, "RollbackFailed" if self.s.failure else "RolledBack",
                        self.s.failure or f"rolled back to {_images(self.s.stable_images)}{unproven}")
            return
        name = f"{self.inp.name}-incident-{self.s.attempt}"
        report = incident_report(self.inp.name, self.spec, self.s, self.now)
        self.act(a.WriteReport(name, report))

    # ------------------------------------------------------------------------------------------------ endings

    def block(self, reason: str, text: str) -> None:
        self.s.phase, self.s.step, self.s.message = Phase.blocked, None, text
        self.s.finished_at = iso(self.now)
        self.condition("Progressing", "False", reason, text)
        self.condition("Degraded", "True", reason, text)
        self.event("PreflightFailed", f"{reason}: {text}", warning=True)
        self.notify(Severity.high, f"rollout blocked: {reason}", f"{self.inp.name}: {text}")
        self.actions = [x for x in self.actions if isinstance(x, a.Event | a.Notify)]

    def finish(self, phase: Phase, reason: str, text: str) -> None:
        self.s.phase, self.s.step, self.s.message = phase, None, text
        self.s.finished_at = iso(self.now)
        if phase == Phase.succeeded:
            self.condition("Progressing", "True", reason, text)
            self.condition("Ready", "True", reason, text)
            self.condition("Degraded", "False", reason, "")
            self.event("RolloutSucceeded", text)
        else:
            self.condition("Progressing", "False", reason, text)
            self.condition("Ready", "False", reason, text)
            self.event(reason, text, warning=phase == Phase.failed)
            sev = Severity.critical if phase == Phase.failed else Severity(self.s.incident_severity or "high")
            ref = self.s.incident.report_ref if self.s.incident else None
            self.notify(sev, f"rollout {phase.value}", f"{self.inp.name}: {text}", ref)


def compare(baseline: Baseline, canary: float | None, stable: float | None) -> tuple[float | None, str | None]:
    """The canary against the stable version: their difference, or their ratio. A canary above a stable 0 has an
    unbounded ratio: that fails any maxRatio (the status shows no value and says why), it is never `Infinity`."""
    if canary is None or stable is None or not (math.isfinite(canary) and math.isfinite(stable)):
        return None, None
    if baseline.max_difference is not None:
        return canary - stable, None
    if stable == 0:
        return (1.0, None) if canary == 0 else (math.inf, f"canary {canary:.4g} against a stable 0: the ratio is "
                                                      "unbounded")
    return canary / stable, None


def _images(images: dict[str, str] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (images or {}).items()) or "(none)"


def _fmt(v: float | None) -> str:
    return "no data" if v is None else f"{v:.4g}"
