"""What the core asks the world to do, and what the world answers.

Every piece of I/O is an action; the handler executes it and feeds the result into the next `decide` call. That keeps
the core pure and lets a unit test play the world.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

AnalysisTarget = Literal["canary", "stable", "preview"]


@dataclass(frozen=True)
class ReadTarget:
    """Images and availability of the target Deployment."""


@dataclass(frozen=True)
class CheckDatabase:
    timeout: float


@dataclass(frozen=True)
class QueryMetrics:
    target: AnalysisTarget
    purpose: Literal["analysis", "preflight", "verify"]
    metrics: tuple[str, ...]
    max_error_rate: float | None = None  # rollback.verify.maxErrorRate: check that instead of the metrics
    since: str | None = None  # data older than this (the stage's weight was set then) belongs to another weight
    # the metrics (core.models.Metric: actions sit beside the models, not above them) as resolved, shared analysis
    # templates filled in; empty: as in the spec (no metric uses one)
    definitions: tuple[Any, ...] = field(default=(), hash=False, repr=False)


@dataclass(frozen=True)
class TakeSnapshot:
    snapshot_id: str


@dataclass(frozen=True)
class VerifySnapshot:
    snapshot_id: str


@dataclass(frozen=True)
class RestoreDatabase:
    snapshot_id: str
    attempt: int


@dataclass(frozen=True)
class CheckRestored:
    """After a restart in the middle of a restore: does the database already equal the snapshot?"""

    snapshot_id: str


@dataclass(frozen=True)
class PruneSnapshots:
    keep: int
    current: str


@dataclass(frozen=True)
class RunMigration:
    """Create spec.migration's Job under this name (status.migration holds it first). Idempotent: a Job of that
    name that this rollout made already counts as created, so a restart never makes a second one."""

    job: str
    attempt: int
    timeout_seconds: float


@dataclass(frozen=True)
class CheckMigration:
    """Read the Job: running, or finished with its log. `stop`: the timeout ran out; read the log, then delete it."""

    job: str
    stop: bool = False


@dataclass(frozen=True)
class EnsureCanary:
    images: dict[str, str] = field(hash=False)
    first_weight: int = 0  # the weight the canary is made for (the router's prepare may size it by that)
    # spec.template omitted: the canary is the target's pod template as it is, and only if it has this hash
    template_hash: str | None = None


@dataclass(frozen=True)
class DeleteCanary:
    pass


@dataclass(frozen=True)
class HeaderCondition:
    """One header a request must carry: `value` exactly, or (regex) a whole-value RE2 match; names in lower case."""

    name: str
    value: str
    regex: bool = False


@dataclass(frozen=True)
class Routing:
    """What a stage sends the canary besides its weight (core.stages.routing makes it from the stage).

    `match`: requests carrying every one of these headers go to the canary (a cookie is a `cookie` header
    regex); `mirror`: percent of the requests copied to the canary, answers discarded; `sticky`: the cookie
    (`name=value`) the canary's answers set, and which then routes its bearer to the canary.
    """

    match: tuple[HeaderCondition, ...] = ()
    mirror: int = 0
    sticky: str | None = None

    @property
    def key(self) -> str:
        """How status.routing records it: enough to tell whether the router already has it."""
        parts = []
        if self.match:
            parts.append("match " + " ".join(f"{h.name}{'~' if h.regex else '='}{h.value}" for h in self.match))
        if self.mirror:
            parts.append(f"mirror {self.mirror}%")
        if self.sticky:
            parts.append(f"sticky {self.sticky}")
        return "; ".join(parts)


@dataclass(frozen=True)
class SetWeight:
    weight: int
    routing: Routing | None = None  # None: by weight alone (no match, no mirror, no sticky cookie): weight 0 is
    # everything on stable, which is what every rollback and promotion writes first

    def __repr__(self) -> str:  # as before routing existed, when there is none: logs and tests read it
        return f"SetWeight(weight={self.weight})" if self.routing is None else \
            f"SetWeight(weight={self.weight}, routing={self.routing!r})"


@dataclass(frozen=True)
class SetTargetImages:
    images: dict[str, str] = field(hash=False)
    reason: Literal["promote", "revert"] = "promote"
    # promotion of a canary: an autoscaled target is raised in the same write to the replicas both versions run
    # now (capped by its HPA's maxReplicas), so the switch does not leave it at what its HPA sized for its share
    keep_capacity: bool = False


@dataclass(frozen=True)
class LabelTarget:
    """spec.template omitted: put the label the admission webhook selects on (saferollout.dev/target) on the target."""


@dataclass(frozen=True)
class HoldTarget:
    """spec.template omitted, and the webhook did not hold the new template (not installed, or the label came
    late): pause the target, so the Deployment controller stops replacing the stable pods."""

    stable_hash: str
    held_hash: str


@dataclass(frozen=True)
class ReleaseTarget:
    """spec.template omitted: unpause the target and record `stable_hash` as its approved template, in one write.
    On promotion the Deployment controller then rolls the promoted template out to the stable pods; on a revert
    (the stable template is back) it ends a hold the webhook did not end itself."""

    stable_hash: str
    # track: trackConfig's first write, giving the stable pods copies of the config they run (`paused` untouched)
    reason: Literal["promote", "revert", "track"] = "promote"
    keep_capacity: bool = False  # as SetTargetImages'


TARGET_WRITES = (LabelTarget, HoldTarget, ReleaseTarget)


@dataclass(frozen=True)
class WriteReport:
    name: str
    markdown: str


@dataclass(frozen=True)
class Event:
    reason: str
    message: str
    type: Literal["Normal", "Warning"] = "Normal"


@dataclass(frozen=True)
class Notify:
    severity: str
    title: str
    text: str
    report: str | None = None


Action = (
    ReadTarget | CheckDatabase | QueryMetrics | TakeSnapshot | VerifySnapshot | RestoreDatabase | CheckRestored
    | PruneSnapshots | RunMigration | CheckMigration | EnsureCanary | DeleteCanary | SetWeight | SetTargetImages
    | LabelTarget | HoldTarget | ReleaseTarget | WriteReport | Event | Notify
)


# ------------------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TargetView:
    """The target Deployment as spec.template-omitted rollouts see it: read at every reconcile (an input of each
    decision) and by ReadTarget."""

    template_hash: str  # the version: core.configs.version_hash (the template's hash when config is not tracked)
    images: dict[str, str] = field(hash=False)
    paused: bool = False
    generation: int | None = None
    label: str | None = None  # the value of saferollout.dev/target: the rollout that owns its releases
    stable_hash: str | None = None  # saferollout.dev/stable-template, written by the webhook or a promotion
    held_hash: str | None = None  # saferollout.dev/held-template: the webhook paused it for this template
    revision: str | None = None  # the Git revision, when the Deployment names it (saferollout.dev/revision)
    application: str | None = None  # the Argo CD Application, from its tracking annotation
    available: bool = True
    # trackConfig: the config version of the referenced objects now, and the one the template's pods are given
    config: str | None = None
    config_label: str | None = None
    template_approved: bool = False  # the pod template itself is the approved one (only its config may differ)
    raw_hash: str | None = None  # the template's own hash (the webhook's), when it differs from template_hash


@dataclass(frozen=True)
class TemplateRead:
    """A shared analysis template as the handler read it for this decision (an input, like TargetView)."""

    kind: str  # AnalysisTemplate | ClusterAnalysisTemplate
    namespace: str | None  # an AnalysisTemplate's: always the rollout's own
    name: str
    spec: dict[str, Any] | None = field(default=None, hash=False)  # None: not found (or not readable: error)
    resource_version: str | None = None
    error: str | None = None  # it could not be read (forbidden, the API server down): not the same as missing


@dataclass(frozen=True)
class TargetState:
    images: dict[str, str] = field(hash=False)
    available: bool
    revision: str | None = None
    view: TargetView | None = None  # spec.template omitted: the whole picture
    # a StatefulSet: spec.replicas and updateStrategy.rollingUpdate.partition as read (its images and revision
    # are those of status.currentRevision: what its stable pods run)
    replicas: int | None = None
    partition: int | None = None
    autoscaler: str | None = None  # the HorizontalPodAutoscaler that scales the target Deployment, if any


@dataclass(frozen=True)
class Outcome:
    """Result of an action that either worked or did not, with the reason (never a secret)."""

    action: Action
    ok: bool
    message: str = ""
    refused: bool = False  # no retry can mend it (an invalid object, one the rollout does not own)


@dataclass(frozen=True)
class MetricValues:
    target: AnalysisTarget
    purpose: Literal["analysis", "preflight", "verify"]
    values: dict[str, float | None] = field(hash=False)
    errors: dict[str, str] = field(default_factory=dict, hash=False)
    samples: dict[str, float] = field(default_factory=dict, hash=False)  # requests behind a rate
    # for judged metrics: the window's samples of (canary, stable)
    series: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict, hash=False)
    # for baseline metrics: (canary, stable) now; the core does the arithmetic
    pairs: dict[str, tuple[float | None, float | None]] = field(default_factory=dict, hash=False)
    # when the queries went out: the analysis's time, so the next one is due an interval after it, not an
    # interval after the answers came back (that would add the queries' duration to every interval)
    asked_at: str | None = None


@dataclass(frozen=True)
class SnapshotResult:
    snapshot_id: str
    ok: bool
    message: str = ""
    size_bytes: int | None = None
    sha256: str | None = None
    location: str | None = None
    tables: int | None = None
    taken_at: str | None = None


@dataclass(frozen=True)
class RestoreResult:
    snapshot_id: str
    ok: bool
    message: str = ""
    pre_restore_dump: str | None = None
    verified: bool = False


@dataclass(frozen=True)
class MigrationState:
    """What the Job is doing. `state` Running while it runs; Succeeded or Failed once it ended (Failed also when it
    could not be created or read: `message` says why); Stopped after a CheckMigration(stop=True)."""

    job: str
    state: Literal["Created", "Running", "Succeeded", "Failed", "Stopped"]
    message: str = ""
    logs: str | None = None  # the tail, redacted and bounded by the executor
    logs_source: Literal["log", "terminationMessage", "none"] | None = None
    created_at: str | None = None  # the Job's creationTimestamp, when read


@dataclass(frozen=True)
class CanaryState:
    ready: bool
    revision: str | None = None


@dataclass(frozen=True)
class ReportWritten:
    ref: str


Result = (TargetState | Outcome | MetricValues | SnapshotResult | RestoreResult | MigrationState | CanaryState
          | ReportWritten)
