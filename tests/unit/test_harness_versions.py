"""harness.versions: a backend reaches the version its Service selects, whatever the objects are named."""

from __future__ import annotations

from typing import Any

from harness.versions import UNROUTED, normalise, route_backends, version_services, version_weights, workloads

ROLES = {"demo/web:1.0": "stable", "demo/web:2.0": "canary"}


def dep(name: str, labels: dict[str, str], image: str, available: int, kind: str = "Deployment",
        owner: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if owner:
        meta["ownerReferences"] = [{"kind": owner, "name": "x"}]
    return {"kind": kind, "metadata": meta, "status": {"availableReplicas": available},
            "spec": {"template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "web", "image": image}]}}}}


def svc(selector: dict[str, str]) -> dict[str, Any]:
    return {"spec": {"selector": selector}}


def test_flagger_names_map_by_selector_and_image() -> None:
    loads = workloads([dep("web-primary", {"app": "web-primary"}, "demo/web:1.0", 2),
                       dep("web", {"app": "web"}, "demo/web:2.0", 2)], [])
    services = {"web-primary": svc({"app": "web-primary"}), "web-canary": svc({"app": "web"})}
    assert version_weights({"web-primary": 95, "web-canary": 5}, services, loads, ROLES) == {"stable": 95, "canary": 5}
    # after the promotion the primary runs the new image: its Service's weight is the new version's
    promoted = workloads([dep("web-primary", {"app": "web-primary"}, "demo/web:2.0", 2),
                          dep("web", {"app": "web"}, "demo/web:2.0", 0)], [])
    assert version_weights({"web-primary": 100, "web-canary": 0}, services, promoted, ROLES) == {"canary": 100}
    assert version_services({"web-primary": 95, "web-canary": 5}, services, loads, ROLES) == {
        "stable": "web-primary", "canary": "web-canary"}
    assert version_services({"web-primary": 100, "web-canary": 0}, services, promoted, ROLES) == {
        "canary": "web-primary"}


def test_replicasets_without_a_deployment_split_one_service_by_available_pods() -> None:
    loads = workloads([], [dep("web-6f9", {"app": "web", "h": "a"}, "demo/web:1.0", 19, "ReplicaSet", "Rollout"),
                           dep("web-7c1", {"app": "web", "h": "b"}, "demo/web:2.0", 1, "ReplicaSet", "Rollout"),
                           dep("other-1", {"app": "web"}, "demo/web:2.0", 5, "ReplicaSet", "Deployment")])
    assert [w.name for w in loads] == ["web-6f9", "web-7c1"]  # a Deployment's ReplicaSet counts through it
    assert version_weights({"web": 100}, {"web": svc({"app": "web"})}, loads, ROLES) == {"stable": 95, "canary": 5}


def test_no_pods_no_service_or_unknown_image_is_unrouted() -> None:
    loads = workloads([dep("a", {"app": "a"}, "demo/web:1.0", 1), dep("b", {"app": "b"}, "demo/web:2.0", 0),
                       dep("c", {"app": "c"}, "other:3", 1)], [])
    services = {"a": svc({"app": "a"}), "b": svc({"app": "b"}), "c": svc({"app": "c"}), "empty": svc({})}
    got = version_weights({"a": 50, "b": 20, "c": 20, "gone": 5, "empty": 5}, services, loads, ROLES)
    assert got == {"stable": 50, UNROUTED: 50}
    assert version_weights({"a": 0}, services, loads, ROLES) == {}


def test_deleted_workloads_serve_nothing() -> None:
    gone = dep("web", {"app": "web"}, "demo/web:2.0", 3)
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert workloads([gone], []) == []


def test_normalise_sums_to_100() -> None:
    assert sum(normalise({"stable": 1, "canary": 1, "x": 1}).values()) == 100
    assert normalise({"stable": 0.0}) == {}


def test_route_backends_first_rule_absent_weight_zero() -> None:
    route = {"spec": {"rules": [{"backendRefs": [{"name": "p", "weight": 90}, {"name": "c", "weight": 10},
                                                 {"name": "n"}]},
                                {"backendRefs": [{"name": "p", "weight": 10}, {"name": "x", "kind": "Other"}]}]}}
    assert route_backends(route) == {"p": 90, "c": 10, "n": 0}
