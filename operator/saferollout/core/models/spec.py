"""The spec as a whole, with its gates, database, rollback and notifications; the whole object for the CRD."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from saferollout.core.durations import parse_duration
from saferollout.core.models.base import (
    NAME_PATTERN,
    Bounded,
    Model,
    ObjectName,
    Url,
    cel,
)
from saferollout.core.models.metrics import (
    Analysis,
    Severity,
)
from saferollout.core.models.status import (
    SafeRolloutStatus,
)
from saferollout.core.models.strategy import (
    PodTemplate,
    Strategy,
    TargetRef,
)


class Preflight(Model):
    database_reachable: bool = False
    stable_healthy: bool = False
    timeout: Annotated[str, Bounded("1s", "5m")] = "10s"


class SecretKeyRef(Model):
    name: ObjectName
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")


class PostgresDatabase(Model):
    secret_ref: SecretKeyRef


class VolumeSnapshotDatabase(Model):
    pvc: str = Field(pattern=NAME_PATTERN, description="The PersistentVolumeClaim to snapshot.")
    volume_snapshot_class: str | None = None
    volume: str | None = Field(default=None, description="Pod volume that mounts the PVC; restore repoints it.")


TARGET_TEMPLATE_ROUTERS = ("without spec.template (the target's own pod template is the version) the strategy must be "
                           "canary with a gatewayAPI, istio or nginx router: the replicas router and blueGreen write "
                           "the target or its Service, which Git holds")
TRACK_CONFIG_TEMPLATE = ("trackConfig needs spec.template omitted: the ConfigMaps and Secrets tracked are those the "
                         "target Deployment's own pod template references")
TRACK_CONFIG_OFF = ("trackConfig cannot be switched off: the target's pods are given copies of the approved config; "
                    "delete the SafeRollout (which gives them the objects again) and create it anew")

STATEFULSET_PARTITION = ("targetRef.kind StatefulSet goes only with strategy.canary and its partition router "
                         "(traffic.partition): its pods are updated in place, so there is no canary workload for "
                         "blueGreen or a traffic router (gatewayAPI, istio, nginx, replicas) to send traffic to")
PARTITION_STATEFULSET = "the partition router (traffic.partition) needs targetRef.kind: StatefulSet"
STATEFULSET_TEMPLATE = ("targetRef.kind StatefulSet needs spec.template: releases through Git (the admission "
                        "webhook's hold) are for Deployments")

FORWARD_ONLY_NO_RESTORE = "forwardOnly: the database is never restored, so restoreOnRollback must be false"
MIGRATION_NEEDS_DATABASE = "migration needs spec.database (the snapshot it is undone by, or forwardOnly: true)"
MIGRATION_NEEDS_RESTORE = ("migration needs spec.database.restoreOnRollback: true (a failed migration is undone by "
                           "restoring the snapshot) or spec.database.forwardOnly: true (it is never undone)")
MIGRATION_TIMEOUT = Bounded("10s", "24h")

PROVIDER_FIELDS = ("postgres", "volume_snapshot")  # the snapshot providers (adapters.snapshots.PROVIDERS)


class Database(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.postgres) != has(self.volumeSnapshot)",
                    "exactly one database provider must be set: postgres or volumeSnapshot"),
                cel("!self.verifySnapshot || self.snapshotBeforeRollout",
                    "verifySnapshot needs snapshotBeforeRollout", ".verifySnapshot"),
                cel("!self.restoreOnRollback || self.snapshotBeforeRollout",
                    "restoreOnRollback needs snapshotBeforeRollout", ".restoreOnRollback"),
                cel("!self.forwardOnly || !self.restoreOnRollback", FORWARD_ONLY_NO_RESTORE, ".forwardOnly"),
            ]
        }
    )
    postgres: PostgresDatabase | None = None
    volume_snapshot: VolumeSnapshotDatabase | None = None
    snapshot_before_rollout: bool = False
    verify_snapshot: bool = False
    restore_on_rollback: bool = False
    retain: int = Field(default=5, ge=1, le=100, description="Snapshots kept per rollout; older ones are pruned.")
    max_restore_attempts: int = Field(default=3, ge=1, le=10)
    forward_only: bool = Field(default=False, description=(
        "The database's migrations cannot be undone: it is never restored. A breach whose action would roll back "
        "pauses the rollout at its weight and pages (a critical notification) instead; a failed migration rolls "
        "back the workload only and pages. Needs restoreOnRollback: false."))

    def provider(self) -> tuple[str, BaseModel]:
        """(its name in the manifest, its settings) of the snapshot provider that is set: the registry's key."""
        fields = type(self).model_fields
        chosen = [(fields[n].alias or n, v) for n in PROVIDER_FIELDS if (v := getattr(self, n)) is not None]
        if len(chosen) != 1:
            raise ValueError("exactly one database provider must be set: postgres or volumeSnapshot")
        return chosen[0]

    @model_validator(mode="after")
    def _consistent(self) -> Database:
        self.provider()
        if (self.verify_snapshot or self.restore_on_rollback) and not self.snapshot_before_rollout:
            raise ValueError("verifySnapshot and restoreOnRollback need snapshotBeforeRollout")
        if self.forward_only and self.restore_on_rollback:
            raise ValueError(FORWARD_ONLY_NO_RESTORE)
        return self


