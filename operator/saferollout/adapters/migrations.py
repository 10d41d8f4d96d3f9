"""spec.migration's Job: created from the template under the operator's name, read, its log read, stopped.

Nothing here reaches a shell: the Job is an API object, and its log is text that is masked (the rollout's
secrets, and the values of the Secrets the Job's env names) and cut to its tail before it leaves this module.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from kubernetes import client
from kubernetes.client.rest import ApiException

from saferollout.adapters import kube
from saferollout.adapters.kube import RolloutRef
from saferollout.core.models import MIGRATION_LOG_MAX, Migration
from saferollout.redact import redact

ROLLOUT_LABEL = "saferollout.dev/rollout"
KIND_LABEL = "saferollout.dev/kind"
ATTEMPT_ANNOTATION = "saferollout.dev/attempt"
LOG_TAIL_LINES = 200
LOG_LIMIT_BYTES = 64 * 1024
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

State = Literal["Created", "Running", "Succeeded", "Failed", "Stopped"]
Source = Literal["log", "terminationMessage", "none"]


def batch() -> client.BatchV1Api:
    return client.BatchV1Api(kube.api())


@dataclass(frozen=True)
class JobRead:
    state: State
    message: str = ""
    logs: str | None = None
    logs_source: Source | None = None
    created_at: str | None = None


def job_body(ref: RolloutRef, migration: Migration, name: str, attempt: int) -> dict[str, Any]:
    """The Job as created: the template's, named by the operator, owned by the rollout, with safe defaults."""
    tpl = migration.job_template
    meta = copy.deepcopy(tpl.metadata)
    spec = copy.deepcopy(tpl.spec)
    labels = {**(meta.get("labels") or {}), ROLLOUT_LABEL: ref.name, KIND_LABEL: "migration"}
    annotations = {**(meta.get("annotations") or {}), ATTEMPT_ANNOTATION: str(attempt)}
    spec.setdefault("backoffLimit", 0)  # a migration is not retried blindly
    spec.setdefault("activeDeadlineSeconds", max(1, math.ceil(migration.timeout_seconds)))  # stopped without us too
    pod = spec.setdefault("template", {})
    pod_meta = pod.setdefault("metadata", {})
    pod_meta["labels"] = {**(pod_meta.get("labels") or {}), ROLLOUT_LABEL: ref.name, KIND_LABEL: "migration"}
    pod_spec = pod.setdefault("spec", {})
    pod_spec.setdefault("restartPolicy", "Never")
    for c in pod_spec.get("containers") or []:
        if isinstance(c, dict):
            c.setdefault("terminationMessagePolicy", "FallbackToLogsOnError")  # the log's tail, if logs are gone
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": ref.namespace, "labels": labels, "annotations": annotations,
                         "ownerReferences": [ref.owner()]},
            "spec": spec}


