"""Gateway API: the weights of the stable and canary backendRefs of an HTTPRoute, and a stage's routing.

A stage's match (headers, a cookie) and its sticky cookie are one rule of the operator's own, named
`saferollout-canary`: the stable rule's matches, each with the stage's headers added, to the canary alone; having
more header matches than the stable rule, it wins by the Gateway API's precedence. A mirror is a `RequestMirror`
filter on the stable rule; a sticky stage's canary backendRef carries a `ResponseHeaderModifier` that sets the
cookie. Weight 0 without routing takes all of it out again, in the same single write as the weights.

Traefik v3.6 applies the match rule but has no RequestMirror (it answers the whole rule with 500, and the route's
status says nothing) and ignores backendRef filters (no sticky cookie). So before a mirror or sticky stage is
written, the GatewayClass of each Gateway the route is attached to is asked what it supports: a class that lists
its `status.supportedFeatures` without the stage's feature refuses the stage, with nothing written
(docs/routing.md). A class that lists nothing is taken at its word as before.
"""

from __future__ import annotations

from typing import Any

from kubernetes.client.rest import ApiException

from saferollout.adapters import kube
from saferollout.adapters.kube import RolloutRef
from saferollout.adapters.workloads import CanaryPlan
from saferollout.core.actions import HeaderCondition, Routing
from saferollout.core.models import SafeRolloutSpec
from saferollout.core.stages import match_sets

GROUP, VERSION, PLURAL = "gateway.networking.k8s.io", "v1", "httproutes"
# the Gateway API feature names (GatewayClass status.supportedFeatures) a stage's routing needs
MIRROR_FEATURE, PERCENT_MIRROR_FEATURE = "HTTPRouteRequestMirror", "HTTPRouteRequestPercentageMirror"
BACKEND_FILTER_FEATURE = "HTTPRouteBackendRequestHeaderModification"  # backendRef filters are applied at all


def weighted_rules(rules: list[dict[str, Any]], stable: str, canary: str, weight: int) -> list[dict[str, Any]]:
    """Every rule that routes to stable gets stable at 100-weight and canary at weight; other rules are kept."""
    out = []
    touched = False
    for rule in rules:
        refs = rule.get("backendRefs") or []
        stable_ref = next((r for r in refs if r.get("name") == stable and r.get("kind", "Service") == "Service"), None)
        if stable_ref is None:
            out.append(rule)
            continue
        touched = True
        canary_ref = next((r for r in refs if r.get("name") == canary), None)
        canary_ref = dict(canary_ref or {k: v for k, v in stable_ref.items() if k != "weight"}, name=canary)
        others = [r for r in refs if r.get("name") not in (stable, canary)]
        out.append({**rule, "backendRefs": [{**stable_ref, "weight": 100 - weight},
                                            {**canary_ref, "weight": weight}, *others]})
    if not touched:
        raise LookupError(f"no rule of the HTTPRoute sends traffic to the stable Service {stable!r}")
    return out


CANARY_RULE = "saferollout-canary"  # the rule this router owns; every other rule is the user's
STICKY_PREFIX = "saferollout-"


def _headers(conds: tuple[HeaderCondition, ...]) -> list[dict[str, Any]]:
    return [{"type": "RegularExpression" if c.regex else "Exact", "name": c.name, "value": c.value} for c in conds]


def _with_headers(match: dict[str, Any], conds: tuple[HeaderCondition, ...]) -> dict[str, Any]:
    """The user's match with the stage's headers added (one of ours replaces one of the same name)."""
    ours = {c.name for c in conds}
    kept = [h for h in match.get("headers") or [] if str(h.get("name", "")).lower() not in ours]
    return {**match, "headers": kept + _headers(conds)}


def _not_ours(filters: list[dict[str, Any]], canary: str) -> list[dict[str, Any]]:
    """Filters without the mirror to the canary and the sticky cookie this router added."""
    def ours(f: dict[str, Any]) -> bool:
        if f.get("type") == "RequestMirror":
            return bool(((f.get("requestMirror") or {}).get("backendRef") or {}).get("name") == canary)
        if f.get("type") == "ResponseHeaderModifier":
            added = (f.get("responseHeaderModifier") or {}).get("add") or []
            return any(str(h.get("name", "")).lower() == "set-cookie" and str(h.get("value", "")).startswith(
                STICKY_PREFIX) for h in added)
        return False
    return [f for f in filters if not ours(f)]


def _set_filters(obj: dict[str, Any], filters: list[dict[str, Any]]) -> dict[str, Any]:
    out = {k: v for k, v in obj.items() if k != "filters"}
    return {**out, "filters": filters} if filters else out


def sticky_cookie_header(cookie: str) -> str:
    """The Set-Cookie value: for the whole site, not readable by scripts, lasting for the browser's session."""
    return f"{cookie}; Path=/; HttpOnly; SameSite=Lax"


