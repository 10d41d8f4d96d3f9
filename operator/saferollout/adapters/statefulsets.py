"""A StatefulSet target, rolled out in place by its partition (the partition router, core/partition.py).

No canary workload is made: the canary is the StatefulSet's own pods on the new revision. Every write to the
StatefulSet is one strategic merge patch carrying its resourceVersion (a compare-and-swap: someone else's write in
between makes it fail, and the core asks again), so none is ever half-applied:

1. the template (the new images) with partition = replicas, and three annotations that record what the router
   needs later (this rollout's name, spec.replicas, and status.currentRevision: the ControllerRevision the pods ran);
   nothing moves, the controller only makes the new revision;
2. per stage, the partition: ceil(replicas x weight / 100) pods (at least one) on the new revision;
3. promotion: partition 0 (the template is the new one already);
4. rollback (weight 0, and again the images' revert): the stable ControllerRevision's template, exactly as it was
   (`$patch: replace`, as `kubectl rollout undo` does), with partition 0. The update revision is then the stable one,
   so the controller replaces every pod of the new revision, from the highest ordinal down, one at a time
   (RollingUpdate), and the pods below it, which never left the stable revision, are not touched. Raising the
   partition alone would not do: pods below the partition keep the revision they run.

The canary Service (the router's canaryService, made here) selects the StatefulSet's pods whose
controller-revision-hash is the update revision, so the canary's metrics can be read under its name; the stable
Service selects both revisions' pods. OnDelete StatefulSets are refused: their partition moves nothing.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

from saferollout.adapters import kube
from saferollout.adapters.kube import RolloutRef
from saferollout.adapters.workloads import CANARY_OF, images_of, patch_containers
from saferollout.core.models import SafeRolloutSpec
from saferollout.core.partition import canary_pods, partition_for

ROLLOUT = "saferollout.dev/rollout"  # the rollout that wrote the template (its partition is not someone else's hold)
STABLE_REVISION = "saferollout.dev/stable-revision"
REPLICAS = "saferollout.dev/total-replicas"
REVISION_LABEL = "controller-revision-hash"
SMP = "application/strategic-merge-patch+json"
log = logging.getLogger(__name__)


def read(namespace: str, name: str) -> dict[str, Any]:
    obj = kube.apps().read_namespaced_stateful_set(name, namespace)
    out: dict[str, Any] = kube.api().sanitize_for_serialization(obj)
    return out


def annotations_of(sts: dict[str, Any]) -> dict[str, str]:
    return dict((sts.get("metadata") or {}).get("annotations") or {})


def partition_of(sts: dict[str, Any]) -> int:
    return int((((sts.get("spec") or {}).get("updateStrategy") or {}).get("rollingUpdate") or {}).get("partition") or 0)


def replicas_of(sts: dict[str, Any]) -> int:
    return int((sts.get("spec") or {}).get("replicas", 1))


def rolled_out(sts: dict[str, Any]) -> bool:
    """Every pod on the update revision and ready, as the controller last reported it for this generation."""
    st, want = sts.get("status") or {}, replicas_of(sts)
    return bool(st.get("observedGeneration", 0) >= (sts.get("metadata") or {}).get("generation", 0)
                and st.get("updateRevision") and st.get("currentRevision") == st.get("updateRevision")
                and st.get("updatedReplicas", 0) >= want and st.get("readyReplicas", 0) >= want)


def revision_data(namespace: str, revision: str) -> dict[str, Any]:
    """A ControllerRevision's data: `{"spec": {"template": {..., "$patch": "replace"}}}`, the patch that restores it."""
    cr = kube.api().sanitize_for_serialization(kube.apps().read_namespaced_controller_revision(revision, namespace))
    data = cr.get("data")
    if not isinstance(data, dict) or not isinstance((data.get("spec") or {}).get("template"), dict):
        raise kube.Refused(f"ControllerRevision {revision} holds no pod template")
    return data


