"""The pure parts of the routers and the volume snapshot provider: Istio route weights, the NGINX canary Ingress,
the replica split, and the names and quantities of VolumeSnapshots."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from saferollout.adapters.routers.istio import host_is, weighted_http
from saferollout.adapters.routers.nginx import CANARY, CANARY_WEIGHT, canary_ingress
from saferollout.adapters.routers.replicas import TOTAL, canary_share, split, total_of
from saferollout.adapters.snapshots.volume import claim_from_snapshot, identity, k8s_name, quantity_bytes

# ------------------------------------------------------------------------------------------------------- istio


def vs_http() -> list[dict[str, Any]]:
    return [
        {"name": "admin", "match": [{"uri": {"prefix": "/admin"}}],
         "route": [{"destination": {"host": "admin", "port": {"number": 80}}}]},
        {"name": "main", "retries": {"attempts": 3},
         "route": [{"destination": {"host": "web.demo.svc.cluster.local", "port": {"number": 8080}},
                    "headers": {"response": {"set": {"x-by": "mesh"}}}}]},
    ]


def test_istio_adds_the_canary_with_the_stable_port_and_keeps_the_rest() -> None:
    http = vs_http()
    before = copy.deepcopy(http)
    out = weighted_http(http, "main", "demo", "web", "web-canary", 25)
    assert http == before  # the input is not changed
    assert out[0] == before[0] and out[1]["retries"] == {"attempts": 3}
    assert out[1]["route"] == [
        {"destination": {"host": "web.demo.svc.cluster.local", "port": {"number": 8080}},
         "headers": {"response": {"set": {"x-by": "mesh"}}}, "weight": 75},
        {"destination": {"host": "web-canary.demo.svc.cluster.local", "port": {"number": 8080}}, "weight": 25},
    ]


@pytest.mark.parametrize("weight", [0, 5, 25, 50, 100])
def test_istio_weights_add_up_and_repeat_idempotently(weight: int) -> None:
    once = weighted_http(vs_http(), "main", "demo", "web", "web-canary", 5)
    out = weighted_http(once, "main", "demo", "web", "web-canary", weight)
    assert [d["weight"] for d in out[1]["route"]] == [100 - weight, weight]
    assert weighted_http(out, "main", "demo", "web", "web-canary", weight) == out


def test_istio_first_route_by_default_and_existing_canary_destination_kept_in_place() -> None:
    http = [{"route": [{"destination": {"host": "web-canary", "subset": "c"}, "weight": 10},
                       {"destination": {"host": "web"}, "weight": 90}]}]
    out = weighted_http(http, None, "demo", "web", "web-canary", 50)
    assert out[0]["route"] == [{"destination": {"host": "web-canary", "subset": "c"}, "weight": 50},
                               {"destination": {"host": "web"}, "weight": 50}]


def test_istio_refusals() -> None:
    with pytest.raises(LookupError, match="no HTTP route named 'nope'"):
        weighted_http(vs_http(), "nope", "demo", "web", "web-canary", 5)
    with pytest.raises(LookupError, match="stable Service 'web'"):
        weighted_http(vs_http(), None, "demo", "web", "web-canary", 5)  # the first route goes to admin
    with pytest.raises(LookupError, match="no HTTP route"):
        weighted_http([], None, "demo", "web", "web-canary", 5)
    third = [{"route": [{"destination": {"host": "web"}, "weight": 80}, {"destination": {"host": "legacy"}, "weight": 20}]}]
    with pytest.raises(ValueError, match="also sends traffic to legacy"):
        weighted_http(third, None, "demo", "web", "web-canary", 5)
    with pytest.raises(ValueError, match="percentage"):
        weighted_http(vs_http(), "main", "demo", "web", "web-canary", 101)


def test_istio_host_forms() -> None:
    assert host_is("web", "web", "demo") and host_is("web.demo", "web", "demo")
    assert host_is("web.demo.svc.cluster.local", "web", "demo")
    assert not host_is("web-canary", "web", "demo") and not host_is("web.other.svc.cluster.local", "web", "demo")


# ------------------------------------------------------------------------------------------------------- nginx


def stable_ingress() -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "web", "namespace": "demo", "uid": "u1", "resourceVersion": "7",
                     "annotations": {"nginx.ingress.kubernetes.io/rewrite-target": "/",
                                     "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "spec": {"ingressClassName": "nginx", "tls": [{"hosts": ["web.example"], "secretName": "web-tls"}],
                 "rules": [{"host": "web.example", "http": {"paths": [
                     {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
                     {"path": "/static", "pathType": "Prefix",
                      "backend": {"service": {"name": "cdn", "port": {"number": 80}}}}]}},
                           {"host": "other.example", "http": {"paths": [
                               {"path": "/", "pathType": "Prefix",
                                "backend": {"service": {"name": "other", "port": {"name": "http"}}}}]}}]},
    }


def test_nginx_canary_ingress_body() -> None:
    src = stable_ingress()
    before = copy.deepcopy(src)
    owner = {"apiVersion": "saferollout.dev/v1alpha1", "kind": "SafeRollout", "name": "web", "uid": "r1"}
    out = canary_ingress(src, "web", "web-canary", 25, "web-rollout", "web", owner)
    assert src == before
    assert out["metadata"] == {
        "name": "web-canary", "namespace": "demo",
        "labels": {"saferollout.dev/rollout": "web-rollout", "saferollout.dev/canary-of": "web"},
        "annotations": {"nginx.ingress.kubernetes.io/rewrite-target": "/", CANARY: "true", CANARY_WEIGHT: "25"},
        "ownerReferences": [owner]}
    assert out["spec"] == {"ingressClassName": "nginx", "tls": [{"hosts": ["web.example"], "secretName": "web-tls"}],
                           "rules": [{"host": "web.example", "http": {"paths": [
                               {"path": "/", "pathType": "Prefix",
                                "backend": {"service": {"name": "web-canary", "port": {"number": 80}}}}]}}]}


@pytest.mark.parametrize("weight", [0, 5, 50, 100])
def test_nginx_weight_is_a_string_and_zero_keeps_the_canary(weight: int) -> None:
    out = canary_ingress(stable_ingress(), "web", "web-canary", weight, "r", "web")
    assert out["metadata"]["annotations"][CANARY_WEIGHT] == str(weight) and "ownerReferences" not in out["metadata"]


def test_nginx_default_backend_and_refusals() -> None:
    src = {"metadata": {"name": "web"}, "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}},
                                                 "rules": [{"http": {"paths": []}}]}}
    out = canary_ingress(src, "web", "web-canary", 5, "r", "web")
    assert out["spec"] == {"defaultBackend": {"service": {"name": "web-canary", "port": {"number": 80}}}}
    with pytest.raises(LookupError, match="routes nothing to the stable Service 'api'"):
        canary_ingress(stable_ingress(), "api", "api-canary", 5, "r", "api")
    with pytest.raises(ValueError, match="percentage"):
        canary_ingress(stable_ingress(), "web", "web-canary", -1, "r", "web")


# ---------------------------------------------------------------------------------------------------- replicas

# (total, weight) -> (target, canary)
SPLITS = {
    (1, 0): (1, 0), (1, 5): (1, 1), (1, 25): (1, 1), (1, 50): (1, 1), (1, 100): (0, 1),
    (2, 0): (2, 0), (2, 5): (1, 1), (2, 25): (1, 1), (2, 50): (1, 1), (2, 100): (0, 2),
    (3, 0): (3, 0), (3, 5): (2, 1), (3, 25): (2, 1), (3, 50): (1, 2), (3, 100): (0, 3),
    (10, 0): (10, 0), (10, 5): (9, 1), (10, 25): (7, 3), (10, 50): (5, 5), (10, 100): (0, 10),
}


@pytest.mark.parametrize(("total", "weight"), sorted(SPLITS))
def test_replica_split(total: int, weight: int) -> None:
    target, canary = split(total, weight)
    assert (target, canary) == SPLITS[(total, weight)]
    if 0 < weight < 100:  # both versions run, and the pods add up to total, or total + 1 for the minimum of one
        assert target >= 1 and canary >= 1 and total <= target + canary <= total + 1


def test_replica_split_edges_and_share() -> None:
    assert split(0, 50) == (0, 0)
    with pytest.raises(ValueError):
        split(3, 101)
    with pytest.raises(ValueError):
        split(-1, 5)
    assert canary_share(9, 1) == 10.0 and canary_share(0, 0) == 0.0


def test_replica_total_is_recorded_once() -> None:
    target = {"spec": {"replicas": 7}}
    assert total_of(target, None) == 7
    assert total_of({"spec": {}}, None) == 1
    assert total_of(target, {"metadata": {"annotations": {TOTAL: "10"}}}) == 10  # the target was scaled since
    assert total_of(target, {"metadata": {"annotations": {TOTAL: "ten"}}}) == 7


# -------------------------------------------------------------------------------------------- volume snapshots


def test_snapshot_names_are_valid_and_stable() -> None:
    assert k8s_name("web-snap-1-20260101T000000") == "web-snap-1-20260101t000000"
    assert k8s_name("a_b//c.") == "a-b-c"
    long = k8s_name("x" * 300)
    assert len(long) <= 253 and long == k8s_name("x" * 300) and long != k8s_name("x" * 301)


@pytest.mark.parametrize(("q", "n"), [("1Gi", 1 << 30), ("500Mi", 500 << 20), ("1G", 10**9), ("1.5Ki", 1536),
                                      ("1e3", 1000), (2048, 2048), ("100m", 1), (None, 0), ("", 0)])
def test_quantities(q: str | int | None, n: int) -> None:
    assert quantity_bytes(q) == n


def test_identity_and_claim_from_snapshot() -> None:
    assert identity("u", "c") == identity("u", "c") != identity("u", "d")
    source = {"spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "volumeMode": "Filesystem",
                       "resources": {"requests": {"storage": "1Gi"}}}}
    snap = {"metadata": {"name": "web-snap-1"}, "status": {"restoreSize": "2Gi"}}
    pvc = claim_from_snapshot("data-restored-snap-1", source, snap, {"l": "v"}, {"a": "b"})
    assert pvc["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}},
                           "storageClassName": "fast", "volumeMode": "Filesystem",
                           "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                                          "name": "web-snap-1"}}
    small = claim_from_snapshot("x", source, {"metadata": {"name": "s"}, "status": {"restoreSize": "512Mi"}}, {}, {})
    assert small["spec"]["resources"]["requests"]["storage"] == "1Gi"


# ------------------------------------------------------------------------- stage routing: match, mirror, sticky

from saferollout.adapters.routers.gateway import CANARY_RULE, routed_rules  # noqa: E402
from saferollout.adapters.routers.istio import CANARY_SUFFIX, routed_http  # noqa: E402
from saferollout.core.actions import HeaderCondition, Routing  # noqa: E402

HEADER = Routing(match=(HeaderCondition("x-canary", "always"),))
MIRROR = Routing(mirror=20)
STICKY = Routing(sticky="saferollout-web=abc")


def http_rules() -> list[dict[str, Any]]:
    return [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
             "backendRefs": [{"name": "web", "port": 80, "weight": 100}, {"name": "web-canary", "port": 80, "weight": 0}]}]


def test_gateway_header_stage_adds_one_rule_of_its_own_before_the_stable_one() -> None:
    rules = http_rules()
    before = copy.deepcopy(rules)
    out = routed_rules(rules, "web", "web-canary", 0, HEADER)
    assert rules == before
    assert out[0] == {"name": CANARY_RULE, "matches": [{"path": {"type": "PathPrefix", "value": "/"}, "headers": [
        {"type": "Exact", "name": "x-canary", "value": "always"}]}],
        "backendRefs": [{"name": "web-canary", "port": 80, "weight": 1}]}
    assert out[1]["backendRefs"][:2] == [{"name": "web", "port": 80, "weight": 100},
                                         {"name": "web-canary", "port": 80, "weight": 0}]


def test_gateway_mirror_stage_is_a_request_mirror_filter_with_the_percent() -> None:
    out = routed_rules(http_rules(), "web", "web-canary", 0, MIRROR)
    assert len(out) == 1
    assert out[0]["filters"] == [{"type": "RequestMirror", "requestMirror": {
        "backendRef": {"port": 80, "name": "web-canary"}, "percent": 20}}]


def test_gateway_sticky_sets_the_cookie_on_the_canary_and_routes_its_bearers() -> None:
    out = routed_rules(http_rules(), "web", "web-canary", 10, STICKY)
    assert out[0]["name"] == CANARY_RULE
    assert out[0]["matches"][0]["headers"] == [{"type": "RegularExpression", "name": "cookie",
                                                "value": "^(.*;[ ]*)?saferollout-web=abc(;.*)?$"}]
    canary = out[1]["backendRefs"][1]
    assert canary["weight"] == 10 and canary["filters"] == [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {
        "add": [{"name": "Set-Cookie", "value": "saferollout-web=abc; Path=/; HttpOnly; SameSite=Lax"}]}}]


def test_gateway_weight_zero_without_routing_takes_everything_back_in_one_write_and_keeps_the_users() -> None:
    user_filter = {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}]}}
    rules = http_rules()
    rules[0]["filters"] = [user_filter]
    routed = routed_rules(rules, "web", "web-canary", 10, Routing(HEADER.match, 0, STICKY.sticky))
    routed = routed_rules(routed, "web", "web-canary", 0, MIRROR)
    assert len(routed) == 1 and len(routed[0]["filters"]) == 2
    back = routed_rules(routed, "web", "web-canary", 0, None)
    assert back == [{**http_rules()[0], "filters": [user_filter]}]


def test_istio_header_stage_is_a_route_of_its_own_first_and_the_mirror_a_field() -> None:
    http = vs_http()
    out = routed_http(http, "main", "demo", "web", "web-canary", 0, HEADER)
    assert [r["name"] for r in out] == ["admin", "main" + CANARY_SUFFIX, "main"]
    own = out[1]
    assert own["match"] == [{"headers": {"x-canary": {"exact": "always"}}}] and own["retries"] == {"attempts": 3}
    assert own["route"] == [{"destination": {"host": "web-canary.demo.svc.cluster.local", "port": {"number": 8080}},
                             "weight": 100}]
    mirrored = routed_http(out, "main", "demo", "web", "web-canary", 0, MIRROR)
    assert [r["name"] for r in mirrored] == ["admin", "main"]
    assert mirrored[1]["mirror"] == {"host": "web-canary.demo.svc.cluster.local", "port": {"number": 8080}}
    assert mirrored[1]["mirrorPercentage"] == {"value": 20.0}
    back = routed_http(mirrored, "main", "demo", "web", "web-canary", 0, None)
    assert "mirror" not in back[1] and "mirrorPercentage" not in back[1] and len(back) == 2


def test_istio_first_route_stays_the_users_and_sticky_sets_the_cookie() -> None:
    http = [vs_http()[1]]
    out = routed_http(http, None, "demo", "web", "web-canary", 10, STICKY)
    assert out[0]["name"] == "main" + CANARY_SUFFIX
    assert out[0]["match"] == [{"headers": {"cookie": {"regex": "^(.*;[ ]*)?saferollout-web=abc(;.*)?$"}}}]
    again = routed_http(out, None, "demo", "web", "web-canary", 10, STICKY)
    assert again == out  # the chosen route is still the user's, the second write changes nothing
    canary = out[1]["route"][1]
    assert canary["headers"] == {"response": {"add": {"set-cookie": "saferollout-web=abc; Path=/; HttpOnly; SameSite=Lax"}}}
    back = routed_http(out, None, "demo", "web", "web-canary", 0, None)
    assert len(back) == 1 and "headers" not in back[0]["route"][1]


def test_istio_refuses_to_replace_the_users_own_mirror() -> None:
    http = vs_http()
    http[1]["mirror"] = {"host": "shadow"}
    with pytest.raises(ValueError, match="mirrors to shadow already"):
        routed_http(http, "main", "demo", "web", "web-canary", 0, MIRROR)


def test_routing_routers_are_the_models_match_routers() -> None:
    from saferollout.adapters.routers import ROUTING
    from saferollout.core.models import MATCH_ROUTERS
    assert tuple(ROUTING) == MATCH_ROUTERS


class PruningRoutes:
    """An HTTPRoute served by an older CRD: the API server drops the fields its schema does not have."""

    def __init__(self, prune: str) -> None:
        self.route: dict[str, Any] = {"metadata": {"resourceVersion": "1"}, "spec": {"rules": http_rules()}}
        self.prune = prune
        self.patches = 0

    def get_namespaced_custom_object(self, *args: Any) -> dict[str, Any]:
        return copy.deepcopy(self.route)

    def patch_namespaced_custom_object(self, *args: Any) -> dict[str, Any]:
        body = copy.deepcopy(args[-1])
        self.patches += 1
        for rule in body["spec"]["rules"]:
            if self.prune == "name":
                rule.pop("name", None)
            for f in rule.get("filters") or []:
                if self.prune == "percent":
                    f.get("requestMirror", {}).pop("percent", None)
        self.route = {"metadata": {"resourceVersion": str(self.patches + 1)}, "spec": body["spec"]}
        return copy.deepcopy(self.route)


@pytest.mark.parametrize(("prune", "routing", "field"), [("name", HEADER, "rules[].name"),
                                                           ("name", STICKY, "rules[].name"),
                                                           ("percent", MIRROR, "requestMirror.percent")])
def test_gateway_routing_an_older_crd_cannot_hold_is_taken_out_again_and_refused(
        monkeypatch: pytest.MonkeyPatch, prune: str, routing: Routing, field: str) -> None:
    from saferollout.adapters import kube
    from saferollout.adapters.kube import RolloutRef
    from saferollout.adapters.routers.gateway import GatewayAPIRouter
    from tests.unit.world import make_spec

    fake = PruningRoutes(prune)
    monkeypatch.setattr(kube, "custom", lambda: fake)
    with pytest.raises(kube.Refused, match=field.replace("[", r"\[").replace("]", r"\]")):
        GatewayAPIRouter().set_routing(RolloutRef("default", "web", "u"), make_spec(), 0, routing)
    assert fake.route["spec"]["rules"] == http_rules()  # as before: no rule of ours left, no mirror, weight 0
    assert fake.patches == 2


class ClassedRoutes:
    """An HTTPRoute attached to a Gateway whose GatewayClass lists what its data plane supports (or nothing)."""

    def __init__(self, features: list[Any] | None, gateway_status: int | None = None) -> None:
        self.route: dict[str, Any] = {"metadata": {"resourceVersion": "1"},
                                      "spec": {"parentRefs": [{"name": "gw"}], "rules": http_rules()}}
        self.features = features
        self.gateway_status = gateway_status  # an API error reading the Gateway
        self.patches = 0
        self.reads: list[str] = []

    def get_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str, name: str) -> Any:
        self.reads.append(plural)
        if plural == "gateways":
            if self.gateway_status is not None:
                from kubernetes.client.rest import ApiException
                raise ApiException(status=self.gateway_status)
            return {"spec": {"gatewayClassName": "traefik"}}
        return copy.deepcopy(self.route)

    def get_cluster_custom_object(self, group: str, version: str, plural: str, name: str) -> Any:
        self.reads.append(plural)
        return {"status": {"supportedFeatures": self.features}} if self.features is not None else {"status": {}}

    def patch_namespaced_custom_object(self, *args: Any) -> dict[str, Any]:
        self.patches += 1
        self.route = {"metadata": {"resourceVersion": str(self.patches + 1)}, "spec": copy.deepcopy(args[-1]["spec"])}
        return copy.deepcopy(self.route)


TRAEFIK_36 = [{"name": "HTTPRoute"}, {"name": "GRPCRoute"}, {"name": "HTTPRouteQueryParamMatching"}]


@pytest.mark.parametrize(("features", "routing", "refused"), [
    (TRAEFIK_36, MIRROR, "HTTPRouteRequestMirror"),  # Traefik v3.6: a mirror answers the whole rule 500
    (TRAEFIK_36, STICKY, "HTTPRouteBackendRequestHeaderModification"),  # backendRef filters dropped
    ([{"name": "HTTPRouteRequestMirror"}], MIRROR, "HTTPRouteRequestPercentageMirror"),  # MIRROR is below 100%
    (TRAEFIK_36, HEADER, None),  # header matches are core: never asked
    ([{"name": "HTTPRouteRequestMirror"}, {"name": "HTTPRouteRequestPercentageMirror"}], MIRROR, None),
    (["HTTPRouteRequestMirror", "HTTPRouteRequestPercentageMirror"], MIRROR, None),  # v1.1's list of names
    (None, MIRROR, None),  # a class that says nothing is taken at its word
    ([], STICKY, None),
])
def test_gateway_routing_the_gateway_class_does_not_support_is_refused_before_any_write(
        monkeypatch: pytest.MonkeyPatch, features: list[Any] | None, routing: Routing, refused: str | None) -> None:
    from saferollout.adapters import kube
    from saferollout.adapters.kube import RolloutRef
    from saferollout.adapters.routers.gateway import GatewayAPIRouter
    from tests.unit.world import make_spec

    fake = ClassedRoutes(features)
    monkeypatch.setattr(kube, "custom", lambda: fake)
    if refused is None:
        GatewayAPIRouter().set_routing(RolloutRef("default", "web", "u"), make_spec(), 0, routing)
        assert fake.patches == 1
        return
    with pytest.raises(kube.Refused, match=f"GatewayClass traefik .* does not list {refused}"):
        GatewayAPIRouter().set_routing(RolloutRef("default", "web", "u"), make_spec(), 0, routing)
    assert fake.patches == 0 and fake.route["spec"]["rules"] == http_rules()  # nothing written


def test_gateway_weights_alone_never_ask_the_gateway_class(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rollback's write (weight 0, no routing) and a weight stage are never held by a read of the class."""
    from saferollout.adapters import kube
    from saferollout.adapters.kube import RolloutRef
    from saferollout.adapters.routers.gateway import GatewayAPIRouter
    from tests.unit.world import make_spec

    fake = ClassedRoutes(TRAEFIK_36)
    monkeypatch.setattr(kube, "custom", lambda: fake)
    GatewayAPIRouter().set_routing(RolloutRef("default", "web", "u"), make_spec(), 25, None)
    GatewayAPIRouter().set_weight(RolloutRef("default", "web", "u"), make_spec(), 0)
    assert "gateways" not in fake.reads and "gatewayclasses" not in fake.reads


