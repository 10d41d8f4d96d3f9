"""The context every phase works on: one decision's spec, status, inputs, clock and the actions it issues.

It holds no phase logic, only what all phases share: issuing actions and events, the stage and analysis
clocks, and when the rollout wants deciding again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from saferollout.core import actions as a
from saferollout.core.clock import iso, parse_time
from saferollout.core.durations import parse_duration
from saferollout.core.models import (
    Condition,
    HistoryEntry,
    Metric,
    Phase,
    SafeRolloutSpec,
    SafeRolloutStatus,
    Severity,
    Stage,
    Step,
)

DEFAULT_STAGES: tuple[Stage, ...] = (
    Stage(weight=5, duration="2m"),
    Stage(weight=25, duration="3m"),
    Stage(weight=50, duration="3m"),
    Stage(weight=100, duration="5m"),
)


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
    # promotion onto an autoscaled target returns the canary's load in steps, each held this long: an HPA sync
    # (15 s) and a fresh metrics sample, so the target's HPA scales it from the load it then carries
    autoscaled_return_hold: float = 30.0
    # this operator serves the admission webhooks (trackConfig is refused without: its pods would read Git's objects)
    webhooks: bool = True


@dataclass
class Inputs:
    now: datetime
    name: str = "rollout"
    generation: int | None = None
    command: str | None = None  # "<verb>/<id>" from the saferollout.dev/command annotation
    results: list[a.Result] = field(default_factory=list)
    target: a.TargetView | None = None  # spec.template omitted: the target Deployment as read for this decision
    namespace: str | None = None  # the rollout's: an AnalysisTemplate is looked up there, and only there
    # the shared analysis templates the metrics name, as read for this decision (core.analysis_templates.wanted)
    templates: list[a.TemplateRead] = field(default_factory=list)


def set_condition(s: SafeRolloutStatus, type_: str, status: str, reason: str, message: str, inputs: Inputs) -> None:
    for c in s.conditions:
        if c.type == type_:
            if c.status != status:
                c.last_transition_time = iso(inputs.now)
            c.status, c.reason, c.message = status, reason, message  # type: ignore[assignment]
            c.observed_generation = inputs.generation
            return
    s.conditions.append(Condition(type=type_, status=status, reason=reason, message=message,
                                  last_transition_time=iso(inputs.now), observed_generation=inputs.generation))


def stages_of(spec: SafeRolloutSpec, settings: Settings) -> list[Stage]:
    """Blue-green has one stage after its switch: the new version at 100%, watched for postPromotionDuration."""
    if spec.strategy.canary is not None:
        return list(spec.strategy.canary.stages or settings.default_stages)
    if spec.strategy.blue_green is not None:
        return [Stage(weight=100, duration=spec.strategy.blue_green.post_promotion_duration)]
    return list(settings.default_stages)


class Run:
    def __init__(self, spec: SafeRolloutSpec, status: SafeRolloutStatus, inputs: Inputs, settings: Settings) -> None:
        self.spec = spec
        self.s = status
        self.inp = inputs
        self.now = inputs.now
        self.actions: list[a.Action] = []
        self.settings = settings
        self.stages = stages_of(spec, settings)
        self.interval = spec.analysis.interval_seconds
        self.polled: set[type] = set()  # "not ready yet" answers seen in this call: ask again next tick, not now
        self.analysed_now = False
        self.deadlines: list[float] = []  # seconds from now at which something waited for here becomes due
        self.failure_is_news = False  # the failed outcome being applied says something the status did not yet
        self.declared = spec  # the spec as written; `spec` gets the metrics resolved (core.analysis_templates)
        self.unresolved: dict[str, str] = {}  # metric -> why its shared template gives no definition
        self.template_problems: list[tuple[str, str]] = []  # (reason, message) of each unresolved metric
        self.recheck: float | None = None  # a terminal phase that looks again by itself (Blocked on a template)

    @property
    def blue_green(self) -> bool:
        return self.spec.strategy.blue_green is not None

    def act(self, *actions: a.Action) -> None:
        self.actions.extend(actions)

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.act(a.Event(reason, message, "Warning" if warning else "Normal"))

    def notify(self, severity: Severity | str, title: str, text: str, report: str | None = None) -> None:
        self.act(a.Notify(Severity(severity).value, title, text, report))

    def condition(self, type_: str, status: str, reason: str, message: str = "") -> None:
        set_condition(self.s, type_, status, reason, message, self.inp)

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

    def canary_kept_for(self, traffic_left_at: str | None) -> float:
        """Seconds the canary workload is still kept (spec.strategy.canary.scaleDownDelay) after the traffic left it
        at `traffic_left_at`; 0 once it may go. Waking up then is scheduled."""
        canary = self.spec.strategy.canary
        if canary is None or self.spec.partition or not traffic_left_at:
            return 0.0
        left = parse_duration(canary.scale_down_delay) - self.since(traffic_left_at)
        if left > 1e-6:
            self.wake_in(left)
            return left
        return 0.0

    def wake_after(self) -> float | None:
        """When to decide again if nothing changes: a timer need not tick every second for every rollout.

        Phases that wait on the world (workloads rolling out, snapshots, the rollback's steps) are polled; phases
        that wait on the clock (analysis, stage ends, a settle) sleep until their earliest deadline; a terminal
        phase, or a pause only a person can end, sleeps until the object changes.
        """
        phase = self.s.phase
        if phase is None or phase.terminal or (phase == Phase.paused and self.s.pause_reason != "inconclusive"):
            return self.recheck
        self.analysis_due()  # analysis goes on in every phase left: never sleep past the next one
        due = [*self.deadlines, self.interval]
        if self.polled or phase in (Phase.pending, Phase.preflight, Phase.rolling_back) or (
                phase == Phase.promoting and self.s.step not in (Step.watch, Step.remove_canary)):
            due.append(self.settings.poll_seconds)
        return max(0.0, min(due))

    def metric(self, name: str) -> Metric:
        return next(m for m in self.spec.analysis.metrics if m.name == name)

    def reset_analysis(self) -> None:
        self.s.analysis.metrics = []
        self.s.analysis.last_run = self.s.analysis.next_run = None
        self.s.stage_checks = 0

    def start_stage_clock(self) -> None:
        self.s.stage_started_at = self.s.stage_resumed_at = iso(self.now)
        self.s.stage_elapsed_seconds = 0
        self.s.stage_checks = 0


def images(images: dict[str, str] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (images or {}).items()) or "(none)"


def fmt(v: float | None) -> str:
    return "no data" if v is None else f"{v:.4g}"
