"""The weights the harness's data plane reads from each router's objects (pure: no cluster)."""

from __future__ import annotations

from typing import Any

from harness.router import canary_share
from harness.traffic import host_names, istio_weights, nginx_weights, selector_weights, selects


def vs(*routes: dict[str, Any]) -> dict[str, Any]:
    return {"spec": {"hosts": ["web"], "http": list(routes)}}


def dest(host: str, weight: int | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"destination": {"host": host, "port": {"number": 80}}}
    if weight is not None:
        d["weight"] = weight
    return d


def test_istio_hosts_in_every_form() -> None:
    assert host_names("web", "web", "ns")
    assert host_names("web.ns", "web", "ns")
    assert host_names("web.ns.svc.cluster.local", "web", "ns")
    assert not host_names("web-canary", "web", "ns")
    assert not host_names("web.other", "web", "ns")


def test_istio_weights_follow_the_chosen_route() -> None:
    one = vs({"name": "primary", "route": [dest("web", 100)]})
    assert istio_weights(one, None, "ns", "web", "web-canary") == {"web": 100}
    lone = vs({"route": [dest("web.ns.svc.cluster.local")]})  # a lone destination without weight takes it all
    assert istio_weights(lone, None, "ns", "web", "web-canary") == {"web": 100}
    split = vs({"name": "other", "route": [dest("api", 100)]},
               {"name": "primary", "route": [dest("web.ns", 75), dest("web-canary.ns", 25)]})
    w = istio_weights(split, "primary", "ns", "web", "web-canary")
    assert w == {"web": 75, "web-canary": 25} and canary_share(w, "web", "web-canary") == 25
    assert istio_weights(split, None, "ns", "web", "web-canary") == {"api": 100}  # the first route
    assert istio_weights(split, "missing", "ns", "web", "web-canary") == {}
    two_without = vs({"route": [dest("web"), dest("web-canary")]})  # several destinations: absent weight is 0
    assert istio_weights(two_without, None, "ns", "web", "web-canary") == {"web": 0, "web-canary": 0}


def ingress(service: str, host: str = "web.example.com", path: str = "/",
            annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "x", "annotations": annotations or {}},
            "spec": {"rules": [{"host": host, "http": {"paths": [
                {"path": path, "pathType": "Prefix", "backend": {"service": {"name": service, "port": {"number": 80}}}}
            ]}}]}}


def canary(weight: str, **kw: Any) -> dict[str, Any]:
    return ingress("web-canary", annotations={"nginx.ingress.kubernetes.io/canary": "true",
                                              "nginx.ingress.kubernetes.io/canary-weight": weight}, **kw)


def test_nginx_weights_as_ingress_nginx_reads_them() -> None:
    stable = ingress("web")
    assert nginx_weights(None, canary("10"), "web") == {}
    assert nginx_weights(stable, None, "web") == {"web": 100}
    assert nginx_weights(stable, canary("10"), "web") == {"web": 90, "web-canary": 10}
    assert nginx_weights(stable, canary("0"), "web") == {"web": 100, "web-canary": 0}
    assert nginx_weights(stable, canary("250"), "web") == {"web": 0, "web-canary": 100}
    assert nginx_weights(stable, canary("x"), "web") == {"web": 100}
    # a canary Ingress for another host, or not marked canary, is not applied
    assert nginx_weights(stable, canary("50", host="other.example.com"), "web") == {"web": 100}
    assert nginx_weights(stable, ingress("web-canary"), "web") == {"web": 100}
    # being deleted: gone for the data plane
    deleting = canary("50")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert nginx_weights(stable, deleting, "web") == {"web": 100}
    total = canary("1")
    total["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary-weight-total"] = "4"
    w = nginx_weights(stable, total, "web")
    assert w == {"web": 3, "web-canary": 1} and canary_share(w, "web", "web-canary") == 25


def dep(labels: dict[str, str], available: int, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "d"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"template": {"metadata": {"labels": labels}}},
            "status": {"availableReplicas": available}}


def test_service_selectors_pick_pods_like_kube_proxy() -> None:
    assert selects({"app": "web"}, {"app": "web", "x": "y"})
    assert not selects({}, {"app": "web"})  # no selector: no Endpoints are made
    assert not selects({"app": "web"}, None)
    target = dep({"app": "web"}, 3)
    green = dep({"saferollout.dev/canary-of": "web", "saferollout.dev/rollout": "web"}, 1)
    both = dep({"app": "web", "saferollout.dev/canary-of": "web"}, 1)  # the replica-ratio router keeps the labels
    deps = {"web": target, "web-canary": green}
    assert selector_weights({"app": "web"}, deps) == {"web": 3}
    assert selector_weights({"saferollout.dev/canary-of": "web"}, deps) == {"web-canary": 1}
    w = selector_weights({"app": "web"}, {"web": target, "web-canary": both})
    assert w == {"web": 3, "web-canary": 1} and canary_share(w, "web", "web-canary") == 25
    assert selector_weights({"app": "web"}, {"web": target, "web-canary": None}) == {"web": 3}
    gone = dep({"saferollout.dev/canary-of": "web"}, 1, deleting=True)
    assert selector_weights({"saferollout.dev/canary-of": "web"}, {"web-canary": gone}) == {}


def _pod(name: str, revision: str, ready: bool = True, app: str = "db") -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"app": app, "controller-revision-hash": revision}},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_a_statefulsets_traffic_splits_by_its_pods_revisions() -> None:
    from harness.traffic import revision_weights

    status = {"currentRevision": "db-1", "updateRevision": "db-2"}
    sts: dict[str, Any] = {"spec": {"selector": {"matchLabels": {"app": "db"}}}, "status": status}
    pods = {"db-0": _pod("db-0", "db-1"), "db-1": _pod("db-1", "db-1"), "db-2": _pod("db-2", "db-2"),
            "db-3": _pod("db-3", "db-2", ready=False), "other": _pod("other", "db-2", app="web")}
    assert revision_weights(sts, pods, "db") == {"db": 2, "db-canary": 1}
    status["currentRevision"] = "db-2"  # every pod updated: the update revision is the current one
    assert revision_weights(sts, pods, "db") == {"db": 3, "db-canary": 0}
    assert revision_weights(None, pods, "db") == {}
