"""The SafeRollout resource as pydantic models: the one source of the spec.

`crds/saferollout.dev_saferollouts.yaml` is generated from these classes (see saferollout.crdgen), and the CEL
rules declared here in `x-kubernetes-validations` are mirrored by pydantic validators, so a bad manifest is refused
by the API server first and by the operator again if it ever slips through.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, GetJsonSchemaHandler, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict
from pydantic_core import core_schema

from saferollout.core.durations import DURATION_PATTERN, parse_duration
from saferollout.core.stats import wilson_lower

GROUP = "saferollout.dev"
VERSION = "v1alpha1"
KIND = "SafeRollout"
PLURAL = "saferollouts"

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
NAME_MAX = 63  # a SafeRollout's own name is a label value (saferollout.dev/rollout) on what it creates
CANARY_SUFFIX = "-canary"
# The target's name becomes a label value and, with CANARY_SUFFIX, a Deployment and Service name: 63 at most.
TARGET_NAME_MAX = 63 - len(CANARY_SUFFIX)
URL_PATTERN = r"^https?://[^\s/][^\n\r]*$"  # an http(s) URL (placeholders may hold spaces)


def cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    out: JsonDict = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


@dataclass(frozen=True)
class Bounded:
    """A Go-style duration with a floor and a ceiling, refused by the API server (CEL) and by pydantic alike:
    `interval: 0s` would be a hot loop, and a 400-digit duration overflows every clock sum."""

    floor: str
    ceiling: str

    @property
    def message(self) -> str:
        return f"must be a duration between {self.floor} and {self.ceiling}"

    def check(self, text: str) -> str:
        if len(text) > 32 or not parse_duration(self.floor) <= parse_duration(text) <= parse_duration(self.ceiling):
            raise ValueError(f"{text[:40]!r} {self.message}")
        return text

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> JsonDict:
        out: JsonDict = dict(handler(schema))
        out.update({"pattern": DURATION_PATTERN, "maxLength": 32, "x-kubernetes-validations": [cel(
            f"duration(self) >= duration('{self.floor}') && duration(self) <= duration('{self.ceiling}')",
            self.message)]})
        return out


# a Kubernetes object name that also becomes a label value or a DNS label
ServiceName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)]
TargetName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=TARGET_NAME_MAX)]
ObjectName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=253)]
Url = Annotated[str, Field(pattern=URL_PATTERN, max_length=2048)]


class Model(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are an error, never ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", allow_inf_nan=False)

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# ---------------------------------------------------------------------------------------------------------- spec


class Severity(StrEnum):
    critical = "critical"
    high = "high"
    medium = "medium"
    low = "low"

    @property
    def rank(self) -> int:
        return {"critical": 4, "high": 3, "medium": 2, "low": 1}[self.value]


class BreachAction(StrEnum):
    rollback = "rollback"
    step_back = "stepBack"
    pause = "pause"
    notify = "notify"


class InconclusiveAction(StrEnum):
    pause = "pause"
    rollback = "rollback"


class TargetRef(Model):
    kind: Literal["Deployment"] = "Deployment"
    name: TargetName = Field(description=f"At most {TARGET_NAME_MAX} characters: "
                                        f"the canary is named <name>{CANARY_SUFFIX}.")


class EnvVar(Model):
    name: str
    value: str = ""


class Container(Model):
    name: str = Field(pattern=NAME_PATTERN, max_length=63)
    image: str = Field(min_length=1, max_length=1024)
    env: list[EnvVar] | None = None


class PodTemplate(Model):
    """What the new version changes in the target's pod template; containers are matched by name."""

    containers: list[Container] = Field(min_length=1, max_length=32)


class Stage(Model):
    weight: int = Field(ge=1, le=100, description="Percent of traffic sent to the canary in this stage.")
    duration: Annotated[str, Bounded("1s", "24h")] = Field(
        description="How long the stage is analysed before advancing.")

    @property
    def seconds(self) -> float:
        return parse_duration(self.duration)


class GatewayAPIRouter(Model):
    http_route: ObjectName = Field(alias="httpRoute")
    stable_service: ServiceName
    canary_service: ServiceName


class IstioRouter(Model):
    virtual_service: ObjectName
    route: str | None = Field(default=None, description="Name of the HTTP route in the VirtualService; the first.")
    stable_service: ServiceName | None = None
    canary_service: ServiceName | None = None


