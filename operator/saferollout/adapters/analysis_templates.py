"""Reads the shared analysis templates that rollouts' metrics name, for the core to pin and fill in.

Every reconcile of a rollout with templated metrics needs them (to pin at the start, to see an edit, to leave
Blocked once a missing one appears); a short cache shared by all rollouts keeps that at one read per template
per TTL, however many rollouts name a ClusterAnalysisTemplate.
"""

from __future__ import annotations

import threading
import time

from saferollout.adapters import kube
from saferollout.core.actions import TemplateRead
from saferollout.core.models import GROUP, VERSION
from saferollout.redact import redact

TTL = 2.0  # seconds
Key = tuple[str, str, str]  # (kind, namespace or "", name), as core.analysis_templates.wanted gives them
_cache: dict[Key, tuple[float, TemplateRead]] = {}
_lock = threading.Lock()


def read(keys: list[Key]) -> list[TemplateRead]:
    return [_one(k) for k in keys]


def _one(k: Key) -> TemplateRead:
    now = time.monotonic()
    with _lock:
        hit = _cache.get(k)
    if hit is not None and now - hit[0] < TTL:
        return hit[1]
    kind, namespace, name = k
    try:
        if kind == "ClusterAnalysisTemplate":
            obj = kube.read_or_none(kube.custom().get_cluster_custom_object, GROUP, VERSION,
                                    "clusteranalysistemplates", name)
        else:  # only ever the rollout's own namespace: the key comes from it
            obj = kube.read_or_none(kube.custom().get_namespaced_custom_object, GROUP, VERSION, namespace,
                                    "analysistemplates", name)
    except Exception as e:  # forbidden, the API server away: unreadable, which is not missing
        out = TemplateRead(kind, namespace or None, name, error=redact(kube.error_text(e)))
    else:
        spec = obj.get("spec") if obj else None
        version = ((obj or {}).get("metadata") or {}).get("resourceVersion")
        out = TemplateRead(kind, namespace or None, name, spec if isinstance(spec, dict) else None, version)
    with _lock:
        _cache[k] = (now, out)
    return out


def forget() -> None:
    """For tests: the next read goes to the API server."""
    with _lock:
        _cache.clear()
