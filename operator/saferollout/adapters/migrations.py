"""spec.migration's Job: created from the template under the operator's name, read, its log read, stopped.

Nothing here reaches a shell: the Job is an API object, and its log is text that is masked (the rollout's
secrets, and the values of every Secret the Job's pod can see: env, envFrom, secret and projected volumes) and cut
to its tail before it leaves this module. Before it is created the Job is checked once more (core.models.spec.
job_pod_problems, and the ServiceAccount against the target's): it is created with the operator's rights.
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
from saferollout.core.models import MIGRATION_LOG_MAX, Migration, TargetRef
from saferollout.core.models.spec import job_pod_problems
from saferollout.redact import redact

ROLLOUT_LABEL = "saferollout.dev/rollout"
KIND_LABEL = "saferollout.dev/kind"
ATTEMPT_ANNOTATION = "saferollout.dev/attempt"
LOG_TAIL_LINES = 200
GRACE_MAX_SECONDS = 30  # the pods' terminationGracePeriodSeconds, at most (core.migration.STOP_WAIT_SECONDS > it)
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
    # a stop waits for the pods to be gone before the database is restored: that wait is bounded
    grace = pod_spec.get("terminationGracePeriodSeconds")
    pod_spec["terminationGracePeriodSeconds"] = min(grace, GRACE_MAX_SECONDS) if isinstance(grace, int) and \
        not isinstance(grace, bool) and grace >= 0 else GRACE_MAX_SECONDS
    for c in pod_spec.get("containers") or []:
        if isinstance(c, dict):
            c.setdefault("terminationMessagePolicy", "FallbackToLogsOnError")  # the log's tail, if logs are gone
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": ref.namespace, "labels": labels, "annotations": annotations,
                         "ownerReferences": [ref.owner()]},
            "spec": spec}


SecretRef = tuple[str, str | None]  # (Secret, key); key None: every key of it


def secret_refs(source: Migration | dict[str, Any]) -> list[SecretRef]:
    """The Secrets whose values the Job's pod can see, for masking its log: (Secret, key) of each env var from a
    Secret, and (Secret, None: every key) of each envFrom secretRef, secret volume and projected secret. `source`
    is the Migration (its template) or a pod spec as the Job holds it. Whatever the shapes (the template is not
    modelled), nothing here raises."""
    pod: Any = source
    if isinstance(source, Migration):
        tpl = source.job_template.spec.get("template")
        pod = tpl.get("spec") if isinstance(tpl, dict) else None
    if not isinstance(pod, dict):
        return []
    out: list[SecretRef] = []

    def name_of(ref: Any, field: str = "name") -> str | None:
        value = ref.get(field) if isinstance(ref, dict) else None
        return value if isinstance(value, str) and value else None

    for c in [c for k in ("initContainers", "containers", "ephemeralContainers") for c in _list(pod.get(k))]:
        if not isinstance(c, dict):
            continue
        for env in _list(c.get("env")):
            ref = _dict(_dict(env).get("valueFrom")).get("secretKeyRef")
            if (n := name_of(ref)) and (key := name_of(ref, "key")):
                out.append((n, key))
        for env_from in _list(c.get("envFrom")):
            if n := name_of(_dict(env_from).get("secretRef")):
                out.append((n, None))
    for vol in _list(pod.get("volumes")):
        if n := name_of(_dict(vol).get("secret"), "secretName"):
            out.append((n, None))
        for src in _list(_dict(_dict(vol).get("projected")).get("sources")):
            if n := name_of(_dict(src).get("secret")):
                out.append((n, None))
    return out


def target_service_account(namespace: str, target: TargetRef) -> str:
    """The ServiceAccount the target's pods run as ("default" when their template names none)."""
    apps = client.AppsV1Api(kube.api())
    read = apps.read_namespaced_stateful_set if target.kind == "StatefulSet" else apps.read_namespaced_deployment
    obj = kube.read_or_none(read, target.name, namespace)
    if obj is None:
        raise kube.Refused(f"{target.kind} {target.name} not found: the migration Job's ServiceAccount is checked "
                           "against its pods'")
    pod = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    return str(pod.get("serviceAccountName") or pod.get("serviceAccount") or "default")


def check_allowed(body: dict[str, Any], target_sa: str) -> None:
    """The Job about to be created with the operator's rights, checked once more (the spec's validation may be
    older than the object, or bypassed): no host namespaces, hostPath, privilege, and no ServiceAccount but the
    target's. Raises Refused naming the field."""
    pod = ((body.get("spec") or {}).get("template") or {}).get("spec")
    problems = job_pod_problems(pod)
    for key in ("serviceAccountName", "serviceAccount"):
        sa = pod.get(key) if isinstance(pod, dict) else None
        if sa is not None and sa != target_sa:
            problems.append(f"migration.jobTemplate.spec.template.spec.{key}: {sa!r} is not the target's "
                            f"ServiceAccount ({target_sa!r}); a migration Job runs as the target's pods do, or "
                            "names none")
    if problems:
        raise kube.Refused("; ".join(problems))


