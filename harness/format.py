"""The scenario format (shared/scenarios/README.md), read strictly.

Every harness-owned part (top level, app, load, database, faults, `at`, expect, cases) is checked key by key: an
unknown key is an error naming it and where it is, because a misspelt expectation that is silently ignored makes a
scenario pass for the wrong reason. The `rollout` manifest is left to the API server, which validates it against
the CRD. Extensions to the README's format are marked "extension" here and documented in docs/harness.md.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from harness.latency import fit

PHASES = ("Pending", "Preflight", "Progressing", "Paused", "Promoting", "Succeeded", "RollingBack", "RolledBack",
          "Failed", "Blocked")
TERMINAL_PHASES = frozenset({"Succeeded", "RolledBack", "Failed", "Blocked"})
FAULT_ACTIONS = ("stopPrometheus", "startPrometheus", "killOperator", "restartOperator", "patch", "sql",
                 "stopDatabase", "startDatabase", "corruptSnapshot")
SECRET_PLACES = ("operatorLogs", "events", "status", "incidentReport", "notifications")
SEVERITIES = ("low", "medium", "high", "critical")
NOTIFICATION_FORMATS = ("generic", "slack")
# Substitution tokens in the rollout manifest, filled by the harness before the apply (extension, docs/harness.md).
TOKENS = ("canaryUrl", "stableUrl", "webhookUrl")
_TOKEN_RE = re.compile(r"@([A-Za-z][A-Za-z0-9]*)@")
# Placeholders in `database.secretValue`, filled with the scenario database's facts (extension, docs/harness.md).
SECRET_PLACEHOLDERS = ("password", "dsn", "user", "host", "port", "dbname")
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z][A-Za-z0-9]*)\}")
# `expect.pathAbsent` paths live under here: the harness deletes them before the run (extension).
PATH_ABSENT_ROOT = "/tmp"
SIGNALS = ("TERM", "KILL", "INT", "HUP", "QUIT", "STOP", "CONT", "USR1", "USR2")
DEFAULT_WITHIN_SECONDS = 300.0


class ScenarioError(ValueError):
    """A scenario file that does not follow the format; the message names the file, the key and where it is."""


# ------------------------------------------------------------------------------------------------ small readers


def _mapping(obj: object, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ScenarioError(f"{where}: expected a mapping, got {type(obj).__name__}")
    for key in obj:
        if not isinstance(key, str):
            raise ScenarioError(f"{where}: keys must be strings, got {key!r}")
    return obj


def _keys(obj: object, where: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The mapping itself once every key is known and every required key is there."""
    m = _mapping(obj, where)
    for key in m:
        if key not in allowed:
            raise ScenarioError(f"{where}: unknown key {key!r} (known keys: {', '.join(allowed)})")
    for key in required:
        if key not in m:
            raise ScenarioError(f"{where}: missing key {key!r}")
    return m


def _number(obj: object, where: str, minimum: float | None = None, maximum: float | None = None) -> float:
    if isinstance(obj, bool) or not isinstance(obj, int | float):
        raise ScenarioError(f"{where}: expected a number, got {obj!r}")
    value = float(obj)
    if minimum is not None and value < minimum:
        raise ScenarioError(f"{where}: {obj!r} is below {minimum:g}")
    if maximum is not None and value > maximum:
        raise ScenarioError(f"{where}: {obj!r} is above {maximum:g}")
    return value


