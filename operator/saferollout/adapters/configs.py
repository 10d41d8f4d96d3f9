"""Config tracking's I/O (core.configs has the rules): read the ConfigMaps and Secrets a pod template references,
make the immutable copies of a config version, remove those of versions nothing runs any more.

Secret data is read and copied, never logged: errors name the object, not its content. Secrets are read and
deleted by name only (the chart grants no `list` on secrets, so the operator cannot enumerate them)."""

from __future__ import annotations

from typing import Any

from kubernetes.client.rest import ApiException

from saferollout.adapters import kube
from saferollout.adapters.kube import RolloutRef
from saferollout.core import configs
from saferollout.core.configs import CONFIG_LABEL, CONFIGMAP, COPY_OF, SECRET, Ref


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


def ensure_copies(ref: RolloutRef, template: dict[str, Any], config: str) -> None:
    """The copies of config version `config`, made from the objects only while they still hold that version (a
    change in between: the caller decides again on what is there now). A copy exists already: it is immutable and
    named by its data's hash, so it is kept (if this rollout made it)."""
    now, objects = read_config(ref, template)
    if now != config:
        raise RuntimeError(f"the referenced ConfigMaps/Secrets changed again (config {now}, not {config}); not copied")
    for (kind, name), data in objects.items():
        if data is None:  # an optional reference to an absent object: its copy is absent too
            continue
        body = configs.copy_object(kind, name, config, data, ref.name, ref.owner())
        create = kube.core().create_namespaced_config_map if kind == CONFIGMAP else \
            kube.core().create_namespaced_secret
        try:
            create(ref.namespace, body)
        except ApiException as e:
            if e.status != 409:
                raise kube.Refused(f"the copy {kind} {body['metadata']['name']} could not be made "
                                   f"(HTTP {e.status} {e.reason})") from None
            current = _read(ref.namespace, (kind, body["metadata"]["name"]))
            if current is None or not kube.owned_by(current, ref):
                raise kube.Refused(f"{kind} {body['metadata']['name']} exists and was not made by this SafeRollout; "
                                   "it is not taken over") from None


def prune_copies(ref: RolloutRef, keep: str | None, templates: list[dict[str, Any]], also: set[str]) -> int:
    """Remove the copies of every config version but `keep` (the stable one): ConfigMap copies by their labels,
    Secret copies by name, for the Secrets `templates` reference and the versions found or named in `also`.
    Returns how many were removed."""
    core = kube.core()
    selector = f"{COPY_OF}={ref.name}"
    found = core.list_namespaced_config_map(ref.namespace, label_selector=selector).items
    versions = set(also)
    removed = 0
    for cm in found:
        version = (cm.metadata.labels or {}).get(CONFIG_LABEL)
        versions.add(version or "")
        if version != keep and any(o.uid == ref.uid for o in cm.metadata.owner_references or []):
            removed += _delete(core.delete_namespaced_config_map, cm.metadata.name, ref.namespace)
    secrets = {n for t in templates for k, n in configs.references(t.get("spec")) if k == SECRET}
    for version in versions - {keep, ""}:
        for name in secrets:
            copy = _read(ref.namespace, (SECRET, configs.copy_name(name, version)))
            if copy is not None and kube.owned_by(copy, ref):
                removed += _delete(core.delete_namespaced_secret, configs.copy_name(name, version), ref.namespace)
    return removed


def _delete(delete: Any, name: str, namespace: str) -> int:
    try:
        delete(name, namespace)
        return 1
    except ApiException as e:
        if e.status != 404:
            raise
        return 0
