"""Replica ratio: no mesh, no ingress; the canary's share of the traffic is its share of the ready pods.

This is Argo Rollouts' basic canary (a canary without traffic routing): one Service selects the pods of both
Deployments, so each pod gets about the same share of the requests. The choice made here is what a user of that
canary expects:

- `total` is the target's replica count when the rollout began. It is written once, in the annotation
  `saferollout.dev/total-replicas` of the canary Deployment, before either Deployment is scaled, so repeated calls
  and an operator restart compute the same numbers instead of shrinking the total step by step.
- canary = ceil(total * w / 100), target = total - canary, and for 0 < w < 100 each side keeps at least one pod:
  a 5% stage must really run the canary, and the stable version must still serve (and be measured) until 100%.
  With small totals the share is therefore coarse, and the pods may add up to total + 1 (as Argo does with surge):

  | total | 5%      | 25%     | 50%     | 100%    |   (target + canary, real canary share)
  | 1     | 1+1 50% | 1+1 50% | 1+1 50% | 0+1     |
  | 2     | 1+1 50% | 1+1 50% | 1+1 50% | 0+2     |
  | 3     | 2+1 33% | 2+1 33% | 1+2 67% | 0+3     |
  | 10    | 9+1 10% | 7+3 30% | 5+5 50% | 0+10    |

- At 100 the target runs no pod (all traffic on the canary, as in Argo); at 0 the target is back at total and the
  canary at 0 (the canary Deployment is kept; it goes with DeleteCanary, not with this router's `clean_up`).
- Capacity: the side that grows is scaled first and, bounded by `settle_timeout`, the other side shrinks only
  once all the grown side's pods are available; so when scaling up the canary goes first, when scaling back the
  target goes first, and the available pods do not drop below the total while the cluster can run them. If they
  are not available in time the shrink happens anyway: the decision (often a rollback) must not wait on capacity
  for more than `settle_timeout` (30 s).

The share is real only if the stable Service selects the canary's pods too (they must keep its selector labels),
and nothing else scales the two: an autoscaler on the target fights this router.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from saferollout.adapters import autoscaling, kube
from saferollout.adapters.kube import RolloutRef
from saferollout.adapters.workloads import CanaryPlan
from saferollout.core.models import SafeRolloutSpec

TOTAL = "saferollout.dev/total-replicas"
SMP = "application/strategic-merge-patch+json"
log = logging.getLogger(__name__)


def split(total: int, weight: int) -> tuple[int, int]:
    """(target, canary) replicas for `weight` percent of `total`; see the module docstring for the rules."""
    if not 0 <= weight <= 100:
        raise ValueError(f"weight {weight} is not a percentage")
    if total < 0:
        raise ValueError(f"total replicas {total} is negative")
    if weight == 0 or total == 0:
        return total, 0
    if weight == 100:
        return 0, total
    canary = -(-total * weight // 100)  # ceil without floats
    return max(1, total - canary), canary


def canary_share(target: int, canary: int) -> float:
    """The share of the pods (so of the requests) the canary gets, in percent."""
    return 100.0 * canary / (target + canary) if target + canary else 0.0


def _deployment(namespace: str, name: str) -> dict[str, Any] | None:
    return kube.read_or_none(kube.apps().read_namespaced_deployment, name, namespace)


def _replicas(dep: dict[str, Any]) -> int:
    return int(dep["spec"].get("replicas", 1))


def total_of(target: dict[str, Any], canary: dict[str, Any] | None) -> int:
    """The recorded total, else the target's replica count (the target is untouched until the total is recorded)."""
    recorded = ((canary or {}).get("metadata", {}).get("annotations") or {}).get(TOTAL)
    if recorded is not None:
        try:
            return max(0, int(recorded))
        except ValueError:
            log.warning("ignoring annotation %s=%r on the canary Deployment: not a number", TOTAL, recorded)
    return _replicas(target)


def initial_canary_replicas(ref: RolloutRef, spec: SafeRolloutSpec, weight: int) -> int:
    """Replicas to create the canary with (prepare), so it does not start as a full copy of the target."""
    target = _deployment(ref.namespace, spec.target_ref.name)
    if target is None:
        raise LookupError(f"Deployment {spec.target_ref.name!r} not found in namespace {ref.namespace!r}")
    canary = _deployment(ref.namespace, f"{spec.target_ref.name}-canary")
    return split(total_of(target, canary), weight)[1]