def _int(obj: object, where: str, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(obj, bool) or not isinstance(obj, int):
        raise ScenarioError(f"{where}: expected an integer, got {obj!r}")
    _number(obj, where, minimum, maximum)
    return obj


def _str(obj: object, where: str) -> str:
    if not isinstance(obj, str):
        raise ScenarioError(f"{where}: expected a string, got {obj!r}")
    return obj


def _bool(obj: object, where: str) -> bool:
    if not isinstance(obj, bool):
        raise ScenarioError(f"{where}: expected true or false, got {obj!r}")
    return obj


def _choice(obj: object, where: str, choices: tuple[str, ...]) -> str:
    value = _str(obj, where)
    if value not in choices:
        raise ScenarioError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    return value


def _list(obj: object, where: str) -> list[Any]:
    if not isinstance(obj, list):
        raise ScenarioError(f"{where}: expected a list, got {type(obj).__name__}")
    return obj


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


def _latency(obj: object, where: str) -> tuple[float, float]:
    m = _keys(obj, where, ("p50", "p95"), ("p50", "p95"))
    p50 = _number(m["p50"], f"{where}.p50", 0)
    p95 = _number(m["p95"], f"{where}.p95", 0)
    try:
        fit(p50, p95)
    except ValueError as e:
        raise ScenarioError(f"{where}: {e}") from e
    return p50, p95


CHANGES = ("errorRate", "latencyMs", "healthy", "memoryMB")  # what a behaviour (and a `when` rule) may set


def _memory(obj: object, where: str) -> float:
    return _number(obj, where, 0, 1_000_000)


def _app(obj: object, where: str) -> AppSpec:
    m = _keys(obj, where, (*CHANGES, "when", "errorMode"))
    mode = _choice(m.get("errorMode", "spread"), f"{where}.errorMode", ("spread", "random"))
    rate = _number(m.get("errorRate", DEFAULT_BEHAVIOUR.error_rate), f"{where}.errorRate", 0, 1)
    p50, p95 = (_latency(m["latencyMs"], f"{where}.latencyMs") if "latencyMs" in m
                else (DEFAULT_BEHAVIOUR.p50_ms, DEFAULT_BEHAVIOUR.p95_ms))
    healthy = _bool(m.get("healthy", True), f"{where}.healthy")  # extension
    memory = _memory(m.get("memoryMB", DEFAULT_BEHAVIOUR.memory_mb), f"{where}.memoryMB")  # extension
    rules: list[WhenRule] = []
    if "when" in m:
        raw = m["when"]
        items = raw if isinstance(raw, list) else [raw]  # extension: a list of rules
        for i, item in enumerate(items):
            w = f"{where}.when" + (f"[{i}]" if isinstance(raw, list) else "")
            r = _keys(item, w, ("canaryWeightAtLeast", "afterSeconds", *CHANGES))
            if "canaryWeightAtLeast" not in r and "afterSeconds" not in r:
                raise ScenarioError(f"{w}: needs a trigger: canaryWeightAtLeast or afterSeconds")
            if not any(k in r for k in CHANGES):
                raise ScenarioError(f"{w}: changes nothing: give {', '.join(CHANGES)}")
            rules.append(WhenRule(
                canary_weight_at_least=(_int(r["canaryWeightAtLeast"], f"{w}.canaryWeightAtLeast", 0, 100)
                                        if "canaryWeightAtLeast" in r else None),
                after_seconds=_number(r["afterSeconds"], f"{w}.afterSeconds", 0) if "afterSeconds" in r else None,
                error_rate=_number(r["errorRate"], f"{w}.errorRate", 0, 1) if "errorRate" in r else None,
                latency_ms=_latency(r["latencyMs"], f"{w}.latencyMs") if "latencyMs" in r else None,
                healthy=_bool(r["healthy"], f"{w}.healthy") if "healthy" in r else None,
                memory_mb=_memory(r["memoryMB"], f"{w}.memoryMB") if "memoryMB" in r else None,
            ))
    return AppSpec(Behaviour(rate, p50, p95, healthy, memory), tuple(rules), mode)


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

    def describe(self) -> str:
        extra = {"killOperator": f" SIG{self.signal}", "patch": f" {self.patch}", "sql": f" {self.sql!r}"}
        return f"fault {self.index} {self.do}{extra.get(self.do, '')}"


def _at(obj: object, where: str, index: int) -> At:
    m = _keys(obj, where, ("stage", "afterSeconds", "afterFault", "seconds", "phase"))
    if "afterFault" in m:
        _keys(m, where, ("afterFault", "seconds"))
        fault = _int(m["afterFault"], f"{where}.afterFault", 0)
        if fault >= index:
            raise ScenarioError(f"{where}.afterFault: {fault} is not an earlier fault (this is fault {index})")
        return At("fault", _number(m.get("seconds", 0), f"{where}.seconds", 0), fault=fault)
    if "seconds" in m:
        raise ScenarioError(f"{where}: 'seconds' goes with 'afterFault'; use 'afterSeconds' here")
    seconds = _number(m.get("afterSeconds", 0), f"{where}.afterSeconds", 0)
    if "stage" in m and "phase" in m:
        raise ScenarioError(f"{where}: give 'stage' or 'phase', not both")
    if "stage" in m:
        return At("stage", seconds, stage=_int(m["stage"], f"{where}.stage", 1))
    if "phase" in m:  # extension: S seconds after status.phase first equals P
        return At("phase", seconds, phase=_choice(m["phase"], f"{where}.phase", PHASES))
    if "afterSeconds" not in m:
        raise ScenarioError(f"{where}: needs stage, afterFault, phase or afterSeconds")
    return At("apply", seconds)


def _faults(obj: object, where: str) -> tuple[Fault, ...]:
    out: list[Fault] = []
    for i, item in enumerate(_list(obj, where)):
        w = f"{where}[{i}]"
        m = _mapping(item, w)
        do = _choice(m.get("do"), f"{w}.do", FAULT_ACTIONS) if "do" in m else None
        if do is None:
            raise ScenarioError(f"{w}: missing key 'do'")
        extra = {"killOperator": ("signal",), "patch": ("patch",), "sql": ("sql",)}.get(do, ())
        _keys(m, w, ("at", "do", "why", *extra), ("at", "do", *(k for k in extra if k != "signal")))
        at = _at(m["at"], f"{w}.at", i)
        signal = "TERM"
        if "signal" in m:
            raw = m["signal"]
            if isinstance(raw, int) and not isinstance(raw, bool):  # 9 or 15, as `kill -9` users write it
                raw = {1: "HUP", 2: "INT", 3: "QUIT", 9: "KILL", 10: "USR1", 12: "USR2", 15: "TERM"}.get(raw, str(raw))
            signal = _choice(str(raw).upper().removeprefix("SIG"), f"{w}.signal", SIGNALS)
        patch = _mapping(m["patch"], f"{w}.patch") if "patch" in m else None
        sql = _str(m["sql"], f"{w}.sql") if "sql" in m else None
        if "why" in m:
            _str(m["why"], f"{w}.why")
        out.append(Fault(i, at, do, signal, patch, sql))
    return tuple(out)


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


def _bounds(obj: object, where: str, scalar: Literal["atMost", "equals"]) -> Bounds:
    if isinstance(obj, dict):
        m = _keys(obj, where, ("atLeast", "atMost", "equals"))
        if not m:
            raise ScenarioError(f"{where}: give atLeast, atMost or equals")
        if "equals" in m:
            if len(m) > 1:
                raise ScenarioError(f"{where}: 'equals' excludes atLeast and atMost")
            v = _number(m["equals"], f"{where}.equals")
            return Bounds(v, v)
        return Bounds(_number(m["atLeast"], f"{where}.atLeast") if "atLeast" in m else None,
                      _number(m["atMost"], f"{where}.atMost") if "atMost" in m else None)
    v = _number(obj, where)
    return Bounds(None, v) if scalar == "atMost" else Bounds(v, v)


def _present(obj: object, where: str) -> str:
    return _choice(obj, where, ("present", "absent"))


EXPECT_KEYS = ("phase", "withinSeconds", "maxWeight", "finalWeight", "weightsSeen", "weightHeldSeconds",
               "neverAdvancedWhile", "neverPromoted", "targetImages", "canaryWorkload", "history", "events",
               "conditionSeen", "incidentReport", "preRestoreDump", "snapshotTakenOnce", "database",
               "restoreAttempts", "secretAbsentFrom", "refusedAtApply", "messageNamesField",
               # extensions
               "serviceSelector", "targetUnchanged", "eventsInOrder", "notifications", "incidentReportContains",
               "pathAbsent")


@dataclass(frozen=True)
class NotificationExpect:
    """What the harness's webhook receiver must have got (besides the per-target checks it always makes)."""

    received: Bounds | None = None
    severities: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    report_ref_present: bool | None = None


def _selectors(obj: object, where: str) -> list[tuple[str, dict[str, str]]]:
    items = obj if isinstance(obj, list) else [obj]
    out = []
    for i, item in enumerate(items):
        w = f"{where}[{i}]" if isinstance(obj, list) else where
        m = _keys(item, w, ("name", "equals"), ("name", "equals"))
        equals = {_str(k, f"{w}.equals key"): _str(v, f"{w}.equals.{k}") for k, v in _mapping(m["equals"],
                                                                                          f"{w}.equals").items()}
        out.append((_str(m["name"], f"{w}.name"), equals))
    return out


def _notifications(obj: object, where: str) -> NotificationExpect:
    m = _keys(obj, where, ("received", "severities", "formats", "reportRefPresent"))
    return NotificationExpect(
        received=_bounds(m["received"], f"{where}.received", "equals") if "received" in m else None,
        severities=tuple(_choice(v, f"{where}.severities[{i}]", SEVERITIES)
                         for i, v in enumerate(_list(m.get("severities", []), f"{where}.severities"))),
        formats=tuple(_choice(v, f"{where}.formats[{i}]", NOTIFICATION_FORMATS)
                      for i, v in enumerate(_list(m.get("formats", []), f"{where}.formats"))),
        report_ref_present=_bool(m["reportRefPresent"], f"{where}.reportRefPresent") if "reportRefPresent" in m
        else None,
    )


def _path_absent(obj: object, where: str) -> tuple[str, ...]:
    """Absolute, normalised paths of files under /tmp (the harness deletes each before the run)."""
    items = obj if isinstance(obj, list) else [obj]
    out: list[str] = []
    for i, item in enumerate(items):
        w = f"{where}[{i}]" if isinstance(obj, list) else where
        path = _str(item, w)
        if not path.startswith(PATH_ABSENT_ROOT + "/") or os.path.normpath(path) != path:
            raise ScenarioError(f"{w}: {path!r} must be a normalised absolute path under {PATH_ABSENT_ROOT}/ "
                                "(the harness deletes it before the run)")
        out.append(path)
    if not out:
        raise ScenarioError(f"{where}: give at least one path")
    return tuple(out)


def _expect(obj: object, where: str) -> dict[str, Any]:
    """The expectations, each value checked and normalised (Bounds for the numeric ranges)."""
    m = _keys(obj, where, EXPECT_KEYS)
    out: dict[str, Any] = {}
    for key, value in m.items():
        w = f"{where}.{key}"
        if key == "phase":
            out[key] = _choice(value, w, PHASES)
        elif key == "withinSeconds":
            out[key] = _number(value, w, 1)
        elif key == "maxWeight":
            out[key] = _bounds(value, w, "atMost")
        elif key in ("finalWeight", "restoreAttempts"):
            out[key] = _bounds(value, w, "equals")
        elif key == "weightsSeen":
            out[key] = [_int(v, f"{w}[{i}]", 0, 100) for i, v in enumerate(_list(value, w))]
        elif key == "weightHeldSeconds":
            h = _keys(value, w, ("weight", "atLeast"), ("weight", "atLeast"))
            out[key] = (_int(h["weight"], f"{w}.weight", 0, 100), _number(h["atLeast"], f"{w}.atLeast", 0))
        elif key == "neverAdvancedWhile":
            out[key] = _choice(value, w, ("prometheusDown", "databaseDown", "operatorDown"))
        elif key in ("neverPromoted", "snapshotTakenOnce", "refusedAtApply", "messageNamesField", "targetUnchanged"):
            out[key] = _bool(value, w)
        elif key == "targetImages":
            out[key] = {_str(k, f"{w} key"): _str(v, f"{w}.{k}") for k, v in _mapping(value, w).items()}
        elif key in ("canaryWorkload", "incidentReport", "preRestoreDump"):
            out[key] = _present(value, w)
        elif key in ("history", "events", "eventsInOrder", "incidentReportContains"):
            out[key] = [_str(v, f"{w}[{i}]") for i, v in enumerate(_list(value, w))]
        elif key == "conditionSeen":
            c = _keys(value, w, ("type", "reason", "status"), ("type", "reason"))
            out[key] = {k: _str(v, f"{w}.{k}") for k, v in c.items()}
        elif key == "database":
            out[key] = _choice(value, w, ("equalsSnapshot",))
        elif key == "secretAbsentFrom":
            out[key] = [_choice(v, f"{w}[{i}]", SECRET_PLACES) for i, v in enumerate(_list(value, w))]
        elif key == "serviceSelector":
            out[key] = _selectors(value, w)
        elif key == "notifications":
            out[key] = _notifications(value, w)
        elif key == "pathAbsent":
            out[key] = _path_absent(value, w)
    return out


# ---------------------------------------------------------------------------------------------------- scenario


@dataclass(frozen=True)
class DatabaseSpec:
    seed: str | None = None
    migration: str | None = None
    password: str | None = None
    secret_value: str | None = None  # extension: the Secret's value, with {password}, {dsn}, ... filled in

    def render_secret(self, values: Mapping[str, str]) -> str | None:
        """`secret_value` with its placeholders filled; None when the scenario keeps the harness's DSN."""
        return None if self.secret_value is None else fill_placeholders(self.secret_value, values)


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


@dataclass(frozen=True)
class Case:
    why: str
    patch: dict[str, Any]


ROUTER_KINDS = ("gatewayAPI", "istio", "nginx", "replicas", "blueGreen")


@dataclass(frozen=True)
class TrafficRefs:
    """Names the harness needs from the rollout to build its stand-ins and to follow the traffic.

    `stable_service`/`canary_service` are the Services the operator queries for the two versions: for blueGreen the
    active and the preview Service. `obj` is the router's object (HTTPRoute, VirtualService or Ingress); replicas and
    blueGreen have none, their traffic follows the Services' selectors.
    """

    kind: Literal["gatewayAPI", "istio", "nginx", "replicas", "blueGreen"]
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


def _rollout(obj: object, where: str) -> dict[str, Any]:
    """Only the parts the harness builds from are checked; the API server judges the rest."""
    m = _mapping(obj, where)
    meta = _mapping(m.get("metadata"), f"{where}.metadata")
    _str(meta.get("name"), f"{where}.metadata.name")
    if m.get("kind") != "SafeRollout":
        raise ScenarioError(f"{where}.kind: expected SafeRollout, got {m.get('kind')!r}")
    spec = _mapping(m.get("spec"), f"{where}.spec")
    _str(_mapping(spec.get("targetRef"), f"{where}.spec.targetRef").get("name"), f"{where}.spec.targetRef.name")
    containers = _list(_mapping(spec.get("template"), f"{where}.spec.template").get("containers"),
                       f"{where}.spec.template.containers")
    for i, c in enumerate(containers):
        cm = _mapping(c, f"{where}.spec.template.containers[{i}]")
        _str(cm.get("name"), f"{where}.spec.template.containers[{i}].name")
        _str(cm.get("image"), f"{where}.spec.template.containers[{i}].image")
    w = f"{where}.spec.strategy"
    strategy = _mapping(spec.get("strategy"), w)
    if ("canary" in strategy) == ("blueGreen" in strategy):
        raise ScenarioError(f"{w}: give exactly one of canary or blueGreen")
    if "blueGreen" in strategy:
        bg = _mapping(strategy["blueGreen"], f"{w}.blueGreen")
        for key in ("activeService", "previewService"):
            _str(bg.get(key), f"{w}.blueGreen.{key}")
        if bg["activeService"] == bg["previewService"]:
            raise ScenarioError(f"{w}.blueGreen: the active and the preview Service must differ")
    else:
        traffic = _mapping(_mapping(strategy["canary"], f"{w}.canary").get("traffic"), f"{w}.canary.traffic")
        kinds = [k for k in ROUTER_KINDS if k in traffic]
        if len(kinds) != 1:
            raise ScenarioError(f"{w}.canary.traffic: the harness follows one router of gatewayAPI, istio, nginx or "
                                f"replicas, got {', '.join(traffic) or 'nothing'}")
        cfg = _mapping(traffic[kinds[0]] if traffic[kinds[0]] is not None else {}, f"{w}.canary.traffic.{kinds[0]}")
        required = {"gatewayAPI": ("httpRoute", "stableService", "canaryService"), "istio": ("virtualService",),
                    "nginx": ("ingress",), "replicas": ()}[kinds[0]]
        for key in required:
            _str(cfg.get(key), f"{w}.canary.traffic.{kinds[0]}.{key}")
        for key in ("stableService", "canaryService", "route"):
            if cfg.get(key) is not None:
                _str(cfg[key], f"{w}.canary.traffic.{kinds[0]}.{key}")
    unknown = sorted(tokens_in(m) - set(TOKENS))
    if unknown:
        raise ScenarioError(f"{where}: unknown token @{unknown[0]}@ (known tokens: "
                            f"{', '.join('@' + t + '@' for t in TOKENS)})")
    return copy.deepcopy(m)


TOP_KEYS = ("name", "description", "rollout", "app", "load", "database", "faults", "expect", "cases", "target")


def parse(data: object, path: Path) -> Scenario:
    """A Scenario from the loaded YAML; ScenarioError names the first problem."""
    where = path.name
    m = _keys(data, where, TOP_KEYS, ("name", "expect"))
    name = _str(m["name"], f"{where}.name")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name):
        raise ScenarioError(f"{where}.name: {name!r} must be lowercase letters, digits and '-'")
    description = _str(m.get("description", ""), f"{where}.description")
    expect = _expect(m["expect"], f"{where}.expect")
    if "cases" in m:
        for key in ("rollout", "app", "load", "database", "faults", "target"):
            if key in m:
                raise ScenarioError(f"{where}.{key}: a file with 'cases' tests manifests only; {key!r} has no use")
        for key in expect:
            if key not in ("refusedAtApply", "messageNamesField", "withinSeconds"):
                raise ScenarioError(f"{where}.expect.{key}: not checkable for a file with 'cases'")
        cases = []
        for i, item in enumerate(_list(m["cases"], f"{where}.cases")):
            c = _keys(item, f"{where}.cases[{i}]", ("why", "patch"), ("patch",))
            cases.append(Case(_str(c.get("why", f"case {i}"), f"{where}.cases[{i}].why"),
                              _mapping(c["patch"], f"{where}.cases[{i}].patch")))
        if not cases:
            raise ScenarioError(f"{where}.cases: empty")
        return Scenario(path, name, description, None, AppSpec(DEFAULT_BEHAVIOUR), AppSpec(DEFAULT_BEHAVIOUR),
                        0.0, None, (), expect, tuple(cases))
    for key in ("refusedAtApply", "messageNamesField"):
        if key in expect:
            raise ScenarioError(f"{where}.expect.{key}: only for files with 'cases'")
    if "rollout" not in m:
        raise ScenarioError(f"{where}: missing key 'rollout' (or 'cases' for a bad-manifest file)")
    rollout = _rollout(m["rollout"], f"{where}.rollout")
    app = _keys(m.get("app", {}), f"{where}.app", ("stable", "canary"))
    stable = _app(app.get("stable", {}), f"{where}.app.stable")
    canary = _app(app.get("canary", {}), f"{where}.app.canary")
    load = _keys(m.get("load", {}), f"{where}.load", ("rps", "previewRps"))
    rps = _number(load.get("rps", 0), f"{where}.load.rps", 0, 1000)
    preview_rps = _number(load.get("previewRps", 0), f"{where}.load.previewRps", 0, 100)  # extension
    if "previewRps" in load and "blueGreen" not in rollout["spec"]["strategy"]:
        raise ScenarioError(f"{where}.load.previewRps: only a blueGreen rollout has a preview Service")
    database = None
    if "database" in m:
        keys = ("seed", "migration", "password", "secretValue")
        d = _keys(m["database"], f"{where}.database", keys)
        seed, migration, password, secret_value = (_str(d[k], f"{where}.database.{k}") if k in d else None
                                                   for k in keys)
        if secret_value is not None:  # extension
            unknown = [p for p in placeholders_in(secret_value) if p not in SECRET_PLACEHOLDERS]
            if unknown:
                raise ScenarioError(f"{where}.database.secretValue: unknown placeholder {{{unknown[0]}}} (known: "
                                    f"{', '.join('{' + p + '}' for p in SECRET_PLACEHOLDERS)})")
        database = DatabaseSpec(seed, migration, password, secret_value)
    faults = _faults(m.get("faults", []), f"{where}.faults")
    target_images: dict[str, str] = {}
    replicas = 1
    if "target" in m:  # extension: what the target runs before the rollout
        t = _keys(m["target"], f"{where}.target", ("images", "replicas"))
        if "images" in t:
            target_images = {_str(k, f"{where}.target.images key"): _str(v, f"{where}.target.images.{k}")
                             for k, v in _mapping(t["images"], f"{where}.target.images").items()}
        replicas = _int(t.get("replicas", 1), f"{where}.target.replicas", 1, 10)
    scenario = Scenario(path, name, description, rollout, stable, canary, rps, database, faults, expect, (),
                        target_images, replicas, preview_rps)
    _cross_check(scenario, where)
    return scenario


