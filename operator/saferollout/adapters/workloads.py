"""The target Deployment and the canary copy of it (Deployment `<target>-canary` and its Service)."""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from typing import Any

from kubernetes.client.rest import ApiException

from saferollout.adapters import autoscaling, kube
from saferollout.adapters import configs as config_copies
from saferollout.adapters.kube import RolloutRef
from saferollout.core import configs
from saferollout.core.actions import TargetView
from saferollout.core.configs import CONFIG_LABEL, CONFIG_REFS
from saferollout.core.models import CANARY_SUFFIX, SafeRolloutSpec
from saferollout.core.templates import (
    ARGOCD_TRACKING,
    HELD_ANNOTATION,
    REVISION_ANNOTATION,
    STABLE_ANNOTATION,
    TARGET_LABEL,
    template_hash_of,
)

CANARY_OF = "saferollout.dev/canary-of"
ROLLOUT = "saferollout.dev/rollout"
TEMPLATE_HASH = "saferollout.dev/template-hash"  # on the canary Deployment: the target template it was made from
SMP = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CanaryPlan:
    """How the canary Deployment is made, as its router wants it (Router.prepare)."""

    replicas: int | None = None  # None: as many as the target has
    # its pods keep the labels the stable Service selects, so that Service sends them their share (the replica-ratio
    # router's only way in); otherwise those labels are dropped, so stable serves none of the canary's pods
    behind_stable: bool = False


def canary_name(spec: SafeRolloutSpec) -> str:
    return f"{spec.target_ref.name}{CANARY_SUFFIX}"


def _dep(namespace: str, name: str) -> dict[str, Any]:
    obj = kube.apps().read_namespaced_deployment(name, namespace)
    out: dict[str, Any] = kube.api().sanitize_for_serialization(obj)
    return out


def raw_deployment(namespace: str, name: str) -> dict[str, Any]:
    """The Deployment as the API server serves it, every field kept: the typed client drops fields it does not
    know, and the pod template's hash (and the canary made from it) must cover all of them, as the webhook sees."""
    resp = kube.apps().read_namespaced_deployment(name, namespace, _preload_content=False)
    out: dict[str, Any] = json.loads(resp.data)
    return out


def view_of(dep: dict[str, Any], config: str | None = None) -> TargetView:
    """`config`: trackConfig's config version of the objects the template references now (None: not tracked)."""
    meta = dep.get("metadata") or {}
    ann, labels = meta.get("annotations") or {}, meta.get("labels") or {}
    tracking = ann.get(ARGOCD_TRACKING)
    tmpl = dep["spec"].get("template")
    raw, stable = template_hash_of(tmpl), ann.get(STABLE_ANNOTATION)
    label = config_of(tmpl or {}) if config else None
    if config is not None and stable in (None, raw):  # the approved template: its version has the approved config
        stable = configs.version_hash(tmpl, label or config)
    return TargetView(template_hash=configs.version_hash(tmpl, config), images=images_of(dep),
                      paused=bool(dep["spec"].get("paused")), generation=meta.get("generation"),
                      label=labels.get(TARGET_LABEL), stable_hash=stable,
                      held_hash=ann.get(HELD_ANNOTATION), revision=ann.get(REVISION_ANNOTATION),
                      application=tracking.split(":", 1)[0] if tracking else None, available=available(dep),
                      config=config, config_label=label,
                      template_approved=config is not None and ann.get(STABLE_ANNOTATION) == raw,
                      raw_hash=raw if config is not None else None)


def _read_config(ref: RolloutRef, spec: SafeRolloutSpec,
                 dep: dict[str, Any]) -> tuple[str, dict[configs.Ref, dict[str, Any] | None]] | None:
    """trackConfig: (config version, data) of what the target's template references now (None: not tracked)."""
    return config_copies.read_config(ref, dep["spec"].get("template") or {}) if spec.track_config else None


def config_version(ref: RolloutRef, spec: SafeRolloutSpec, dep: dict[str, Any]) -> str | None:
    """trackConfig: the config version of what the target's template references now (None: not tracked)."""
    read = _read_config(ref, spec, dep)
    return read[0] if read else None


def target_view(ref: RolloutRef, spec: SafeRolloutSpec) -> TargetView:
    dep = raw_deployment(ref.namespace, spec.target_ref.name)
    return view_of(dep, config_version(ref, spec, dep))