class ReplicaRatioRouter:
    def __init__(self, settle_timeout: float = 30.0, poll: float = 0.25) -> None:
        self.settle_timeout, self.poll = settle_timeout, poll

    def prepare(self, ref: RolloutRef, spec: SafeRolloutSpec, first_weight: int) -> CanaryPlan:
        """The canary starts at the first weight's share, and its pods keep the stable Service's labels: sharing
        that Service is how this router sends them traffic. It scales the target to move traffic: an HPA on the
        target would fight it (and could leave the stable version below what its traffic needs), so that is
        refused before anything is made."""
        hpa = autoscaling.target_hpa(ref.namespace, spec.target_ref.name)
        if hpa is not None:
            raise kube.Refused(f"HorizontalPodAutoscaler {hpa['metadata']['name']} scales the target "
                               f"{spec.target_ref.name}, and the replicas router moves traffic by scaling it: pick a "
                               "weighted router (gatewayAPI, istio, nginx), whose canary gets an HPA of its own")
        return CanaryPlan(replicas=initial_canary_replicas(ref, spec, first_weight), behind_stable=True)

    def clean_up(self, ref: RolloutRef, spec: SafeRolloutSpec) -> None:
        """Nothing to remove: it creates nothing but the canary Deployment's annotation, which goes with it."""

    def set_weight(self, ref: RolloutRef, spec: SafeRolloutSpec, weight: int) -> None:
        """Scale both Deployments to the split for `weight`: the growing one first (two writes, by necessity)."""
        ns, target_name = ref.namespace, spec.target_ref.name
        canary_name = f"{target_name}-canary"
        target = _deployment(ns, target_name)
        if target is None:
            raise LookupError(f"Deployment {target_name!r} not found in namespace {ns!r}")
        canary = _deployment(ns, canary_name)
        if canary is None:
            if weight == 0:
                return  # nothing to move; the target was never scaled without a canary
            raise LookupError(f"canary Deployment {canary_name!r} not found: it is created before traffic moves")
        total = total_of(target, canary)
        if TOTAL not in (canary["metadata"].get("annotations") or {}):
            # recorded before anything is scaled, so a crash after the first scale cannot change the total
            self._patch(ns, canary_name, {"metadata": {"annotations": {TOTAL: str(total)}}})
        want_target, want_canary = split(total, weight)
        grow, shrink = (canary, want_canary), (target, want_target)
        if want_canary < _replicas(canary):
            grow, shrink = shrink, grow
        self._scale(ns, *grow)
        if shrink[1] < _replicas(shrink[0]):  # only a shrink has to wait for the other side's pods
            self._settle(ns, grow[0]["metadata"]["name"], grow[1])
        self._scale(ns, *shrink)

    def _patch(self, ns: str, name: str, body: dict[str, Any]) -> None:
        kube.apps().patch_namespaced_deployment(name, ns, body, _content_type=SMP)

    def _scale(self, ns: str, dep: dict[str, Any], replicas: int) -> None:
        if _replicas(dep) != replicas:
            self._patch(ns, dep["metadata"]["name"], {"spec": {"replicas": replicas}})

    def _settle(self, ns: str, name: str, replicas: int) -> None:
        """Wait, bounded, until `replicas` pods of the Deployment are available; then go on in any case."""
        deadline = time.monotonic() + self.settle_timeout
        while True:
            dep = _deployment(ns, name)
            if dep is None:
                return
            st = dep.get("status") or {}
            # no observedGeneration check: the grown side only gains pods, so a stale status can only say too few,
            # and the annotation written on the first call bumps a Deployment's generation without any new pod
            if st.get("availableReplicas", 0) >= replicas:
                return
            if time.monotonic() >= deadline:
                log.warning("Deployment %s has %s of %d replicas available after %gs; moving the traffic anyway",
                            name, st.get("availableReplicas", 0), replicas, self.settle_timeout)
                return
            time.sleep(self.poll)