def _cross_check(s: Scenario, where: str) -> None:
    """Expectations and faults that need something the scenario does not set up are errors now, not at the end."""
    db_faults = [f for f in s.faults if f.do in ("sql", "stopDatabase", "startDatabase", "corruptSnapshot")]
    if not s.needs_database:
        for key in ("database", "secretAbsentFrom", "preRestoreDump", "snapshotTakenOnce", "restoreAttempts"):
            if key in s.expect:
                raise ScenarioError(f"{where}.expect.{key}: the scenario has no database (no 'database' key and "
                                    "no spec.database in the rollout)")
        if db_faults:
            raise ScenarioError(f"{where}.faults[{db_faults[0].index}]: {db_faults[0].do} needs a database")
    unknown = set(s.expect.get("targetImages", {})) - set(s.template_images)
    if unknown:
        raise ScenarioError(f"{where}.expect.targetImages: no container named {', '.join(sorted(unknown))} "
                            "in the rollout's template")
    if s.database is not None and s.database.secret_value is not None and s.secret_ref is None:
        raise ScenarioError(f"{where}.database.secretValue: the rollout names no spec.database.postgres.secretRef, "
                            "so there is no Secret to fill")
    received = [h for h in s.webhooks if "@webhookUrl@" in str(h.get("url", ""))]
    if ("notifications" in s.expect or "notifications" in s.expect.get("secretAbsentFrom", [])) and not received:
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