def secret_refs(migration: Migration) -> list[tuple[str, str]]:
    """(Secret, key) of every env var of the Job's containers that comes from a Secret: their values are masked."""
    pod = (migration.job_template.spec.get("template") or {}).get("spec") or {}
    out = []
    for c in [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]:
        for env in (c.get("env") or []) if isinstance(c, dict) else []:
            ref = ((env or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
            if isinstance(ref.get("name"), str) and isinstance(ref.get("key"), str):
                out.append((ref["name"], ref["key"]))
    return out


def create(ref: RolloutRef, migration: Migration, name: str, attempt: int) -> JobRead:
    """Create the Job; one of that name that this rollout made for this attempt counts as created."""
    try:
        made = batch().create_namespaced_job(ref.namespace, job_body(ref, migration, name, attempt))
        return JobRead("Created", created_at=_stamp(made.metadata.creation_timestamp))
    except ApiException as e:
        if e.status != 409:
            raise
    job = kube.read_or_none(batch().read_namespaced_job, name, ref.namespace)
    if job is None:
        raise RuntimeError(f"Job {name} was there a moment ago and is gone")
    meta = job.get("metadata") or {}
    if not kube.owned_by(job, ref) or (meta.get("annotations") or {}).get(ATTEMPT_ANNOTATION) != str(attempt):
        raise kube.Refused(f"a Job named {name} exists and is not this rollout's migration for attempt {attempt}")
    return JobRead("Created", created_at=meta.get("creationTimestamp"))


def read(ref: RolloutRef, name: str, stop: bool, mask: Callable[[], None]) -> JobRead:
    """The Job's state; once it ended (or when stopping it) its log too. `stop` deletes it after reading."""
    job = kube.read_or_none(batch().read_namespaced_job, name, ref.namespace)
    if job is None:
        return JobRead("Stopped" if stop else "Failed", f"the Job {name} does not exist (deleted?)", None, "none")
    if not kube.owned_by(job, ref):
        raise kube.Refused(f"the Job {name} is not this rollout's")
    created = (job.get("metadata") or {}).get("creationTimestamp")
    state, message = _state(job)
    if state == "Running" and not stop:
        return JobRead("Running", created_at=created)
    mask()
    logs, source, why = _logs(ref, job)
    if stop and state == "Running":
        batch().delete_namespaced_job(name, ref.namespace, propagation_policy="Background")
        state, message = "Stopped", "stopped at its timeout"
    text = redact("; ".join(x for x in (message, why) if x))
    return JobRead(state, text[:1000], bound(redact(logs)) if logs else None, source, created)


def _state(job: dict[str, Any]) -> tuple[State, str]:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("status") != "True":
            continue
        if c.get("type") == "Complete":
            return "Succeeded", ""
        if c.get("type") == "Failed":
            said = f"{c.get('reason') or 'Failed'}: {c.get('message') or ''}".strip(": ")
            return ("Stopped" if c.get("reason") == "DeadlineExceeded" else "Failed"), said
    return "Running", ""


def _logs(ref: RolloutRef, job: dict[str, Any]) -> tuple[str | None, Source, str]:
    """The newest pod's log, container by container; where the log cannot be read (no kubelet to serve it),
    the containers' termination messages (with FallbackToLogsOnError: the log's tail). Also how it ended."""
    uid = (job.get("metadata") or {}).get("uid")
    pods = kube.core().list_namespaced_pod(ref.namespace, label_selector=f"batch.kubernetes.io/controller-uid={uid}")
    items = sorted(pods.items or [], key=lambda p: p.metadata.creation_timestamp or 0)
    if not items:
        return None, "none", "no pod of the Job was found"
    pod = items[-1]
    parts: list[str] = []
    source: Source = "none"
    ended: list[str] = []
    statuses = {s.name: s for s in (pod.status.container_statuses or [])} if pod.status else {}
    for c in pod.spec.containers:
        st = statuses.get(c.name)
        term = (st.state.terminated if st and st.state else None) or (
            st.last_state.terminated if st and st.last_state else None)
        if term is not None:
            ended.append(f"container {c.name} exited {term.exit_code}" + (f" ({term.reason})" if term.reason else ""))
        try:
            text = kube.core().read_namespaced_pod_log(pod.metadata.name, ref.namespace, container=c.name,
                                                        tail_lines=LOG_TAIL_LINES, limit_bytes=LOG_LIMIT_BYTES,
                                                        _request_timeout=10)
        except Exception:  # no kubelet to serve it (the node is gone, or there never was one)
            text = None
        if text and str(text).strip():
            source = "log"
        else:  # an empty answer too: a pod with no node has no log to give
            text = term.message if term is not None and term.message else None
            if text and source == "none":
                source = "terminationMessage"
        if text:
            parts.append(text if len(pod.spec.containers) == 1 else f"[{c.name}]\n{text}")
    return ("\n".join(parts) or None), source, ", ".join(ended)


def bound(text: str) -> str:
    """The tail, at most MIGRATION_LOG_MAX characters, cut at a line, without control characters."""
    text = _CONTROL.sub("", text.replace("\r\n", "\n")).rstrip()
    if len(text) <= MIGRATION_LOG_MAX:
        return text
    tail = text[-(MIGRATION_LOG_MAX - 40):]
    tail = tail.split("\n", 1)[1] if "\n" in tail[:200] else tail
    return f"[... {len(text) - len(tail)} characters before]\n{tail}"


def _stamp(value: Any) -> str | None:
    if value is None:
        return None
    if hasattr(value, "strftime"):
        return str(value.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return str(value)