def test_gateway_a_gateway_the_operator_may_not_read_refuses_the_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail closed: a mirror the data plane cannot carry answers every user with 500 (Traefik v3.6)."""
    from saferollout.adapters import kube
    from saferollout.adapters.kube import RolloutRef
    from saferollout.adapters.routers.gateway import GatewayAPIRouter
    from tests.unit.world import make_spec

    fake = ClassedRoutes(TRAEFIK_36, gateway_status=403)
    monkeypatch.setattr(kube, "custom", lambda: fake)
    with pytest.raises(kube.Refused, match="may not read Gateway default/gw"):
        GatewayAPIRouter().set_routing(RolloutRef("default", "web", "u"), make_spec(), 0, MIRROR)
    assert fake.patches == 0
    fake.gateway_status = 404  # a parentRef to a Gateway that is not there carries nothing
    GatewayAPIRouter().set_routing(RolloutRef("default", "web", "u"), make_spec(), 0, MIRROR)
    assert fake.patches == 1


def test_gateway_only_the_gateways_that_accepted_the_route_are_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    from saferollout.adapters.routers.gateway import _accepted

    def status(name: str, accepted: str) -> dict[str, Any]:
        return {"parentRef": {"name": name}, "conditions": [{"type": "Accepted", "status": accepted}]}
    route = {"spec": {"parentRefs": [{"name": "old"}, {"name": "gw", "namespace": "infra"},
                                     {"kind": "Service", "group": "", "name": "mesh"}]},
             "status": {"parents": [status("old", "False"), {**status("gw", "True"),
                                                             "parentRef": {"name": "gw", "namespace": "infra"}}]}}
    assert _accepted(route, "app") == [{"name": "gw", "namespace": "infra"}]
    assert [p["name"] for p in _accepted({"spec": route["spec"]}, "app")] == ["old", "gw"]  # no status: all


def test_gateway_prepare_refuses_a_stage_the_data_plane_cannot_carry_before_the_canary_exists(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from saferollout.adapters import kube
    from saferollout.adapters.kube import RolloutRef
    from saferollout.adapters.routers.gateway import GatewayAPIRouter
    from tests.unit.world import make_spec

    fake = ClassedRoutes(TRAEFIK_36)
    monkeypatch.setattr(kube, "custom", lambda: fake)
    ref = RolloutRef("default", "web", "u")
    GatewayAPIRouter().prepare(ref, make_spec(), 5)  # weights only: nothing read
    assert fake.reads == []
    sticky = make_spec(**{"strategy.canary.stages": [{"weight": 25, "duration": "10s", "sticky": True},
                                                     {"weight": 100, "duration": "10s"}]})
    with pytest.raises(kube.Refused, match="HTTPRouteBackendRequestHeaderModification"):
        GatewayAPIRouter().prepare(ref, sticky, 25)
    assert fake.patches == 0