def label_target(ref: RolloutRef, spec: SafeRolloutSpec) -> None:
    """The label the admission webhook's objectSelector matches; a label Git does not hold is no diff for Argo CD."""
    kube.apps().patch_namespaced_deployment(spec.target_ref.name, ref.namespace,
                                            {"metadata": {"labels": {TARGET_LABEL: ref.name}}}, _content_type=MERGE)


def target_patch(dep: dict[str, Any], template_hash: str, annotations: dict[str, str | None], paused: bool | None,
                 config: str | None, give_config: bool) -> dict[str, Any]:
    """The merge patch of one write to the target, only while it still holds the version `template_hash`
    (RuntimeError otherwise; the resourceVersion makes the write a compare-and-swap). `paused` None: left as it
    is. trackConfig (`config`, the config version there is now): with `give_config` the template's pods are given
    the copies of that version (CONFIG_LABEL), and the approved hash is the template's with that label, as the
    webhook computes it; a hold keeps the approved hash there is and names the template the webhook would."""
    tmpl = dep["spec"].get("template") or {}
    current = configs.version_hash(tmpl, config)
    if current != template_hash:
        raise RuntimeError(f"the target's pod template is {current} now, not {template_hash}; not written")
    meta: dict[str, Any] = {"annotations": dict(annotations)}
    if dep["metadata"].get("resourceVersion"):
        meta["resourceVersion"] = dep["metadata"]["resourceVersion"]
    body: dict[str, Any] = {"metadata": meta, "spec": {}}
    if paused is not None:
        body["spec"]["paused"] = paused
    if config is not None and give_config:
        given = configs.given(tmpl, config)
        gmeta = given["metadata"]
        body["spec"]["template"] = {"metadata": {"labels": {CONFIG_LABEL: config},
                                                 "annotations": {CONFIG_REFS: gmeta["annotations"][CONFIG_REFS]}}}
        meta["annotations"][STABLE_ANNOTATION] = template_hash_of(given)
    elif config is not None:
        meta["annotations"].pop(STABLE_ANNOTATION, None)
        if meta["annotations"].get(HELD_ANNOTATION):
            meta["annotations"][HELD_ANNOTATION] = template_hash_of(tmpl)
    return body


def _write_target(ref: RolloutRef, spec: SafeRolloutSpec, template_hash: str, annotations: dict[str, str | None],
                  paused: bool | None, keep_capacity: bool = False, give_config: bool = False) -> str:
    """One write (target_patch) to the target as it is now. With `keep_capacity` an autoscaled target's replicas
    are raised in it too; returns what was raised, if anything."""
    dep = raw_deployment(ref.namespace, spec.target_ref.name)
    if ((dep.get("metadata") or {}).get("labels") or {}).get(TARGET_LABEL) != ref.name:
        raise kube.Refused(f"Deployment {spec.target_ref.name} is not labelled {TARGET_LABEL}={ref.name}")
    read = _read_config(ref, spec, dep)
    config = read[0] if read else None
    body = target_patch(dep, template_hash, annotations, paused, config, give_config)
    if read is not None and give_config:  # the copies exist before any pod is given them
        config_copies.ensure_copies(ref, *read)
    # raised once: a retry of a write that landed (the target unpaused already, or given this config version
    # already: a config-only version is never paused) must not add the canary again
    first = dep["spec"].get("paused") or (config is not None and give_config
                                           and config_of(dep["spec"].get("template") or {}) != config)
    replicas, why = autoscaling.promotion_replicas(ref.namespace, dep, canary_name(spec)) \
        if keep_capacity and first else (None, "")
    if replicas is not None:
        body["spec"]["replicas"] = replicas
    kube.apps().patch_namespaced_deployment(spec.target_ref.name, ref.namespace, body, _content_type=MERGE)
    return why


def hold_target(ref: RolloutRef, spec: SafeRolloutSpec, stable_hash: str, held_hash: str) -> None:
    _write_target(ref, spec, held_hash, {STABLE_ANNOTATION: stable_hash, HELD_ANNOTATION: held_hash}, True)


def release_target(ref: RolloutRef, spec: SafeRolloutSpec, stable_hash: str, keep_capacity: bool = False,
                   track: bool = False) -> str:
    """Unpause, with `stable_hash` the approved template (the webhook then lets the unpause through). `track`:
    trackConfig's first write, which only gives the pods their copies (a pause of the user's stays)."""
    return _write_target(ref, spec, stable_hash, {STABLE_ANNOTATION: stable_hash, HELD_ANNOTATION: None},
                         None if track else False, keep_capacity, give_config=True)


