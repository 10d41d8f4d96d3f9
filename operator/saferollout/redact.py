"""Secrets never leave the operator: every string bound for logs, events, status or reports passes through here."""

from __future__ import annotations

import contextvars
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# the rollout being reconciled in this thread: every log line names it
CURRENT_ROLLOUT: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("rollout", default=None)


@contextmanager
def naming(namespace: str, name: str) -> Iterator[None]:
    """Log lines written inside name this rollout (a worker thread serves many, one after another)."""
    token = CURRENT_ROLLOUT.set((namespace, name))
    try:
        yield
    finally:
        CURRENT_ROLLOUT.reset(token)

_lock = threading.Lock()
_secrets: set[str] = set()
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@", re.I)
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.I)


def register(secret: str | None) -> None:
    """Remember a secret value (a password read from a Secret) so it is masked wherever it appears."""
    if secret and len(secret) >= 3:
        with _lock:
            _secrets.add(secret)


def redact(text: str) -> str:
    text = _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", text)
    text = _KV_PASSWORD.sub(r"\1***", text)
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for s in known:
        text = text.replace(s, "***")
    return text


class RedactingFilter(logging.Filter):
    """Masks secrets and attaches the rollout (ours, or kopf's object reference) to the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        ref = getattr(record, "k8s_ref", None)
        current = CURRENT_ROLLOUT.get()
        if current is not None:
            record.rollout_namespace, record.rollout_name = current
        elif isinstance(ref, dict) and ref.get("name"):
            record.rollout_namespace, record.rollout_name = ref.get("namespace") or "", ref["name"]
        else:
            record.rollout_namespace = record.rollout_name = None
        return True
