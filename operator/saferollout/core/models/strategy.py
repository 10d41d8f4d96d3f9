"""What is rolled out and how: the target, the new template, the stages, the routers and the strategies."""

from __future__ import annotations

import itertools
import re
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
    kind: Literal["Deployment", "StatefulSet"] = Field(
        default="Deployment", description="StatefulSet: updated in place, pod by pod, by the partition router "
        "(strategy.canary.traffic.partition); no canary workload is made beside it.")
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


# HTTP header names are tokens (RFC 9110); cookie names and values a conservative subset of RFC 6265's, so a
# cookie match is a regular expression with nothing in it to escape but the dot
HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
COOKIE_NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
COOKIE_VALUE_PATTERN = r"^[A-Za-z0-9_.-]+$"
MATCH_ROUTERS = ("gatewayAPI", "istio")  # the routers that can route by header, mirror and set a sticky cookie


_HEADER_NAMES = "header names must differ from each other (in any case) and from Cookie: match a cookie with cookies"


class HeaderMatch(Model):
    name: str = Field(pattern=HEADER_NAME_PATTERN, max_length=256, description="HTTP header name (any case).")
    value: str = Field(min_length=1, max_length=1024, pattern=r"^[^\r\n]*$")
    type: Literal["Exact", "RegularExpression"] = Field(
        default="Exact", description="RegularExpression: RE2, matched against the whole value.")

    @model_validator(mode="after")
    def _a_whole_expression(self) -> HeaderMatch:
        """The value is anchored as one group (`^(?:value)$`): one that does not compile on its own, say `x)|(.*`,
        would close that group and match every value; RE2 has no lookaround and no backreference."""
        if self.type == "RegularExpression":
            try:
                re.compile(self.value)
            except re.error as e:
                raise ValueError(f"header {self.name}: not a regular expression on its own: {e}") from None
            if re.search(r"\(\?<?[=!]|\\[1-9]", self.value):
                raise ValueError(f"header {self.name}: RE2 has no lookaround and no backreference")
        return self


class CookieMatch(Model):
    name: str = Field(pattern=COOKIE_NAME_PATTERN, max_length=128)
    value: str = Field(pattern=COOKIE_VALUE_PATTERN, max_length=256)


