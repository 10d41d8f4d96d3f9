"""Istio: the destination weights of one HTTP route of a VirtualService.

The route is `istio.route` by name, or the first HTTP route. Its stable destination (host = the stable Service)
gets 100-w and the canary destination (host = the canary Service) gets w; the canary destination is added, with
the stable one's port, when it is missing. Everything else in the VirtualService is left as it is. A route that
also splits traffic to a third host is refused: Istio needs the weights to add up to 100, and quietly taking
traffic away from a host the user routes to is not this router's call.
"""

from __future__ import annotations

import copy
from typing import Any

from kubernetes.client.rest import ApiException

from saferollout.adapters import kube
from saferollout.adapters.kube import RolloutRef
from saferollout.adapters.workloads import CanaryPlan
from saferollout.core.models import SafeRolloutSpec

GROUP, PLURAL = "networking.istio.io", "virtualservices"
VERSIONS = ("v1", "v1beta1")  # v1 since Istio 1.22; older control planes serve only v1beta1 (and v1alpha3)
_served: str | None = None  # the version found by discovery, kept for the life of the process


def host_is(host: str, service: str, namespace: str) -> bool:
    """Istio hosts name a Service short (`web`), with its namespace (`web.demo`) or fully (`web.demo.svc.cluster.local`)."""
    return host in (service, f"{service}.{namespace}") or host.startswith(f"{service}.{namespace}.")


def canary_host(stable_host: str, stable: str, canary: str) -> str:
    """The canary host in the same form as the stable one, so `web.demo.svc.cluster.local` gives `web-canary.demo...`."""
    return canary + stable_host[len(stable):]


def _host(destination: dict[str, Any]) -> str:
    return str((destination.get("destination") or {}).get("host", ""))


def weighted_http(http: list[dict[str, Any]], route: str | None, namespace: str, stable: str, canary: str,
                  weight: int) -> list[dict[str, Any]]:
    """The VirtualService's `spec.http` with the chosen route's stable/canary weights set; the input is not changed."""
    if not 0 <= weight <= 100:
        raise ValueError(f"weight {weight} is not a percentage")
    if not http:
        raise LookupError("the VirtualService has no HTTP route")
    if route is None:
        index = 0
    else:
        index = next((i for i, r in enumerate(http) if r.get("name") == route), -1)
        if index < 0:
            names = ", ".join(repr(r.get("name")) for r in http)
            raise LookupError(f"the VirtualService has no HTTP route named {route!r} (routes: {names})")
    out = copy.deepcopy(http)
    dests: list[dict[str, Any]] = out[index].get("route") or []
    stable_i = next((i for i, d in enumerate(dests) if host_is(_host(d), stable, namespace)), -1)
    if stable_i < 0:
        raise LookupError(f"HTTP route {out[index].get('name') or index} has no destination for the stable Service {stable!r}")
    canary_i = next((i for i, d in enumerate(dests) if host_is(_host(d), canary, namespace)), -1)
    others = [_host(d) for i, d in enumerate(dests) if i not in (stable_i, canary_i) and d.get("weight", 0) != 0]
    if others:
        raise ValueError(f"HTTP route {out[index].get('name') or index} also sends traffic to {', '.join(others)}; "
                         "SafeRollout only splits between the stable and the canary Service")
    dests[stable_i]["weight"] = 100 - weight
    if canary_i >= 0:
        dests[canary_i]["weight"] = weight
    else:
        stable_dest = dests[stable_i]["destination"]
        dest: dict[str, Any] = {"host": canary_host(stable_dest["host"], stable, canary)}
        if "port" in stable_dest:
            dest["port"] = copy.deepcopy(stable_dest["port"])
        dests.insert(stable_i + 1, {"destination": dest, "weight": weight})
    out[index]["route"] = dests
    return out


def served_version() -> str:
    """The VirtualService version this API server serves, v1 preferred; discovered once per process."""
    global _served
    if _served is None:
        api = kube.custom()
        for version in VERSIONS:
            try:
                resources = api.get_api_resources(GROUP, version)
            except ApiException as e:
                if e.status == 404:
                    continue
                raise
            if any(r.name == PLURAL for r in resources.resources or []):
                _served = version
                break
        else:
            raise LookupError(f"the API server serves no {PLURAL}.{GROUP} in {' or '.join(VERSIONS)}: is Istio installed?")
    return _served


class IstioRouter:
    def prepare(self, ref: RolloutRef, spec: SafeRolloutSpec, first_weight: int) -> CanaryPlan:
        return CanaryPlan()  # the canary Service is a destination of its own: nothing to make

    def clean_up(self, ref: RolloutRef, spec: SafeRolloutSpec) -> None:
        """Nothing to remove: the VirtualService is the user's, and at weight 0 its canary destination carries nothing."""

    def set_weight(self, ref: RolloutRef, spec: SafeRolloutSpec, weight: int) -> None:
        """One patch of `spec.http`, guarded by the resourceVersion read, so a concurrent edit is retried, never lost."""
        global _served
        assert spec.strategy.canary and spec.strategy.canary.traffic.istio
        cfg = spec.strategy.canary.traffic.istio
        stable, canary = spec.strategy.canary.traffic.services(spec.target_ref.name)
        api = kube.custom()
        version = served_version()

        def write() -> None:
            vs: dict[str, Any] = api.get_namespaced_custom_object(GROUP, version, ref.namespace, PLURAL, cfg.virtual_service)
            current = vs.get("spec", {}).get("http") or []
            http = weighted_http(current, cfg.route, ref.namespace, stable, canary, weight)
            if http == current:
                return
            body = {"metadata": {"resourceVersion": vs["metadata"]["resourceVersion"]}, "spec": {"http": http}}
            api.patch_namespaced_custom_object(GROUP, version, ref.namespace, PLURAL, cfg.virtual_service, body)

        try:
            kube.retry_conflicts(write)
        except ApiException as e:
            if e.status == 404:
                _served = None  # Istio may have been upgraded or removed: discover again next time
            raise
