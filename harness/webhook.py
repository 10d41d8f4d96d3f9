"""A webhook receiver on loopback: what the operator's notifications deliver, kept for the expectations.

Scenarios point `spec.notifications[].webhook.url` at `@webhookUrl@/<anything>`; the path tells the targets apart.
Each POST is answered 200 and recorded with its time, path and JSON body. The receiver is bounded (body size and
count), since it listens for as long as a run lasts.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY = 64 * 1024
MAX_RECEIVED = 1000
# The Slack format carries no severity field; its icon tells (the operator's notify.body_for). Medium and low share
# one icon, so a Slack message with it reads as "medium" (the higher of the two, never blamed for being too low).
SLACK_ICONS = {":rotating_light:": "critical", ":warning:": "high", ":information_source:": "medium"}
RANK = {"low": 1, "medium": 2, "high": 3, "critical": 4}


@dataclass(frozen=True)
class Received:
    at: float  # time.monotonic()
    path: str
    body: dict[str, Any] | None  # None: not a JSON object
    raw: str

    @property
    def format(self) -> str:
        """generic, slack or unknown, by the body's keys."""
        b = self.body or {}
        if {"rollout", "severity", "title", "text"} <= set(b):
            return "generic"
        if "text" in b and isinstance(b.get("blocks"), list):
            return "slack"
        return "unknown"

    @property
    def severity(self) -> str | None:
        """The generic body's severity, or the one a Slack message's icon stands for."""
        b = self.body or {}
        if self.format == "generic":
            sev = b.get("severity")
            return sev if isinstance(sev, str) else None
        if self.format == "slack":
            text = str(b.get("text", "")) + " " + json.dumps(b.get("blocks"))
            for icon, sev in SLACK_ICONS.items():
                if icon in text:
                    return sev
        return None

    def names_report(self, report: str) -> bool:
        """The notification names the incident report (generic: `reportRef`; Slack: anywhere in its blocks)."""
        if not report:
            return False
        b = self.body or {}
        if self.format == "generic":
            ref = b.get("reportRef")
            return isinstance(ref, str) and (ref == report or ref.rsplit("/", 1)[-1] == report)
        return report in json.dumps(b.get("blocks"))


class WebhookReceiver:
    """ThreadingHTTPServer on 127.0.0.1 that records every POST."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="webhook", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.server.shutdown()
        self.server.server_close()

    def wait_quiet(self, quiet: float, limit: float) -> None:
        """Return once nothing has arrived for `quiet` seconds, or after `limit`: late notifications get a chance."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            got = self.received
            last = got[-1].at if got else 0.0
            if time.monotonic() - last >= quiet:
                return
            time.sleep(0.1)

    def _record(self, path: str, raw: bytes) -> None:
        text = raw.decode(errors="replace")
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        with self._lock:
            if len(self._received) < MAX_RECEIVED:
                self._received.append(Received(time.monotonic(), path, body if isinstance(body, dict) else None, text))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Silent: the expectations report what arrived."""

            def _answer(self, code: int) -> None:
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self._answer(413)
                    return
                receiver._record(self.path, self.rfile.read(length))
                self._answer(200)

        return Handler