def let_go(ref: RolloutRef, target: str) -> bool:
    """The SafeRollout is gone: its label and annotations leave the target (trackConfig's label on its pod template
    too: its copies go with the SafeRollout), and a hold of the webhook's ends (the template Git holds then rolls
    out). Only a Deployment labelled for this rollout; True when one was. Retried when someone wrote in between."""
    return kube.retry_conflicts(lambda: _let_go(ref, target))


def _let_go(ref: RolloutRef, target: str) -> bool:
    dep = kube.read_or_none(kube.apps().read_namespaced_deployment, target, ref.namespace)
    if dep is None or ((dep.get("metadata") or {}).get("labels") or {}).get(TARGET_LABEL) != ref.name:
        return False
    ann = (dep.get("metadata") or {}).get("annotations") or {}
    body: dict[str, Any] = {"metadata": {"resourceVersion": dep["metadata"]["resourceVersion"],
                                         "labels": {TARGET_LABEL: None},
                                         "annotations": {STABLE_ANNOTATION: None, HELD_ANNOTATION: None}},
                            "spec": {}}
    if ann.get(HELD_ANNOTATION) and (dep.get("spec") or {}).get("paused"):
        body["spec"]["paused"] = False
    if config_of((dep.get("spec") or {}).get("template") or {}):  # trackConfig's copies go with the SafeRollout:
        # its pods read the objects Git names again (the Deployment controller replaces them once)
        body["spec"]["template"] = {"metadata": {"labels": {CONFIG_LABEL: None}, "annotations": {CONFIG_REFS: None}}}
    kube.apps().patch_namespaced_deployment(target, ref.namespace, body, _content_type=MERGE)
    return True


def _prune_copies(ref: RolloutRef, spec: SafeRolloutSpec) -> None:
    """With the canary gone, only the copies the target's pods are given are needed: those of a refused or
    abandoned version, and of the version a promotion replaced, go — only once every pod of the target runs its
    current template (no older ReplicaSet's pod still reads older copies). A failure is logged, never blocks a
    rollback (the copies are owned by the SafeRollout and go with it at the latest)."""
    try:
        target = raw_deployment(ref.namespace, spec.target_ref.name)
        tmpl = target["spec"].get("template") or {}
        keep = config_of(tmpl)
        if keep is None or not available(target):
            return
        removed = config_copies.prune_copies(ref, keep)
        if removed:
            log.info("removed %d config versions other than %s (their copies go with them)", removed, keep)
    except ApiException as e:
        log.warning("could not remove old config copies: %s", kube.error_text(e))


def config_of(template: dict[str, Any]) -> str | None:
    """The config version a pod template's pods are given (trackConfig's label), if any."""
    return ((template.get("metadata") or {}).get("labels") or {}).get(CONFIG_LABEL)


def images_of(dep: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["image"] for c in dep["spec"]["template"]["spec"]["containers"]}


def available(dep: dict[str, Any]) -> bool:
    st, want = dep.get("status") or {}, dep["spec"].get("replicas", 1)
    return bool(st.get("observedGeneration", 0) >= dep["metadata"].get("generation", 0)
            and st.get("updatedReplicas", 0) >= want and st.get("availableReplicas", 0) >= want
            and st.get("replicas", 0) <= want)


