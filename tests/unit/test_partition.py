"""StatefulSet targets by partition: the core's decisions in the simulated world, the pure parts of the adapter,
and the spec's cross-field rules (pydantic here, CEL in the CRD)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from saferollout.adapters import statefulsets
from saferollout.core import actions as a
from saferollout.core.models import SafeRolloutSpec
from saferollout.core.partition import canary_pods, partition_for, share
from tests.unit.world import MetricFn, StatefulSet, World, healthy

SPEC = """
targetRef: {kind: StatefulSet, name: web}
template: {containers: [{name: web, image: demo/web:2.0}]}
strategy:
  canary:
    stages:
      - {weight: 5, duration: 10s}
      - {weight: 25, duration: 10s}
      - {weight: 50, duration: 10s}
      - {weight: 100, duration: 10s}
    traffic: {partition: {}}
analysis:
  interval: 2s
  failureLimit: 2
  metrics:
    - {name: error-rate, template: error-rate, max: 0.01, onBreach: rollback, severity: critical}
"""


def canary_error(rate: float, from_weight: int) -> MetricFn:
    """The canary's error rate is `rate` once its weight is at least `from_weight`."""
    def fn(name: str, target: str, weight: int, t: float) -> float | None:
        return rate if name == "error-rate" and target == "canary" and weight >= from_weight else \
            healthy(name, target, weight, t)
    return fn


def spec(**changes: Any) -> SafeRolloutSpec:
    data = yaml.safe_load(SPEC)
    data.update(changes)
    return SafeRolloutSpec.model_validate(data)


def world(replicas: int = 3, **kw: Any) -> World:
    return World(spec(), sts=StatefulSet(replicas=replicas), **kw)


# ------------------------------------------------------------------------------------------------ pure mapping


@pytest.mark.parametrize(("replicas", "weights", "partitions"), [
    (1, (5, 25, 50, 100), (0, 0, 0, 0)),
    (3, (5, 25, 50, 100), (2, 2, 1, 0)),
    (10, (5, 25, 50, 100), (9, 7, 5, 0)),
    (4, (0,), (4,)),
])
def test_weight_to_partition(replicas: int, weights: tuple[int, ...], partitions: tuple[int, ...]) -> None:
    assert tuple(partition_for(replicas, w) for w in weights) == partitions
    assert all(canary_pods(replicas, w) >= 1 for w in weights if w)


def test_share_and_bounds() -> None:
    assert share(3, 2) == pytest.approx(33.33, abs=0.01)
    assert share(0, 0) == 0.0
    with pytest.raises(ValueError):
        canary_pods(3, 101)
    with pytest.raises(ValueError):
        canary_pods(-1, 5)


# ------------------------------------------------------------------------------------------ the core's choices


def test_healthy_rollout_lowers_the_partition_stage_by_stage_and_promotes() -> None:
    w = world().run(200, until=World.done)
    assert w.phase() == "Succeeded", w.status.message
    sts = w.sts
    assert sts is not None
    # the template with partition = replicas first (nothing moves), then 2, 2 (one pod up to 25%), 1, 0; promotion 0
    assert sts.partitions_written[0] == 3 and sts.template_writes == 1
    assert [p for i, p in enumerate(sts.partitions_written) if i == 0 or p != sts.partitions_written[i - 1]] == \
        [3, 2, 1, 0]
    assert sts.pods == ["web-20"] * 3 and sts.current_revision == "web-20"
    p = w.status.partition
    assert p is not None and p.replicas == 3 and p.stable_revision == "web-10" and p.canary_revision == "web-20"
    assert p.written == 0 and p.template == "canary"
    assert w.weights_seen == [5, 25, 50, 100]
    assert "Promoted" in w.reasons()
    assert w.status.weight == 0  # no route to take back: the pods are the target


def test_first_stage_runs_one_pod_and_analysis_runs_between_partitions() -> None:
    w = world().run(60, until=lambda w: w.status.stage == 1 and w.status.stage_checks >= 1)
    sts = w.sts
    assert sts is not None and w.status.stage == 1
    assert sts.pods == ["web-10", "web-10", "web-20"]  # the highest ordinal first
    assert w.status.stage_checks >= 1  # analysed at partition 2 before it moves on
    assert sts.partitions_written[-1] == 2


def test_a_failing_canary_rolls_back_the_template_the_partition_and_the_pods() -> None:
    w = world(metrics=canary_error(0.2, from_weight=50)).run(200, until=World.done)
    assert w.phase() == "RolledBack", w.status.message
    sts = w.sts
    assert sts is not None
    assert sts.images == {"web": "demo/web:1.0"} and sts.partition == 0
    assert sts.pods == ["web-10"] * 3 and sts.current_revision == "web-10"
    p = w.status.partition
    assert p is not None and p.template == "stable" and p.written == 0
    # the revert is the rollback's first action, before the canary's removal and the images' revert
    rollback = [line for line in w.log if "SetWeight(weight=0)" in line or "DeleteCanary" in line]
    assert "SetWeight(weight=0)" in rollback[0]
    assert w.status.incident is not None and w.status.incident.weight_at_breach == 50


