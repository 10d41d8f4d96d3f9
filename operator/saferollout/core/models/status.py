"""The status: everything the operator needs to resume after a restart lives here."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from saferollout.core.models.base import (
    Model,
)


class Phase(StrEnum):
    pending = "Pending"
    preflight = "Preflight"
    progressing = "Progressing"
    paused = "Paused"
    promoting = "Promoting"
    succeeded = "Succeeded"
    rolling_back = "RollingBack"
    rolled_back = "RolledBack"
    failed = "Failed"
    blocked = "Blocked"

    @property
    def terminal(self) -> bool:
        return self in (Phase.succeeded, Phase.rolled_back, Phase.failed, Phase.blocked)


class Step(StrEnum):
    """Where inside its phase a rollout is, so that a restarted operator resumes there (the wire values are the
    strings the status has always carried)."""

    init = "Init"
    gate_database = "GateDatabase"
    gate_stable = "GateStable"
    snapshot = "Snapshot"
    migrate = "Migrate"
    canary = "Canary"
    promote_target = "PromoteTarget"
    wait_target = "WaitTarget"
    route_to_target = "RouteToTarget"
    remove_canary = "RemoveCanary"
    watch = "Watch"
    revert_traffic = "RevertTraffic"
    revert_workload = "RevertWorkload"
    revert_images = "RevertImages"
    restore_database = "RestoreDatabase"
    verify = "Verify"
    report = "Report"


# the steps each phase may be in; Progressing, Paused and the terminal phases have none
PHASE_STEPS: dict[Phase, tuple[Step, ...]] = {
    Phase.pending: (Step.init,),
    Phase.preflight: (Step.gate_database, Step.gate_stable, Step.snapshot, Step.migrate, Step.canary),
    Phase.promoting: (Step.promote_target, Step.wait_target, Step.route_to_target, Step.remove_canary, Step.watch),
    Phase.rolling_back: (Step.revert_traffic, Step.revert_workload, Step.revert_images, Step.restore_database,
                         Step.verify, Step.report),
}


PauseReason = Literal["user", "breach", "inconclusive", "approval"]


class Verdict(StrEnum):
    passed = "pass"
    fail = "fail"
    inconclusive = "inconclusive"


class Condition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class MetricStatus(Model):
    name: str
    value: float | None = None
    threshold: str = ""
    verdict: Verdict = Verdict.inconclusive
    consecutive_failures: int = 0
    consecutive_inconclusive: int = 0
    samples: int = 0
    failing_since: str | None = None
    message: str | None = None
    dry_run: bool = Field(default=False, description="A dryRun metric: shown, never acted on.")


class DryRunStatus(Model):
    """A dryRun metric over the whole rollout: its verdicts counted, and when it would first have acted."""

    name: str
    checks: int = 0
    passes: int = 0
    failures: int = 0
    inconclusive: int = 0
    would_breach: int = Field(default=0, description="Times its consecutive failures reached its failure limit.")
    on_breach: str | None = Field(default=None, description="What it would have done then (its onBreach).")
    first_failed_at: str | None = None
    first_breach_at: str | None = None
    first_breach_stage: int | None = None
    first_breach_weight: int | None = None
    last_verdict: Verdict | None = None
    last_value: float | None = None
    last_message: str | None = None


class AnalysisStatus(Model):
    last_run: str | None = None
    next_run: str | None = None  # the grid's next slot (a late run does not move it)
    runs: int = 0
    metrics: list[MetricStatus] = Field(default_factory=list)
    dry_run: list[DryRunStatus] = Field(default_factory=list, description="dryRun metrics over this rollout.")


class PartitionStatus(Model):
    """A StatefulSet rolled out by its partition: what the pods came from, and the partition last written."""

    replicas: int = Field(description="spec.replicas when the rollout began: every partition is computed from it, "
                          "so a restarted operator writes the same numbers.")
    stable_revision: str | None = Field(default=None, description="The ControllerRevision the pods ran when the "
                                        "rollout began (status.currentRevision); a rollback writes its template back.")
    canary_revision: str | None = Field(default=None, description="The new template's ControllerRevision "
                                        "(status.updateRevision); the canary Service selects its pods.")
    written: int | None = Field(default=None, description="updateStrategy.rollingUpdate.partition as last written "
                                "(replicas: the template is written and no pod moved yet; 0 after a promotion or a "
                                "rollback).")
    template: Literal["stable", "canary"] | None = Field(default=None, description="Which template the StatefulSet "
                                                         "held when the partition was written.")

    @property
    def canary_pods(self) -> int:
        """Pods the last write put on the new revision (ordinals partition .. replicas-1)."""
        if self.written is None or self.template != "canary":
            return 0
        return max(0, self.replicas - self.written)


class SnapshotStatus(Model):
    id: str
    provider: Literal["postgres", "volumeSnapshot"]
    state: Literal["Taking", "Taken", "Verifying", "Verified", "Failed"] = "Taking"
    taken_at: str | None = None
    verified: bool = False
    size_bytes: int | None = None
    sha256: str | None = None
    location: str | None = None
    tables: int | None = None
    message: str | None = None


class RestoreStatus(Model):
    state: Literal["Restoring", "Restored", "Failed"] = "Restoring"
    attempts: int = 0
    started_at: str | None = None
    next_attempt_at: str | None = None
    pre_restore_dump: str | None = None
    finished_at: str | None = None
    message: str | None = None


MIGRATION_LOG_MAX = 4000  # characters of the Job's log kept in status and quoted in the report (its tail)


class MigrationStatus(Model):
    """spec.migration's Job in this rollout. Written (state Creating) before the Job is created: a restarted
    operator finds the name and never creates a second Job."""

    job: str = Field(description="The Job's name: <rollout>-migrate-<attempt>.")
    state: Literal["Creating", "Running", "Succeeded", "Failed", "TimedOut", "NotStopped"] = Field(
        default="Creating", description="NotStopped: asked to stop, and not confirmed gone (the Job and every pod of "
        "it) in time; the database is then never restored, since the Job may still write to it.")
    stop_requested_at: str | None = Field(default=None, description="When the operator first asked the Job to stop "
                                          "(the wait for its pods to be gone is bounded from here).")
    created_at: str | None = Field(default=None, description="When the Job was created (the timeout counts from it).")
    finished_at: str | None = None
    duration_seconds: float | None = None
    message: str | None = Field(default=None, description="Why it failed, as the Job and its pod say.")
    logs: str | None = Field(default=None, description=f"The tail of its log (at most {MIGRATION_LOG_MAX} "
                             "characters, secrets masked).")
    logs_source: Literal["log", "terminationMessage", "none"] | None = Field(
        default=None, description="Where the log came from: the pod's log, its termination message, or nowhere.")


class IncidentStatus(Model):
    reason: str | None = None
    metric: str | None = None
    value: float | None = None
    threshold: str | None = None
    weight_at_breach: int | None = None
    stage_at_breach: int | None = None
    first_failed_at: str | None = None
    detected_at: str | None = None
    decided_at: str | None = None
    traffic_reverted_at: str | None = None
    images_reverted_at: str | None = None
    # the phase the rollback began in: from Promoting, the target may run the new version already
    rolled_back_from: str | None = None
    restored_at: str | None = None
    verified_at: str | None = None
    report_ref: str | None = None
    metrics: list[MetricStatus] = Field(default_factory=list)


class HistoryEntry(Model):
    action: str
    at: str
    stage: int | None = None
    weight: int | None = None
    metric: str | None = None
    message: str | None = None


class RefusedVersion(Model):
    """A version of the target's pod template that a rollback refused: the Deployment stays paused on it until
    its template changes (a revert commit brings the stable one back)."""

    template_hash: str
    generation: int | None = Field(default=None, description="The target's metadata.generation that carried it.")
    revision: str | None = Field(default=None, description="Its Git revision, when the Deployment names it.")
    images: dict[str, str] | None = None
    at: str | None = None
    reason: str | None = None


class SourceStatus(Model):
    """spec.template omitted: the target Deployment's own pod template is the version."""

    stable_template_hash: str | None = Field(default=None, description="The approved pod template (its hash).")
    stable_images: dict[str, str] | None = None
    generation: int | None = Field(default=None, description="The target's metadata.generation being rolled out.")
    revision: str | None = Field(default=None, description="Git revision of the version rolled out, when known.")
    application: str | None = Field(default=None, description="The Argo CD Application that syncs the target.")
    target_writes: int = Field(default=0, description="The operator's writes to the target Deployment in this "
                               "rollout: 1 (unpause) on promotion, 0 on rollback.")
    refused: RefusedVersion | None = None


