"""A target scaled by a HorizontalPodAutoscaler.

The canary of a weighted router (Gateway API, Istio, NGINX, blue-green's preview) gets an HPA of its own, a copy
of the target's aimed at the canary Deployment: it starts with the target's current replicas and is then scaled
by its own load, as the target is, and the operator stops writing its replicas. It is removed with the canary.
The replica-ratio router scales the target itself to move traffic, which an HPA would undo (or the router would
undo the HPA): a rollout of that router on an autoscaled target is refused before anything is made.

At promotion the canary's share of the load comes back to the target, which its HPA sized for what was left: the
promotion's write raises it to the replicas both versions run (capped by its maxReplicas), and the route returns
to it only once those are available. The HPA then sizes it from the load it carries.
"""

from __future__ import annotations

import copy
from typing import Any

from kubernetes.client.rest import ApiException

from saferollout.adapters import kube
from saferollout.adapters.kube import RolloutRef

ROLLOUT = "saferollout.dev/rollout"


def target_hpa(namespace: str, target: str) -> dict[str, Any] | None:
    """The HPA whose scaleTargetRef is the target Deployment, if any (the first by name if several claim it)."""
    items = kube.autoscaling().list_namespaced_horizontal_pod_autoscaler(namespace).items or []
    found: list[dict[str, Any]] = [kube.api().sanitize_for_serialization(h) for h in items]
    for h in sorted(found, key=lambda h: h["metadata"]["name"]):
        ref = (h.get("spec") or {}).get("scaleTargetRef") or {}
        if ref.get("kind") == "Deployment" and ref.get("name") == target and \
                str(ref.get("apiVersion", "apps/v1")).startswith("apps/"):
            return h
    return None


def target_autoscaler(namespace: str, target: str) -> str | None:
    """The name of the HPA that scales the target Deployment, if any."""
    hpa = target_hpa(namespace, target)
    return str(hpa["metadata"]["name"]) if hpa else None


def promotion_replicas(namespace: str, target: dict[str, Any], canary: str) -> tuple[int | None, str]:
    """spec.replicas for the target's promotion write, and why (None: leave it); only an autoscaled target."""
    hpa = target_hpa(namespace, target["metadata"]["name"])
    if hpa is None:
        return None, ""
    dep = kube.read_or_none(kube.apps().read_namespaced_deployment, canary, namespace)
    if dep is None:
        return None, ""
    have = int(target["spec"].get("replicas", 1))
    canary_n = max(int(dep["spec"].get("replicas", 0) or 0), int((dep.get("status") or {}).get("replicas", 0) or 0))
    cap = int(hpa["spec"].get("maxReplicas", have + canary_n))
    want = min(cap, have + canary_n)
    if want <= have:
        return None, ""
    return want, (f"Deployment {target['metadata']['name']} raised from {have} to {want} replicas before the "
                  f"switch: its {have} and the canary's {canary_n} carried the load (HorizontalPodAutoscaler "
                  f"{hpa['metadata']['name']}, maxReplicas {cap})")


def canary_hpa(target: dict[str, Any], canary: str, ref: RolloutRef) -> dict[str, Any]:
    """The target's HPA aimed at the canary Deployment: the same bounds, metrics and behaviour."""
    spec = copy.deepcopy(target["spec"])
    spec["scaleTargetRef"] = {"apiVersion": "apps/v1", "kind": "Deployment", "name": canary}
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": canary, "namespace": ref.namespace, "labels": {ROLLOUT: ref.name},
                         "annotations": {"saferollout.dev/copy-of": target["metadata"]["name"]},
                         "ownerReferences": [ref.owner()]},
            "spec": spec}


def ensure_canary_hpa(ref: RolloutRef, target: dict[str, Any], canary: str) -> None:
    """Create the canary's HPA, or bring ours up to date with the target's; one we did not make is not taken."""
    body = canary_hpa(target, canary, ref)
    api = kube.autoscaling()
    current = kube.read_or_none(api.read_namespaced_horizontal_pod_autoscaler, canary, ref.namespace)
    if current is None:
        api.create_namespaced_horizontal_pod_autoscaler(ref.namespace, body)
        return
    if not kube.owned_by(current, ref):
        raise kube.Refused(f"HorizontalPodAutoscaler {canary} exists and was not created by this SafeRollout; it "
                           "is not taken over (rename it or remove it)")
    if current.get("spec") != body["spec"]:
        api.patch_namespaced_horizontal_pod_autoscaler(canary, ref.namespace, {"spec": body["spec"]})


def delete_canary_hpa(ref: RolloutRef, canary: str) -> None:
    api = kube.autoscaling()
    current = kube.read_or_none(api.read_namespaced_horizontal_pod_autoscaler, canary, ref.namespace)
    if current is None or not kube.owned_by(current, ref):
        return
    try:
        api.delete_namespaced_horizontal_pod_autoscaler(canary, ref.namespace)
    except ApiException as e:
        if e.status != 404:
            raise