class NginxRouter(Model):
    ingress: str = Field(pattern=NAME_PATTERN, max_length=253 - len(CANARY_SUFFIX))
    stable_service: ServiceName | None = None
    canary_service: ServiceName | None = None


class ReplicasRouter(Model):
    """No mesh or ingress: the weight is the canary's share of the replicas."""

    stable_service: ServiceName | None = None
    canary_service: ServiceName | None = None


def _router_names(traffic: type[BaseModel]) -> tuple[str, ...]:
    """The routers by their names in the manifest: the fields of Traffic, the one list of them."""
    return tuple(f.alias or name for name, f in traffic.model_fields.items())


def _exactly_one_router(names: tuple[str, ...]) -> str:
    return f"exactly one traffic router must be set: {', '.join(names[:-1])} or {names[-1]}"


def _one_router_rule(schema: JsonDict, traffic: type[Any]) -> None:
    names = _router_names(traffic)
    schema["x-kubernetes-validations"] = [
        cel("[" + ", ".join(f"has(self.{n})" for n in names) + "].filter(x, x).size() == 1", _exactly_one_router(names))
    ]


# Exactly one router. Traffic's fields are the only list of the routers: the CEL rule, the validator and ROUTERS
# follow them, and saferollout.adapters.routers.ROUTERS maps each name to its adapter (a unit test checks that).
# (A comment, not a docstring: a docstring would become the CRD's description of `traffic`.)
class Traffic(Model):
    model_config = ConfigDict(json_schema_extra=_one_router_rule)
    gateway_api: GatewayAPIRouter | None = Field(default=None, alias="gatewayAPI")
    istio: IstioRouter | None = None
    nginx: NginxRouter | None = None
    replicas: ReplicasRouter | None = None

    @model_validator(mode="after")
    def _one_router(self) -> Traffic:
        self.chosen()
        return self

    def chosen(self) -> tuple[str, BaseModel]:
        """(its name in the manifest, its settings) of the router that is set."""
        fields = type(self).model_fields
        chosen = [(f.alias or name, v) for name, f in fields.items() if (v := getattr(self, name)) is not None]
        if len(chosen) != 1:
            raise ValueError(_exactly_one_router(_router_names(type(self))))
        return chosen[0]

    def router(self) -> str:
        """The name in the manifest of the router that is set (`gatewayAPI`, ...): the adapters' registry key."""
        return self.chosen()[0]

    def services(self, target: str) -> tuple[str, str]:
        """(stable, canary) Service names; routers that do not name them use the target's name."""
        router = self.chosen()[1]
        stable = getattr(router, "stable_service", None) or target
        canary = getattr(router, "canary_service", None) or f"{target}-canary"
        return stable, canary


ROUTERS = _router_names(Traffic)


class CanaryStrategy(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.stages) || self.stages.map(s, s.weight).isSorted() && "
                    "self.stages.all(a, self.stages.exists_one(b, b.weight == a.weight))",
                    "stage weights must rise strictly from one stage to the next",
                    ".stages",
                )
            ]
        }
    )
    stages: list[Stage] | None = Field(
        default=None, min_length=1, max_length=20,
        description="Defaults to the operator's stages (5%/2m, 25%/3m, 50%/3m, 100%/5m).",
    )
    traffic: Traffic

    @field_validator("stages")
    @classmethod
    def _rising(cls, stages: list[Stage] | None) -> list[Stage] | None:
        if stages:
            weights = [s.weight for s in stages]
            if any(b <= a for a, b in itertools.pairwise(weights)):
                raise ValueError("stage weights must rise strictly from one stage to the next")
        return stages


class BlueGreenStrategy(Model):
    active_service: ServiceName
    preview_service: ServiceName
    auto_promote: bool = True
    preview_duration: Annotated[str, Bounded("1s", "24h")] = Field(
        default="1m", description="Pre-promotion analysis against the preview Service.")
    post_promotion_duration: Annotated[str, Bounded("1s", "24h")] = "1m"
    scale_down_delay: Annotated[str, Bounded("0s", "24h")] = "30s"