class JobTemplate(Model):
    """A batch/v1 Job as the operator creates it: its name is the operator's (<rollout>-migrate-<attempt>)."""

    metadata: dict[str, Any] = Field(default_factory=dict, description="labels and annotations of the Job (and, "
                                     "under spec.template.metadata, of its pod); a name here is ignored.",
                                     json_schema_extra={"type": "object", "additionalProperties": False,
                                                        "x-kubernetes-preserve-unknown-fields": True})
    spec: dict[str, Any] = Field(description="A batch/v1 JobSpec. backoffLimit defaults to 0, restartPolicy to "
                                 "Never, activeDeadlineSeconds to the timeout, and each container's "
                                 "terminationMessagePolicy to FallbackToLogsOnError (the log's tail, when the logs "
                                 "themselves cannot be read).",
                                 json_schema_extra={"type": "object", "additionalProperties": False,
                                                    "x-kubernetes-preserve-unknown-fields": True})

    @model_validator(mode="after")
    def _allowed(self) -> JobTemplate:
        tpl = self.spec.get("template")
        problems = job_pod_problems(tpl.get("spec") if isinstance(tpl, dict) else None)
        if problems:
            raise ValueError("; ".join(problems))
        return self


POD = "migration.jobTemplate.spec.template.spec"
HOST_NAMESPACES = ("hostNetwork", "hostPID", "hostIPC")
CONTAINER_KINDS = ("initContainers", "containers", "ephemeralContainers")


def job_pod_problems(pod: Any) -> list[str]:
    """What the operator refuses in the migration Job's pod, which it creates with its own rights: the host's
    namespaces, hostPath volumes, privileged containers or privilege escalation, no container at all. (The
    ServiceAccount, which must be the target's, is checked where the target is known: adapters.migrations.)
    Each problem names its field."""
    if not isinstance(pod, dict):
        return [f"{POD} must be an object with at least one container"]
    out: list[str] = []
    if not isinstance(pod.get("containers"), list) or not pod["containers"]:
        out.append(f"{POD}.containers must name at least one container")
    out += [f"{POD}.{k}: {k} is not allowed in a migration Job" for k in HOST_NAMESPACES if pod.get(k) is not None
            and pod.get(k) is not False]
    vols = pod.get("volumes")
    for i, v in enumerate(vols if isinstance(vols, list) else []):
        if isinstance(v, dict) and "hostPath" in v:
            out.append(f"{POD}.volumes[{i}] ({v.get('name')}): hostPath volumes are not allowed in a migration Job")
    for kind in CONTAINER_KINDS:
        items = pod.get(kind)
        if items is not None and not isinstance(items, list):
            out.append(f"{POD}.{kind} must be a list")
            continue
        for i, c in enumerate(items or []):
            where = f"{POD}.{kind}[{i}]"
            if not isinstance(c, dict):
                out.append(f"{where} must be an object")
                continue
            sc = c.get("securityContext")
            if sc is None:
                continue
            if not isinstance(sc, dict):
                out.append(f"{where}.securityContext must be an object")
                continue
            if sc.get("privileged") is not None and sc.get("privileged") is not False:
                out.append(f"{where}.securityContext.privileged: privileged containers are not allowed in a "
                           "migration Job")
            if sc.get("allowPrivilegeEscalation") is not None and sc.get("allowPrivilegeEscalation") is not False:
                out.append(f"{where}.securityContext.allowPrivilegeEscalation must be false or unset in a migration "
                           "Job")
    for key in ("serviceAccountName", "serviceAccount"):
        if pod.get(key) is not None and not isinstance(pod.get(key), str):
            out.append(f"{POD}.{key} must be a string (the target's ServiceAccount)")
    return out


