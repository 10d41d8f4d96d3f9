"""Timestamps as the status stores them: UTC, ISO 8601 with microseconds and a Z."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))