class ProgressDeadlineStatus(Model):
    """What the rollout is waiting on the cluster for, and since when: spec.progressDeadlineSeconds counts from
    `since` (moved on by the time spent paused, which does not count). Kept here so a restarted operator keeps the
    same deadline; cleared by progress (the canary available, the failing action succeeding)."""

    key: str = Field(description="What is waited for: canary (its workload available) or the failing action's type.")
    waiting_for: str = Field(description="The same, in words, for events and the plugin.")
    since: str = Field(description="When the wait's clock started, moved on by the time paused.")
    began: str | None = Field(default=None, description="When the wait began (the first failure of an action); "
                              "never moved, for the report.")
    deadline_at: str | None = Field(default=None, description="since + progressDeadlineSeconds, as of the last "
                                    "decision (a pause moves it on).")
    paused_at: str | None = Field(default=None, description="Set while paused: the clock stands.")
    failures: int = Field(default=0, description="Failed attempts of the action in this wait.")
    last_error: str | None = None
    exceeded_at: str | None = Field(default=None, description="When the deadline was hit; the record is then kept.")
    message: str | None = Field(default=None, description="What was said then: waited for what, how long.")
    action: Literal["rollback", "fail"] | None = Field(default=None, description="What was done at the deadline.")


class PinnedTemplate(Model):
    """A shared analysis template as this rollout uses it, copied when the rollout started: the rollout keeps to it
    whatever happens to the object meanwhile (an edit or a deletion applies to the next rollout)."""

    kind: str
    namespace: str | None = Field(default=None, description="An AnalysisTemplate's namespace (the rollout's own).")
    name: str
    resource_version: str | None = None
    hash: str = Field(description="sha256 of its spec, 16 hex digits.")
    pinned_at: str | None = None
    spec: dict[str, Any] = Field(default_factory=dict, description="The template's spec as it was read.",
                                 json_schema_extra={"type": "object", "additionalProperties": False,  # crdgen drops it
                                                    "x-kubernetes-preserve-unknown-fields": True})
    seen: str | None = Field(default=None, description="The newer version seen since (its hash, or 'deleted'), "
                             "said once in an Event.")


