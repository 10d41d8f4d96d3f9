"""What a snapshot provider is: take, verify, restore and prune the database state of one rollout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class SnapshotInfo:
    location: str
    size_bytes: int
    sha256: str
    tables: int
    taken_at: str


@dataclass(frozen=True)
class RestoreOutcome:
    ok: bool
    message: str
    pre_restore_dump: str | None = None


class SnapshotProvider(Protocol):
    def reachable(self, timeout: float) -> None:
        """Raise with a reason when the database cannot be reached."""

    def take(self, snapshot_id: str) -> SnapshotInfo:
        """Idempotent: a complete snapshot with this id is returned as it is, never taken twice."""

    def verify(self, snapshot_id: str) -> str:
        """Prove the snapshot restores to the state it was taken from; raise otherwise."""

    def restore(self, snapshot_id: str, pre_restore_dump: str | None) -> RestoreOutcome:
        """Set the current state aside, restore the snapshot, check the result."""

    def equals(self, snapshot_id: str) -> bool:
        """Does the live database already equal the snapshot? (after a restart mid-restore)"""

    def prune(self, keep: int, current: str) -> list[str]:
        """Delete the oldest snapshots beyond `keep`; never `current`."""
