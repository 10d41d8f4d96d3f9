"""The target's pod template as the version (spec.template omitted): its canonical hash, and what the admission
webhook does to an UPDATE of a target Deployment. Pure functions over plain dicts, shared by the webhook (handlers),
the adapters that read the target, and the core that decides on what they read.

The invariant the webhook keeps, in the very write that would break it: **a target Deployment whose pod template
differs from its approved (stable) template is paused.** The Deployment controller therefore never rolls a new
template out to the stable pods; the canary runs it, and only a promotion (the operator's one write: unpause and
record the new stable hash) lets it reach them. A write that puts the stable template back (a revert commit)
unpauses a Deployment that the webhook itself had paused, in that same write.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

TARGET_LABEL = "saferollout.dev/target"  # on the target Deployment: the name of the SafeRollout that owns its releases
STABLE_ANNOTATION = "saferollout.dev/stable-template"  # the approved pod template's hash
HELD_ANNOTATION = "saferollout.dev/held-template"  # the hash of the template the webhook holds (paused) for a canary
REVISION_ANNOTATION = "saferollout.dev/revision"  # optional, set by the user's tooling: the Git revision of the object
ARGOCD_TRACKING = "argocd.argoproj.io/tracking-id"  # <app>:<group>/<kind>:<namespace>/<name>, set by Argo CD


def template_hash_of(template: dict[str, Any] | None) -> str:
    """The version's identity: every field of the pod template (metadata and spec), in a canonical form."""
    body = json.dumps(template or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _annotations(obj: dict[str, Any] | None) -> dict[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("annotations") or {})


def stable_hash_of(new: dict[str, Any], old: dict[str, Any] | None) -> str | None:
    """The approved template's hash: the annotation (kept from the old object when a PUT dropped it), else the
    template the Deployment had before its first update under the webhook (what it ran when it was adopted)."""
    return _annotations(new).get(STABLE_ANNOTATION) or _annotations(old).get(STABLE_ANNOTATION) or (
        template_hash_of((old.get("spec") or {}).get("template")) if old is not None else None)


def admit(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """The webhook's answer to an UPDATE of a target Deployment: a merge patch of `new` (empty: unchanged).

    - template != stable: `spec.paused: true`, and the held template's hash in an annotation;
    - template == stable and the webhook had paused it (the annotation is there): `spec.paused: false`, the
      annotation removed: a revert commit ends the hold in its own write;
    - the stable hash is always written back into the annotation (a PUT that dropped it gets it again).
    Fields Git does not mention (`spec.paused`, these annotations) are not a diff for Argo CD.
    """
    stable = stable_hash_of(new, old)
    if stable is None:
        return {}
    current = template_hash_of((new.get("spec") or {}).get("template"))
    annotations = _annotations(new)
    held = annotations.get(HELD_ANNOTATION) or _annotations(old).get(HELD_ANNOTATION)
    paused = bool((new.get("spec") or {}).get("paused"))
    meta: dict[str, Any] = {}
    spec: dict[str, Any] = {}
    if annotations.get(STABLE_ANNOTATION) != stable:
        meta[STABLE_ANNOTATION] = stable
    if current != stable:
        if not paused:
            spec["paused"] = True
        if annotations.get(HELD_ANNOTATION) != current:
            meta[HELD_ANNOTATION] = current
    elif held is not None:
        if paused:
            spec["paused"] = False
        if HELD_ANNOTATION in annotations:
            meta[HELD_ANNOTATION] = None
    patch: dict[str, Any] = {}
    if meta:
        patch["metadata"] = {"annotations": meta}
    if spec:
        patch["spec"] = spec
    return patch


def merge(obj: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 merge patch (None removes), as the API server applies one: for the simulated world and tests."""
    out = dict(obj)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        elif isinstance(value, dict):
            out[key] = merge({}, value)
        else:
            out[key] = value
    return out
