"""A target scaled by a HorizontalPodAutoscaler.

The canary of a weighted router (Gateway API, Istio, NGINX, blue-green's preview) gets an HPA of its own, a copy
of the target's aimed at the canary Deployment: it starts with the target's current replicas and is then scaled
by its own load, as the target is, and the operator stops writing its replicas. It is removed with the canary.
The replica-ratio router scales the target itself to move traffic, which an HPA would undo (or the router would
undo the HPA): a rollout of that router on an autoscaled target is refused before anything is made.
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