class Strategy(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.canary) != has(self.blueGreen)", "exactly one strategy must be set: canary or blueGreen")
            ]
        }
    )
    canary: CanaryStrategy | None = None
    blue_green: BlueGreenStrategy | None = None

    @model_validator(mode="after")
    def _one_strategy(self) -> Strategy:
        if (self.canary is None) == (self.blue_green is None):
            raise ValueError("exactly one strategy must be set: canary or blueGreen")
        return self


class PrometheusSource(Model):
    address: str | None = Field(default=None, pattern=URL_PATTERN, max_length=2048,
                                description="http(s) URL; defaults to the operator's Prometheus address.")


class HttpCheck(Model):
    """A health probe of the new version: 2xx within the timeout is healthy (value 1), anything else 0."""

    url: str = Field(default="http://{{ service }}.{{ namespace }}.svc:80/healthz", pattern=URL_PATTERN,
                     max_length=2048,
                     description="With placeholders; by default the health endpoint behind the analysed Service.")
    timeout: Annotated[str, Bounded("100ms", "30s")] = "2s"


class Baseline(Model):
    """The same query for canary and stable; fail when the canary is worse by more than the tolerance."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("has(self.maxDifference) != has(self.maxRatio)", "a baseline needs exactly one of maxDifference or maxRatio")
    ]})
    max_difference: float | None = Field(default=None, description="canary - stable may be at most this")
    max_ratio: float | None = Field(default=None, gt=0, description="canary / stable may be at most this")

    @model_validator(mode="after")
    def _one(self) -> Baseline:
        if (self.max_difference is None) == (self.max_ratio is None):
            raise ValueError("a baseline needs exactly one of maxDifference or maxRatio")
        return self


class Judge(Model):
    """Mann-Whitney U over the window's samples of canary and stable: fail when the canary is worse beyond chance."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("duration(self.window).getSeconds() <= duration(self.step).getSeconds() * 10000",
            "window / step is the number of samples per side: at most 10000", ".window")
    ]})

    min_samples: int = Field(default=20, ge=3, le=10000)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    direction: Literal["increase", "decrease"] = Field(default="increase", description="which way is worse")
    window: Annotated[str, Bounded("1s", "6h")] = Field(default="2m", description="how far back the samples go")
    step: Annotated[str, Bounded("1s", "1h")] = Field(
        default="5s", description="one sample every step; at least the query's longest range, so samples share no data")

    @model_validator(mode="after")
    def _samples_bounded(self) -> Judge:
        if parse_duration(self.window) > parse_duration(self.step) * 10000:
            raise ValueError("judge: window / step is the number of samples per side: at most 10000")
        return self


