"""Webhook notifications by severity: generic JSON or Slack-compatible, with retries, off the reconcile path."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from saferollout.core.durations import parse_duration
from saferollout.core.models import Notification, Severity
from saferollout.redact import redact

log = logging.getLogger("saferollout.notify")
_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="notify")
ATTEMPTS = 3
sent = 0
_lock = threading.Lock()


def body_for(fmt: str, rollout: str, severity: str, title: str, text: str, report: str | None) -> dict[str, Any]:
    if fmt == "slack":
        icon = {"critical": ":rotating_light:", "high": ":warning:"}.get(severity, ":information_source:")
        blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": f"{icon} *{title}*\n{text}"}}]
        if report:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"Incident report: `{report}`"}})
        return {"text": f"{title}: {text}", "blocks": blocks}
    return {"rollout": rollout, "severity": severity, "title": title, "text": text, "reportRef": report}


def post(url: str, body: dict[str, Any], timeout: float) -> None:
    global sent
    for attempt in range(1, ATTEMPTS + 1):
        try:
            r = requests.post(url, json=body, timeout=timeout)
            if r.status_code < 500:
                with _lock:
                    sent += 1
                if r.status_code >= 400:
                    log.warning("webhook answered %s; not retried", r.status_code)
                return
        except requests.RequestException as e:
            log.warning("webhook attempt %d failed: %s", attempt, type(e).__name__)
        time.sleep(min(4.0, 0.5 * 2 ** attempt))
    log.error("webhook gave up after %d attempts", ATTEMPTS)


def send(targets: list[Notification], rollout: str, severity: str, title: str, text: str,
         report: str | None = None) -> int:
    """Queue the notification for every webhook whose minSeverity it meets; returns how many were queued."""
    rank = Severity(severity).rank
    queued = 0
    for n in targets:
        hook = n.webhook
        if rank < hook.min_severity.rank:
            continue
        body = body_for(hook.format, rollout, severity, redact(title), redact(text), report)
        _pool.submit(post, hook.url, body, parse_duration(hook.timeout))
        queued += 1
    return queued
