"""Where the traffic goes, read from the objects each router writes: the router's weights for every router kind.

Pure functions turn the objects into {key: weight}; `traffic_sources` binds them to the cluster. Each router's
object is read the way its data plane would read it, so the harness's load follows what the operator really wrote:

- gatewayAPI: the HTTPRoute's first rule without header matches: its backendRefs (absent weight = 0) and its
  RequestMirror filter; rules that match headers send the requests that carry them (harness.router.rule_plan).
- istio: the VirtualService's HTTP route (`route` by name, else the first): destination hosts that name the stable
  or canary Service, with their weights (a lone destination without a weight takes everything, as in Istio).
- nginx: the stable Ingress sends everything to its backend unless a canary Ingress (annotation `canary: "true"`)
  repeats one of its host/path pairs; then `canary-weight` out of `canary-weight-total` (default 100) goes to the
  canary Ingress's backend, as ingress-nginx does.
- replicas and blueGreen: a Service sends to the pods its selector matches, in proportion to their available
  replicas (the Deployments' pod template labels and `status.availableReplicas`), as kube-proxy would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from harness.format import TrafficRefs
from harness.kube import get_or_none
from harness.router import Backend, Condition, Plan, rule_plan

CANARY = "nginx.ingress.kubernetes.io/canary"
CANARY_WEIGHT = "nginx.ingress.kubernetes.io/canary-weight"
CANARY_WEIGHT_TOTAL = "nginx.ingress.kubernetes.io/canary-weight-total"
ISTIO_GROUP, ISTIO_VERSION = "networking.istio.io", "v1"
GATEWAY_GROUP, GATEWAY_VERSION = "gateway.networking.k8s.io", "v1"


# ------------------------------------------------------------------------------------------------------- Istio


def host_names(host: str, service: str, namespace: str) -> bool:
    """Istio hosts name a Service short (`web`), with its namespace (`web.ns`) or fully (`web.ns.svc.cluster.local`)."""
    return host in (service, f"{service}.{namespace}") or host.startswith(f"{service}.{namespace}.")


def _header_routes(http: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """HTTP routes every one of whose matches needs headers (the operator's match route among them)."""
    return [r for r in http if r.get("match") and all(m.get("headers") for m in r["match"])]


def istio_plan(vs: dict[str, Any], route: str | None, namespace: str, stable: str, canary: str) -> Plan:
    """The chosen route's weights and mirror, and before it the routes that match headers (in Istio's order:
    the first route that matches wins), each to its destination of highest weight."""
    http = (vs.get("spec") or {}).get("http") or []
    weights = istio_weights(vs, route, namespace, stable, canary)
    header_routes = _header_routes(http)
    chosen = next((r for r in http if r.get("name") == route), None) if route else \
        next((r for r in http if r not in header_routes), None)

    def key(host: str) -> str:
        return stable if host_names(host, stable, namespace) else canary if host_names(host, canary, namespace) else host

    matches: list[tuple[str, tuple[Condition, ...]]] = []
    for r in header_routes:
        if chosen is not None and http.index(r) > http.index(chosen):
            continue
        dests = r.get("route") or []
        if not dests:
            continue
        best = max(dests, key=lambda d: d.get("weight", 100) if isinstance(d.get("weight", 100), int) else 0)
        for m in r["match"]:
            conds = tuple((str(n).lower(), str(v.get("exact", v.get("regex", ""))), "regex" in v)
                          for n, v in (m.get("headers") or {}).items() if isinstance(v, dict))
            matches.append((key(str((best.get("destination") or {}).get("host", ""))), conds))
    mirror = None
    cookies: list[tuple[str, str]] = []
    if chosen is not None and chosen.get("mirror"):
        pct = (chosen.get("mirrorPercentage") or {}).get("value", 100)
        mirror = (key(str(chosen["mirror"].get("host", ""))), round(float(pct)))
    for d in (chosen or {}).get("route") or []:  # a destination's answers that set a cookie (a sticky stage's)
        response = ((d.get("headers") or {}).get("response") or {})
        for k, v in {**(response.get("add") or {}), **(response.get("set") or {})}.items():
            cookie = str(v).split(";", 1)[0].strip()
            if str(k).lower() == "set-cookie" and "=" in cookie:
                cookies.append((key(str((d.get("destination") or {}).get("host", ""))), cookie))
    return Plan(weights, tuple(matches), mirror, tuple(cookies))


def istio_weights(vs: dict[str, Any], route: str | None, namespace: str, stable: str, canary: str) -> dict[str, int]:
    """{Service name (or the raw host): weight} of the chosen HTTP route (by name, else the first that does not
    need headers); {} when there is no such route."""
    http = (vs.get("spec") or {}).get("http") or []
    plain = [r for r in http if r not in _header_routes(http)]
    chosen = next((r for r in http if r.get("name") == route), None) if route else (plain[0] if plain else None)
    if chosen is None:
        return {}
    dests = chosen.get("route") or []
    out: dict[str, int] = {}
    for d in dests:
        host = str((d.get("destination") or {}).get("host", ""))
        key = stable if host_names(host, stable, namespace) else canary if host_names(host, canary, namespace) else host
        w = d.get("weight")
        weight = int(w) if isinstance(w, int) and w > 0 else (100 if w is None and len(dests) == 1 else 0)
        out[key] = out.get(key, 0) + weight
    return out


# ------------------------------------------------------------------------------------------------------- NGINX


def _ingress_paths(ingress: dict[str, Any]) -> dict[tuple[str, str], str]:
    """{(host, path): backend Service} of an Ingress; ("*", "*") stands for its default backend."""
    spec = ingress.get("spec") or {}
    out: dict[tuple[str, str], str] = {}
    default = ((spec.get("defaultBackend") or {}).get("service") or {}).get("name")
    if default:
        out[("*", "*")] = str(default)
    for rule in spec.get("rules") or []:
        for p in (rule.get("http") or {}).get("paths") or []:
            svc = ((p.get("backend") or {}).get("service") or {}).get("name")
            if svc:
                out[(str(rule.get("host") or ""), str(p.get("path") or "/"))] = str(svc)
    return out


def nginx_weights(stable_ingress: dict[str, Any] | None, canary_ingress: dict[str, Any] | None,
                  stable: str) -> dict[str, int]:
    """{backend Service: weight} for the requests the stable Ingress takes; {} when there is no stable Ingress."""
    if stable_ingress is None:
        return {}
    paths = _ingress_paths(stable_ingress)
    if not paths:
        return {}
    main = stable if stable in paths.values() else next(iter(paths.values()))
    out = {main: 100}
    if canary_ingress is None or (canary_ingress.get("metadata") or {}).get("deletionTimestamp"):
        return out
    annotations = (canary_ingress.get("metadata") or {}).get("annotations") or {}
    if annotations.get(CANARY) != "true":
        return out
    shared = [svc for key, svc in _ingress_paths(canary_ingress).items() if paths.get(key) == main]
    if not shared:  # ingress-nginx applies a canary only to a host and path the main Ingress serves
        return out
    try:
        total = int(annotations.get(CANARY_WEIGHT_TOTAL, "100"))
        weight = min(max(int(annotations.get(CANARY_WEIGHT, "0")), 0), total)
    except ValueError:
        return out
    out = {main: total - weight}
    out[shared[0]] = out.get(shared[0], 0) + weight
    return out


# ---------------------------------------------------------------------------------------- Service selectors


def selects(selector: dict[str, str] | None, labels: dict[str, str] | None) -> bool:
    """A Service's selector matches a pod's labels; an empty selector matches nothing (no Endpoints are made)."""
    return bool(selector) and all((labels or {}).get(k) == v for k, v in (selector or {}).items())


def selector_weights(selector: dict[str, str] | None, deployments: Mapping[str, dict[str, Any] | None]) -> dict[str, int]:
    """{Deployment: available replicas} of the Deployments whose pods the selector matches (being deleted: none)."""
    out: dict[str, int] = {}
    for name, dep in deployments.items():
        if dep is None or (dep.get("metadata") or {}).get("deletionTimestamp"):
            continue
        labels = (((dep.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels")
        if selects(selector, labels):
            out[name] = int((dep.get("status") or {}).get("availableReplicas") or 0)
    return out


def revision_weights(sts: dict[str, Any] | None, pods: Mapping[str, dict[str, Any]], target: str) -> dict[str, int]:
    """A StatefulSet's Service spreads its requests over the ready pods of both revisions: {target: pods on the
    current revision, `<target>-canary`: pods on the update revision while it differs}. A pod's revision is its
    `controller-revision-hash` label; once every pod has the update revision, that is the current one (the target)."""
    if sts is None:
        return {}
    st = sts.get("status") or {}
    update, current = st.get("updateRevision"), st.get("currentRevision")
    selector = ((sts.get("spec") or {}).get("selector") or {}).get("matchLabels")
    out = {target: 0, f"{target}-canary": 0}
    for pod in pods.values():
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp") or not selects(selector, meta.get("labels")):
            continue
        conds = (pod.get("status") or {}).get("conditions") or []
        if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds):
            continue
        rev = (meta.get("labels") or {}).get("controller-revision-hash")
        out[f"{target}-canary" if rev == update and update != current else target] += 1
    return out


# ------------------------------------------------------------------------------------------- cluster binding


class ClusterView:
    """The namespace's Deployments and Services, listed at most once per `ttl` for every router that asks."""

    def __init__(self, api: client.ApiClient, namespace: str, ttl: float = 0.1) -> None:
        self.api, self.ns, self.ttl = api, namespace, ttl
        self.apps, self.core = client.AppsV1Api(api), client.CoreV1Api(api)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, dict[str, dict[str, Any]]]] = {}

    def _list(self, kind: str, fetch: Callable[[], Any]) -> dict[str, dict[str, Any]]:
        with self._lock:
            hit = self._cache.get(kind)
            if hit is not None and time.monotonic() - hit[0] < self.ttl:
                return hit[1]
            items = self.api.sanitize_for_serialization(fetch()).get("items") or []
            objs = {str(i["metadata"]["name"]): i for i in items}
            self._cache[kind] = (time.monotonic(), objs)
            return objs

    def deployments(self) -> dict[str, dict[str, Any]]:
        return self._list("deployments", lambda: self.apps.list_namespaced_deployment(self.ns))

    def pods(self) -> dict[str, dict[str, Any]]:
        return self._list("pods", lambda: self.core.list_namespaced_pod(self.ns))

    def services(self) -> dict[str, dict[str, Any]]:
        return self._list("services", lambda: self.core.list_namespaced_service(self.ns))

    def service_weights(self, service: str, names: tuple[str, ...]) -> dict[str, int] | None:
        """Where the Service sends its requests among the Deployments `names`; None while it does not exist."""
        svc = self.services().get(service)
        if svc is None:
            return None
        deps = self.deployments()
        return selector_weights((svc.get("spec") or {}).get("selector"), {n: deps.get(n) for n in names})


@dataclass(frozen=True)
class Source:
    """One stream of traffic: how to read its weights, where each key leads, and what to call it in the timeline."""

    read: Callable[[], dict[str, int] | Plan | None]
    backends: dict[str, Backend]
    what: str


def traffic_sources(refs: TrafficRefs, namespace: str, target: str, api: client.ApiClient) -> dict[str, Source]:
    """{"main": the load's stream, and for blueGreen "preview": the test load through the preview Service}.

    `api` is an ApiClient of the router's own (it is used from the router's thread).
    """
    stable, canary = refs.stable_service, refs.canary_service
    by_service = {stable: Backend("stable", stable), canary: Backend("canary", canary)}
    custom = client.CustomObjectsApi(api)
    if refs.kind == "gatewayAPI":
        obj = str(refs.obj)

        def read_route() -> Plan | None:
            route = get_or_none(lambda: custom.get_namespaced_custom_object(GATEWAY_GROUP, GATEWAY_VERSION, namespace,
                                                                            "httproutes", obj), api)
            return None if route is None else rule_plan(route)

        return {"main": Source(read_route, by_service, f"HTTPRoute {obj} weights")}
    if refs.kind == "istio":
        obj = str(refs.obj)

        def read_vs() -> Plan | None:
            vs = get_or_none(lambda: custom.get_namespaced_custom_object(ISTIO_GROUP, ISTIO_VERSION, namespace,
                                                                         "virtualservices", obj), api)
            return None if vs is None else istio_plan(vs, refs.route, namespace, stable, canary)

        return {"main": Source(read_vs, by_service, f"VirtualService {obj} weights")}
    if refs.kind == "nginx":
        obj = str(refs.obj)
        net = client.NetworkingV1Api(api)

        def read_ingress() -> dict[str, int] | None:
            main = get_or_none(lambda: net.read_namespaced_ingress(obj, namespace), api)
            side = get_or_none(lambda: net.read_namespaced_ingress(f"{obj}-canary", namespace), api)
            return None if main is None else nginx_weights(main, side, stable)

        return {"main": Source(read_ingress, by_service, f"Ingress {obj} (+ {obj}-canary) weights")}
    view = ClusterView(api, namespace)
    pods = (target, f"{target}-canary")
    if refs.kind == "partition":  # extension: one Service before a StatefulSet's pods of both revisions
        apps = client.AppsV1Api(api)

        def read_pods() -> dict[str, int] | None:
            sts = get_or_none(lambda: apps.read_namespaced_stateful_set(target, namespace), api)
            return None if sts is None else revision_weights(sts, view.pods(), target)

        backends = {target: Backend("stable", None), pods[1]: Backend("canary", None)}
        return {"main": Source(read_pods, backends, f"Service {stable} ready pods by revision")}
    if refs.kind == "replicas":  # one Service before both versions: the processes label their own requests
        backends = {target: Backend("stable", None), pods[1]: Backend("canary", None)}
        return {"main": Source(lambda: view.service_weights(stable, pods), backends,
                               f"Service {stable} available pods")}
    return {
        "main": Source(lambda: view.service_weights(stable, pods),
                       {target: Backend("stable", stable), pods[1]: Backend("canary", stable)},
                       f"Service {stable} (active) available pods"),
        "preview": Source(lambda: view.service_weights(canary, pods),
                          {target: Backend("stable", canary), pods[1]: Backend("canary", canary)},
                          f"Service {canary} (preview) available pods"),
    }