class Metric(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("[has(self.query), has(self.template), has(self.httpGet)].filter(x, x).size() == 1",
                    "a metric needs exactly one of query, template or httpGet"),
                cel("has(self.max) || has(self.min) || has(self.baseline) || has(self.judge) || has(self.httpGet)",
                    "a metric needs a threshold: max, min, baseline or judge"),
                cel("!(has(self.baseline) && has(self.judge))", "baseline and judge are two ways to compare: pick one"),
                cel("!has(self.warnAfter) || !has(self.failureLimit) || self.warnAfter < self.failureLimit",
                    "warnAfter must be below failureLimit", ".warnAfter"),
            ]
        }
    )
    name: str = Field(pattern=NAME_PATTERN, max_length=63)
    query: str | None = Field(default=None, min_length=1, max_length=16384, description="PromQL with {{ placeholders }}.")
    template: str | None = Field(default=None, pattern=NAME_PATTERN,
                                 description="A built-in template (error-rate, p95-latency) or a MetricTemplate.")
    http_get: HttpCheck | None = None
    max: float | None = None
    min: float | None = None
    baseline: Baseline | None = None
    judge: Judge | None = None
    severity: Severity = Severity.high
    on_breach: BreachAction = BreachAction.rollback
    failure_limit: int | None = Field(default=None, ge=1, le=100, description="Overrides analysis.failureLimit.")
    warn_after: int | None = Field(default=None, ge=1, le=100,
                                   description="A warning Event and notification after this many consecutive failures.")

    @model_validator(mode="after")
    def _source_and_threshold(self) -> Metric:
        if sum(x is not None for x in (self.query, self.template, self.http_get)) != 1:
            raise ValueError(f"metric {self.name!r}: a metric needs exactly one of query, template or httpGet")
        if self.max is None and self.min is None and self.baseline is None and self.judge is None \
                and self.http_get is None:
            raise ValueError(f"metric {self.name!r}: a metric needs a threshold: max, min, baseline or judge")
        if self.baseline is not None and self.judge is not None:
            raise ValueError(f"metric {self.name!r}: baseline and judge are two ways to compare: pick one")
        if self.warn_after is not None and self.failure_limit is not None and self.warn_after >= self.failure_limit:
            raise ValueError(f"metric {self.name!r}: warnAfter must be below failureLimit")
        return self

    @property
    def kind(self) -> Literal["value", "http", "baseline", "judge"]:
        if self.http_get is not None:
            return "http"
        if self.baseline is not None:
            return "baseline"
        return "judge" if self.judge is not None else "value"

    def verdict(self, value: float | None, requests: float | None = None) -> Verdict:
        """No data, NaN and errors are inconclusive, never a pass.

        The built-in error-rate, given the number of requests in its window, fails only when the rate is above
        `max` with 95% confidence (Wilson lower bound): a single 500 among a few dozen requests is not a breach.
        """
        if value is None or math.isnan(value):
            return Verdict.inconclusive
        if self.template == "error-rate" and requests is not None and self.max is not None and value > self.max:
            return Verdict.fail if wilson_lower(value, requests) > self.max else Verdict.passed
        if self.http_get is not None and self.min is None and self.max is None:
            return Verdict.passed if value >= 1 else Verdict.fail
        if self.baseline is not None:
            limit = self.baseline.max_difference if self.baseline.max_difference is not None else self.baseline.max_ratio
            return Verdict.fail if limit is not None and value > limit else Verdict.passed
        if self.max is not None and value > self.max:
            return Verdict.fail
        if self.min is not None and value < self.min:
            return Verdict.fail
        return Verdict.passed

    @property
    def threshold(self) -> str:
        if self.baseline is not None:
            if self.baseline.max_difference is not None:
                return f"canary - stable <= {self.baseline.max_difference:g}"
            return f"canary / stable <= {self.baseline.max_ratio:g}"
        if self.judge is not None:
            return f"Mann-Whitney p >= {1 - self.judge.confidence:g} ({self.judge.direction} is worse)"
        if self.http_get is not None and self.min is None and self.max is None:
            return "healthy (2xx)"
        parts = []
        if self.min is not None:
            parts.append(f">= {self.min:g}")
        if self.max is not None:
            parts.append(f"<= {self.max:g}")
        return " and ".join(parts)


def default_metrics() -> list[Metric]:
    return [
        Metric(name="error-rate", template="error-rate", max=0.01, severity=Severity.critical,
               on_breach=BreachAction.rollback),
        Metric(name="p95-latency", template="p95-latency", max=2.0, severity=Severity.high,
               on_breach=BreachAction.step_back),
    ]


class Analysis(Model):
    prometheus: PrometheusSource | None = None
    interval: Annotated[str, Bounded("1s", "1h")] = "30s"
    failure_limit: int = Field(default=3, ge=1, le=100,
                               description="Consecutive failed checks of one metric before its onBreach action.")
    inconclusive_limit: int = Field(default=3, ge=1, le=100)
    on_inconclusive: InconclusiveAction = InconclusiveAction.pause
    metrics: list[Metric] = Field(default_factory=default_metrics, min_length=1, max_length=32)

    @field_validator("metrics")
    @classmethod
    def _unique(cls, metrics: list[Metric]) -> list[Metric]:
        names = [m.name for m in metrics]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"metric names must be unique, repeated: {', '.join(sorted(dup))}")
        return metrics

    @property
    def interval_seconds(self) -> float:
        return parse_duration(self.interval)


class Preflight(Model):
    database_reachable: bool = False
    stable_healthy: bool = False
    timeout: Annotated[str, Bounded("1s", "5m")] = "10s"


class SecretKeyRef(Model):
    name: ObjectName
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")


class PostgresDatabase(Model):
    secret_ref: SecretKeyRef


class VolumeSnapshotDatabase(Model):
    pvc: str = Field(pattern=NAME_PATTERN, description="The PersistentVolumeClaim to snapshot.")
    volume_snapshot_class: str | None = None
    volume: str | None = Field(default=None, description="Pod volume that mounts the PVC; restore repoints it.")


