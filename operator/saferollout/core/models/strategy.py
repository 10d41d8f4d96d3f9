"""What is rolled out and how: the target, the new template, the stages, the routers and the strategies."""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.config import JsonDict

from saferollout.core.durations import parse_duration
from saferollout.core.models.base import (
    CANARY_SUFFIX,
    NAME_PATTERN,
    TARGET_NAME_MAX,
    Bounded,
    Model,
    ObjectName,
    ServiceName,
    TargetName,
    cel,
)


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
