"""Analysis: the metrics, their sources and thresholds, and how a breach is answered."""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from saferollout.core.durations import parse_duration
from saferollout.core.models.base import (
    NAME_PATTERN,
    URL_PATTERN,
    Bounded,
    Model,
    cel,
)
from saferollout.core.models.status import (
    Verdict,
)
from saferollout.core.stats import wilson_lower


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


TEMPLATE_KINDS = ("AnalysisTemplate", "ClusterAnalysisTemplate")
ARG_PATTERN = r"^[a-zA-Z][a-zA-Z0-9_]*$"  # an arg is a {{ placeholder }} of the template's query
NO_PLACEHOLDER = "an arg's value may not hold {{ or }}: it is filled into a query and must not become a placeholder"


class ArgValue(Model):
    """One argument of a shared template, filled into its query by the safe placeholder rendering."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("!self.value.contains('{{') && !self.value.contains('}}')", NO_PLACEHOLDER, ".value")]})
    name: str = Field(pattern=ARG_PATTERN, max_length=63)
    value: str = Field(max_length=1024)

    @model_validator(mode="after")
    def _no_placeholder(self) -> ArgValue:
        if "{{" in self.value or "}}" in self.value:
            raise ValueError(f"arg {self.name!r}: {NO_PLACEHOLDER}")
        return self


class TemplateRef(Model):
    """A shared metric definition by name: an AnalysisTemplate of the rollout's own namespace (there is no namespace
    field, so a tenant cannot name another's) or a ClusterAnalysisTemplate, which every namespace may use."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("!has(self.args) || self.args.all(a, self.args.exists_one(b, b.name == a.name))",
            "templateRef.args: each arg may be given once", ".args")]})
    kind: Literal["AnalysisTemplate", "ClusterAnalysisTemplate"] = "AnalysisTemplate"
    name: str = Field(pattern=NAME_PATTERN, max_length=253)
    args: list[ArgValue] = Field(default_factory=list, max_length=32)

    @field_validator("args")
    @classmethod
    def _unique_args(cls, args: list[ArgValue]) -> list[ArgValue]:
        names = [x.name for x in args]
        if len(set(names)) != len(names):
            raise ValueError("templateRef.args: each arg may be given once")
        return args


class Metric(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("[has(self.query), has(self.template), has(self.templateRef), has(self.httpGet)]"
                    ".filter(x, x).size() == 1",
                    "a metric needs exactly one of query, template, templateRef or httpGet"),
                cel("has(self.templateRef) || has(self.max) || has(self.min) || has(self.baseline) || "
                    "has(self.judge) || has(self.httpGet)",
                    "a metric needs a threshold: max, min, baseline or judge (or a templateRef that gives one)"),
                cel("!(has(self.baseline) && has(self.judge))", "baseline and judge are two ways to compare: pick one"),
                cel("!has(self.warnAfter) || !has(self.failureLimit) || self.warnAfter < self.failureLimit",
                    "warnAfter must be below failureLimit", ".warnAfter"),
            ]
        }
    )
    name: str = Field(pattern=NAME_PATTERN, max_length=63)
    query: str | None = Field(default=None, min_length=1, max_length=16384, description="PromQL with {{ placeholders }}.")
    template: str | None = Field(default=None, pattern=NAME_PATTERN,
                                 description="A built-in template: error-rate, p95-latency.")
    template_ref: TemplateRef | None = Field(default=None, description=(
        "A shared definition: an AnalysisTemplate of this namespace or a ClusterAnalysisTemplate. Its query, "
        "threshold and response win where it sets them; this metric's own fields fill in the rest. The template "
        "is read when the rollout starts and pinned in status.analysisTemplates: an edit mid-rollout applies "
        "to the next rollout (an Event says so). Missing at the start: Blocked, naming it."))
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
    dry_run: bool = Field(default=False, description=(
        "Queried, judged and shown (status.analysis, the plugin, the incident report, the operator's metrics) but "
        "never acted on: no breach action, no pause, no inconclusive hold, no say in a stage's end, the pre-flight "
        "gate or the rollback's verification. onBreach and failureLimit only say what it would have done."))

    @model_validator(mode="after")
    def _source_and_threshold(self) -> Metric:
        if sum(x is not None for x in (self.query, self.template, self.template_ref, self.http_get)) != 1:
            raise ValueError(f"metric {self.name!r}: a metric needs exactly one of query, template, templateRef "
                             "or httpGet")
        if self.max is None and self.min is None and self.baseline is None and self.judge is None \
                and self.http_get is None and self.template_ref is None:
            raise ValueError(f"metric {self.name!r}: a metric needs a threshold: max, min, baseline or judge (or a "
                             "templateRef that gives one)")
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