class Database(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.postgres) != has(self.volumeSnapshot)",
                    "exactly one database provider must be set: postgres or volumeSnapshot"),
                cel("!self.verifySnapshot || self.snapshotBeforeRollout",
                    "verifySnapshot needs snapshotBeforeRollout", ".verifySnapshot"),
                cel("!self.restoreOnRollback || self.snapshotBeforeRollout",
                    "restoreOnRollback needs snapshotBeforeRollout", ".restoreOnRollback"),
            ]
        }
    )
    postgres: PostgresDatabase | None = None
    volume_snapshot: VolumeSnapshotDatabase | None = None
    snapshot_before_rollout: bool = False
    verify_snapshot: bool = False
    restore_on_rollback: bool = False
    retain: int = Field(default=5, ge=1, le=100, description="Snapshots kept per rollout; older ones are pruned.")
    max_restore_attempts: int = Field(default=3, ge=1, le=10)

    @model_validator(mode="after")
    def _consistent(self) -> Database:
        if (self.postgres is None) == (self.volume_snapshot is None):
            raise ValueError("exactly one database provider must be set: postgres or volumeSnapshot")
        if (self.verify_snapshot or self.restore_on_rollback) and not self.snapshot_before_rollout:
            raise ValueError("verifySnapshot and restoreOnRollback need snapshotBeforeRollout")
        return self


class RollbackVerify(Model):
    duration: Annotated[str, Bounded("1s", "24h")] = Field(
        default="2m", description="Time the stable version has to prove healthy after a rollback.")
    successes: int = Field(default=3, ge=1, le=100, description="Consecutive passing checks that prove it.")
    max_error_rate: float | None = Field(
        default=None, ge=0, le=1, description="Check the error-rate template with this maximum; "
        "by default the rollout's own metrics are checked against the stable version.")


class Rollback(Model):
    verify: RollbackVerify = Field(default_factory=RollbackVerify)


class Webhook(Model):
    url: Url
    min_severity: Severity = Severity.high
    format: Literal["generic", "slack"] = "generic"
    timeout: Annotated[str, Bounded("100ms", "30s")] = "5s"


class Notification(Model):
    webhook: Webhook


class SafeRolloutSpec(Model):
    target_ref: TargetRef
    template: PodTemplate
    strategy: Strategy
    analysis: Analysis = Field(default_factory=Analysis)
    preflight: Preflight = Field(default_factory=Preflight)
    database: Database | None = None
    rollback: Rollback = Field(default_factory=Rollback)
    notifications: list[Notification] = Field(default_factory=list, max_length=16)
    paused: bool = False

    @model_validator(mode="after")
    def _gates_need_sources(self) -> SafeRolloutSpec:
        if self.preflight.database_reachable and self.database is None:
            raise ValueError("preflight.databaseReachable needs spec.database")
        return self


# -------------------------------------------------------------------------------------------------------- status


class Phase(StrEnum):
    pending = "Pending"
    preflight = "Preflight"
    progressing = "Progressing"
    paused = "Paused"
    promoting = "Promoting"
    succeeded = "Succeeded"
    rolling_back = "RollingBack"
    rolled_back = "RolledBack"
    failed = "Failed"
    blocked = "Blocked"

    @property
    def terminal(self) -> bool:
        return self in (Phase.succeeded, Phase.rolled_back, Phase.failed, Phase.blocked)


class Step(StrEnum):
    """Where inside its phase a rollout is, so that a restarted operator resumes there (the wire values are the
    strings the status has always carried)."""

    init = "Init"
    gate_database = "GateDatabase"
    gate_stable = "GateStable"
    snapshot = "Snapshot"
    canary = "Canary"
    promote_target = "PromoteTarget"
    wait_target = "WaitTarget"
    route_to_target = "RouteToTarget"
    remove_canary = "RemoveCanary"
    watch = "Watch"
    revert_traffic = "RevertTraffic"
    revert_workload = "RevertWorkload"
    revert_images = "RevertImages"
    restore_database = "RestoreDatabase"
    verify = "Verify"
    report = "Report"


# the steps each phase may be in; Progressing, Paused and the terminal phases have none
PHASE_STEPS: dict[Phase, tuple[Step, ...]] = {
    Phase.pending: (Step.init,),
    Phase.preflight: (Step.gate_database, Step.gate_stable, Step.snapshot, Step.canary),
    Phase.promoting: (Step.promote_target, Step.wait_target, Step.route_to_target, Step.remove_canary, Step.watch),
    Phase.rolling_back: (Step.revert_traffic, Step.revert_workload, Step.revert_images, Step.restore_database,
                         Step.verify, Step.report),
}


