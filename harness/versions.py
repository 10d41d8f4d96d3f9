"""Which version a route's traffic reaches, whatever the Services and workloads are called.

harness.traffic knows SafeRollout's names (the stable Service is `web`, the canary's `web-canary`). Other
controllers name their objects their own way: Flagger routes to `web-primary` and `web-canary` Services and runs the
stable pods in a `web-primary` Deployment; Argo Rollouts runs ReplicaSets it owns behind one Service. So this maps
each backend the way a data plane would find its pods: backendRef Service -> its selector -> the workloads whose pod
template labels it matches -> the version each runs, told by its image -> the demo process (role) for that image.

A backend's weight is split among the versions its Service reaches in proportion to their available replicas, as
kube-proxy would; weight on a Service that reaches no available pod, or only pods of an unknown image, is
`UNROUTED` (the Router counts it and sends it nowhere). The result is normalised to integers summing to 100.
Pure functions; `RouteReader` binds them to the cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from harness.kube import get_or_none
from harness.router import Backend
from harness.traffic import GATEWAY_GROUP, GATEWAY_VERSION, selects

UNROUTED = "unrouted"


@dataclass(frozen=True)
class Workload:
    """Pods of one image: a Deployment, or a ReplicaSet no Deployment owns (Argo Rollouts' own)."""

    name: str
    pod_labels: dict[str, str]
    image: str
    available: int


def _workload(obj: dict[str, Any]) -> Workload | None:
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return None
    template = (obj.get("spec") or {}).get("template") or {}
    containers = (template.get("spec") or {}).get("containers") or []
    image = str(containers[0].get("image", "")) if containers else ""
    return Workload(str(meta.get("name", "")), dict((template.get("metadata") or {}).get("labels") or {}), image,
                    int((obj.get("status") or {}).get("availableReplicas") or 0))


def workloads(deployments: Iterable[dict[str, Any]], replicasets: Iterable[dict[str, Any]]) -> list[Workload]:
    """Deployments, and the ReplicaSets no Deployment owns (a Deployment's own are counted through it)."""
    out = [w for d in deployments if (w := _workload(d)) is not None]
    for rs in replicasets:
        owners = (rs.get("metadata") or {}).get("ownerReferences") or []
        if any(o.get("kind") == "Deployment" for o in owners):
            continue
        w = _workload(rs)
        if w is not None:
            out.append(w)
    return out


def service_split(selector: dict[str, str] | None, loads: Iterable[Workload],
                  roles: Mapping[str, str]) -> dict[str, float]:
    """{role: share 0..1} of a Service's requests: its selected workloads' available replicas, by image role."""
    picked = [w for w in loads if w.available > 0 and selects(selector, w.pod_labels)]
    total = sum(w.available for w in picked)
    if total == 0:
        return {}
    out: dict[str, float] = {}
    for w in picked:
        role = roles.get(w.image, UNROUTED)
        out[role] = out.get(role, 0.0) + w.available / total
    return out


def normalise(weights: Mapping[str, float]) -> dict[str, int]:
    """Integers summing to 100 in the same proportions (largest remainder); {} when nothing has weight."""
    total = sum(v for v in weights.values() if v > 0)
    if total <= 0:
        return {}
    exact = {k: 100 * v / total for k, v in weights.items() if v > 0}
    out = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - out[k], reverse=True)[: 100 - sum(out.values())]:
        out[k] += 1
    return out


def _flows(backends: Mapping[str, int], services: Mapping[str, dict[str, Any]], loads: list[Workload],
           roles: Mapping[str, str]) -> list[tuple[str, str, float]]:
    """(Service, role or UNROUTED, weight) for every backend with weight."""
    out: list[tuple[str, str, float]] = []
    for name, weight in backends.items():
        if weight <= 0:
            continue
        svc = services.get(name)
        split = service_split(((svc or {}).get("spec") or {}).get("selector"), loads, roles) if svc else {}
        if not split:
            out.append((name, UNROUTED, float(weight)))
        out += [(name, role, weight * share) for role, share in split.items()]
    return out