def _list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else []


def _dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def create(ref: RolloutRef, migration: Migration, name: str, attempt: int, target: TargetRef) -> JobRead:
    """Create the Job; one of that name that this rollout made for this attempt counts as created."""
    body = job_body(ref, migration, name, attempt)
    check_allowed(body, target_service_account(ref.namespace, target))
    try:
        made = batch().create_namespaced_job(ref.namespace, body)
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


def read(ref: RolloutRef, name: str, stop: bool, mask: Callable[[list[SecretRef]], None]) -> JobRead:
    """The Job's state; once it ended (or when stopping it) its log too.

    `stop` deletes the Job first (foreground: the API server removes it only after its pods are gone), then reads
    the log while the pods end; Stopped is said only once the Job and every pod of it are gone (until then:
    Running, "stopping"). An ended Job counts as ended only once none of its pods may still run. The log is best
    effort: a log, a pod list or a Secret that cannot be read is "no log", never a reason not to stop. `mask` gets
    the Secrets the Job's own pod template names (as created, not as the spec says now), to register them before
    the log is read."""
    job = kube.read_or_none(batch().read_namespaced_job, name, ref.namespace)
    if job is None:
        if not stop:
            return JobRead("Failed", f"the Job {name} does not exist (deleted?)", None, "none")
        left, why = _pods_left(ref, f"job-name={name},{ROLLOUT_LABEL}={ref.name},{KIND_LABEL}=migration", strict=True)
        if left:
            return JobRead("Running", f"stopping: the Job {name} is gone, {left} pod(s) of it not yet")
        return JobRead("Stopped", redact("; ".join(x for x in (f"the Job {name} and its pods are gone", why) if x)),
                       None, "none")
    if not kube.owned_by(job, ref):
        raise kube.Refused(f"the Job {name} is not this rollout's")
    meta = job.get("metadata") or {}
    created = meta.get("creationTimestamp")
    state, message = _state(job)
    stopping = stop and (state == "Running" or bool(meta.get("deletionTimestamp")))
    if state == "Running" and not stopping:
        return JobRead("Running", created_at=created)
    if stopping and not meta.get("deletionTimestamp"):
        batch().delete_namespaced_job(name, ref.namespace, propagation_policy="Foreground")
    logs, source, why = _masked_logs(ref, job, mask)
    if stopping:  # deleted: the Job object stays until its pods are gone (foreground deletion)
        return JobRead("Running", f"stopping: the Job {name} is deleted, waiting for its pods to be gone",
                       logs, source, created)
    running = _still_running(job)
    listed, _ = _pods_left(ref, f"batch.kubernetes.io/controller-uid={meta.get('uid')}", strict=False)
    if running or listed:
        return JobRead("Running", f"the Job {state}, {max(running, listed)} pod(s) of it still running",
                       logs, source, created)
    text = redact("; ".join(x for x in (message, why) if x))
    return JobRead(state, text[:1000], logs, source, created)


def _masked_logs(ref: RolloutRef, job: dict[str, Any], mask: Callable[[list[SecretRef]], None],
                 ) -> tuple[str | None, Source, str]:
    """The log, masked and bounded; any failure (a Secret that cannot be read for masking, the pod list, the log)
    is no log: never unmasked, never an exception."""
    try:
        mask(secret_refs(((job.get("spec") or {}).get("template") or {}).get("spec") or {}))
        logs, source, why = _logs(ref, job)
        return (bound(redact(logs)) if logs else None), source, why
    except Exception as e:
        return None, "none", redact(f"no log: {kube.error_text(e)}")[:300]


def _still_running(job: dict[str, Any]) -> int:
    """Pods the Job's status counts as active or terminating (status.terminating: Kubernetes 1.28 and later)."""
    st = job.get("status") or {}
    return sum(v for k in ("active", "terminating") if isinstance(v := st.get(k), int))


def _pods_left(ref: RolloutRef, selector: str, strict: bool) -> tuple[int, str]:
    """How many pods match: all of them (`strict`), or those that may still run (not Succeeded or Failed). A list
    that cannot be read counts none, and says so: a Job deleted in the foreground is only gone after its pods."""
    try:
        pods = kube.core().list_namespaced_pod(ref.namespace, label_selector=selector).items or []
    except Exception as e:
        return 0, f"its pods could not be listed ({kube.error_text(e)[:200]})"
    return sum(1 for p in pods if strict or (p.status is None or p.status.phase not in ("Succeeded", "Failed"))), ""


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