def read_target(ref: RolloutRef, spec: SafeRolloutSpec) -> tuple[dict[str, str], bool, str | None]:
    dep = _dep(ref.namespace, spec.target_ref.name)
    revision = (dep["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision")
    return images_of(dep), available(dep), revision


def patch_containers(images: dict[str, str], spec: SafeRolloutSpec) -> list[dict[str, Any]]:
    env = {c.name: c.env for c in (spec.template.containers if spec.template else []) if c.env is not None}
    out = []
    for name, image in images.items():
        c: dict[str, Any] = {"name": name, "image": image}
        if name in env and env[name] is not None:
            c["env"] = [e.wire() for e in env[name] or []]
        out.append(c)
    return out


def set_target_images(ref: RolloutRef, spec: SafeRolloutSpec, images: dict[str, str],
                      keep_capacity: bool = False) -> str:
    """The images in one write, with an autoscaled target's replicas raised in it (`keep_capacity`); returns
    what was raised, if anything."""
    body: dict[str, Any] = {"spec": {"template": {"spec": {"containers": patch_containers(images, spec)}}}}
    why = ""
    target = _dep(ref.namespace, spec.target_ref.name) if keep_capacity else None
    # raised once: a retry of a write that landed (the images are there already) must not add the canary again
    if target is not None and any(images_of(target).get(k) != v for k, v in images.items()):
        replicas, why = autoscaling.promotion_replicas(ref.namespace, target, canary_name(spec))
        if replicas is not None:
            body["spec"]["replicas"] = replicas
    kube.apps().patch_namespaced_deployment(spec.target_ref.name, ref.namespace, body, _content_type=SMP)
    return why


def _selector_keys(ref: RolloutRef, spec: SafeRolloutSpec, target: dict[str, Any]) -> set[str]:
    """Labels the stable Service selects on: the canary's pods must not carry them, or stable would serve them."""
    stable = service_names(spec)[0]
    keys = set((target["spec"].get("selector") or {}).get("matchLabels") or {})
    try:
        svc = kube.core().read_namespaced_service(stable, ref.namespace)
        keys |= set((svc.spec.selector if svc.spec else None) or {})
    except ApiException as e:
        if e.status != 404:
            raise
    return keys


def ensure_canary(ref: RolloutRef, spec: SafeRolloutSpec, images: dict[str, str], plan: CanaryPlan | None = None,
                  template_hash: str | None = None) -> bool:
    """Create or update the canary Deployment and Service, made as `plan` says; True once the canary is available.

    With `template_hash` (spec.template omitted) the canary is the target's pod template as it is, every field of
    it, and only while that template has this hash; a canary made from another template is replaced."""
    plan = plan or CanaryPlan()
    target = raw_deployment(ref.namespace, spec.target_ref.name) if template_hash else \
        _dep(ref.namespace, spec.target_ref.name)
    name = canary_name(spec)
    replicas = plan.replicas
    drop = set() if plan.behind_stable else _selector_keys(ref, spec, target)
    tmpl = copy.deepcopy(target["spec"]["template"])
    read = _read_config(ref, spec, target) if template_hash is not None else None
    config = read[0] if read else None
    if template_hash is not None and configs.version_hash(tmpl, config) != template_hash:
        raise RuntimeError(f"the target's pod template is {configs.version_hash(tmpl, config)} now, "
                           f"not {template_hash}")
    tmpl.setdefault("metadata", {})
    if read is not None:  # trackConfig: the canary reads copies of the config version it is analysed with
        config_copies.ensure_copies(ref, *read)
        tmpl = configs.given(tmpl, read[0])
        tmpl["spec"] = configs.rewritten(tmpl["spec"], read[0], set(configs.references(tmpl["spec"]))) or tmpl["spec"]
    labels = {k: v for k, v in (tmpl["metadata"].get("labels") or {}).items() if k not in drop}
    labels.update({CANARY_OF: spec.target_ref.name, ROLLOUT: ref.name})
    tmpl["metadata"]["labels"] = labels
    if template_hash is None:
        wanted = {c["name"]: c for c in patch_containers(images, spec)}
        for c in tmpl["spec"]["containers"]:
            c.update(wanted.get(c["name"], {}))
    meta: dict[str, Any] = {"name": name, "namespace": ref.namespace,
                            "labels": {CANARY_OF: spec.target_ref.name, ROLLOUT: ref.name},
                            "ownerReferences": [ref.owner()]}
    if template_hash is not None:
        meta["annotations"] = {TEMPLATE_HASH: template_hash}
    body: dict[str, Any] = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {"replicas": replicas if replicas is not None else target["spec"].get("replicas", 1),
                 "selector": {"matchLabels": {CANARY_OF: spec.target_ref.name}}, "template": tmpl},
    }
    apps = kube.apps()
    # an autoscaled target: the canary's own HPA scales it once it is made (adapters.autoscaling)
    hpa = autoscaling.target_hpa(ref.namespace, spec.target_ref.name) if replicas is None else None
    try:
        current = _dep(ref.namespace, name)
    except ApiException as e:
        if e.status != 404:
            raise
        apps.create_namespaced_deployment(ref.namespace, body)
        if hpa is not None:
            autoscaling.ensure_canary_hpa(ref, hpa, name)
        _ensure_canary_service(ref, spec)
        return False
    if not kube.owned_by(current, ref):
        raise kube.Refused(f"Deployment {name} exists and was not created by this SafeRollout; "
                           "it is not taken over (rename it or remove it)")
    if template_hash is not None and (current["metadata"].get("annotations") or {}).get(TEMPLATE_HASH) != template_hash:
        delete_canary(ref, spec, prune=False)  # made from another template: a patch could not remove what it had more
        return False
    if hpa is not None:  # its replicas are the HPA's to write
        autoscaling.ensure_canary_hpa(ref, hpa, name)
        body["spec"].pop("replicas")
    if (template_hash is None and images_of(current) != images) or \
            body["spec"].get("replicas", current["spec"].get("replicas")) != current["spec"].get("replicas"):
        apps.patch_namespaced_deployment(name, ref.namespace, {"spec": body["spec"]}, _content_type=SMP)
        return False
    _ensure_canary_service(ref, spec)
    return available(current)


