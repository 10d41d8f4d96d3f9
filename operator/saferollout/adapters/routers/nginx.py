"""NGINX Ingress canary: a second Ingress `<ingress>-canary` next to the stable one, weighted by annotation.

ingress-nginx sends `canary-weight` percent of the requests for a host and path to the backends of an Ingress
marked `canary: "true"` that repeats that host and path. So the canary Ingress is the stable Ingress copied, with
every backend that names the stable Service pointed at the canary Service and the paths routed elsewhere dropped.
It is created on the first call; afterwards each call is one merge patch (weight, and the copy refreshed from the
stable Ingress). At weight 0 the canary Ingress stays with weight "0": removing it is `clean_up`'s job, when the
canary itself goes, so a step back to 0 and up again costs no create.
"""

from __future__ import annotations

import copy
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from saferollout.adapters import kube
from saferollout.adapters.kube import RolloutRef
from saferollout.adapters.workloads import CanaryPlan
from saferollout.core.models import SafeRolloutSpec

CANARY = "nginx.ingress.kubernetes.io/canary"
CANARY_WEIGHT = "nginx.ingress.kubernetes.io/canary-weight"
ROLLOUT = "saferollout.dev/rollout"
CANARY_OF = "saferollout.dev/canary-of"
MERGE = "application/merge-patch+json"
# Not copied to the canary: another tool's bookkeeping, and the canary-by-header/cookie rules of the stable Ingress.
_NOT_COPIED = ("kubectl.kubernetes.io/last-applied-configuration", "nginx.ingress.kubernetes.io/canary")


def canary_ingress_name(ingress: str) -> str:
    return f"{ingress}-canary"


def _repoint(backend: dict[str, Any] | None, stable: str, canary: str) -> dict[str, Any] | None:
    """The backend with the canary Service in place of the stable one; None when it routes elsewhere."""
    svc = (backend or {}).get("service") or {}
    if svc.get("name") != stable:
        return None
    out = copy.deepcopy(backend or {})
    out["service"]["name"] = canary
    return out


def canary_ingress(stable_ingress: dict[str, Any], stable: str, canary: str, weight: int, rollout: str,
                   target: str, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole canary Ingress for `stable_ingress` (a v1 Ingress as a dict) at `weight`; the input is not changed."""
    if not 0 <= weight <= 100:
        raise ValueError(f"weight {weight} is not a percentage")
    meta = stable_ingress["metadata"]
    src = stable_ingress.get("spec") or {}
    spec: dict[str, Any] = {k: copy.deepcopy(v) for k, v in src.items() if k not in ("rules", "defaultBackend")}
    default = _repoint(src.get("defaultBackend"), stable, canary)
    if default is not None:
        spec["defaultBackend"] = default
    rules = []
    for rule in src.get("rules") or []:
        paths = []
        for p in (rule.get("http") or {}).get("paths") or []:
            backend = _repoint(p.get("backend"), stable, canary)
            if backend is not None:
                paths.append({**copy.deepcopy(p), "backend": backend})
        if paths:
            rules.append({**copy.deepcopy(rule), "http": {"paths": paths}})
    if rules:
        spec["rules"] = rules
    if not rules and default is None:
        raise LookupError(f"Ingress {meta['name']!r} routes nothing to the stable Service {stable!r}")
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if not k.startswith(_NOT_COPIED)}
    annotations.update({CANARY: "true", CANARY_WEIGHT: str(weight)})
    out_meta: dict[str, Any] = {"name": canary_ingress_name(meta["name"]), "namespace": meta.get("namespace"),
                                "labels": {ROLLOUT: rollout, CANARY_OF: target}, "annotations": annotations}
    if owner is not None:
        out_meta["ownerReferences"] = [owner]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": out_meta, "spec": spec}


def _networking() -> client.NetworkingV1Api:
    return client.NetworkingV1Api(kube.api())


def _read(namespace: str, name: str) -> dict[str, Any] | None:
    return kube.read_or_none(_networking().read_namespaced_ingress, name, namespace)


def _ours(ingress: dict[str, Any], ref: RolloutRef) -> bool:
    return (ingress["metadata"].get("labels") or {}).get(ROLLOUT) == ref.name


class NginxRouter:
    def prepare(self, ref: RolloutRef, spec: SafeRolloutSpec, first_weight: int) -> CanaryPlan:
        return CanaryPlan()  # the canary Ingress is made by the first set_weight

    def set_weight(self, ref: RolloutRef, spec: SafeRolloutSpec, weight: int) -> None:
        """Create the canary Ingress, or patch it in one write guarded by its resourceVersion."""
        assert spec.strategy.canary and spec.strategy.canary.traffic.nginx
        cfg = spec.strategy.canary.traffic.nginx
        stable, canary = spec.strategy.canary.traffic.services(spec.target_ref.name)
        name = canary_ingress_name(cfg.ingress)
        net = _networking()

        def write() -> None:
            src = _read(ref.namespace, cfg.ingress)
            if src is None:
                raise LookupError(f"Ingress {cfg.ingress!r} not found in namespace {ref.namespace!r}")
            body = canary_ingress(src, stable, canary, weight, ref.name, spec.target_ref.name, ref.owner())
            body["metadata"]["namespace"] = ref.namespace
            current = _read(ref.namespace, name)
            if current is None:
                net.create_namespaced_ingress(ref.namespace, body)  # a 409 (created meanwhile) is retried as a patch
                return
            if not _ours(current, ref):
                raise ValueError(f"Ingress {name!r} exists and was not made by SafeRollout {ref.name!r}; not touching it")
            cur_meta = current["metadata"]
            if (current.get("spec") == body["spec"] and cur_meta.get("annotations") == body["metadata"]["annotations"]
                    and cur_meta.get("ownerReferences") == body["metadata"]["ownerReferences"]):
                return
            # merge patch: annotations that are gone from the stable Ingress are removed with a null
            gone = {k: None for k in cur_meta.get("annotations") or {} if k not in body["metadata"]["annotations"]}
            patch = {"metadata": {"resourceVersion": cur_meta["resourceVersion"],
                                  "annotations": {**gone, **body["metadata"]["annotations"]},
                                  "labels": body["metadata"]["labels"],
                                  "ownerReferences": body["metadata"]["ownerReferences"]},
                     "spec": {**{k: None for k in current.get("spec") or {} if k not in body["spec"]}, **body["spec"]}}
            net.patch_namespaced_ingress(name, ref.namespace, patch, _content_type=MERGE)

        kube.retry_conflicts(write)

    def clean_up(self, ref: RolloutRef, spec: SafeRolloutSpec) -> None:
        """Delete the canary Ingress (when the canary goes); one that SafeRollout did not make is left alone."""
        assert spec.strategy.canary and spec.strategy.canary.traffic.nginx
        name = canary_ingress_name(spec.strategy.canary.traffic.nginx.ingress)
        current = _read(ref.namespace, name)
        if current is None or not _ours(current, ref):
            return
        only_this = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=current["metadata"]["uid"]))
        try:
            _networking().delete_namespaced_ingress(name, ref.namespace, body=only_this)
        except ApiException as e:
            if e.status not in (404, 409):  # gone already, or replaced by a newer one that is not ours to delete
                raise