class Migration(Model):
    """A Job run after the snapshot is verified and before any traffic moves; its failure undoes the rollout."""

    # (the Job's spec is kept as written, so CEL cannot see into it: the operator checks its containers)
    job_template: JobTemplate
    timeout: Annotated[str, MIGRATION_TIMEOUT] = Field(
        default="10m", description="How long the Job may run (10s to 24h); then it is stopped and counts as failed.")

    @property
    def timeout_seconds(self) -> float:
        return parse_duration(self.timeout)


class RollbackVerify(Model):
    duration: Annotated[str, Bounded("1s", "24h")] = Field(
        default="2m", description="Time the stable version has to prove healthy after a rollback.")
    successes: int = Field(default=3, ge=1, le=100, description="Consecutive passing checks that prove it.")
    max_error_rate: float | None = Field(
        default=None, ge=0, le=1, description="Check the error-rate template with this maximum; "
        "by default the rollout's own metrics are checked against the stable version.")


class Rollback(Model):
    verify: RollbackVerify = Field(default_factory=RollbackVerify)


class ProgressDeadlineAction(StrEnum):
    """What `progressDeadlineSeconds` running out does. Both put all traffic on the stable version first."""

    rollback = "rollback"  # the whole rollback: canary removed, images back, database restored when asked, verified
    fail = "fail"  # canary weight 0 and nothing else: the canary workload is kept for inspection; ends Failed


PROGRESS_DEADLINE_MIN, PROGRESS_DEADLINE_MAX = 10, 86400  # below 10 s, a few slow polls (1-4 s) would trip it


class Webhook(Model):
    url: Url
    min_severity: Severity = Severity.high
    format: Literal["generic", "slack"] = "generic"
    timeout: Annotated[str, Bounded("100ms", "30s")] = "5s"


class Notification(Model):
    webhook: Webhook


