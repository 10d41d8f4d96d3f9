"""Shared analysis templates: one metric's definition, written once by a platform team and named by many rollouts.

`AnalysisTemplate` is namespaced (usable only by rollouts of its own namespace), `ClusterAnalysisTemplate` is
cluster-scoped (usable from every namespace). Both have this spec; their CRDs are generated from it.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from saferollout.core.models.base import Model, cel
from saferollout.core.models.metrics import (
    ARG_PATTERN,
    NO_PLACEHOLDER,
    Baseline,
    BreachAction,
    Judge,
    Severity,
)

# What the operator fills into every query for the version analysed: an arg of that name would let a rollout
# point a shared query at another team's series (`namespace`), so none may have one.
CONTEXT_PLACEHOLDERS = ("service", "canaryService", "stableService", "namespace", "window", "interval", "name",
                        "target")
BUILTIN = ("error-rate", "p95-latency")
_RESERVED = "[" + ", ".join(f"'{p}'" for p in CONTEXT_PLACEHOLDERS) + "]"
RESERVED_MESSAGE = ("an arg may not be named like a placeholder the operator fills: "
                    + ", ".join(CONTEXT_PLACEHOLDERS))
_PLACEHOLDER = re.compile(r"\{\{\s*([a-zA-Z][a-zA-Z0-9_]*)\s*\}\}")


class TemplateArg(Model):
    """An argument the template's query takes as `{{ name }}`; without a default a rollout must give it."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel(f"!(self.name in {_RESERVED})", RESERVED_MESSAGE, ".name"),
        cel("!has(self.default) || (!self.default.contains('{{') && !self.default.contains('}}'))", NO_PLACEHOLDER,
            ".default"),
    ]})
    name: str = Field(pattern=ARG_PATTERN, max_length=63)
    default: str | None = Field(default=None, max_length=1024, description="Used when the rollout gives no value.")
    description: str | None = Field(default=None, max_length=1024)

    @model_validator(mode="after")
    def _allowed(self) -> TemplateArg:
        if self.name in CONTEXT_PLACEHOLDERS:
            raise ValueError(f"arg {self.name!r}: {RESERVED_MESSAGE}")
        if self.default is not None and ("{{" in self.default or "}}" in self.default):
            raise ValueError(f"arg {self.name!r}: {NO_PLACEHOLDER}")
        return self


class AnalysisTemplateSpec(Model):
    """One metric: its query (or a built-in template), and optionally its threshold and response.

    What the template sets wins over the rollout's metric; what it leaves out the rollout's metric gives (a
    threshold left out lets each team pick its own). Rollouts read it when they start and keep that version to
    their end: an edit applies to the next rollout.
    """

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("has(self.query) != has(self.template)", "a template needs exactly one of query or template"),
        cel("!(has(self.baseline) && has(self.judge))", "baseline and judge are two ways to compare: pick one"),
        cel("!has(self.warnAfter) || !has(self.failureLimit) || self.warnAfter < self.failureLimit",
            "warnAfter must be below failureLimit", ".warnAfter"),
        cel("!has(self.args) || self.args.all(a, self.args.exists_one(b, b.name == a.name))",
            "args: each name once", ".args"),
    ]})
    args: list[TemplateArg] = Field(default_factory=list, max_length=32)
    query: str | None = Field(default=None, min_length=1, max_length=16384, description=(
        "PromQL with {{ placeholders }}: the args, and service, canaryService, stableService, namespace, window, "
        "interval, name, target, which the operator fills for the version analysed."))
    template: Literal["error-rate", "p95-latency"] | None = Field(default=None, description="A built-in query.")
    max: float | None = None
    min: float | None = None
    baseline: Baseline | None = None
    judge: Judge | None = None
    severity: Severity | None = None
    on_breach: BreachAction | None = None
    failure_limit: int | None = Field(default=None, ge=1, le=100)
    warn_after: int | None = Field(default=None, ge=1, le=100)

    @field_validator("args")
    @classmethod
    def _unique(cls, args: list[TemplateArg]) -> list[TemplateArg]:
        names = [x.name for x in args]
        if len(set(names)) != len(names):
            raise ValueError("args: each name once")
        return args

    @model_validator(mode="after")
    def _consistent(self) -> AnalysisTemplateSpec:
        if (self.query is None) == (self.template is None):
            raise ValueError("a template needs exactly one of query or template")
        if self.baseline is not None and self.judge is not None:
            raise ValueError("baseline and judge are two ways to compare: pick one")
        if self.warn_after is not None and self.failure_limit is not None and self.warn_after >= self.failure_limit:
            raise ValueError("warnAfter must be below failureLimit")
        known = {a.name for a in self.args} | set(CONTEXT_PLACEHOLDERS)
        unknown = sorted({p for p in _PLACEHOLDER.findall(self.query or "") if p not in known})
        if unknown:
            raise ValueError(f"the query's placeholder {{{{ {unknown[0]} }}}} is neither an arg nor one the operator "
                             f"fills ({', '.join(CONTEXT_PLACEHOLDERS)})")
        return self


class AnalysisTemplate(Model):
    """The whole namespaced object, used only to generate its CRD."""

    api_version: Literal["saferollout.dev/v1alpha1"] = "saferollout.dev/v1alpha1"
    kind: Literal["AnalysisTemplate"] = "AnalysisTemplate"
    spec: AnalysisTemplateSpec


class ClusterAnalysisTemplate(Model):
    """The whole cluster-scoped object, used only to generate its CRD."""

    api_version: Literal["saferollout.dev/v1alpha1"] = "saferollout.dev/v1alpha1"
    kind: Literal["ClusterAnalysisTemplate"] = "ClusterAnalysisTemplate"
    spec: AnalysisTemplateSpec
