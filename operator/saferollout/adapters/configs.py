"""Config tracking's I/O (core.configs has the rules): read the ConfigMaps and Secrets a pod template references,
make the immutable copies of a config version, remove those of versions nothing runs any more.

Secret data is read and copied, never logged: errors name the object, not its content. Secrets are read by name
only and never deleted by the operator (the chart grants neither `list` nor `delete` on secrets): a version's
copies are owned by its own ConfigMap, and the garbage collector removes them with it."""

from __future__ import annotations

from typing import Any

from kubernetes.client.rest import ApiException

from saferollout.adapters import kube
from saferollout.adapters.kube import RolloutRef
from saferollout.core import configs
from saferollout.core.configs import CONFIG_LABEL, CONFIGMAP, COPY_OF, VERSION_OF, Ref


def _read(namespace: str, ref: Ref) -> dict[str, Any] | None:
    kind, name = ref
    read = kube.core().read_namespaced_config_map if kind == CONFIGMAP else kube.core().read_namespaced_secret
    obj = kube.read_or_none(read, name, namespace)
    if obj is not None:
        obj["kind"] = kind
    return obj


def read_config(ref: RolloutRef, template: dict[str, Any]) -> tuple[str, dict[Ref, dict[str, Any] | None]]:
    """(config version, the data of each referenced object) of a pod template as the objects are now."""
    objects = {r: configs.data_of(_read(ref.namespace, r)) for r in configs.references(template.get("spec"))}
    return configs.config_hash(objects, f"{ref.namespace}/{ref.name}"), objects


def _create(ref: RolloutRef, body: dict[str, Any], owner_uid: str) -> str:
    """Create one object (409: it exists, and must be owned by `owner_uid`); returns its uid."""
    kind, name = body["kind"], body["metadata"]["name"]
    create = kube.core().create_namespaced_config_map if kind == CONFIGMAP else kube.core().create_namespaced_secret
    try:
        made = create(ref.namespace, body)
        return str(made.metadata.uid)
    except ApiException as e:
        if e.status != 409:
            raise  # kube.refused tells a refusal (400, 422) from what a retry may mend (429, 5xx)
    current = _read(ref.namespace, (kind, name))
    meta = (current or {}).get("metadata") or {}
    if current is not None and kube.owned_by_uid(current, owner_uid):
        return str(meta["uid"])
    labels = meta.get("labels") or {}
    if current is not None and not meta.get("deletionTimestamp") and labels.get(COPY_OF) == ref.name \
            and labels.get(VERSION_OF) and kind == CONFIGMAP:
        # a version of an earlier SafeRollout of this name, orphaned (its copies with it): removed, made anew
        kube.core().delete_namespaced_config_map(name, ref.namespace, propagation_policy="Background",
                                                 body={"preconditions": {"uid": meta["uid"]}})
    if current is None or meta.get("deletionTimestamp") or labels.get(COPY_OF) == ref.name:
        # gone meanwhile, or this rollout's copy of a version being collected: made again next time
        raise RuntimeError(f"{kind} {name}: an earlier copy of this version is being removed; made again next time")
    raise kube.Refused(f"{kind} {name} exists and was not made by this SafeRollout; it is not taken over")


def ensure_copies(ref: RolloutRef, config: str, objects: dict[Ref, dict[str, Any] | None]) -> None:
    """The copies of config version `config`, from `objects` as read_config read them for it. First the version's
    own ConfigMap (owned by the SafeRollout), then the copies, owned by it: deleting it has the garbage collector
    remove them all, so the operator needs no `delete` on secrets. A copy exists already: it is immutable and
    named by its data's hash, so it is kept (if this rollout made it)."""
    version = configs.version_object(ref.name, config, sorted(objects), ref.owner())
    owner = {"apiVersion": "v1", "kind": CONFIGMAP, "name": version["metadata"]["name"],
             "uid": _create(ref, version, ref.uid), "blockOwnerDeletion": False}
    for (kind, name), data in objects.items():
        if data is not None:  # an optional reference to an absent object: its copy is absent too
            _create(ref, configs.copy_object(kind, name, config, data, ref.name, owner), owner["uid"])


def prune_copies(ref: RolloutRef, keep: str | None) -> int:
    """Remove every config version but `keep` (the stable one): its ConfigMap goes, and the garbage collector
    removes the copies it owns. Returns how many versions were removed."""
    core = kube.core()
    found = core.list_namespaced_config_map(ref.namespace, label_selector=f"{COPY_OF}={ref.name},{VERSION_OF}").items
    removed = 0
    for cm in found:
        if (cm.metadata.labels or {}).get(CONFIG_LABEL) != keep and \
                any(o.uid == ref.uid for o in cm.metadata.owner_references or []):
            try:
                core.delete_namespaced_config_map(cm.metadata.name, ref.namespace, propagation_policy="Background")
                removed += 1
            except ApiException as e:
                if e.status != 404:
                    raise
    return removed
