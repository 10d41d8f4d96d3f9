"""What the core asks the world to do, and what the world answers.

Every piece of I/O is an action; the handler executes it and feeds the result into the next `decide` call. That keeps
the core pure and lets a unit test play the world.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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
class EnsureCanary:
    images: dict[str, str] = field(hash=False)
    first_weight: int = 0  # the weight the canary is made for (the router's prepare may size it by that)

@dataclass(frozen=True)
class DeleteCanary:
    pass


@dataclass(frozen=True)
class SetWeight:
    weight: int


@dataclass(frozen=True)
class SetTargetImages:
    images: dict[str, str] = field(hash=False)
    reason: Literal["promote", "revert"] = "promote"


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
    | PruneSnapshots | EnsureCanary | DeleteCanary | SetWeight | SetTargetImages | WriteReport | Event | Notify
)


# ------------------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TargetState:
    images: dict[str, str] = field(hash=False)
    available: bool
    revision: str | None = None


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
class CanaryState:
    ready: bool
    revision: str | None = None


@dataclass(frozen=True)
class ReportWritten:
    ref: str


Result = TargetState | Outcome | MetricValues | SnapshotResult | RestoreResult | CanaryState | ReportWritten
