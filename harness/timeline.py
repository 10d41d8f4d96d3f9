"""What happened during a run, in order, and the pure computations the expectations make from it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    at: float  # time.monotonic()
    kind: str  # phase, stage, weight, router, condition, history, fault, app, database, operator, harness, error
    text: str


class Timeline:
    """Thread-safe log of entries; times are printed as seconds since the rollout was applied."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[Entry] = []
        self.t0: float | None = None  # the apply

    def add(self, kind: str, text: str, at: float | None = None) -> None:
        with self._lock:
            self._entries.append(Entry(time.monotonic() if at is None else at, kind, text))

    def entries(self) -> list[Entry]:
        with self._lock:
            return sorted(self._entries, key=lambda e: e.at)

    def since_apply(self, at: float) -> float:
        return at - (self.t0 if self.t0 is not None else at)

    def render(self) -> str:
        lines = []
        for e in self.entries():
            lines.append(f"{self.since_apply(e.at):8.2f}s  {e.kind:<9} {e.text}")
        return "\n".join(lines)

    def as_json(self) -> list[dict[str, object]]:
        return [{"t": round(self.since_apply(e.at), 3), "kind": e.kind, "text": e.text} for e in self.entries()]


# ------------------------------------------------------------------------------------------ weight computations

WeightChange = tuple[float, int]  # (time, canary weight from then on)


def weights_seen(changes: list[WeightChange]) -> list[int]:
    """The ordered distinct consecutive canary weights, with 0 left out.

    0 means "no canary traffic" (before the first stage, after a rollback or a promotion), not a stage, so
    zeros are removed first and repeats collapsed after: 5, 25, 0, 25 reads as [5, 25].
    """
    out: list[int] = []
    for _, weight in changes:
        if weight != 0 and (not out or out[-1] != weight):
            out.append(weight)
    return out


def longest_hold(changes: list[WeightChange], weight: int, end: float) -> float:
    """The longest time the canary weight stayed at `weight` without a change, up to `end`."""
    best = 0.0
    for i, (start, w) in enumerate(changes):
        if w != weight:
            continue
        stop = changes[i + 1][0] if i + 1 < len(changes) else end
        best = max(best, stop - start)
    return best


def merged_intervals(starts: list[float], stops: list[float], end: float) -> list[tuple[float, float]]:
    """Pair "down" and "up" times into intervals; a down with no later up lasts until `end`."""
    events = sorted([(t, 1) for t in starts] + [(t, -1) for t in stops])
    out: list[tuple[float, float]] = []
    down_since: float | None = None
    for t, kind in events:
        if kind == 1 and down_since is None:
            down_since = t
        elif kind == -1 and down_since is not None:
            out.append((down_since, t))
            down_since = None
    if down_since is not None:
        out.append((down_since, end))
    return out