def service_names(spec: SafeRolloutSpec) -> tuple[str, str]:
    """(stable, new-version) Services: the router's stable/canary pair, or blue-green's active/preview pair."""
    if spec.strategy.blue_green is not None:
        return spec.strategy.blue_green.active_service, spec.strategy.blue_green.preview_service
    assert spec.strategy.canary is not None
    return spec.strategy.canary.traffic.services(spec.target_ref.name)


def _ensure_canary_service(ref: RolloutRef, spec: SafeRolloutSpec) -> None:
    """The new version's Service exists and selects the canary's pods (and only them)."""
    stable_name, canary_svc = service_names(spec)
    core = kube.core()
    selector = {CANARY_OF: spec.target_ref.name}
    svc_obj = kube.read_or_none(core.read_namespaced_service, canary_svc, ref.namespace)
    if svc_obj is not None:
        current = dict((svc_obj.get("spec") or {}).get("selector") or {})
        # a Service already selecting the canary's pods is used as it is; any other is rewritten only if ours
        if current != selector and not kube.owned_by(svc_obj, ref):
            raise kube.Refused(f"Service {canary_svc} selects {current or 'nothing'} and was not created by this "
                               f"SafeRollout; it is not taken over (make it select {CANARY_OF}: "
                               f"{spec.target_ref.name}, or name another canary Service)")
        if current != selector:
            core.patch_namespaced_service(canary_svc, ref.namespace,
                                          {"spec": {"selector": {**{k: None for k in current}, **selector}}},
                                          _content_type="application/merge-patch+json")
        return
    ports: list[dict[str, Any]] = [{"name": "http", "port": 80, "targetPort": 8080}]
    try:
        stable = kube.api().sanitize_for_serialization(core.read_namespaced_service(stable_name, ref.namespace))
        ports = [{k: v for k, v in p.items() if k in ("name", "port", "targetPort", "protocol")}
                 for p in stable["spec"].get("ports", [])] or ports
    except ApiException as e:
        if e.status != 404:
            raise
    core.create_namespaced_service(ref.namespace, {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": canary_svc, "labels": {CANARY_OF: spec.target_ref.name}, "ownerReferences": [ref.owner()]},
        "spec": {"selector": selector, "ports": ports},
    })


def delete_canary(ref: RolloutRef, spec: SafeRolloutSpec, prune: bool = True) -> None:
    """Only the canary this rollout created goes; a Deployment of that name that someone else made stays."""
    autoscaling.delete_canary_hpa(ref, canary_name(spec))
    current = kube.read_or_none(kube.apps().read_namespaced_deployment, canary_name(spec), ref.namespace)
    ours = current if current is not None and kube.owned_by(current, ref) else None
    if ours is not None:
        _delete_canary(ref, spec, ours)
    if spec.track_config and prune:
        _prune_copies(ref, spec)


def _delete_canary(ref: RolloutRef, spec: SafeRolloutSpec, current: dict[str, Any]) -> None:
    try:
        kube.apps().delete_namespaced_deployment(canary_name(spec), ref.namespace, propagation_policy="Background",
                                                 body={"preconditions": {"uid": current["metadata"]["uid"]}})
    except ApiException as e:
        if e.status not in (404, 409):  # gone already, or replaced by another object meanwhile
            raise
