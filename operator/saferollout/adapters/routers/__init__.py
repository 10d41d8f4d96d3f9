"""Traffic routers: each moves a share of the traffic to the canary through one kind of API object.

A router owns its whole lifecycle: `prepare` (how the canary must be made for it), `set_weight`, and `clean_up`
(what it created goes when the canary goes). The executor knows only this interface and `router_for`.

Adding a router: its settings class as one more field of `core.models.Traffic` (the CRD, the CEL rule and the
validator follow from the fields), its module here, and one line in ROUTERS. Routers do not import one another,
nor this package (pyproject.toml's import contracts check it): what they share lives in kube and workloads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from saferollout.adapters.kube import RolloutRef
from saferollout.adapters.routers.bluegreen import BlueGreenRouter
from saferollout.adapters.routers.gateway import GatewayAPIRouter
from saferollout.adapters.routers.istio import IstioRouter
from saferollout.adapters.routers.nginx import NginxRouter
from saferollout.adapters.routers.partition import PartitionRouter
from saferollout.adapters.routers.replicas import ReplicaRatioRouter
from saferollout.adapters.workloads import CanaryPlan
from saferollout.core.actions import Routing
from saferollout.core.models import SafeRolloutSpec


class Router(Protocol):
    def prepare(self, ref: RolloutRef, spec: SafeRolloutSpec, first_weight: int) -> CanaryPlan:
        """Before the canary is created or updated: how to make it so that `first_weight` can be routed to it."""

    def set_weight(self, ref: RolloutRef, spec: SafeRolloutSpec, weight: int) -> None:
        """Send `weight` percent to the canary and the rest to stable, in one write."""

    def clean_up(self, ref: RolloutRef, spec: SafeRolloutSpec) -> None:
        """When the canary goes: remove what this router created (never what the user made)."""


class RoutingRouter(Router, Protocol):
    def set_routing(self, ref: RolloutRef, spec: SafeRolloutSpec, weight: int, routing: Routing | None) -> None:
        """`weight`, and the stage's match, mirror and sticky cookie (None: none of them), in one write."""


BLUE_GREEN = "blueGreen"  # picked by spec.strategy.blueGreen, not by a field of spec.strategy.canary.traffic

# The routers by their name in the manifest: every field of core.models.Traffic, and blue-green's selector switch.
ROUTERS: dict[str, Callable[[], Router]] = {
    "gatewayAPI": GatewayAPIRouter,
    "istio": IstioRouter,
    "nginx": NginxRouter,
    "replicas": ReplicaRatioRouter,
    "partition": PartitionRouter,
    BLUE_GREEN: BlueGreenRouter,
}


# The routers that can also route by header or cookie, mirror and set a sticky cookie (core.models.MATCH_ROUTERS:
# the CEL rule refuses the others; a unit test checks the two agree)
ROUTING: dict[str, Callable[[], RoutingRouter]] = {
    "gatewayAPI": GatewayAPIRouter,
    "istio": IstioRouter,
}


def set_weight(ref: RolloutRef, spec: SafeRolloutSpec, weight: int, routing: Routing | None) -> None:
    """The router's write for a SetWeight: by weight alone, or with the stage's routing."""
    if routing is None:
        router_for(spec).set_weight(ref, spec, weight)
        return
    name = router_name(spec)
    if name not in ROUTING:
        raise ValueError(f"router {name} cannot route by header or cookie, mirror or set a sticky cookie")
    ROUTING[name]().set_routing(ref, spec, weight, routing)


def router_name(spec: SafeRolloutSpec) -> str:
    if spec.strategy.blue_green is not None:
        return BLUE_GREEN
    assert spec.strategy.canary is not None
    return spec.strategy.canary.traffic.router()


def router_for(spec: SafeRolloutSpec) -> Router:
    return ROUTERS[router_name(spec)]()
