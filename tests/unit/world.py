"""A simulated world for the decision core: the router, the workloads, Prometheus and the database as plain state."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from saferollout.core import actions as a
from saferollout.core.engine import Inputs, Settings, iso
from saferollout.core.loop import drive
from saferollout.core.models import SafeRolloutSpec, SafeRolloutStatus

T0 = datetime(2026, 1, 1, tzinfo=UTC)

# value of a metric for (metric name, target, canary weight, seconds since start) -> value or None (no data)
MetricFn = Callable[[str, str, int, float], float | None]


def healthy(name: str, target: str, weight: int, t: float) -> float | None:
    return 0.001 if name == "error-rate" else 0.1


def spec_from(yaml_text: str) -> SafeRolloutSpec:
    return SafeRolloutSpec.model_validate(yaml.safe_load(yaml_text))


BASE = """
targetRef: {name: web}
template: {containers: [{name: web, image: demo/web:2.0}]}
strategy:
  canary:
    stages:
      - {weight: 5, duration: 10s}
      - {weight: 25, duration: 10s}
      - {weight: 50, duration: 10s}
      - {weight: 100, duration: 10s}
    traffic: {gatewayAPI: {httpRoute: web, stableService: web, canaryService: web-canary}}
analysis:
  interval: 2s
  failureLimit: 3
  metrics:
    - {name: error-rate, template: error-rate, max: 0.01, onBreach: rollback, severity: critical}
"""


def make_spec(**overrides: Any) -> SafeRolloutSpec:
    data = yaml.safe_load(BASE)
    for path, value in overrides.items():
        node = data
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return SafeRolloutSpec.model_validate(data)


@dataclass
class World:
    spec: SafeRolloutSpec
    metrics: MetricFn = healthy
    target_images: dict[str, str] = field(default_factory=lambda: {"web": "demo/web:1.0"})
    weight: int = 0
    canary: dict[str, str] | None = None
    now: datetime = T0
    status: SafeRolloutStatus = field(default_factory=SafeRolloutStatus)
    weights_seen: list[int] = field(default_factory=list)
    events: list[a.Event] = field(default_factory=list)
    notes: list[a.Notify] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    command: str | None = None
    database_up: bool = True
    db_state: str = "v1"
    migration: str | None = None  # the database state the canary writes once it runs
    snapshots: dict[str, str] = field(default_factory=dict)
    snapshots_taken: int = 0
    restores: int = 0
    restore_fails: int = 0
    fail_set_weight: int = 0
    crash_after: type | None = None  # raise after executing this action type once (operator killed)
    writes: int = 0
    reports: dict[str, str] = field(default_factory=dict)
    settings: Settings = field(default_factory=Settings)
    ticks: int = 0
    wake_after: float | None = None

    @property
    def t(self) -> float:
        return (self.now - T0).total_seconds()

    def execute(self, act: a.Action) -> a.Result | None:
        self.log.append(f"{self.t:5.1f} {act!r}")
        result = self._execute(act)
        if self.crash_after is not None and isinstance(act, self.crash_after):
            self.crash_after = None
            raise Crash(act)
        return result

    def _execute(self, act: a.Action) -> a.Result | None:
        if isinstance(act, a.Event):
            self.events.append(act)
            return None
        if isinstance(act, a.Notify):
            self.notes.append(act)
            return None
        if isinstance(act, a.ReadTarget):
            return a.TargetState(dict(self.target_images), True, "1")
        if isinstance(act, a.SetWeight):
            if self.fail_set_weight:
                self.fail_set_weight -= 1
                return a.Outcome(act, False, "HTTPRoute write refused")
            if act.weight != self.weight:
                self.weight = act.weight
                if act.weight and (not self.weights_seen or self.weights_seen[-1] != act.weight):
                    self.weights_seen.append(act.weight)
            return a.Outcome(act, True)
        if isinstance(act, a.EnsureCanary):
            self.canary = dict(act.images)
            self.db_state = self.migration or self.db_state
            return a.CanaryState(True, "c1")
        if isinstance(act, a.DeleteCanary):
            self.canary = None
            return a.Outcome(act, True)
        if isinstance(act, a.SetTargetImages):
            self.target_images = dict(act.images)
            return a.Outcome(act, True)
        if isinstance(act, a.QueryMetrics):
            values = {n: self.metrics(n, act.target, self.weight, self.t) for n in act.metrics}
            return a.MetricValues(act.target, act.purpose, values, asked_at=iso(self.now))
        if isinstance(act, a.CheckDatabase):
            return a.Outcome(act, self.database_up, "" if self.database_up else "connection refused")
        if isinstance(act, a.TakeSnapshot):
            if act.snapshot_id not in self.snapshots:
                self.snapshots[act.snapshot_id] = self.db_state
                self.snapshots_taken += 1
            return a.SnapshotResult(act.snapshot_id, True, size_bytes=100, sha256="ab", taken_at=None)
        if isinstance(act, a.VerifySnapshot):
            return a.SnapshotResult(act.snapshot_id, True, "3 tables match")
        if isinstance(act, a.PruneSnapshots):
            return a.Outcome(act, True)
        if isinstance(act, a.RestoreDatabase):
            self.restores += 1
            if self.restore_fails:
                self.restore_fails -= 1
                return a.RestoreResult(act.snapshot_id, False, "pg_restore: error", pre_restore_dump="pre-1.dump")
            self.db_state = self.snapshots[act.snapshot_id]
            return a.RestoreResult(act.snapshot_id, True, "ok", pre_restore_dump="pre-1.dump", verified=True)
        if isinstance(act, a.CheckRestored):
            ok = self.db_state == self.snapshots[act.snapshot_id]
            return a.RestoreResult(act.snapshot_id, ok, "checked", verified=ok)
        if isinstance(act, a.WriteReport):
            self.reports[act.name] = act.markdown
            return a.ReportWritten(act.name)
        raise AssertionError(f"unhandled action {act!r}")

    def write(self, status: SafeRolloutStatus) -> None:
        self.writes += 1
        self.status = status

    def tick(self) -> None:
        command, self.command = self.command, None

        def inputs(results: list[a.Result]) -> Inputs:
            return Inputs(now=self.now, name="web", generation=1, command=command, results=results)

        self.ticks += 1
        self.wake_after = self.settings.poll_seconds  # a crash: the operator comes back and looks at once
        with contextlib.suppress(Crash):  # what was written before the crash survives, as with a killed operator
            self.wake_after = drive(self.spec, self.status, inputs, self.execute, self.write, self.settings).wake_after

    def run(self, seconds: float, until: Callable[[World], bool] | None = None, step: float | None = 1.0) -> World:
        """Tick every `step` seconds; with step=None, tick when the core asked to be woken (as the operator does)."""
        end = self.now + timedelta(seconds=seconds)
        while self.now < end:
            self.tick()
            if until is not None and until(self):
                break
            if step is None and self.wake_after is None:
                break  # asleep until the object changes
            self.now += timedelta(seconds=step if step is not None else max(self.wake_after or 0.0, 0.001))
        return self

    def phase(self) -> str | None:
        return self.status.phase.value if self.status.phase else None

    def done(self) -> bool:
        return self.status.phase is not None and self.status.phase.terminal

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]


class Crash(Exception):
    pass