ONLY_DRY_RUN = ("every metric is dryRun: nothing would guard the rollout; at least one metric must act "
                "(dryRun: false)")


def default_metrics() -> list[Metric]:
    return [
        Metric(name="error-rate", template="error-rate", max=0.01, severity=Severity.critical,
               on_breach=BreachAction.rollback),
        Metric(name="p95-latency", template="p95-latency", max=2.0, severity=Severity.high,
               on_breach=BreachAction.step_back),
    ]


TRAFFIC_CHECK = "traffic-split"  # the name the traffic split check is shown under, beside the metrics
TRAFFIC_CHECK_NAME_TAKEN = f"a metric may not be named {TRAFFIC_CHECK} while trafficCheck is set: that is the check's name"


class TrafficCheck(Model):
    """Whether the data plane applied the weight written: the canary's share of the requests the canary and stable
    Services served in the rate window, against the stage's weight. A mismatch is inconclusive (onInconclusive
    decides), so a version no one actually used is never promoted on the strength of an empty window."""

    tolerance: float = Field(default=0.5, gt=0, le=1, description=(
        "How far the measured share may be from the weight, as a fraction of the weight: 0.5 passes a 20% stage "
        "whose canary served 10% to 30% of the requests."))
    min_requests: int = Field(default=50, ge=1, le=10_000_000, description=(
        "Requests the two Services served in the window below which the share is not measured (inconclusive)."))


class Analysis(Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("!has(self.metrics) || self.metrics.exists(m, !has(m.dryRun) || !m.dryRun)", ONLY_DRY_RUN, ".metrics"),
        cel(f"!has(self.trafficCheck) || !has(self.metrics) || !self.metrics.exists(m, m.name == '{TRAFFIC_CHECK}')",
            TRAFFIC_CHECK_NAME_TAKEN, ".metrics"),
    ]})
    prometheus: PrometheusSource | None = None
    interval: Annotated[str, Bounded("1s", "1h")] = "30s"
    failure_limit: int = Field(default=3, ge=1, le=100,
                               description="Consecutive failed checks of one metric before its onBreach action.")
    inconclusive_limit: int = Field(default=3, ge=1, le=100)
    on_inconclusive: InconclusiveAction = InconclusiveAction.pause
    metrics: list[Metric] = Field(default_factory=default_metrics, min_length=1, max_length=32)
    traffic_check: TrafficCheck | None = Field(default=None, description=(
        "Check at every analysis of a canary stage below 100% that its measured share of requests matches the "
        "weight written (from the request counter the built-in templates read), once the stage has run for the "
        "rate window; not in a stage with a match or a sticky cookie, where the share depends on who carries "
        "them. Shown as the metric traffic-split."))

    @model_validator(mode="after")
    def _check_name_free(self) -> Analysis:
        if self.traffic_check is not None and any(m.name == TRAFFIC_CHECK for m in self.metrics):
            raise ValueError(TRAFFIC_CHECK_NAME_TAKEN)
        return self

    @field_validator("metrics")
    @classmethod
    def _unique(cls, metrics: list[Metric]) -> list[Metric]:
        names = [m.name for m in metrics]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"metric names must be unique, repeated: {', '.join(sorted(dup))}")
        if all(m.dry_run for m in metrics):
            raise ValueError(ONLY_DRY_RUN)
        return metrics

    @property
    def interval_seconds(self) -> float:
        return parse_duration(self.interval)
