"""Traffic routers: each moves a share of the traffic to the canary through one kind of API object."""

from __future__ import annotations

from typing import Protocol

from saferollout.adapters.kube import RolloutRef
from saferollout.core.models import SafeRolloutSpec


class Router(Protocol):
    def set_weight(self, ref: RolloutRef, spec: SafeRolloutSpec, weight: int) -> None:
        """Send `weight` percent to the canary and the rest to stable, in one write."""


def router_for(spec: SafeRolloutSpec) -> Router:
    if spec.strategy.blue_green is not None:
        from saferollout.adapters.routers.bluegreen import BlueGreenRouter

        return BlueGreenRouter()
    assert spec.strategy.canary is not None
    traffic = spec.strategy.canary.traffic
    if traffic.gateway_api is not None:
        from saferollout.adapters.routers.gateway import GatewayAPIRouter

        return GatewayAPIRouter()
    if traffic.istio is not None:
        from saferollout.adapters.routers.istio import IstioRouter

        return IstioRouter()
    if traffic.nginx is not None:
        from saferollout.adapters.routers.nginx import NginxRouter

        return NginxRouter()
    if traffic.replicas is not None:
        from saferollout.adapters.routers.replicas import ReplicaRatioRouter

        return ReplicaRatioRouter()
    raise ValueError("spec.strategy.canary.traffic names no router")
