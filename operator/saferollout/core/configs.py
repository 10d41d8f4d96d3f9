"""Config tracking (spec.trackConfig): the ConfigMaps and Secrets a target's pod template references are part of
its version. Pure functions over plain dicts, shared by the adapters, the pod admission webhook and the tests.

Why copies, and why the pods (not the Deployment) are rewritten: a ConfigMap edited in place has no `paused`; a
mounted one reaches running pods within the kubelet's sync period and a restarting pod reads the new env. So the
stable pods never read the objects Git names: each pod of a tracked target is created (admission, in its own
CREATE) referring to immutable copies `<name>-sr-<config>` of the data of the approved config version, named by the
pod template's label `saferollout.dev/config`. The canary gets copies of the new data. A promotion writes the new
config version into that label (one write, a field Git does not hold), and the Deployment controller rolls the
stable pods onto the new copies. Pods are not in Git, so rewriting them is no diff for Argo CD; the Deployment's
template keeps the names Git gives.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from saferollout.core.templates import template_hash_of

CONFIG_LABEL = "saferollout.dev/config"  # on a tracked pod template: the config version its pods are given
# beside it, the references (kind/name, comma-separated) the template itself names: only these are renamed in a
# pod, never what admission adds (the ServiceAccount token's kube-root-ca.crt, a mesh's injected volumes)
CONFIG_REFS = "saferollout.dev/config-refs"
COPY_OF = "saferollout.dev/copy-of"  # on a copy and on a version's ConfigMap: the rollout that made it
VERSION_OF = "saferollout.dev/config-version"  # on a version's ConfigMap, the owner of its copies
COPY_INFIX = "-sr-"
CONFIGMAP, SECRET = "ConfigMap", "Secret"
Ref = tuple[str, str]  # (kind, name)
_CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


def _walk(pod_spec: dict[str, Any], rename: dict[Ref, str] | None) -> list[Ref]:
    """Every ConfigMap/Secret reference of a pod spec (env valueFrom, envFrom, volumes, projected sources), in
    order; with `rename`, each reference found in it is renamed in place."""
    found: list[Ref] = []

    def see(holder: dict[str, Any], key: str, kind: str) -> None:
        name = holder.get(key)
        if isinstance(name, str) and name:
            found.append((kind, name))
            if rename is not None and (kind, name) in rename:
                holder[key] = rename[(kind, name)]

    for lst in _CONTAINER_LISTS:
        for c in pod_spec.get(lst) or []:
            for env in c.get("env") or []:
                vf = env.get("valueFrom") or {}
                if isinstance(vf.get("configMapKeyRef"), dict):
                    see(vf["configMapKeyRef"], "name", CONFIGMAP)
                if isinstance(vf.get("secretKeyRef"), dict):
                    see(vf["secretKeyRef"], "name", SECRET)
            for ef in c.get("envFrom") or []:
                if isinstance(ef.get("configMapRef"), dict):
                    see(ef["configMapRef"], "name", CONFIGMAP)
                if isinstance(ef.get("secretRef"), dict):
                    see(ef["secretRef"], "name", SECRET)
    for vol in pod_spec.get("volumes") or []:
        if isinstance(vol.get("configMap"), dict):
            see(vol["configMap"], "name", CONFIGMAP)
        if isinstance(vol.get("secret"), dict):
            see(vol["secret"], "secretName", SECRET)
        for src in (vol.get("projected") or {}).get("sources") or []:
            if isinstance(src.get("configMap"), dict):
                see(src["configMap"], "name", CONFIGMAP)
            if isinstance(src.get("secret"), dict):
                see(src["secret"], "name", SECRET)
    return found


def references(pod_spec: dict[str, Any] | None) -> list[Ref]:
    """The tracked objects of a pod spec, each once, sorted."""
    return sorted(set(_walk(pod_spec or {}, None)))


def copy_name(name: str, config: str) -> str:
    """`<name>-sr-<config>`, within the 253 characters of an object name (a long name is shortened, with a hash)."""
    suffix = f"{COPY_INFIX}{config}"
    if len(name) + len(suffix) > 253:
        name = f"{name[:253 - len(suffix) - 9]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return f"{name}{suffix}"


def refs_value(refs: list[Ref]) -> str:
    return ",".join(f"{k}/{n}" for k, n in refs)


def parse_refs(value: str | None) -> set[Ref]:
    out: set[Ref] = set()
    for item in (value or "").split(","):
        kind, _, name = item.partition("/")
        if kind in (CONFIGMAP, SECRET) and name:
            out.add((kind, name))
    return out


def rewritten(pod_spec: dict[str, Any], config: str, only: set[Ref]) -> dict[str, Any] | None:
    """The pod spec with the references in `only` renamed to their copies for `config`; None if nothing changes.
    A copy's name is not in `only`, so a second pass (a reinvoked webhook) changes nothing."""
    spec = json.loads(json.dumps(pod_spec))
    rename = {r: copy_name(r[1], config) for r in references(pod_spec) if r in only}
    if not rename:
        return None
    _walk(spec, rename)
    return spec if spec != pod_spec else None