PauseReason = Literal["user", "breach", "inconclusive", "approval"]


class Verdict(StrEnum):
    passed = "pass"
    fail = "fail"
    inconclusive = "inconclusive"


class Condition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class MetricStatus(Model):
    name: str
    value: float | None = None
    threshold: str = ""
    verdict: Verdict = Verdict.inconclusive
    consecutive_failures: int = 0
    consecutive_inconclusive: int = 0
    samples: int = 0
    failing_since: str | None = None
    message: str | None = None


class AnalysisStatus(Model):
    last_run: str | None = None
    next_run: str | None = None  # the grid's next slot (a late run does not move it)
    runs: int = 0
    metrics: list[MetricStatus] = Field(default_factory=list)


class SnapshotStatus(Model):
    id: str
    provider: Literal["postgres", "volumeSnapshot"]
    state: Literal["Taking", "Taken", "Verifying", "Verified", "Failed"] = "Taking"
    taken_at: str | None = None
    verified: bool = False
    size_bytes: int | None = None
    sha256: str | None = None
    location: str | None = None
    tables: int | None = None
    message: str | None = None


class RestoreStatus(Model):
    state: Literal["Restoring", "Restored", "Failed"] = "Restoring"
    attempts: int = 0
    started_at: str | None = None
    next_attempt_at: str | None = None
    pre_restore_dump: str | None = None
    finished_at: str | None = None
    message: str | None = None


class IncidentStatus(Model):
    reason: str | None = None
    metric: str | None = None
    value: float | None = None
    threshold: str | None = None
    weight_at_breach: int | None = None
    stage_at_breach: int | None = None
    first_failed_at: str | None = None
    detected_at: str | None = None
    decided_at: str | None = None
    traffic_reverted_at: str | None = None
    images_reverted_at: str | None = None
    restored_at: str | None = None
    verified_at: str | None = None
    report_ref: str | None = None
    metrics: list[MetricStatus] = Field(default_factory=list)


class HistoryEntry(Model):
    action: str
    at: str
    stage: int | None = None
    weight: int | None = None
    metric: str | None = None
    message: str | None = None


class SafeRolloutStatus(Model):
    """Everything the operator needs to resume after a restart lives here."""

    phase: Phase | None = None
    message: str | None = None
    step: Step | None = Field(default=None, description="Sub-step inside the phase, for resumption.")
    template_hash: str | None = None
    attempt: int = 0
    observed_generation: int | None = None
    stage: int | None = Field(default=None, description="1-based index of the current stage.")
    weight: int = Field(default=0, description="Canary weight last applied by the router.")
    max_weight: int = 0
    stage_started_at: str | None = None
    stage_elapsed_seconds: float = 0
    stage_checks: int = Field(default=0, description="Analysis runs since the current stage's weight was applied.")
    preflight_attempts: int = 0
    stage_resumed_at: str | None = None
    stepped_back: bool = False
    settle_until: str | None = Field(default=None, description="No analysis before this time (after a step back).")
    pause_reason: PauseReason | None = None
    stable_images: dict[str, str] | None = None
    canary_images: dict[str, str] | None = None
    stable_revision: str | None = None
    canary_revision: str | None = None
    canary_ready: bool = False
    promoted_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    verify_started_at: str | None = None
    verify_successes: int = 0
    verify_failures: int = Field(default=0, description="Verification checks whose data showed the stable version "
                                 "unhealthy; none, and the verification was only inconclusive.")
    last_command: str | None = None
    failure: str | None = None
    incident_severity: str | None = None
    snapshot: SnapshotStatus | None = None
    restore: RestoreStatus | None = None
    analysis: AnalysisStatus = Field(default_factory=AnalysisStatus)
    incident: IncidentStatus | None = None
    history: list[HistoryEntry] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class SafeRollout(Model):
    """The whole object, used only to generate the CRD."""

    api_version: Literal["saferollout.dev/v1alpha1"] = "saferollout.dev/v1alpha1"
    kind: Literal["SafeRollout"] = "SafeRollout"
    spec: SafeRolloutSpec
    status: SafeRolloutStatus | None = None