class SafeRolloutStatus(Model):
    """Everything the operator needs to resume after a restart lives here."""

    phase: Phase | None = None
    message: str | None = None
    step: Step | None = Field(default=None, description="Sub-step inside the phase, for resumption.")
    template_hash: str | None = None
    attempt: int = 0
    observed_generation: int | None = None
    stage: int | None = Field(default=None, description="1-based index of the current stage.")
    weight: int = Field(default=0, description="Canary weight last applied by the router.")
    routing: str | None = Field(default=None, description="What the router last sent the canary besides the weight "
                                "(a header or cookie match, a mirror, a sticky cookie); none: by weight alone.")
    max_weight: int = 0
    stage_started_at: str | None = None
    stage_elapsed_seconds: float = 0
    stage_checks: int = Field(default=0, description="Analysis runs since the current stage's weight was applied.")
    preflight_attempts: int = 0
    stage_resumed_at: str | None = None
    stepped_back: bool = False
    settle_until: str | None = Field(default=None, description="No analysis before this time (after a step back).")
    pause_reason: PauseReason | None = None
    stable_images: dict[str, str] | None = None
    canary_images: dict[str, str] | None = None
    stable_revision: str | None = None
    canary_revision: str | None = None
    canary_ready: bool = False
    partition: PartitionStatus | None = Field(default=None, description="A StatefulSet target: its partition.")
    promoted_at: str | None = None
    returning_to: str | None = Field(default=None, description=(
        "Promotion onto an autoscaled target: its HorizontalPodAutoscaler, while the canary's load is returned to "
        "it in steps."))
    started_at: str | None = None
    finished_at: str | None = None
    verify_started_at: str | None = None
    verify_successes: int = 0
    verify_failures: int = Field(default=0, description="Verification checks whose data showed the stable version "
                                 "unhealthy; none, and the verification was only inconclusive.")
    last_command: str | None = None
    failure: str | None = None
    incident_severity: str | None = None
    source: SourceStatus | None = None
    snapshot: SnapshotStatus | None = None
    restore: RestoreStatus | None = None
    migration: MigrationStatus | None = None
    analysis: AnalysisStatus = Field(default_factory=AnalysisStatus)
    analysis_templates: list[PinnedTemplate] = Field(default_factory=list, description=(
        "The shared analysis templates this rollout's metrics use, pinned at its start."))
    incident: IncidentStatus | None = None
    progress_deadline: ProgressDeadlineStatus | None = None
    history: list[HistoryEntry] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")