def data_of(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a copy keeps of an object, and what its version covers: the data (and a Secret's type), never its
    metadata (Argo CD's tracking label or annotation on a copy would make Argo CD prune it as its own)."""
    if obj is None:
        return None
    out = {k: obj[k] for k in ("data", "binaryData") if obj.get(k)}
    if obj.get("kind") == SECRET or "type" in obj:
        out["type"] = obj.get("type") or "Opaque"
    return out


def config_hash(objects: Mapping[Ref, dict[str, Any] | None], salt: str) -> str:
    """The config version: the data of every referenced object (None: absent, an optional reference), in a
    canonical form, salted with the rollout (`namespace/name`: two targets that read one ConfigMap get copies of
    their own). 10 hex digits: a label value and a name suffix."""
    body = json.dumps([salt, [[k, n, objects[(k, n)]] for k, n in sorted(objects)]], sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()[:10]


def pod_patch(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod webhook's answer to a CREATE of a pod whose template carries CONFIG_LABEL: a merge patch renaming its
    references to the copies of that config version (empty: unchanged). No API call: the label says it all."""
    meta = pod.get("metadata") or {}
    config = (meta.get("labels") or {}).get(CONFIG_LABEL)
    spec = pod.get("spec") or {}
    if not config:
        return {}
    new = rewritten(spec, config, parse_refs((meta.get("annotations") or {}).get(CONFIG_REFS)))
    if new is None:
        return {}
    return {"spec": {k: new[k] for k in ("volumes", *_CONTAINER_LISTS) if k in new and new[k] != spec.get(k)}}


def given(template: dict[str, Any], config: str) -> dict[str, Any]:
    """A pod template whose pods are given the copies of `config`: the label and the references it names."""
    out: dict[str, Any] = json.loads(json.dumps(template))
    meta = out.setdefault("metadata", {})
    meta.setdefault("labels", {})[CONFIG_LABEL] = config
    meta.setdefault("annotations", {})[CONFIG_REFS] = refs_value(references(out.get("spec")))
    return out


def version_object(rollout: str, config: str, refs: list[Ref], owner: dict[str, Any]) -> dict[str, Any]:
    """A config version's own ConfigMap, owned by the SafeRollout: it owns the version's copies, so deleting it
    removes them all (Secrets too) through the garbage collector. Its data names what was copied."""
    return {"apiVersion": "v1", "kind": CONFIGMAP,
            "metadata": {"name": copy_name(rollout, config)[:245] + "-version",  # never a copy's name: -sr-<config>
                         "labels": {COPY_OF: rollout, CONFIG_LABEL: config, VERSION_OF: "true"},
                         "ownerReferences": [owner]},
            "immutable": True, "data": {"references": refs_value(refs)}}


def copy_object(kind: str, name: str, config: str, data: dict[str, Any], rollout: str,
                owner: dict[str, Any]) -> dict[str, Any]:
    """An immutable copy of one object's data for a config version, owned by `owner`: the version's ConfigMap
    (version_object), whose deletion has the garbage collector remove it."""
    body: dict[str, Any] = {"apiVersion": "v1", "kind": kind,
                            "metadata": {"name": copy_name(name, config), "labels": {COPY_OF: rollout,
                                                                                      CONFIG_LABEL: config},
                                         "ownerReferences": [owner]},
                            "immutable": True, **{k: v for k, v in data.items() if k != "type"}}
    if kind == SECRET:
        body["type"] = data.get("type") or "Opaque"
    return body


def version_hash(template: dict[str, Any] | None, config: str | None) -> str:
    """A tracked target's version: its pod template without CONFIG_LABEL and CONFIG_REFS (which only say which
    copies its pods get) and the config version of the objects it references. Untracked (`config` None): the template's hash."""
    if config is None:
        return template_hash_of(template)
    bare = json.loads(json.dumps(template or {}))
    meta = bare.get("metadata") or {}
    for key, ours in (("labels", CONFIG_LABEL), ("annotations", CONFIG_REFS)):
        if isinstance(meta.get(key), dict) and ours in meta[key]:
            meta[key].pop(ours)
            if not meta[key]:  # a map the operator's write made: as if it were never there
                meta.pop(key)
    return hashlib.sha256(f"{template_hash_of(bare)}+{config}".encode()).hexdigest()[:16]