def test_a_step_back_rolls_back_a_statefulset() -> None:
    data = yaml.safe_load(SPEC)
    data["analysis"]["metrics"][0]["onBreach"] = "stepBack"
    w = World(SafeRolloutSpec.model_validate(data), metrics=canary_error(0.2, from_weight=25),
              sts=StatefulSet()).run(200, until=World.done)
    assert w.phase() == "RolledBack"
    assert [h.action for h in w.status.history] == ["rollback"]


def test_a_partition_held_by_someone_else_blocks_before_anything_is_written() -> None:
    w = World(spec(), sts=StatefulSet(partition=2)).run(10, until=World.done)
    assert w.phase() == "Blocked"
    assert "partition 2" in (w.status.message or "")
    assert w.sts is not None and w.sts.template_writes == 0


@pytest.mark.parametrize("crash", [a.EnsureCanary, a.SetWeight, a.SetTargetImages])
def test_a_restarted_operator_resumes_with_the_same_partitions(crash: type) -> None:
    w = world(crash_after=crash).run(200, until=World.done)
    assert w.phase() == "Succeeded"
    sts = w.sts
    assert sts is not None and sts.template_writes == 1
    assert set(sts.partitions_written) <= {3, 2, 1, 0}
    assert sts.pods == ["web-20"] * 3


def test_a_new_template_mid_rollout_first_reverts_the_pods() -> None:
    w = world().run(25)
    sts = w.sts
    assert sts is not None and "web-20" in sts.pods
    w.spec = spec(template={"containers": [{"name": "web", "image": "demo/web:3.0"}]})
    w.run(300, until=World.done)
    assert w.phase() == "Succeeded", w.status.message
    assert sts.pods == ["web-30"] * 3
    assert w.status.stable_images == {"web": "demo/web:1.0"}  # what the pods ran, not the abandoned canary


def test_healthy_helper_is_a_pass() -> None:
    assert healthy("error-rate", "canary", 5, 0.0) == 0.001


# ---------------------------------------------------------------------------------------------- the spec rules


@pytest.mark.parametrize(("changes", "says"), [
    ({"strategy": {"canary": {"traffic": {"gatewayAPI": {"httpRoute": "web", "stableService": "web",
                                                         "canaryService": "web-canary"}}}}}, "partition router"),
    ({"strategy": {"blueGreen": {"activeService": "web", "previewService": "web-preview"}}}, "partition router"),
    ({"template": None}, "needs spec.template"),
])
def test_a_statefulset_goes_only_with_the_partition_router(changes: dict[str, Any], says: str) -> None:
    data = yaml.safe_load(SPEC)
    data.update(changes)
    if data.get("template") is None:
        data.pop("template")
    with pytest.raises(ValidationError, match=says):
        SafeRolloutSpec.model_validate(data)


def test_the_partition_router_needs_a_statefulset() -> None:
    data = yaml.safe_load(SPEC)
    data["targetRef"] = {"name": "web"}
    with pytest.raises(ValidationError, match=r"needs targetRef\.kind: StatefulSet"):
        SafeRolloutSpec.model_validate(data)


def test_the_crd_carries_the_rules() -> None:
    from saferollout.crdgen import crd

    text = json.dumps(crd())
    for rule in ("has(self.strategy.canary.traffic.partition)", "self.targetRef.kind == 'StatefulSet'",
                 "self.targetRef.kind != 'StatefulSet' || has(self.template)"):
        assert rule in text


# ------------------------------------------------------------------------------------------- the adapter, pure


def _sts(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "web", "generation": 2, "resourceVersion": "7"},
            "spec": {"replicas": 3, "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}},
            "status": {"observedGeneration": 2, **status}}


def test_rolled_out_needs_every_pod_on_one_revision_and_ready() -> None:
    done = {"currentRevision": "a", "updateRevision": "a", "updatedReplicas": 3, "readyReplicas": 3}
    assert statefulsets.rolled_out(_sts(**done))
    assert not statefulsets.rolled_out(_sts(**{**done, "currentRevision": "b"}))
    assert not statefulsets.rolled_out(_sts(**{**done, "readyReplicas": 2}))
    assert not statefulsets.rolled_out(_sts(**{**done, "observedGeneration": 1}))
    assert statefulsets.partition_of(_sts()) == 1 and statefulsets.partition_of({"spec": {}}) == 0
    assert statefulsets.replicas_of({"spec": {}}) == 1


def test_the_report_and_the_plugin_show_the_partition() -> None:
    from saferollout.cli import _partition_line

    w = world(metrics=canary_error(0.2, from_weight=50)).run(200, until=World.done)
    report = next(iter(w.reports.values()))
    assert "StatefulSet partition at breach:** 1 of 3 (2 pods on revision web-20, the others on web-10)" in report
    assert "the stable template (web-10) written back" in report
    status = w.status.model_dump(by_alias=True, mode="json")
    assert _partition_line(status) == ["Partition: partition 0 of 3: the stable template (web-10) written back"]
    status["partition"].update({"written": 2, "template": "canary"})
    assert _partition_line(status) == ["Partition: partition 2 of 3: 1 pod on revision web-20 (canary), 2 on web-10"]
    assert _partition_line({}) == []
