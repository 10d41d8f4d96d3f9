"""Gateway API: the weights of the stable and canary backendRefs of an HTTPRoute."""

from __future__ import annotations

from typing import Any

from saferollout.adapters import kube
from saferollout.adapters.kube import RolloutRef
from saferollout.adapters.workloads import CanaryPlan
from saferollout.core.models import SafeRolloutSpec

GROUP, VERSION, PLURAL = "gateway.networking.k8s.io", "v1", "httproutes"


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


class GatewayAPIRouter:
    def prepare(self, ref: RolloutRef, spec: SafeRolloutSpec, first_weight: int) -> CanaryPlan:
        return CanaryPlan()  # the canary Service is a backendRef of its own: nothing to make

    def clean_up(self, ref: RolloutRef, spec: SafeRolloutSpec) -> None:
        """Nothing to remove: the HTTPRoute is the user's, and at weight 0 its canary backendRef carries nothing."""

    def set_weight(self, ref: RolloutRef, spec: SafeRolloutSpec, weight: int) -> None:
        assert spec.strategy.canary and spec.strategy.canary.traffic.gateway_api
        cfg = spec.strategy.canary.traffic.gateway_api
        api = kube.custom()

        def write() -> None:
            route: dict[str, Any] = api.get_namespaced_custom_object(GROUP, VERSION, ref.namespace, PLURAL, cfg.http_route)
            rules = weighted_rules(route["spec"].get("rules", []), cfg.stable_service, cfg.canary_service, weight)
            if rules == route["spec"].get("rules"):
                return
            body = {"metadata": {"resourceVersion": route["metadata"]["resourceVersion"]}, "spec": {"rules": rules}}
            api.patch_namespaced_custom_object(GROUP, VERSION, ref.namespace, PLURAL, cfg.http_route, body)

        kube.retry_conflicts(write)