# Without `template`, the target Deployment's own pod template is the new version (a GitOps release: a commit
# changes the Deployment in Git, the operator's admission webhook holds it paused, the canary runs it). The replica
# router scales the target, and blue-green rewrites the active Service: both would write what Git holds.
# (A comment, not a docstring: a docstring would become the CRD's description of `spec`.)
class SafeRolloutSpec(Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("has(self.template) || has(self.strategy.canary) && !has(self.strategy.canary.traffic.replicas)",
            TARGET_TEMPLATE_ROUTERS),
        cel("self.targetRef.kind != 'StatefulSet' || has(self.strategy.canary) && "
            "has(self.strategy.canary.traffic.partition)", STATEFULSET_PARTITION, ".targetRef.kind"),
        cel("!has(self.strategy.canary) || !has(self.strategy.canary.traffic.partition) || "
            "self.targetRef.kind == 'StatefulSet'", PARTITION_STATEFULSET, ".strategy.canary.traffic.partition"),
        cel("self.targetRef.kind != 'StatefulSet' || has(self.template)", STATEFULSET_TEMPLATE, ".targetRef.kind"),
        cel("!has(self.migration) || has(self.database)", MIGRATION_NEEDS_DATABASE, ".migration"),
        cel("!has(self.migration) || !has(self.database) || self.database.restoreOnRollback || "
            "self.database.forwardOnly", MIGRATION_NEEDS_RESTORE, ".migration"),
        cel("!has(self.trackConfig) || !self.trackConfig || !has(self.template)", TRACK_CONFIG_TEMPLATE,
            ".trackConfig"),
        cel("!has(oldSelf.trackConfig) || !oldSelf.trackConfig || has(self.trackConfig) && self.trackConfig",
            TRACK_CONFIG_OFF, ".trackConfig"),
    ]})
    target_ref: TargetRef
    template: PodTemplate | None = Field(
        default=None, description="What the new version changes in the target's pod template. Omitted: the "
        "target Deployment's own pod template is the version (a change of any of its fields starts a rollout; "
        "the operator's admission webhook holds the Deployment paused until the canary is promoted).")
    track_config: bool = Field(default=False, description=(
        "The ConfigMaps and Secrets the target's pod template references (env, envFrom, volumes) are part of the "
        "version: a change of their data is rolled out as a canary too. The target's pods are given immutable "
        "copies of the approved data (by the operator's pod admission webhook), so an edit reaches the stable "
        "pods only by a promotion. Needs spec.template omitted."))
    strategy: Strategy
    analysis: Analysis = Field(default_factory=Analysis)
    preflight: Preflight = Field(default_factory=Preflight)
    database: Database | None = None
    migration: Migration | None = Field(default=None, description=(
        "A Job run once per rollout after the snapshot is verified and before any traffic moves. A failed or "
        "timed-out Job rolls back and restores the snapshot (forwardOnly: never restored), with its log in the "
        "incident report."))
    rollback: Rollback = Field(default_factory=Rollback)
    notifications: list[Notification] = Field(default_factory=list, max_length=16)
    paused: bool = False
    progress_deadline_seconds: int = Field(
        default=600, ge=PROGRESS_DEADLINE_MIN, le=PROGRESS_DEADLINE_MAX, description=(
            "How long the rollout may wait on the cluster without progress before onProgressDeadline: for the "
            "canary workload to become available (from when the wait began), and for an action that keeps "
            "failing, such as a router write or the canary's scaling (from its first failure). Time paused "
            f"does not count. Between {PROGRESS_DEADLINE_MIN} and {PROGRESS_DEADLINE_MAX} (24h)."))
    on_progress_deadline: ProgressDeadlineAction = Field(
        default=ProgressDeadlineAction.rollback, description=(
            "rollback: the whole rollback. fail: canary weight 0 (retried until it holds), the canary workload "
            "kept for inspection, phase Failed. Both send all traffic to the stable version first."))

    @model_validator(mode="after")
    def _gates_need_sources(self) -> SafeRolloutSpec:
        if self.preflight.database_reachable and self.database is None:
            raise ValueError("preflight.databaseReachable needs spec.database")
        if self.migration is not None and self.database is None:
            raise ValueError(MIGRATION_NEEDS_DATABASE)
        if self.migration is not None and self.database is not None and not (
                self.database.restore_on_rollback or self.database.forward_only):
            raise ValueError(MIGRATION_NEEDS_RESTORE)
        partition = self.strategy.canary is not None and self.strategy.canary.traffic.partition is not None
        if self.target_ref.kind == "StatefulSet" and not partition:
            raise ValueError(STATEFULSET_PARTITION)
        if partition and self.target_ref.kind != "StatefulSet":
            raise ValueError(PARTITION_STATEFULSET)
        if self.target_ref.kind == "StatefulSet" and self.template is None:
            raise ValueError(STATEFULSET_TEMPLATE)
        if self.track_config and self.template is not None:
            raise ValueError(TRACK_CONFIG_TEMPLATE)
        if self.template is None and (self.strategy.canary is None or self.strategy.canary.traffic.replicas is not None):
            raise ValueError(TARGET_TEMPLATE_ROUTERS)
        return self

    @property
    def partition(self) -> bool:
        """A StatefulSet target, rolled out in place by its partition (strategy.canary.traffic.partition)."""
        return self.target_ref.kind == "StatefulSet"

    @property
    def target_template(self) -> bool:
        """No `template`: the target Deployment's own pod template is the version rolled out."""
        return self.template is None


class SafeRollout(Model):
    """The whole object, used only to generate the CRD."""

    api_version: Literal["saferollout.dev/v1alpha1"] = "saferollout.dev/v1alpha1"
    kind: Literal["SafeRollout"] = "SafeRollout"
    spec: SafeRolloutSpec
    status: SafeRolloutStatus | None = None