def read_target(ref: RolloutRef, spec: SafeRolloutSpec) -> tuple[dict[str, str], bool, str | None, int, int]:
    """(images of the revision the stable pods run, rolled out, that revision, replicas, partition). The partition
    this rollout wrote itself reads 0: it is not a hold of someone else's."""
    sts = read(ref.namespace, spec.target_ref.name)
    current = (sts.get("status") or {}).get("currentRevision")
    images = images_of(sts)
    if current:
        try:
            template = revision_data(ref.namespace, current)["spec"]["template"]
            images = {c["name"]: c["image"] for c in (template.get("spec") or {}).get("containers") or []} or images
        except kube.Refused:
            pass
    ours = annotations_of(sts).get(ROLLOUT) == ref.name
    return images, rolled_out(sts), current, replicas_of(sts), 0 if ours else partition_of(sts)


def _patch(ref: RolloutRef, sts: dict[str, Any], body: dict[str, Any]) -> None:
    body = copy.deepcopy(body)
    body.setdefault("metadata", {})["resourceVersion"] = sts["metadata"]["resourceVersion"]
    kube.apps().patch_namespaced_stateful_set(sts["metadata"]["name"], ref.namespace, body, _content_type=SMP)


def _partition(n: int) -> dict[str, Any]:
    return {"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": n}}}


def ensure_canary(ref: RolloutRef, spec: SafeRolloutSpec, images: dict[str, str]) -> tuple[bool, str | None]:
    """Write the new template with partition = replicas (once); ready when the controller made its revision."""
    name = spec.target_ref.name
    sts = read(ref.namespace, name)
    if ((sts.get("spec") or {}).get("updateStrategy") or {}).get("type") == "OnDelete":
        raise kube.Refused(f"StatefulSet {name} has updateStrategy OnDelete: its partition moves no pod; "
                           "set updateStrategy.type RollingUpdate")
    ann, st = annotations_of(sts), sts.get("status") or {}
    current = images_of(sts)
    if ann.get(ROLLOUT) != ref.name or any(current.get(k) != v for k, v in images.items()):
        if not st.get("currentRevision"):
            raise RuntimeError(f"StatefulSet {name} has no status.currentRevision yet")
        replicas = replicas_of(sts)
        _patch(ref, sts, {"metadata": {"annotations": {ROLLOUT: ref.name, STABLE_REVISION: st["currentRevision"],
                                                       REPLICAS: str(replicas)}},
                          "spec": {**_partition(replicas),
                                   "template": {"spec": {"containers": patch_containers(images, spec)}}}})
        log.info("StatefulSet %s: new template written with partition %d (no pod moves)", name, replicas)
        return False, None
    if st.get("observedGeneration", 0) < sts["metadata"].get("generation", 0) or not st.get("updateRevision") \
            or st.get("updateRevision") == ann.get(STABLE_REVISION):
        return False, None
    _ensure_canary_service(ref, spec, sts, st["updateRevision"])
    return True, str(st["updateRevision"])


def _ensure_canary_service(ref: RolloutRef, spec: SafeRolloutSpec, sts: dict[str, Any], revision: str) -> None:
    """The canary Service selects the StatefulSet's pods of the update revision (and only them)."""
    assert spec.strategy.canary is not None
    canary_svc = spec.strategy.canary.traffic.services(spec.target_ref.name)[1]
    selector = {**(((sts.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}), REVISION_LABEL: revision}
    core = kube.core()
    svc = kube.read_or_none(core.read_namespaced_service, canary_svc, ref.namespace)
    if svc is None:
        ports = [{"name": "http", "port": 80, "targetPort": 8080}]
        core.create_namespaced_service(ref.namespace, {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": canary_svc, "labels": {CANARY_OF: spec.target_ref.name},
                         "ownerReferences": [ref.owner()]},
            "spec": {"selector": selector, "ports": ports}})
        return
    current = dict((svc.get("spec") or {}).get("selector") or {})
    if current == selector:
        return
    if not kube.owned_by(svc, ref):
        raise kube.Refused(f"Service {canary_svc} selects {current or 'nothing'} and was not created by this "
                           f"SafeRollout; it is not taken over (name another canary Service)")
    core.patch_namespaced_service(canary_svc, ref.namespace,
                                  {"spec": {"selector": {**{k: None for k in current}, **selector}}},
                                  _content_type="application/merge-patch+json")


