"""Secrets never leave the operator: every string bound for logs, events, status or reports passes through here.

Masking is per rollout. A global set would let one tenant probe another's password: write a guess into its own
spec, and see whether its own status comes back with `***` in its place. Operator logs, which only the operator's
admins read, are masked with every secret the process knows.
"""

from __future__ import annotations

import contextvars
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# the rollout being reconciled in this thread: every log line names it, and its secrets are the ones masked
CURRENT_ROLLOUT: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("rollout", default=None)
MASK = "***"
SHORT = 4  # secrets shorter than this are masked as whole words only: "ab" must not eat every "ab" in a message


@contextmanager
def naming(namespace: str, name: str) -> Iterator[None]:
    """Log lines written inside name this rollout (a worker thread serves many, one after another)."""
    token = CURRENT_ROLLOUT.set((namespace, name))
    try:
        yield
    finally:
        CURRENT_ROLLOUT.reset(token)


_lock = threading.Lock()
_secrets: dict[tuple[str, str] | None, set[str]] = {}
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>\S*)@(?=[^@\s]*(?:\s|$))",
                           re.I)
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.I)


def register(secret: str | None, rollout: tuple[str, str] | None = None) -> None:
    """Remember a secret value (a Secret's whole value, a password in it) for the rollout being reconciled.

    Register before parsing: a parser's error may quote its input.
    """
    if not secret:
        return
    scope = rollout or CURRENT_ROLLOUT.get()
    with _lock:
        for s in {secret, secret.strip()} - {""}:
            _secrets.setdefault(scope, set()).add(s)


def forget(rollout: tuple[str, str]) -> None:
    """The rollout is gone: its secrets need no masking any more (and must not grow the set forever)."""
    with _lock:
        _secrets.pop(rollout, None)


def _known(everyone: bool) -> list[str]:
    with _lock:
        if everyone:
            found = set().union(*_secrets.values()) if _secrets else set()
        else:
            found = set(_secrets.get(CURRENT_ROLLOUT.get(), set()))
    return sorted(found, key=len, reverse=True)


def redact(text: str, everyone: bool = False) -> str:
    """Mask passwords in URLs and key=value strings, and the registered secrets of the current rollout
    (with `everyone`, of every rollout: for the operator's own logs)."""
    # the URL's password ends at its last '@' before the host, so a bare '@' inside the password is covered
    text = _URL_PASSWORD.sub(rf"\g<scheme>\g<user>:{MASK}@", text)
    text = _KV_PASSWORD.sub(rf"\1{MASK}", text)
    for s in _known(everyone):
        short = rf"(?<![A-Za-z0-9]){re.escape(s)}(?![A-Za-z0-9])"
        text = text.replace(s, MASK) if len(s) >= SHORT else re.sub(short, MASK, text)
    return text


class RedactingFilter(logging.Filter):
    """Masks secrets (in the message and in a traceback) and attaches the rollout to the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage(), everyone=True)
        record.args = None
        if record.exc_info:  # a traceback quotes arguments and locals' reprs: format it here, masked
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info), everyone=True)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text, everyone=True)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, everyone=True)
        ref = getattr(record, "k8s_ref", None)
        current = CURRENT_ROLLOUT.get()
        if current is not None:
            record.rollout_namespace, record.rollout_name = current
        elif isinstance(ref, dict) and ref.get("name"):
            record.rollout_namespace, record.rollout_name = ref.get("namespace") or "", ref["name"]
        else:
            record.rollout_namespace = record.rollout_name = None
        return True
