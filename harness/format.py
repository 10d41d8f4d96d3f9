"""The scenario format (shared/scenarios/README.md) as pydantic models, read strictly.

Every harness-owned part of a file (top level, app, load, database, faults, `at`, expect, cases, target) is a
`Strict` model (harness/strict.py): an unknown key is an error naming it and where it is, because a misspelt
expectation that is silently ignored makes a scenario pass for the wrong reason. The `rollout` manifest stays the
dict it is in the file: only the parts the harness builds from are read (models that allow other keys), the API
server judges the rest. Extensions to the README's format are marked "extension" here and documented in
docs/harness.md.

`Expect` defines the `expect` keys, one field each (its alias is the key). harness/expect.py registers one checker
per field, docs/harness.md lists the same keys, and tests/unit/test_harness_expect.py holds the three together.
`parse` turns a valid file into a `Scenario`, the plain values the run uses.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from harness.latency import fit
from harness.strict import Strict, Via, error_text, fail, one_or_list

Phase = Literal["Pending", "Preflight", "Progressing", "Paused", "Promoting", "Succeeded", "RollingBack", "RolledBack",
                "Failed", "Blocked"]
PHASES: tuple[str, ...] = get_args(Phase)
TERMINAL_PHASES = frozenset({"Succeeded", "RolledBack", "Failed", "Blocked"})
SecretPlace = Literal["operatorLogs", "events", "status", "incidentReport", "notifications"]
SECRET_PLACES: tuple[str, ...] = get_args(SecretPlace)
Severity = Literal["low", "medium", "high", "critical"]
SEVERITIES: tuple[str, ...] = get_args(Severity)
NotificationFormat = Literal["generic", "slack"]
NOTIFICATION_FORMATS: tuple[str, ...] = get_args(NotificationFormat)
Signal = Literal["TERM", "KILL", "INT", "HUP", "QUIT", "STOP", "CONT", "USR1", "USR2"]
SIGNALS: tuple[str, ...] = get_args(Signal)
Presence = Literal["present", "absent"]
# Substitution tokens in the rollout manifest, filled by the harness before the apply (extension, docs/harness.md).
TOKENS = ("canaryUrl", "stableUrl", "webhookUrl")
_TOKEN_RE = re.compile(r"@([A-Za-z][A-Za-z0-9]*)@")
# Placeholders in `database.secretValue`, filled with the scenario database's facts (extension, docs/harness.md).
SECRET_PLACEHOLDERS = ("password", "dsn", "user", "host", "port", "dbname")
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z][A-Za-z0-9]*)\}")
# `expect.pathAbsent` paths live under here: the harness deletes them before the run (extension).
PATH_ABSENT_ROOT = "/tmp"
DEFAULT_WITHIN_SECONDS = 300.0
ROUTER_KINDS = ("gatewayAPI", "istio", "nginx", "replicas", "partition", "blueGreen")

Weight = Annotated[int, Field(ge=0, le=100)]
Seconds = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
MemoryMB = Annotated[float, Field(ge=0, le=1_000_000)]


class ScenarioError(ValueError):
    """A scenario file that does not follow the format; the message names the file, the key and where it is."""


# ------------------------------------------------------------------------------------------------------- app


@dataclass(frozen=True)
class Behaviour:
    """What one demo process does: the body of `POST /admin/config`."""

    error_rate: float
    p50_ms: float
    p95_ms: float
    healthy: bool = True  # extension: /healthz answers 200, else 503
    memory_mb: float = 50.0  # extension: the app_memory_working_set_bytes gauge, in MB (10^6 bytes)

    def wire(self) -> dict[str, Any]:
        return {"errorRate": self.error_rate, "latencyMs": {"p50": self.p50_ms, "p95": self.p95_ms},
                "healthy": self.healthy, "memoryMB": self.memory_mb}

    def describe(self) -> str:
        return (f"errorRate={self.error_rate:g} p50={self.p50_ms:g}ms p95={self.p95_ms:g}ms"
                + ("" if self.healthy else " unhealthy") + f" memory={self.memory_mb:g}MB")


@dataclass(frozen=True)
class WhenRule:
    """A behaviour change that holds while all its triggers hold (level-triggered, re-evaluated continuously)."""

    canary_weight_at_least: int | None
    after_seconds: float | None
    error_rate: float | None
    latency_ms: tuple[float, float] | None
    healthy: bool | None = None
    memory_mb: float | None = None

    def holds(self, canary_weight: int, elapsed: float | None) -> bool:
        if self.canary_weight_at_least is not None and canary_weight < self.canary_weight_at_least:
            return False
        return self.after_seconds is None or (elapsed is not None and elapsed >= self.after_seconds)


@dataclass(frozen=True)
class AppSpec:
    base: Behaviour
    when: tuple[WhenRule, ...] = ()
    error_mode: str = "spread"  # extension: spread (default, reproducible) or random (independent draws)

    def effective(self, canary_weight: int, elapsed: float | None) -> Behaviour:
        """The base behaviour with every rule that holds now laid over it, later rules winning."""
        out = self.base
        for rule in self.when:
            if rule.holds(canary_weight, elapsed):
                out = Behaviour(
                    error_rate=out.error_rate if rule.error_rate is None else rule.error_rate,
                    p50_ms=out.p50_ms if rule.latency_ms is None else rule.latency_ms[0],
                    p95_ms=out.p95_ms if rule.latency_ms is None else rule.latency_ms[1],
                    healthy=out.healthy if rule.healthy is None else rule.healthy,
                    memory_mb=out.memory_mb if rule.memory_mb is None else rule.memory_mb,
                )
        return out


DEFAULT_BEHAVIOUR = Behaviour(error_rate=0.0, p50_ms=20.0, p95_ms=80.0)


class LatencyIn(Strict):
    p50: Seconds
    p95: Seconds

    @model_validator(mode="after")
    def _fits(self) -> Self:
        try:
            fit(self.p50, self.p95)
        except ValueError as e:
            raise fail(str(e)) from e
        return self

    def pair(self) -> tuple[float, float]:
        return self.p50, self.p95


class Changes(Strict):
    """What a behaviour (and a `when` rule) may set."""

    error_rate: Fraction | None = None
    latency_ms: LatencyIn | None = None
    healthy: bool | None = None  # extension
    memory_mb: MemoryMB | None = Field(None, alias="memoryMB")  # extension


CHANGES = tuple(f.alias or name for name, f in Changes.model_fields.items())


class WhenIn(Changes):
    canary_weight_at_least: Weight | None = None
    after_seconds: Seconds | None = None

    @model_validator(mode="after")
    def _triggers_and_changes(self) -> Self:
        if self.canary_weight_at_least is None and self.after_seconds is None:
            raise fail("needs a trigger: canaryWeightAtLeast or afterSeconds")
        if not self.model_fields_set & set(Changes.model_fields):
            raise fail(f"changes nothing: give {', '.join(CHANGES)}")
        return self

    def rule(self) -> WhenRule:
        return WhenRule(self.canary_weight_at_least, self.after_seconds, self.error_rate,
                        self.latency_ms.pair() if self.latency_ms else None, self.healthy, self.memory_mb)


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, list) else (value,)


class VersionIn(Changes):
    """One version of the demo service (`app.stable`, `app.canary`)."""

    when: Annotated[tuple[WhenIn, ...], Via(one_or_list(WhenIn), _as_tuple)] | None = None  # extension: a list
    error_mode: Literal["spread", "random"] = "spread"  # extension

    def spec(self) -> AppSpec:
        d = DEFAULT_BEHAVIOUR
        p50, p95 = self.latency_ms.pair() if self.latency_ms else (d.p50_ms, d.p95_ms)
        base = Behaviour(d.error_rate if self.error_rate is None else self.error_rate, p50, p95,
                         d.healthy if self.healthy is None else self.healthy,
                         d.memory_mb if self.memory_mb is None else self.memory_mb)
        return AppSpec(base, tuple(r.rule() for r in self.when or ()), self.error_mode)


class AppIn(Strict):
    stable: VersionIn = Field(default_factory=VersionIn)
    canary: VersionIn = Field(default_factory=VersionIn)


HeaderName = Annotated[str, Field(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$", max_length=256)]


class TaggedIn(Strict):
    """Extension `load.tagged`: `percent` of the requests (spread evenly) carry `headers` (a cookie: `Cookie`)."""

    percent: Annotated[int, Field(ge=1, le=100)]
    headers: Annotated[dict[HeaderName, Annotated[str, Field(max_length=1024, pattern=r"^[^\r\n]*$")]],
                       Field(min_length=1, max_length=8)]


class LoadIn(Strict):
    rps: Annotated[float, Field(ge=0, le=1000)] = 0.0
    preview_rps: Annotated[float, Field(ge=0, le=100)] = 0.0  # extension: blueGreen's preview Service
    # extension: a data plane that does not apply the weights written: this percent goes to the canary whatever they say
    canary_share: Annotated[int, Field(ge=0, le=100)] | None = None
    # extension: this percent of the requests carries these headers (a header or cookie match's audience)
    tagged: TaggedIn | None = None
    # extension: the requests come from this many users in turn, each keeping the cookies answers set (sticky)
    users: Annotated[int, Field(ge=1, le=1000)] | None = None


# extension `resourceQuota`: a ResourceQuota's spec.hard, by resource name (pods, requests.cpu, count/deployments.apps)
QuotaResource = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9./]*[a-z0-9])?$", max_length=253)]
QuotaValue = Annotated[int, Field(ge=0)] | Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")]


def _some_quota(hard: dict[str, int | str]) -> dict[str, int | str]:
    if not hard:
        raise fail("empty: give at least one resource, such as pods: 1")
    return hard


class TargetIn(Strict):
    """Extension: what the target runs before the rollout."""

    images: dict[str, str] = Field(default_factory=dict)
    replicas: Annotated[int, Field(ge=1, le=10)] = 1


# ------------------------------------------------------------------------------------------------------ faults


@dataclass(frozen=True)
class At:
    """When a fault runs: `seconds` after its anchor (the apply, a stage's start, an earlier fault, a phase)."""

    anchor: Literal["apply", "stage", "fault", "phase"]
    seconds: float
    stage: int | None = None
    fault: int | None = None
    phase: str | None = None

    def describe(self) -> str:
        what = {"apply": "the apply", "stage": f"stage {self.stage} started", "fault": f"fault {self.fault} ran",
                "phase": f"phase {self.phase} began"}[self.anchor]
        return f"{self.seconds:g}s after {what}"


@dataclass(frozen=True)
class Fault:
    index: int
    at: At
    do: str
    signal: str = "TERM"
    patch: dict[str, Any] | None = None
    sql: str | None = None
    obj: dict[str, Any] | None = None  # extension applyObject: the manifest
    kind: str | None = None  # extension patchObject / deleteObject: the object, by kind and name
    name: str | None = None

    def describe(self) -> str:
        extra = {"killOperator": f" SIG{self.signal}", "patch": f" {self.patch}", "sql": f" {self.sql!r}",
                 "applyObject": f" {object_name(self.obj or {})}", "patchObject": f" {self.kind} {self.name} {self.patch}",
                 "deleteObject": f" {self.kind} {self.name}"}
        return f"fault {self.index} {self.do}{extra.get(self.do, '')}"


def _manifest(value: dict[str, Any]) -> dict[str, Any]:
    """Extension `objects` / `applyObject`: a Kubernetes object of any kind, put in the scenario's namespace (or,
    cluster-scoped, in none): so it names no namespace of its own."""
    meta = value.get("metadata")
    for key in ("apiVersion", "kind"):
        if not isinstance(value.get(key), str) or not value[key]:
            raise fail(f"missing key {key!r} (an object needs apiVersion, kind and metadata.name)")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise fail("missing key 'metadata.name'")
    if "namespace" in meta:
        raise fail("metadata.namespace: objects go in the scenario's namespace (cluster-scoped ones in none); "
                   "leave it out")
    return value


Manifest = Annotated[dict[str, Any], AfterValidator(_manifest)]


def object_name(obj: Mapping[str, Any]) -> str:
    return f"{obj.get('kind')} {(obj.get('metadata') or {}).get('name')}"


class _AfterSeconds(Strict):
    """An anchor with `afterSeconds`: the two mistakes the other anchors invite get their own words."""

    @model_validator(mode="before")
    @classmethod
    def _hints(cls, data: object) -> object:
        if isinstance(data, dict) and "seconds" in data:
            raise fail("'seconds' goes with 'afterFault'; use 'afterSeconds' here")
        if isinstance(data, dict) and "stage" in data and "phase" in data:
            raise fail("give 'stage' or 'phase', not both")
        return data


class AtApply(_AfterSeconds):
    after_seconds: Seconds

    def at(self) -> At:
        return At("apply", self.after_seconds)


class AtStage(_AfterSeconds):
    stage: Annotated[int, Field(ge=1)]
    after_seconds: Seconds = 0.0

    def at(self) -> At:
        return At("stage", self.after_seconds, stage=self.stage)


class AtFault(Strict):
    after_fault: Annotated[int, Field(ge=0)]  # must be an earlier fault: checked by `parse`, which knows the index
    seconds: Seconds = 0.0

    def at(self) -> At:
        return At("fault", self.seconds, fault=self.after_fault)


class AtPhase(_AfterSeconds):
    """Extension: S seconds after status.phase first equals P."""

    phase: Phase
    after_seconds: Seconds = 0.0

    def at(self) -> At:
        return At("phase", self.after_seconds, phase=self.phase)


def _anchor(value: object) -> str | None:
    """Which `at` this is, by the key that names its anchor."""
    if not isinstance(value, dict):
        return "apply"  # for the error: expected a mapping
    return next((tag for key, tag in (("afterFault", "fault"), ("stage", "stage"), ("phase", "phase"),
                                      ("afterSeconds", "apply")) if key in value), None)


AtIn = Annotated[
    Annotated[AtApply, Tag("apply")] | Annotated[AtStage, Tag("stage")] | Annotated[AtFault, Tag("fault")]
    | Annotated[AtPhase, Tag("phase")],
    Discriminator(_anchor, custom_error_type="at", custom_error_message="needs stage, afterFault, phase or afterSeconds"),
]

_SIGNAL_NUMBERS = {1: "HUP", 2: "INT", 3: "QUIT", 9: "KILL", 10: "USR1", 12: "USR2", 15: "TERM"}


def _signal_name(raw: object) -> object:
    """`KILL`, `SIGKILL`, `kill`, or 9 as `kill -9` users write it: the name without SIG."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = _SIGNAL_NUMBERS.get(raw, str(raw))
    return raw.upper().removeprefix("SIG") if isinstance(raw, str) else raw


class _FaultIn(Strict):
    at: AtIn
    why: str | None = None  # extension: a comment


class PlainFault(_FaultIn):
    do: Literal["stopPrometheus", "startPrometheus", "restartOperator", "stopDatabase", "startDatabase",
                "corruptSnapshot"]

    def fault(self, index: int) -> Fault:
        return Fault(index, self.at.at(), self.do)


class KillFault(_FaultIn):
    do: Literal["killOperator"]
    signal: Annotated[Signal, BeforeValidator(_signal_name)] = "TERM"

    def fault(self, index: int) -> Fault:
        return Fault(index, self.at.at(), self.do, signal=self.signal)


class PatchFault(_FaultIn):
    do: Literal["patch"]
    patch: dict[str, Any]

    def fault(self, index: int) -> Fault:
        return Fault(index, self.at.at(), self.do, patch=self.patch)


class SqlFault(_FaultIn):
    do: Literal["sql"]
    sql: str

    def fault(self, index: int) -> Fault:
        return Fault(index, self.at.at(), self.do, sql=self.sql)


class ApplyObjectFault(_FaultIn):
    """Extension: apply a manifest (create or change an object of any kind) during the run."""

    do: Literal["applyObject"]
    object: Manifest

    def fault(self, index: int) -> Fault:
        return Fault(index, self.at.at(), self.do, obj=self.object)


class PatchObjectFault(_FaultIn):
    """Extension: a merge patch of an object by kind and name (a ClusterAnalysisTemplate edited mid-rollout)."""

    do: Literal["patchObject"]
    kind: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(min_length=1)]
    patch: dict[str, Any]

    def fault(self, index: int) -> Fault:
        return Fault(index, self.at.at(), self.do, patch=self.patch, kind=self.kind, name=self.name)


class DeleteObjectFault(_FaultIn):
    """Extension: delete an object by kind and name."""

    do: Literal["deleteObject"]
    kind: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(min_length=1)]

    def fault(self, index: int) -> Fault:
        return Fault(index, self.at.at(), self.do, kind=self.kind, name=self.name)


_FAULT_MODELS = (PlainFault, KillFault, PatchFault, SqlFault, ApplyObjectFault, PatchObjectFault, DeleteObjectFault)
FaultIn = Annotated[PlainFault | KillFault | PatchFault | SqlFault | ApplyObjectFault | PatchObjectFault
                    | DeleteObjectFault, Field(discriminator="do")]
FAULT_ACTIONS: tuple[str, ...] = tuple(action for model in _FAULT_MODELS
                                       for action in get_args(model.model_fields["do"].annotation))
DATABASE_FAULTS = ("sql", "stopDatabase", "startDatabase", "corruptSnapshot")


# ------------------------------------------------------------------------------------------------------ expect


@dataclass(frozen=True)
class Bounds:
    """An integer expectation: `N` alone is read as at most N for maxWeight (see docs/harness.md)."""

    at_least: float | None = None
    at_most: float | None = None

    def holds(self, value: float) -> bool:
        return ((self.at_least is None or value >= self.at_least)
                and (self.at_most is None or value <= self.at_most))

    def describe(self) -> str:
        if self.at_least is not None and self.at_least == self.at_most:
            return f"= {self.at_least:g}"
        parts = []
        if self.at_least is not None:
            parts.append(f">= {self.at_least:g}")
        if self.at_most is not None:
            parts.append(f"<= {self.at_most:g}")
        return " and ".join(parts)


class _BoundsIn(Strict):
    """`{atLeast, atMost}` or `{equals}`; a number alone means `scalar`."""

    scalar: ClassVar[str]
    at_least: float | None = None
    at_most: float | None = None
    equals: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _number_alone(cls, data: object) -> object:
        if isinstance(data, int | float) and not isinstance(data, bool):
            return {cls.scalar: data}
        if not isinstance(data, dict):
            raise fail(f"expected a number, got {data!r}")
        return data

    @model_validator(mode="after")
    def _one_way(self) -> Self:
        if not self.model_fields_set:
            raise fail("give atLeast, atMost or equals")
        if self.equals is not None and len(self.model_fields_set) > 1:
            raise fail("'equals' excludes atLeast and atMost")
        return self

    def bounds(self) -> Bounds:
        return Bounds(self.equals, self.equals) if self.equals is not None else Bounds(self.at_least, self.at_most)


class AtMostIn(_BoundsIn):
    scalar = "atMost"


class ExactlyIn(_BoundsIn):
    scalar = "equals"


UpperBound = Annotated[Bounds, Via(AtMostIn, _BoundsIn.bounds)]  # `N` alone: at most N
ExactBound = Annotated[Bounds, Via(ExactlyIn, _BoundsIn.bounds)]  # `N` alone: exactly N


class WeightHeldIn(Strict):
    weight: Weight
    at_least: Seconds

    def pair(self) -> tuple[int, float]:
        return self.weight, self.at_least


class ConditionIn(Strict):
    type: str
    reason: str
    status: str | None = None  # extension

    def wanted(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.model_dump(by_alias=True, exclude_unset=True).items()}


class StatefulSetExpect(Strict):
    """Extension `statefulSet` (the partition router): the partitions the StatefulSet was given, in order (repeats
    collapsed), the partition at the end, and whether every pod ended on the revision it started on (`initial`: a
    rollback returned them) or on a new one (`new`: promoted)."""

    partitions_seen: list[int] | None = None
    final_partition: int | None = None
    pods_on: Literal["initial", "new"] | None = None


class SelectorIn(Strict):
    name: str
    equals: dict[str, str]


def _selectors(value: Any) -> list[tuple[str, dict[str, str]]]:
    return [(s.name, s.equals) for s in _as_tuple(value)]


@dataclass(frozen=True)
class NotificationExpect:
    """What the harness's webhook receiver must have got (besides the per-target checks it always makes)."""

    received: Bounds | None = None
    severities: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    report_ref_present: bool | None = None


@dataclass(frozen=True)
class RequestsExpect:
    """Extension `requests`: how many requests (or mirror copies) the router sent `to`, while its plan was
    `during` (weight, match, mirror, or any), of those that carried load.tagged's headers (tagged), or not."""

    during: str
    tagged: bool | None
    to: str
    count: Bounds
    cookie: bool | None = None  # its user held a cookie the data plane set on an earlier answer (load.users)


class RequestsIn(Strict):
    during: Literal["weight", "match", "sticky", "mirror", "any"] = Field(alias="while")
    tagged: bool | None = None
    cookie: bool | None = None
    to: Literal["stable", "canary", "mirror"]
    count: Annotated[Bounds, Via(ExactlyIn, _BoundsIn.bounds)]

    def wanted(self) -> RequestsExpect:
        return RequestsExpect(self.during, self.tagged, self.to, self.count, self.cookie)


def _requests(value: Any) -> tuple[RequestsExpect, ...]:
    return tuple(r.wanted() for r in _as_tuple(value))


class NotificationsIn(Strict):
    received: ExactBound | None = None
    severities: list[Severity] = Field(default_factory=list)
    formats: list[NotificationFormat] = Field(default_factory=list)
    report_ref_present: bool | None = None

    def wanted(self) -> NotificationExpect:
        return NotificationExpect(self.received, tuple(self.severities), tuple(self.formats), self.report_ref_present)


def _under_tmp(path: str) -> str:
    if not path.startswith(PATH_ABSENT_ROOT + "/") or os.path.normpath(path) != path:
        raise fail(f"{path!r} must be a normalised absolute path under {PATH_ABSENT_ROOT}/ (the harness deletes it "
                   "before the run)")
    return path


def _paths(value: Any) -> tuple[str, ...]:
    """Absolute, normalised paths of files under /tmp (the harness deletes each before the run)."""
    paths = _as_tuple(value)
    if not paths:
        raise fail("give at least one path")
    return paths


@dataclass(frozen=True)
class Use:
    """Annotated metadata of an Expect field: which files may use the key, and whether it needs a database."""

    rollout: bool = True  # a file with a rollout
    cases: bool = False  # a bad-manifest file (`cases`)
    database: bool = False  # the scenario must have a database ('database' key or spec.database)


CASES_TOO = Use(cases=True)
CASES_ONLY = Use(rollout=False, cases=True)
NEEDS_DATABASE = Use(database=True)


class Expect(Strict):
    """The `expect` keys, one field each: the alias is the key, the type what it holds once read.

    Each field has one checker in harness/expect.py (`CHECKERS`, by field name) and one entry in docs/harness.md.
    Unmarked fields are for files with a rollout only; `Use` says otherwise.
    """

    phase: Phase | None = None
    within_seconds: Annotated[Annotated[float, Field(ge=1)] | None, CASES_TOO] = None
    max_weight: UpperBound | None = None
    final_weight: ExactBound | None = None
    weights_seen: list[Weight] | None = None
    weight_held_seconds: Annotated[tuple[int, float], Via(WeightHeldIn, WeightHeldIn.pair)] | None = None
    never_advanced_while: Literal["prometheusDown", "databaseDown", "operatorDown"] | None = None
    never_promoted: bool | None = None
    target_images: dict[str, str] | None = None
    canary_workload: Presence | None = None
    history: list[str] | None = None
    events: list[str] | None = None
    condition_seen: Annotated[dict[str, str], Via(ConditionIn, ConditionIn.wanted)] | None = None
    incident_report: Presence | None = None
    pre_restore_dump: Annotated[Presence | None, NEEDS_DATABASE] = None
    snapshot_taken_once: Annotated[bool | None, NEEDS_DATABASE] = None
    database: Annotated[Literal["equalsSnapshot"] | None, NEEDS_DATABASE] = None
    restore_attempts: Annotated[ExactBound | None, NEEDS_DATABASE] = None
    secret_absent_from: Annotated[list[SecretPlace] | None, NEEDS_DATABASE] = None
    refused_at_apply: Annotated[bool | None, CASES_ONLY] = None
    message_names_field: Annotated[bool | None, CASES_ONLY] = None
    # extensions
    service_selector: Annotated[list[tuple[str, dict[str, str]]], Via(one_or_list(SelectorIn), _selectors)] | None = None
    target_unchanged: bool | None = None
    target_replicas: ExactBound | None = None
    stateful_set: StatefulSetExpect | None = None
    events_in_order: list[str] | None = None
    notifications: Annotated[NotificationExpect, Via(NotificationsIn, NotificationsIn.wanted)] | None = None
    incident_report_contains: list[str] | None = None
    path_absent: Annotated[tuple[str, ...], Via(one_or_list(Annotated[str, AfterValidator(_under_tmp)]), _paths)] | None = None
    dry_run_failed: list[Annotated[str, Field(min_length=1)]] | None = None
    requests: Annotated[tuple[RequestsExpect, ...], Via(one_or_list(RequestsIn), _requests)] | None = None

    _order: tuple[str, ...] = PrivateAttr(default=())  # the fields given, in the file's order

    @model_validator(mode="wrap")
    @classmethod
    def _keep_file_order(cls, data: Any, handler: ModelWrapValidatorHandler[Expect]) -> Expect:
        out = handler(data)
        by_key = cls.keys()
        out._order = tuple(by_key[k] for k in data)  # every key is known once the handler accepted them
        return out

    @classmethod
    def keys(cls) -> dict[str, str]:
        """Each key as a file writes it -> its field."""
        return {f.alias or name: name for name, f in cls.model_fields.items()}

    @classmethod
    def use(cls, name: str) -> Use:
        return next((m for m in cls.model_fields[name].metadata if isinstance(m, Use)), Use())

    def given(self) -> list[tuple[str, str]]:
        """(key, field) of each expectation the file gives, in its order."""
        return [(type(self).model_fields[name].alias or name, name) for name in self._order]

    def as_dict(self) -> dict[str, Any]:
        """Key -> value, in the file's order: what Scenario.expect holds and harness.expect.check_all takes."""
        return {key: getattr(self, name) for key, name in self.given()}


# ---------------------------------------------------------------------------------------------------- scenario


def placeholders_in(text: str) -> list[str]:
    """The `{name}` placeholders of a secretValue, in order."""
    return _PLACEHOLDER_RE.findall(text)


def fill_placeholders(text: str, values: Mapping[str, str]) -> str:
    """Each `{name}` replaced by its value, as is (no URL encoding: a bare '@' stays bare)."""
    def one(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise ScenarioError(f"no value for the placeholder {{{m.group(1)}}}")
        return values[m.group(1)]
    return _PLACEHOLDER_RE.sub(one, text)


class DatabaseSpec(Strict):
    seed: str | None = None
    migration: str | None = None
    password: str | None = None
    secret_value: str | None = None  # extension: the Secret's value, with {password}, {dsn}, ... filled in

    @field_validator("secret_value")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        unknown = [p for p in placeholders_in(value) if p not in SECRET_PLACEHOLDERS]
        if unknown:
            raise fail(f"unknown placeholder {{{unknown[0]}}} (known: "
                       f"{', '.join('{' + p + '}' for p in SECRET_PLACEHOLDERS)})")
        return value

    def render_secret(self, values: Mapping[str, str]) -> str | None:
        """`secret_value` with its placeholders filled; None when the scenario keeps the harness's DSN."""
        return None if self.secret_value is None else fill_placeholders(self.secret_value, values)


@dataclass(frozen=True)
class Case:
    why: str
    patch: dict[str, Any]


class CaseIn(Strict):
    why: str | None = None
    patch: dict[str, Any]


def _not_empty(cases: list[CaseIn]) -> list[CaseIn]:
    if not cases:
        raise fail("empty")
    return cases


# ---- the parts of the rollout manifest the harness builds from; any other key is the API server's to judge


class _Read(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, alias_generator=to_camel)


class _Named(_Read):
    name: str


class _Container(_Read):
    name: str
    image: str


class _Template(_Read):
    containers: list[_Container]


class _Router(_Read):
    """A router's config; the Services default to `<target>` and `<target>-canary`."""

    stable_service: str | None = None
    canary_service: str | None = None
    route: str | None = None


class _GatewayRouter(_Router):
    http_route: str
    stable_service: str
    canary_service: str


class _IstioRouter(_Router):
    virtual_service: str


class _NginxRouter(_Router):
    ingress: str


_ROUTERS = ("gatewayAPI", "istio", "nginx", "replicas", "partition")


class _Traffic(_Read):
    gateway_api: _GatewayRouter | None = Field(None, alias="gatewayAPI")
    istio: _IstioRouter | None = None
    nginx: _NginxRouter | None = None
    replicas: _Router | None = None
    partition: _Router | None = None  # a StatefulSet's pods by revision (extension)

    @model_validator(mode="before")
    @classmethod
    def _one_router(cls, data: object) -> object:
        if isinstance(data, dict):
            if len([k for k in _ROUTERS if k in data]) != 1:
                raise fail("the harness follows one router of gatewayAPI, istio, nginx, replicas or partition, got "
                           f"{', '.join(map(str, data)) or 'nothing'}")
            return {k: {} if v is None and k in _ROUTERS else v for k, v in data.items()}  # `replicas:` is {}
        return data


class _Canary(_Read):
    traffic: _Traffic


class _BlueGreen(_Read):
    active_service: str
    preview_service: str

    @model_validator(mode="after")
    def _two_services(self) -> Self:
        if self.active_service == self.preview_service:
            raise fail("the active and the preview Service must differ")
        return self


class _Strategy(_Read):
    canary: _Canary | None = None
    blue_green: _BlueGreen | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_strategy(cls, data: object) -> object:
        if isinstance(data, dict) and ("canary" in data) == ("blueGreen" in data):
            raise fail("give exactly one of canary or blueGreen")
        return data

    @field_validator("canary", "blue_green")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise fail("expected a mapping, got NoneType")
        return value


class _TargetRef(_Named):
    kind: Literal["Deployment", "StatefulSet"] = "Deployment"  # extension: a StatefulSet, with traffic.partition


class _Spec(_Read):
    target_ref: _TargetRef
    template: _Template
    strategy: _Strategy


class _Rollout(_Read):
    kind: Literal["SafeRollout"]
    metadata: _Named
    spec: _Spec


def _known_tokens(rollout: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(tokens_in(rollout) - set(TOKENS))
    if unknown:
        raise fail(f"unknown token @{unknown[0]}@ (known tokens: {', '.join('@' + t + '@' for t in TOKENS)})")
    return rollout


Rollout = Annotated[dict[str, Any], Via(_Rollout), AfterValidator(_known_tokens)]  # the manifest, as written


class ScenarioFile(Strict):
    """A whole scenario file."""

    name: str
    description: str = ""
    rollout: Rollout | None = None
    app: AppIn = Field(default_factory=AppIn)
    load: LoadIn = Field(default_factory=LoadIn)
    database: DatabaseSpec | None = None
    faults: list[FaultIn] = Field(default_factory=list)
    expect: Expect
    cases: Annotated[list[CaseIn], AfterValidator(_not_empty)] | None = None  # bad-manifest files
    target: TargetIn | None = None  # extension
    # extension: a ResourceQuota (spec.hard) in the namespace, made once the target's pods run, before the apply
    resource_quota: Annotated[dict[QuotaResource, QuotaValue], AfterValidator(_some_quota)] | None = None
    # extension: objects applied before the rollout (in its namespace, or cluster-scoped), deleted after the run
    objects: list[Manifest] | None = None

    @field_validator("name")
    @classmethod
    def _dns_label(cls, name: str) -> str:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name):
            raise fail(f"{name!r} must be lowercase letters, digits and '-'")
        return name


MANIFEST_ONLY = ("name", "description", "cases", "expect")  # what a file with `cases` may hold


@dataclass(frozen=True)
class TrafficRefs:
    """Names the harness needs from the rollout to build its stand-ins and to follow the traffic.

    `stable_service`/`canary_service` are the Services the operator queries for the two versions: for blueGreen the
    active and the preview Service. `obj` is the router's object (HTTPRoute, VirtualService or Ingress); replicas and
    blueGreen have none, their traffic follows the Services' selectors.
    """

    kind: Literal["gatewayAPI", "istio", "nginx", "replicas", "partition", "blueGreen"]
    stable_service: str
    canary_service: str
    obj: str | None = None
    route: str | None = None  # istio: the HTTP route by name; None is the first

    @property
    def describe(self) -> str:
        what = {"gatewayAPI": "HTTPRoute", "istio": "VirtualService", "nginx": "Ingress"}.get(self.kind)
        if what:
            return f"{what} {self.obj}"
        if self.kind == "replicas":
            return f"Service {self.stable_service} (replica ratio)"
        if self.kind == "partition":
            return f"Service {self.stable_service} (StatefulSet pods by revision)"
        return f"Services {self.stable_service} (active) and {self.canary_service} (preview)"


@dataclass(frozen=True)
class Scenario:
    path: Path
    name: str
    description: str
    rollout: dict[str, Any] | None
    stable: AppSpec
    canary: AppSpec
    rps: float
    database: DatabaseSpec | None
    faults: tuple[Fault, ...]
    expect: dict[str, Any]
    cases: tuple[Case, ...] = ()
    target_images: dict[str, str] = field(default_factory=dict)
    target_replicas: int = 1
    preview_rps: float = 0.0  # extension: blueGreen's test load through the preview Service
    resource_quota: dict[str, str] = field(default_factory=dict)  # extension: spec.hard of a ResourceQuota
    objects: tuple[dict[str, Any], ...] = ()  # extension: applied before the rollout
    canary_share: int | None = None  # extension: the router sends this percent to the canary whatever the weights
    tagged: tuple[int, dict[str, str]] | None = None  # extension: (percent, headers) of the requests that carry them
    users: int | None = None  # extension: the load's users, each with its cookie jar

    @property
    def made_objects(self) -> list[dict[str, Any]]:
        """Every object the run may make (`objects` and the applyObject faults'): the clean-up deletes them."""
        return [*self.objects, *(f.obj for f in self.faults if f.obj is not None)]

    # ---- facts read from the rollout manifest (only what the harness needs to build the world around it)
    @property
    def namespace(self) -> str:
        assert self.rollout is not None
        ns = self.rollout["metadata"].get("namespace")
        return str(ns) if ns else f"harness-{self.name}"

    @property
    def rollout_name(self) -> str:
        assert self.rollout is not None
        return str(self.rollout["metadata"]["name"])

    @property
    def spec(self) -> dict[str, Any]:
        assert self.rollout is not None
        spec = self.rollout.get("spec")
        return spec if isinstance(spec, dict) else {}

    @property
    def target(self) -> str:
        return str(self.spec["targetRef"]["name"])

    @property
    def template_images(self) -> dict[str, str]:
        return {str(c["name"]): str(c["image"]) for c in self.spec["template"]["containers"]}

    @property
    def traffic(self) -> TrafficRefs:
        return traffic_refs(self.spec)

    @property
    def tokens(self) -> set[str]:
        """The substitution tokens the rollout manifest uses."""
        return tokens_in(self.rollout)

    @property
    def webhooks(self) -> list[dict[str, Any]]:
        """The rollout's webhook notification targets, as written (before substitution)."""
        out = []
        for n in self.spec.get("notifications") or []:
            hook = n.get("webhook") if isinstance(n, dict) else None
            if isinstance(hook, dict):
                out.append(hook)
        return out

    @property
    def secret_ref(self) -> tuple[str, str] | None:
        db = self.spec.get("database")
        if not isinstance(db, dict):
            return None
        ref = (db.get("postgres") or {}).get("secretRef")
        return (str(ref["name"]), str(ref["key"])) if isinstance(ref, dict) and "name" in ref and "key" in ref else None

    @property
    def needs_database(self) -> bool:
        return self.database is not None or self.secret_ref is not None

    @property
    def within_seconds(self) -> float:
        return float(self.expect.get("withinSeconds", DEFAULT_WITHIN_SECONDS))

    def initial_target_images(self) -> dict[str, str]:
        """`<repo>:1.0` per template container unless the scenario's `target.images` says otherwise."""
        out = {name: f"{image_repo(image)}:1.0" for name, image in self.template_images.items()}
        out.update(self.target_images)
        return out


def image_repo(image: str) -> str:
    """The image without tag or digest: `demo/web:2.0` -> `demo/web`, `host:5000/web` stays whole."""
    image = image.split("@", 1)[0]
    slash = image.rfind("/")
    colon = image.rfind(":")
    return image[:colon] if colon > slash else image


def traffic_refs(spec: dict[str, Any]) -> TrafficRefs:
    """The router and Service names, with the operator's defaults (`<target>`, `<target>-canary`) filled in."""
    strategy = spec["strategy"]
    target = str(spec["targetRef"]["name"])
    if "blueGreen" in strategy:
        bg = strategy["blueGreen"]
        return TrafficRefs("blueGreen", str(bg["activeService"]), str(bg["previewService"]))
    traffic = strategy["canary"]["traffic"]
    kind = next(k for k in ROUTER_KINDS if k in traffic)
    cfg = traffic[kind] or {}
    stable = str(cfg.get("stableService") or target)
    canary = str(cfg.get("canaryService") or f"{target}-canary")
    if kind == "gatewayAPI":
        return TrafficRefs("gatewayAPI", stable, canary, str(cfg["httpRoute"]))
    if kind == "istio":
        route = cfg.get("route")
        return TrafficRefs("istio", stable, canary, str(cfg["virtualService"]), str(route) if route else None)
    if kind == "nginx":
        return TrafficRefs("nginx", stable, canary, str(cfg["ingress"]))
    if kind == "partition":
        return TrafficRefs("partition", stable, canary)
    return TrafficRefs("replicas", stable, canary)


def tokens_in(obj: Any) -> set[str]:
    """Every `@name@` in the strings of a manifest."""
    if isinstance(obj, str):
        return set(_TOKEN_RE.findall(obj))
    if isinstance(obj, dict):
        return set().union(*(tokens_in(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(tokens_in(v) for v in obj)) if obj else set()
    return set()


def substitute(obj: Any, values: Mapping[str, str]) -> Any:
    """A copy of the manifest with each `@name@` replaced by its value; a token without a value is an error."""
    if isinstance(obj, str):
        def one(m: re.Match[str]) -> str:
            if m.group(1) not in values:
                raise ScenarioError(f"no value for the token @{m.group(1)}@")
            return values[m.group(1)]
        return _TOKEN_RE.sub(one, obj)
    if isinstance(obj, dict):
        return {k: substitute(v, values) for k, v in obj.items()}
    if isinstance(obj, list):
        return [substitute(v, values) for v in obj]
    return obj


def parse(data: object, path: Path) -> Scenario:
    """A Scenario from the loaded YAML; ScenarioError names the first problem."""
    where = path.name
    try:
        f = ScenarioFile.model_validate(data)
    except ValidationError as e:
        errors = e.errors()  # an unknown key first: a misspelt key is often why another one is missing
        first = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
        raise ScenarioError(error_text(first, ScenarioFile, where)) from e
    given = f.expect.given()
    if f.cases is not None:
        for key in ScenarioFile.model_fields:
            if key in f.model_fields_set and key not in MANIFEST_ONLY:
                raise ScenarioError(f"{where}.{key}: a file with 'cases' tests manifests only; {key!r} has no use")
        for key, name in given:
            if not Expect.use(name).cases:
                raise ScenarioError(f"{where}.expect.{key}: not checkable for a file with 'cases'")
        cases = tuple(Case(c.why if c.why is not None else f"case {i}", c.patch) for i, c in enumerate(f.cases))
        return Scenario(path, f.name, f.description, None, AppSpec(DEFAULT_BEHAVIOUR), AppSpec(DEFAULT_BEHAVIOUR),
                        0.0, None, (), f.expect.as_dict(), cases)
    for key, name in given:
        if not Expect.use(name).rollout:
            raise ScenarioError(f"{where}.expect.{key}: only for files with 'cases'")
    if f.rollout is None:
        raise ScenarioError(f"{where}: missing key 'rollout' (or 'cases' for a bad-manifest file)")
    if "preview_rps" in f.load.model_fields_set and "blueGreen" not in f.rollout["spec"]["strategy"]:
        raise ScenarioError(f"{where}.load.previewRps: only a blueGreen rollout has a preview Service")
    for i, fault in enumerate(f.faults):
        if isinstance(fault.at, AtFault) and fault.at.after_fault >= i:
            raise ScenarioError(f"{where}.faults[{i}].at.afterFault: {fault.at.after_fault} is not an earlier fault "
                                f"(this is fault {i})")
    target = f.target or TargetIn()
    scenario = Scenario(path, f.name, f.description, f.rollout, f.app.stable.spec(), f.app.canary.spec(), f.load.rps,
                        f.database, tuple(x.fault(i) for i, x in enumerate(f.faults)),
                        f.expect.as_dict(), (), dict(target.images), target.replicas, f.load.preview_rps,
                        {k: str(v) for k, v in (f.resource_quota or {}).items()}, tuple(f.objects or ()),
                        f.load.canary_share,
                        (f.load.tagged.percent, dict(f.load.tagged.headers)) if f.load.tagged else None,
                        f.load.users)
    _cross_check(scenario, f.expect, where)
    return scenario


def _cross_check(s: Scenario, expect: Expect, where: str) -> None:
    """Expectations and faults that need something the scenario does not set up are errors now, not at the end."""
    db_faults = [f for f in s.faults if f.do in DATABASE_FAULTS]
    if not s.needs_database:
        for key, name in expect.given():
            if Expect.use(name).database:
                raise ScenarioError(f"{where}.expect.{key}: the scenario has no database (no 'database' key and "
                                    "no spec.database in the rollout)")
        if db_faults:
            raise ScenarioError(f"{where}.faults[{db_faults[0].index}]: {db_faults[0].do} needs a database")
    unknown = set(expect.target_images or {}) - set(s.template_images)
    if unknown:
        raise ScenarioError(f"{where}.expect.targetImages: no container named {', '.join(sorted(unknown))} "
                            "in the rollout's template")
    if s.database is not None and s.database.secret_value is not None and s.secret_ref is None:
        raise ScenarioError(f"{where}.database.secretValue: the rollout names no spec.database.postgres.secretRef, "
                            "so there is no Secret to fill")
    received = [h for h in s.webhooks if "@webhookUrl@" in str(h.get("url", ""))]
    if (expect.notifications is not None or "notifications" in (expect.secret_absent_from or [])) and not received:
        raise ScenarioError(f"{where}.expect: notifications are checked at the harness's receiver, but no "
                            "spec.notifications[].webhook.url of the rollout starts with @webhookUrl@")


def load(path: str | Path) -> Scenario:
    """Read and check one scenario file."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ScenarioError(f"{p.name}: not valid YAML: {e}") from e
    return parse(data, p)


# --------------------------------------------------------------------------------------- merge patch and paths


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: mappings merge, null deletes, anything else (lists too) replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result: dict[str, Any] = copy.deepcopy(dict(target)) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def leaf_paths(patch: Any, prefix: str = "") -> list[str]:
    """Field paths, in the API server's notation (`spec.a.b[0].c`), of every leaf a patch sets."""
    if isinstance(patch, Mapping) and patch:
        out: list[str] = []
        for key, value in patch.items():
            out.extend(leaf_paths(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(patch, list) and patch:
        out = []
        for i, value in enumerate(patch):
            out.extend(leaf_paths(value, f"{prefix}[{i}]"))
        return out
    return [prefix]


_PATH_RE = re.compile(r"\bspec(?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])*")
_PART_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\[\d+\]")


def _parts(path: str) -> list[str]:
    return _PART_RE.findall(path)


def named_field(message: str, patch: Mapping[str, Any]) -> str | None:
    """The first field path in `message` that leads to a leaf of `patch` and is deeper than `spec.x`'s parent.

    A rule on an object (say "exactly one router") can only name the object, so a path that is a prefix of the
    leaf counts; a bare `spec` does not, it names nothing.
    """
    leaves = [_parts(p) for p in leaf_paths(patch)]
    for match in _PATH_RE.finditer(message):
        parts = _parts(match.group(0))
        if len(parts) < 2:
            continue
        if any(leaf[: len(parts)] == parts for leaf in leaves):
            return match.group(0)
    return None
