"""What lets scenario runs share one cluster, Prometheus and PostgreSQL at the same time (docs/harness.md).

A run started with a tag (`s3`) is isolated: its namespace is `<namespace>-s3` wherever the scenario names it, its
database and role `app_s3`, its Prometheus jobs its own. What no renaming can isolate keeps runs apart: a fault
that stops a server every run uses makes its scenario exclusive (alone), and two runs that make an object of the
same kind and name never overlap.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from harness.format import Scenario

# faults whose effect reaches every run, with why: a scenario with one runs alone
EXCLUSIVE_FAULTS = {
    "stopPrometheus": "stops the Prometheus every run queries",
    "startPrometheus": "restarts the Prometheus every run queries",
    "stopDatabase": "stops the PostgreSQL every run's database lives in",
    "startDatabase": "restarts the PostgreSQL every run's database lives in",
    "killOperator": "stops the in-cluster operator every run is reconciled by",
    "restartOperator": "restarts the in-cluster operator every run is reconciled by",
}
NAME_MAX = 63  # a namespace is a DNS label; a PostgreSQL identifier has at most 63 bytes too
_PROMQL_NAMESPACE = r'(\bnamespace\s*(?:=|!=|=~|!~)\s*"){old}(")'
TEXT_EXPECTATIONS = ("incidentReportContains",)  # free texts, which may quote the rollout as <namespace>/<name>


def exclusive_reason(s: Scenario) -> str | None:
    """Why the scenario must run with no other beside it, or None."""
    for f in s.faults:
        if f.do in EXCLUSIVE_FAULTS:
            return f"fault {f.index} {f.do} {EXCLUSIVE_FAULTS[f.do]}"
    return None


def claims(s: Scenario) -> frozenset[str]:
    """What two runs at once must not both make: the objects of `objects` and applyObject by kind and name.

    A namespaced one is in the run's own namespace and could share its name, but a cluster-scoped one (a
    ClusterAnalysisTemplate) is one object for all, deleted by the first run that ends; the harness does not ask
    the API server which is which, so both kinds count.
    """
    return frozenset(f"{o.get('kind')}/{(o.get('metadata') or {}).get('name')}" for o in s.made_objects)


def tagged_name(name: str, tag: str, sep: str = "-") -> str:
    """`<name><sep><tag>`, the name cut so the whole fits 63 characters (the tag keeps it unique)."""
    suffix = f"{sep}{tag}"
    return name[: NAME_MAX - len(suffix)].rstrip("-_") + suffix


def database_names(tag: str) -> tuple[str, str]:
    """(role, database) of a tagged run."""
    name = tagged_name("app", re.sub(r"[^a-z0-9_]", "_", tag.lower()), "_")
    return name, name


def isolated(s: Scenario, tag: str) -> Scenario:
    """The scenario with its namespace renamed to `<namespace>-<tag>` everywhere it names it.

    That is: `metadata.namespace` of the rollout (set even when the file leaves it to the default), every
    `namespace:` key equal to the old name in the rollout, `objects` and the faults' patches and manifests, a
    PromQL matcher `namespace="<old>"` in any of their strings, and `<old>/<rollout>` in `incidentReportContains`
    (not in other expectations: `targetImages: {web: demo/web:1.0}` names an image, not the rollout `demo/web`).
    A file with `cases` builds its own namespace and is returned as it is.
    """
    if s.rollout is None:
        return s
    old = s.namespace
    new = tagged_name(old, tag)
    rollout = _renamed(s.rollout, old, new)
    rollout["metadata"] = {**rollout["metadata"], "namespace": new}
    faults = tuple(dataclasses.replace(f, patch=_renamed(f.patch, old, new), obj=_renamed(f.obj, old, new))
                   for f in s.faults)
    ref = f"{old}/{s.rollout_name}"
    expect = {k: [str(x).replace(ref, f"{new}/{s.rollout_name}") for x in v] if k in TEXT_EXPECTATIONS else v
              for k, v in s.expect.items()}
    return dataclasses.replace(s, rollout=rollout, faults=faults, expect=expect,
                               objects=tuple(_renamed(o, old, new) for o in s.objects))


def _renamed(obj: Any, old: str, new: str) -> Any:
    """A copy with `namespace: old` keys and PromQL `namespace="old"` matchers naming `new`."""
    if isinstance(obj, dict):
        return {k: new if k == "namespace" and v == old else _renamed(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_renamed(v, old, new) for v in obj]
    if isinstance(obj, str):
        return re.sub(_PROMQL_NAMESPACE.format(old=re.escape(old)), lambda m: f"{m.group(1)}{new}{m.group(2)}", obj)
    return obj