class StageMatch(Model):
    """Requests that carry every header and cookie listed go to the canary, whatever the stage's weight."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("has(self.headers) || has(self.cookies)", "a match needs at least one header or cookie"),
        cel("!has(self.headers) || self.headers.all(h, h.name.lowerAscii() != 'cookie') && "
            "self.headers.all(a, self.headers.exists_one(b, b.name.lowerAscii() == a.name.lowerAscii()))",
            _HEADER_NAMES, ".headers"),
    ]})
    headers: list[HeaderMatch] | None = Field(default=None, min_length=1, max_length=8)
    cookies: list[CookieMatch] | None = Field(default=None, min_length=1, max_length=1, description="One cookie "
                                              "(a route matches the Cookie header once).")

    @model_validator(mode="after")
    def _something(self) -> StageMatch:
        if not self.headers and not self.cookies:
            raise ValueError("a match needs at least one header or cookie")
        names = [h.name.lower() for h in self.headers or ()]
        if "cookie" in names or len(set(names)) != len(names):
            raise ValueError(_HEADER_NAMES)
        return self


_STAGE_KIND = "a stage needs a weight above 0, a match or a mirror"
_MIRROR_ALONE = "a mirror stage copies requests and routes none: it takes no weight and no match"
_STICKY_WEIGHT = "sticky keeps on the canary the users its weight sent there: it needs a weight above 0"


class Stage(Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("self.weight > 0 || has(self.match) || has(self.mirror)", _STAGE_KIND),
        cel("!has(self.mirror) || self.weight == 0 && !has(self.match)", _MIRROR_ALONE),
        cel("!has(self.sticky) || !self.sticky || self.weight > 0", _STICKY_WEIGHT, ".sticky"),
    ]})
    weight: int = Field(default=0, ge=0, le=100, description="Percent of traffic sent to the canary in this stage; "
                        "0 (the default) only with a match or a mirror.")
    duration: Annotated[str, Bounded("1s", "24h")] = Field(
        description="How long the stage is analysed before advancing.")
    match: StageMatch | None = Field(default=None, description="Requests that match go to the canary (A/B), "
                                     "before the weight splits the rest (gatewayAPI and istio).")
    mirror: int | None = Field(default=None, ge=1, le=100, description="Percent of the live requests copied to "
                               "the canary, whose answers are discarded; every request is still served by stable "
                               "(gatewayAPI and istio).")
    sticky: bool = Field(default=False, description="A user the weight sent to the canary gets a cookie and stays "
                         "on the canary for the rest of the rollout (gatewayAPI and istio).")

    @model_validator(mode="after")
    def _kind(self) -> Stage:
        if self.weight == 0 and self.match is None and self.mirror is None:
            raise ValueError(_STAGE_KIND)
        if self.mirror is not None and (self.weight > 0 or self.match is not None):
            raise ValueError(_MIRROR_ALONE)
        if self.sticky and self.weight == 0:
            raise ValueError(_STICKY_WEIGHT)
        return self

    @property
    def seconds(self) -> float:
        return parse_duration(self.duration)

    @property
    def kind(self) -> str:
        """What the stage sends the canary, in words: `weight 5%`, `match`, `match + weight 5%`, `mirror 20%`."""
        if self.mirror is not None:
            return f"mirror {self.mirror}%"
        parts = (["match"] if self.match else []) + ([f"weight {self.weight}%"] if self.weight else [])
        return " + ".join(parts) + (" (sticky)" if self.sticky else "")


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


class PartitionRouter(Model):
    """A StatefulSet's canary is its own pods on the new revision: the template is written with
    updateStrategy.rollingUpdate.partition = replicas (nothing moves), then each stage lowers the partition so that
    ceil(replicas x weight / 100) pods (at least one) run the new revision. The weight is that share of the pods,
    so it is coarse with few replicas. `canaryService` is made by the operator and selects the new revision's pods
    (their controller-revision-hash), so the metrics of the canary are read under its name; `stableService`
    selects every pod of the StatefulSet, both revisions."""

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
    partition: PartitionRouter | None = None

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


_RISING = ("stage weights must rise strictly from one stage to the next (stages of weight 0, a match or a "
           "mirror alone, come first)")
_MATCH_ROUTER = f"match, mirror and sticky stages need the {' or '.join(MATCH_ROUTERS)} router"


class CanaryStrategy(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.stages) || self.stages.map(s, s.weight).isSorted() && "
                    "self.stages.all(a, a.weight == 0 || self.stages.exists_one(b, b.weight == a.weight))",
                    _RISING,
                    ".stages",
                ),
                cel(
                    "!has(self.stages) || !self.stages.exists(s, has(s.match) || has(s.mirror) || "
                    "(has(s.sticky) && s.sticky)) || " + " || ".join(f"has(self.traffic.{r})" for r in MATCH_ROUTERS),
                    _MATCH_ROUTER,
                    ".stages",
                ),
            ]
        }
    )
    stages: list[Stage] | None = Field(
        default=None, min_length=1, max_length=20,
        description="Defaults to the operator's stages (5%/2m, 25%/3m, 50%/3m, 100%/5m).",
    )
    traffic: Traffic
    scale_down_delay: Annotated[str, Bounded("0s", "1h")] = Field(
        default="5s",
        description="How long the canary workload is kept after the traffic left it (the promotion's or the "
                    "rollback's weight 0), before it is deleted: a data plane applies a route some time after the "
                    "write (Traefik up to about 2 s, meshes longer), and what it still sends to a deleted pod fails. "
                    "0s deletes it at once.",
    )

    @field_validator("stages")
    @classmethod
    def _rising(cls, stages: list[Stage] | None) -> list[Stage] | None:
        if stages:
            weights = [s.weight for s in stages]
            if any(b < a or b == a > 0 for a, b in itertools.pairwise(weights)):
                raise ValueError(_RISING)
        return stages

    @model_validator(mode="after")
    def _match_router(self) -> CanaryStrategy:
        if any(s.match or s.mirror or s.sticky for s in self.stages or ()) and self.traffic.router() not in MATCH_ROUTERS:
            raise ValueError(_MATCH_ROUTER)
        return self


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