def routed_rules(rules: list[dict[str, Any]], stable: str, canary: str, weight: int,
                 routing: Routing | None) -> list[dict[str, Any]]:
    """The HTTPRoute's rules for `weight` and `routing`: weights as `weighted_rules`, then the match rule, the
    mirror and the sticky cookie set or (routing None) removed; rules the user wrote are otherwise kept."""
    out = weighted_rules([r for r in rules if r.get("name") != CANARY_RULE], stable, canary, weight)
    stable_rules = []
    for i, rule in enumerate(out):
        refs = rule.get("backendRefs") or []
        if not any(r.get("name") == stable for r in refs):
            continue
        stable_rules.append(i)
        filters = _not_ours(rule.get("filters") or [], canary)
        stable_ref = next(r for r in refs if r.get("name") == stable)
        if routing and routing.mirror:
            mirror_ref = {k: v for k, v in stable_ref.items() if k in ("group", "kind", "namespace", "port")}
            filters.append({"type": "RequestMirror",
                            "requestMirror": {"backendRef": {**mirror_ref, "name": canary}, "percent": routing.mirror}})
        new_refs = []
        for ref in refs:
            if ref.get("name") == canary:
                ref_filters = _not_ours(ref.get("filters") or [], canary)
                if routing and routing.sticky:
                    ref_filters.append({"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                        "add": [{"name": "Set-Cookie", "value": sticky_cookie_header(routing.sticky)}]}})
                ref = _set_filters(ref, ref_filters)
            new_refs.append(ref)
        out[i] = _set_filters({**rule, "backendRefs": new_refs}, filters)
    sets = match_sets(routing)
    if sets:
        first = out[stable_rules[0]]
        matches = first.get("matches") or [{"path": {"type": "PathPrefix", "value": "/"}}]
        canary_ref = next(r for r in first["backendRefs"] if r.get("name") == canary)
        rule = {k: v for k, v in first.items() if k not in ("name", "matches", "backendRefs", "filters")}
        rule_filters = _not_ours(first.get("filters") or [], canary)
        rule = _set_filters({**rule, "name": CANARY_RULE,
                             "matches": [_with_headers(m, conds) for conds in sets for m in matches],
                             "backendRefs": [{**_set_filters(canary_ref, []), "weight": 1}]}, rule_filters)
        out.insert(stable_rules[0], rule)
    return out


def dropped(stored: list[dict[str, Any]], routing: Routing | None, canary: str) -> str | None:
    """The field of the stage's routing that the API server did not keep, if any: a rule name (the match rule is
    found again by it, to be removed) or a mirror's percent (without it a mirror copies every request)."""
    if routing is None:
        return None
    if (routing.match or routing.sticky) and not any(r.get("name") == CANARY_RULE for r in stored):
        return "rules[].name"
    if routing.mirror and routing.mirror < 100:
        mirrors = [f.get("requestMirror") or {} for r in stored for f in r.get("filters") or []
                   if f.get("type") == "RequestMirror"
                   and ((f.get("requestMirror") or {}).get("backendRef") or {}).get("name") == canary]
        if not mirrors or any(m.get("percent") is None for m in mirrors):
            return "requestMirror.percent"
    return None


def needed_features(routing: Routing | None) -> list[str]:
    """What the data plane must support for this routing; none for weights and header matches (the core set)."""
    if routing is None:
        return []
    out = [MIRROR_FEATURE] if routing.mirror else []
    if routing.mirror and routing.mirror < 100:
        out.append(PERCENT_MIRROR_FEATURE)
    if routing.sticky:
        out.append(BACKEND_FILTER_FEATURE)
    return out


def feature_names(gateway_class: dict[str, Any]) -> set[str] | None:
    """The class's supportedFeatures (v1.4: [{name}], v1.1: [name]); None when it says nothing."""
    listed = (gateway_class.get("status") or {}).get("supportedFeatures")
    if not listed:
        return None
    return {str(f.get("name") if isinstance(f, dict) else f) for f in listed}


def _accepted(route: dict[str, Any], namespace: str) -> list[dict[str, Any]]:
    """The parentRefs that carry the route: those whose Gateway accepted it (route.status.parents), or all of them
    while no status says (a controller that writes none, or has not yet)."""
    refs = [p for p in (route.get("spec") or {}).get("parentRefs") or []
            if p.get("kind", "Gateway") == "Gateway" and p.get("group", GROUP) == GROUP]
    parents = (route.get("status") or {}).get("parents") or []

    def key(p: dict[str, Any]) -> tuple[str, str]:
        return str(p.get("namespace") or namespace), str(p.get("name"))
    accepted = {key(p.get("parentRef") or {}) for p in parents
                if any(c.get("type") == "Accepted" and c.get("status") == "True" for c in p.get("conditions") or [])}
    return [p for p in refs if key(p) in accepted] if parents else refs


def unsupported(route: dict[str, Any], namespace: str, routing: Routing | None) -> str | None:
    """Why the data plane behind the route cannot do this routing, as its GatewayClass says; None: it can, or
    it does not say (a Gateway that is not there, a class without supportedFeatures). A Gateway the operator may
    not read is a refusal: the stage could break the route for every user (fail closed)."""
    needed = needed_features(routing)
    if not needed:
        return None
    api = kube.custom()
    for parent in _accepted(route, namespace):
        ns, name = parent.get("namespace") or namespace, parent.get("name")
        try:
            gw = api.get_namespaced_custom_object(GROUP, VERSION, ns, "gateways", name)
            cls_name = ((gw or {}).get("spec") or {}).get("gatewayClassName")
            cls = api.get_cluster_custom_object(GROUP, VERSION, "gatewayclasses", cls_name) if cls_name else {}
        except ApiException as e:
            if e.status == 404:
                continue
            if e.status == 403:
                return (f"the operator may not read Gateway {ns}/{name} or its GatewayClass (grant get on gateways "
                        "and gatewayclasses), so it cannot tell whether its data plane carries this stage")
            raise
        names = feature_names(cls or {})
        missing = [f for f in needed if names is not None and f not in names]
        if missing:
            return (f"GatewayClass {cls_name} (of Gateway {ns}/{name}) does not list {missing[0]} in "
                    "status.supportedFeatures: its data plane cannot carry this stage (a mirror it cannot apply "
                    "may fail the whole route; a sticky cookie on a backendRef is dropped)")
    return None


class GatewayAPIRouter:
    def prepare(self, ref: RolloutRef, spec: SafeRolloutSpec, first_weight: int) -> CanaryPlan:
        """Nothing to make (the canary Service is a backendRef of its own); but a mirror or sticky stage the data
        plane cannot carry is refused here, before the canary exists and any traffic moved, not at its stage."""
        assert spec.strategy.canary and spec.strategy.canary.traffic.gateway_api
        needs = [Routing(mirror=st.mirror or 0, sticky="check" if st.sticky else None)
                 for st in spec.strategy.canary.stages or () if st.mirror or st.sticky]  # defaults have none
        if needs:
            route: dict[str, Any] = kube.custom().get_namespaced_custom_object(
                GROUP, VERSION, ref.namespace, PLURAL, spec.strategy.canary.traffic.gateway_api.http_route)
            for routing in needs:
                why = unsupported(route, ref.namespace, routing)
                if why is not None:
                    raise kube.Refused(why)
        return CanaryPlan()

    def clean_up(self, ref: RolloutRef, spec: SafeRolloutSpec) -> None:
        """Nothing to remove: the HTTPRoute is the user's, and at weight 0 its canary backendRef carries nothing."""

    def set_weight(self, ref: RolloutRef, spec: SafeRolloutSpec, weight: int) -> None:
        self.set_routing(ref, spec, weight, None)

    def set_routing(self, ref: RolloutRef, spec: SafeRolloutSpec, weight: int, routing: Routing | None) -> None:
        """Weights, match rule, mirror and sticky cookie in one patch, guarded by the resourceVersion read."""
        assert spec.strategy.canary and spec.strategy.canary.traffic.gateway_api
        cfg = spec.strategy.canary.traffic.gateway_api
        api = kube.custom()

        def write() -> None:
            route: dict[str, Any] = api.get_namespaced_custom_object(GROUP, VERSION, ref.namespace, PLURAL, cfg.http_route)
            why = unsupported(route, ref.namespace, routing)  # never for weights alone: a rollback is never held
            if why is not None:
                raise kube.Refused(why)
            rules = routed_rules(route["spec"].get("rules", []), cfg.stable_service, cfg.canary_service, weight,
                                 routing)
            if rules == route["spec"].get("rules"):
                return
            body = {"metadata": {"resourceVersion": route["metadata"]["resourceVersion"]}, "spec": {"rules": rules}}
            stored = api.patch_namespaced_custom_object(GROUP, VERSION, ref.namespace, PLURAL, cfg.http_route, body)
            lost = dropped(((stored or {}).get("spec") or {}).get("rules") or [], routing, cfg.canary_service)
            if lost is not None:  # an older HTTPRoute CRD pruned it: this rule could not be found again to remove
                back = routed_rules(route["spec"].get("rules", []), cfg.stable_service, cfg.canary_service, 0, None)
                api.patch_namespaced_custom_object(GROUP, VERSION, ref.namespace, PLURAL, cfg.http_route, {
                    "metadata": {"resourceVersion": stored["metadata"]["resourceVersion"]}, "spec": {"rules": back}})
                raise kube.Refused(f"the HTTPRoute CRD dropped {lost} (it needs Gateway API v1.4's standard CRDs): "
                                   "the stage's routing is taken out again, all traffic on the stable version")

        kube.retry_conflicts(write)
