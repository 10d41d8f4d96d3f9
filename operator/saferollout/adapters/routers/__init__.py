"""Traffic routers: each moves a share of the traffic to the canary through one kind of API object."""

from __future__ import annotations

from typing import Protocol

from saferollout.adapters.kube import RolloutRef
from saferollout.core.models import SafeRolloutSpec


class Router(Protocol):
    def set_weight(self, ref: RolloutRef, spec: SafeRolloutSpec, weight: int) -> None:
        """Send `weight` percent to the canary and the rest to stable, in one write."""


def router_for(spec: SafeRolloutSpec) -> Router:
    traffic = spec.strategy.canary.traffic if spec.strategy.canary else None
    if traffic is None:
        raise ValueError("the blue-green strategy has no traffic router")
    if traffic.gateway_api is not None:
        from saferollout.adapters.routers.gateway import GatewayAPIRouter

        return GatewayAPIRouter()
    raise NotImplementedError("only the gatewayAPI router is implemented so far")