def revert(ref: RolloutRef, spec: SafeRolloutSpec, settle_timeout: float = 30.0, poll: float = 0.25) -> None:
    """The stable revision's template back, partition 0, in one write; then wait (bounded) for the pods."""
    name = spec.target_ref.name
    sts = read(ref.namespace, name)
    ann = annotations_of(sts)
    if ann.get(ROLLOUT) != ref.name or not ann.get(STABLE_REVISION):
        return  # this rollout never wrote the template: there is nothing of it to undo
    stable = ann[STABLE_REVISION]
    if (sts.get("status") or {}).get("updateRevision") != stable or partition_of(sts) != 0:
        body = revision_data(ref.namespace, stable)
        body = {"spec": {**body["spec"], **_partition(0)}}
        _patch(ref, sts, body)
        log.info("StatefulSet %s: template of revision %s written back with partition 0", name, stable)
    _settle(ref.namespace, name, lambda s: rolled_out(s) and (s.get("status") or {}).get("updateRevision") == stable,
            settle_timeout, poll, f"every pod back on revision {stable}")


def set_partition(ref: RolloutRef, spec: SafeRolloutSpec, weight: int, settle_timeout: float = 30.0,
                  poll: float = 0.25) -> None:
    """Weight > 0: the partition for it, from the replicas recorded with the template; then wait (bounded) until
    that many pods run the new revision and every pod is ready."""
    name = spec.target_ref.name
    sts = read(ref.namespace, name)
    ann = annotations_of(sts)
    if ann.get(ROLLOUT) != ref.name:
        raise LookupError(f"StatefulSet {name} does not hold this rollout's template yet: it is written first")
    replicas = int(ann.get(REPLICAS) or replicas_of(sts))
    want = partition_for(replicas, weight)
    if partition_of(sts) != want:
        _patch(ref, sts, {"spec": _partition(want)})
        log.info("StatefulSet %s: partition %d (%d of %d pods on the new revision)", name, want,
                 canary_pods(replicas, weight), replicas)
    pods = canary_pods(replicas, weight)

    def done(s: dict[str, Any]) -> bool:
        st = s.get("status") or {}
        return bool(st.get("observedGeneration", 0) >= s["metadata"].get("generation", 0)
                    and st.get("updatedReplicas", 0) >= pods and st.get("readyReplicas", 0) >= replicas_of(s))

    _settle(ref.namespace, name, done, settle_timeout, poll, f"{pods} pod(s) on the new revision")


def promote(ref: RolloutRef, spec: SafeRolloutSpec, images: dict[str, str]) -> None:
    """Partition 0: every pod to the new revision (the template holds it already; the images are written again
    only if someone changed them, which makes a new revision)."""
    sts = read(ref.namespace, spec.target_ref.name)
    body: dict[str, Any] = {"spec": _partition(0)}
    if any(images_of(sts).get(k) != v for k, v in images.items()):
        body["spec"]["template"] = {"spec": {"containers": patch_containers(images, spec)}}
    if partition_of(sts) != 0 or "template" in body["spec"]:
        _patch(ref, sts, body)


def _settle(ns: str, name: str, done: Any, timeout: float, poll: float, what: str) -> None:
    """Wait, bounded, for the controller; then go on in any case (a rollback must not wait on capacity)."""
    deadline = time.monotonic() + timeout
    while True:
        sts = read(ns, name)
        if done(sts):
            return
        if time.monotonic() >= deadline:
            log.warning("StatefulSet %s: not yet %s after %gs; going on", name, what, timeout)
            return
        time.sleep(poll)
