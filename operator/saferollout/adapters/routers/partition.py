"""Partition: a StatefulSet's canary is its own pods on the new revision (adapters/statefulsets.py has the writes).

The weight is the share of the pods on the new revision, ceil(replicas x weight / 100) and at least one
(core/partition.py); a Service spreads its requests over both revisions' pods, so that is the canary's share of the
traffic. Weight 0 is the revert: the stable revision's template and partition 0, after which the controller
replaces the new revision's pods, highest ordinal first. So traffic leaves the canary as its pods are replaced,
not in one write as with a router's weights.
"""

from __future__ import annotations

from saferollout.adapters import statefulsets
from saferollout.adapters.kube import RolloutRef
from saferollout.adapters.workloads import CanaryPlan
from saferollout.core.models import SafeRolloutSpec


class PartitionRouter:
    def __init__(self, settle_timeout: float = 30.0, poll: float = 0.25) -> None:
        self.settle_timeout, self.poll = settle_timeout, poll

    def prepare(self, ref: RolloutRef, spec: SafeRolloutSpec, first_weight: int) -> CanaryPlan:
        """No canary workload is made: the StatefulSet's template is written by statefulsets.ensure_canary."""
        return CanaryPlan(replicas=0, behind_stable=True)

    def set_weight(self, ref: RolloutRef, spec: SafeRolloutSpec, weight: int) -> None:
        if weight == 0:
            statefulsets.revert(ref, spec, self.settle_timeout, self.poll)
        else:
            statefulsets.set_partition(ref, spec, weight, self.settle_timeout, self.poll)

    def clean_up(self, ref: RolloutRef, spec: SafeRolloutSpec) -> None:
        """Nothing: the canary Service is the rollout's (owned by it, gone with it), as the other routers' are."""
