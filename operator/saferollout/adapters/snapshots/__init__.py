"""Snapshot providers by the field of `spec.database` that names them.

Adding one: its settings class as a field of `core.models.Database`, its module here, one line in PROVIDERS.
Providers do not import one another nor this package; their interface is `adapters.snapshotting`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from saferollout.adapters.kube import RolloutRef
from saferollout.adapters.snapshots.postgres import PostgresSnapshots
from saferollout.adapters.snapshots.volume import VolumeSnapshotProvider
from saferollout.adapters.snapshotting import SnapshotProvider
from saferollout.core.models import SafeRolloutSpec

SecretReader = Callable[[str, str, str], str]  # (namespace, name, key) -> value


def _postgres(ref: RolloutRef, spec: SafeRolloutSpec, settings: Any, store: Path, secret: SecretReader
              ) -> SnapshotProvider:
    return PostgresSnapshots(secret(ref.namespace, settings.secret_ref.name, settings.secret_ref.key),
                             store / ref.namespace / ref.name)


def _volume(ref: RolloutRef, spec: SafeRolloutSpec, settings: Any, store: Path, secret: SecretReader
            ) -> SnapshotProvider:
    return VolumeSnapshotProvider(ref.namespace, ref.name, settings, target=spec.target_ref.name)


PROVIDERS: dict[str, Callable[[RolloutRef, SafeRolloutSpec, Any, Path, SecretReader], SnapshotProvider]] = {
    "postgres": _postgres,
    "volumeSnapshot": _volume,
}


def provider_for(ref: RolloutRef, spec: SafeRolloutSpec, store: Path, secret: SecretReader) -> SnapshotProvider:
    """The provider `spec.database` names, made for this rollout (`store`: the operator's snapshot directory)."""
    if spec.database is None:
        raise ValueError("spec.database is not set")
    name, settings = spec.database.provider()
    return PROVIDERS[name](ref, spec, settings, store, secret)