def version_weights(backends: Mapping[str, int], services: Mapping[str, dict[str, Any]], loads: list[Workload],
                    roles: Mapping[str, str]) -> dict[str, int]:
    """{role or UNROUTED: percent} for {Service: weight} backends (an HTTPRoute's, or {Service: 100} alone)."""
    acc: dict[str, float] = {}
    for _, role, weight in _flows(backends, services, loads, roles):
        acc[role] = acc.get(role, 0.0) + weight
    return normalise(acc)


def version_services(backends: Mapping[str, int], services: Mapping[str, dict[str, Any]], loads: list[Workload],
                     roles: Mapping[str, str]) -> dict[str, str]:
    """{role: the Service that carries most of its weight}: what its requests are labelled with, as the Service
    they came through (after a promotion the new version is reached through the stable Service)."""
    best: dict[str, tuple[float, str]] = {}
    for name, role, weight in _flows(backends, services, loads, roles):
        if role != UNROUTED and weight > best.get(role, (0.0, ""))[0]:
            best[role] = (weight, name)
    return {role: name for role, (_, name) in best.items()}


def route_backends(route: dict[str, Any]) -> dict[str, int]:
    """{Service: weight} of the first rule's backendRefs (the catch-all every controller here writes); an absent
    weight reads as 0, as harness.router reads it."""
    out: dict[str, int] = {}
    for rule in ((route.get("spec") or {}).get("rules") or [])[:1]:
        for ref in rule.get("backendRefs") or []:
            name, w = ref.get("name"), ref.get("weight")
            if isinstance(name, str) and ref.get("kind", "Service") == "Service":
                out[name] = out.get(name, 0) + (int(w) if isinstance(w, int) and w > 0 else 0)
    return out


class RouteReader:
    """Reads the namespace's route (an HTTPRoute, or a bare Service for a replica-ratio canary) as {role: percent}.

    `roles` maps images to the Router's roles ("stable", "canary"); use from one thread (its own ApiClient).
    With `live` set to a Router's `backends`, each read also relabels every role with the Service that carries most
    of its weight (`version_services`), so a request is counted under the Service it came through.
    """

    def __init__(self, api: client.ApiClient, namespace: str, roles: Mapping[str, str], *,
                 httproute: str | None = None, service: str | None = None) -> None:
        if (httproute is None) == (service is None):
            raise ValueError("name exactly one of httproute or service")
        self.api, self.ns, self.roles = api, namespace, dict(roles)
        self.httproute, self.service = httproute, service
        self.apps, self.core = client.AppsV1Api(api), client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.live: dict[str, Backend] | None = None

    def _items(self, listed: Any) -> list[dict[str, Any]]:
        return list(self.api.sanitize_for_serialization(listed).get("items") or [])

    def __call__(self) -> dict[str, int] | None:
        if self.httproute is not None:
            name = self.httproute
            route = get_or_none(lambda: self.custom.get_namespaced_custom_object(
                GATEWAY_GROUP, GATEWAY_VERSION, self.ns, "httproutes", name), self.api)
            if route is None:
                return None
            backends = route_backends(route)
        else:
            backends = {str(self.service): 100}
        services = {str(s["metadata"]["name"]): s for s in self._items(self.core.list_namespaced_service(self.ns))}
        loads = workloads(self._items(self.apps.list_namespaced_deployment(self.ns)),
                          self._items(self.apps.list_namespaced_replica_set(self.ns)))
        if self.live is not None:
            for role, name in version_services(backends, services, loads, self.roles).items():
                if role in self.live and self.live[role].label != name:
                    self.live[role] = Backend(self.live[role].role, name)  # one item: atomic for the load thread
        return version_weights(backends, services, loads, self.roles)
