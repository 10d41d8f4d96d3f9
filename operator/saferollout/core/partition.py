"""A StatefulSet's canary by partition: how a stage's weight becomes updateStrategy.rollingUpdate.partition.

Pods with an ordinal at or above the partition run the update revision, the others the current one. A stage of
weight w puts ceil(replicas x w / 100) pods on the new revision, and at least one for any w > 0 (a 5% stage of
three pods must really run the canary); 100 is partition 0. Weight 0 is not a partition but a revert: the stable
template back and partition 0 (core.phases and adapters.routers.partition). The share is therefore coarse:

  | replicas | 5%      | 25%     | 50%     | 100% |   (partition, pods on the new revision)
  | 1        | 0, 1    | 0, 1    | 0, 1    | 0, 1 |
  | 3        | 2, 1    | 2, 1    | 1, 2    | 0, 3 |
  | 10       | 9, 1    | 7, 3    | 5, 5    | 0, 10|
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from saferollout.core import actions as a
from saferollout.core.models import PartitionStatus

if TYPE_CHECKING:
    from saferollout.core.actions import Action
    from saferollout.core.run import Run


def canary_pods(replicas: int, weight: int) -> int:
    """Pods on the new revision at `weight` percent of `replicas`."""
    if not 0 <= weight <= 100:
        raise ValueError(f"weight {weight} is not a percentage")
    if replicas < 0:
        raise ValueError(f"replicas {replicas} is negative")
    if weight == 0 or replicas == 0:
        return 0
    return max(1, -(-replicas * weight // 100))  # ceil without floats


def partition_for(replicas: int, weight: int) -> int:
    """updateStrategy.rollingUpdate.partition for `weight` percent (weight 0: replicas, no pod on the new revision)."""
    return replicas - canary_pods(replicas, weight)


def share(replicas: int, partition: int) -> float:
    """Percent of the pods (so of the requests a Service spreads evenly) on the new revision."""
    return 100.0 * max(0, replicas - partition) / replicas if replicas else 0.0


# ------------------------------------------------------------------------------- the record in status.partition


def written(run: Run, act: Action) -> None:
    """A write the StatefulSet took (the engine calls this for every successful action): status.partition says
    which template it holds and the partition it was given, so a restarted operator knows where the pods are."""
    p = run.s.partition
    if not run.spec.partition or p is None:
        return
    if isinstance(act, a.SetWeight):
        # weight 0 is the revert (the stable revision's template, partition 0): promotion sends none (its pods are
        # the target), so a SetWeight(0) is always a rollback or an earlier attempt undone
        p.template = "stable" if act.weight == 0 else "canary"
        p.written = 0 if act.weight == 0 else partition_for(p.replicas, act.weight)
    elif isinstance(act, a.SetTargetImages):
        p.template, p.written = ("canary" if act.reason == "promote" else "stable"), 0
    elif isinstance(act, a.EnsureCanary) and p.template != "canary":
        p.template, p.written = "canary", p.replicas  # the template, with nothing moved yet


def describe(p: PartitionStatus) -> str:
    """`partition 2 of 3: 1 pod on revision web-7c9 (canary)`, for messages, the plugin and the report."""
    if p.written is None:
        return f"partition not written yet ({p.replicas} replicas on {p.stable_revision or 'the stable revision'})"
    if p.template == "stable":
        return f"partition {p.written} of {p.replicas}: the stable template ({p.stable_revision}) written back"
    pods = p.canary_pods
    return (f"partition {p.written} of {p.replicas}: {pods} pod{'s' if pods != 1 else ''} on revision "
            f"{p.canary_revision or 'the new revision'} (canary), {p.replicas - pods} on {p.stable_revision}")
