"""Istio: the destination weights of one HTTP route of a VirtualService.

The route is `istio.route` by name, or the first HTTP route. Its stable destination (host = the stable Service)
gets 100-w and the canary destination (host = the canary Service) gets w; the canary destination is added, with
the stable one's port, when it is missing. Everything else in the VirtualService is left as it is. A route that
also splits traffic to a third host is refused: Istio needs the weights to add up to 100, and quietly taking
traffic away from a host the user routes to is not this router's call.

A stage's routing: its match and sticky cookie are an HTTP route of the operator's own, `<route>-saferollout-canary`,
put before the chosen one (Istio takes the first route that matches): the chosen route's matches, each with the
stage's headers added, to the canary alone. A mirror is the chosen route's `mirror` and `mirrorPercentage`; a sticky
stage's canary destination sets the cookie (`headers.response.add`). Weight 0 without routing removes all of it,
in the same single write as the weights.
"""

from __future__ import annotations

import copy
from typing import Any

from kubernetes.client.rest import ApiException

from saferollout.adapters import kube
from saferollout.adapters.kube import RolloutRef
from saferollout.adapters.workloads import CanaryPlan
from saferollout.core.actions import Routing
from saferollout.core.models import SafeRolloutSpec
from saferollout.core.stages import match_sets

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


CANARY_SUFFIX = "-saferollout-canary"  # the HTTP route this router owns, named after the chosen one
STICKY_PREFIX = "saferollout-"


def _route_index(http: list[dict[str, Any]], route: str | None) -> int:
    """The chosen route among the user's (this router's own route never is the chosen one)."""
    for i, r in enumerate(http):
        if str(r.get("name") or "").endswith(CANARY_SUFFIX):
            continue
        if route is None or r.get("name") == route:
            return i
    return -1


def routed_http(http: list[dict[str, Any]], route: str | None, namespace: str, stable: str, canary: str,
                weight: int, routing: Routing | None) -> list[dict[str, Any]]:
    """`spec.http` for `weight` and `routing`: weights as `weighted_http`, then the match route, the mirror and the
    sticky cookie set or (routing None) removed; the input is not changed."""
    mine = [r for r in http if not str(r.get("name") or "").endswith(CANARY_SUFFIX)]
    out = weighted_http(mine, route, namespace, stable, canary, weight)
    index = _route_index(out, route)
    chosen = out[index]
    dests: list[dict[str, Any]] = chosen["route"]
    canary_d = next(d for d in dests if host_is(_host(d), canary, namespace))
    mirror = chosen.get("mirror") or {}
    ours = host_is(str(mirror.get("host", "")), canary, namespace)
    if mirror and not ours and routing and routing.mirror:
        raise ValueError(f"HTTP route {chosen.get('name') or index} mirrors to {mirror.get('host')} already; "
                         "Istio mirrors to one host, and replacing the user's mirror is not this router's call")
    if ours:
        chosen.pop("mirror", None)
        chosen.pop("mirrorPercentage", None)
    if routing and routing.mirror:
        chosen["mirror"] = copy.deepcopy(canary_d["destination"])
        chosen["mirrorPercentage"] = {"value": float(routing.mirror)}
    response = (canary_d.get("headers") or {}).get("response") or {}
    added = {k: v for k, v in (response.get("add") or {}).items()
             if not (k.lower() == "set-cookie" and str(v).startswith(STICKY_PREFIX))}
    if routing and routing.sticky:
        added["set-cookie"] = f"{routing.sticky}; Path=/; HttpOnly; SameSite=Lax"
    headers = dict(canary_d.get("headers") or {})
    response = {**response, "add": added} if added else {k: v for k, v in response.items() if k != "add"}
    headers = {**headers, "response": response} if response else {k: v for k, v in headers.items() if k != "response"}
    if headers:
        canary_d["headers"] = headers
    else:
        canary_d.pop("headers", None)
    sets = match_sets(routing)
    if sets:
        matches = chosen.get("match") or [{}]
        extra = {k: copy.deepcopy(v) for k, v in chosen.items()
                 if k not in ("name", "match", "route", "mirror", "mirrorPercentage")}
        canary_only = {k: v for k, v in canary_d.items() if k != "weight"}
        own = {"name": f"{chosen.get('name') or 'route'}{CANARY_SUFFIX}", **extra,
               "match": [{**m, "headers": {**(m.get("headers") or {}),
                                           **{c.name: {"regex" if c.regex else "exact": c.value} for c in conds}}}
                         for conds in sets for m in matches],
               "route": [{**copy.deepcopy(canary_only), "weight": 100}]}
        out.insert(index, own)
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
        self.set_routing(ref, spec, weight, None)

    def set_routing(self, ref: RolloutRef, spec: SafeRolloutSpec, weight: int, routing: Routing | None) -> None:
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
            http = routed_http(current, cfg.route, ref.namespace, stable, canary, weight, routing)
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
