"""The demo service: a local process that stands in for the stable or the canary pods, or the container of a real pod.

As a process (pods on KWOK's fake nodes run no containers) it serves the traffic the harness's router sends; with
`--pod` it is the container of the target's and the canary's pods on the real node (the image built by
scripts/image.sh), and the harness pushes each pod its behaviour, its role and its Service (harness.pods).
Either way it answers `GET /` with 200 or 500 at the configured error rate after a lognormal latency fitted to
p50/p95, and exports the series the operator's built-in templates read: `http_requests_total{code,service}` and
`http_request_duration_seconds{service}`, plus the gauge `app_memory_working_set_bytes`. `service` is the Service
the request came through, which the harness's router names in the header `X-Harness-Service` (blue-green sends both
versions' traffic through one Service, and the operator must see it under that Service whichever process answered);
without the header it is the process's own `--service` (a pod's: the one the harness pushed). Prometheus scrapes
with `honor_labels`, and adds `namespace` (and `service` for the gauge) from its scrape config, as a ServiceMonitor
would in a cluster.

    python -m harness.demoapp --port P --service NAME --namespace NS --version V [--error-rate R --p50 MS --p95 MS]
        [--error-mode spread|random] [--unhealthy] [--memory-mb MB] [--label-service NAME ...]
        [--pod --admin-from ADDR ...]

`--pod`: listen on every address of the pod's own network namespace, accept `POST /admin/config` from loopback and
the `--admin-from` addresses (the host's, where the harness runs), and answer `/ready` with 503 until the first
configuration came: the readiness probe keeps a pod out of its Services until it behaves as its version.
`POST /admin/config` may also carry `service` (the label for requests without the header: the Service the pod is
behind) and `role` (`stable` or `canary`, sent back in `X-Harness-Role` so the load can count where a real data
plane sent each request).

By default errors and latencies are spread evenly (see harness.latency.Spread) rather than drawn independently:
with a few requests a second in a 10 s window, independent draws make a 0.1% error rate read as 1% or 5% now and
then, and a healthy canary would be rolled back by luck. `--error-mode random` gives the independent draws.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import random
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from harness.latency import LogNormal, Spread, fit

# Fine steps where the thresholds are (2.0 s, 2.5 s) and where healthy latencies sit (tens of ms).
BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0,
           2.25, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0)
SERVICE_HEADER = "X-Harness-Service"
ROLE_HEADER = "X-Harness-Role"
DRAIN_SECONDS = 2.0  # a pod serves on this long after SIGTERM (harness.pods gives it the grace period for it)
MAX_SERVICES = 16  # label values a process accepts from the header; a bound on its series, whoever calls it
MB = 1_000_000
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


class Behaviour:
    """The current error rate and latency law; swapped whole under a lock by the admin endpoint."""

    def __init__(self, error_rate: float, p50_ms: float, p95_ms: float, mode: str = "spread", healthy: bool = True,
                 memory_mb: float = 50.0) -> None:
        if mode not in ("spread", "random"):
            raise ValueError("mode must be spread or random")
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._spread = Spread() if mode == "spread" else None
        self.error_rate = error_rate
        self.p50_ms = p50_ms
        self.p95_ms = p95_ms
        self.healthy = healthy
        self.memory_mb = memory_mb
        self._law: LogNormal = fit(p50_ms, p95_ms)

    def update(self, body: dict[str, Any]) -> None:
        """Apply `{errorRate, latencyMs: {p50, p95}, healthy, memoryMB}`; any part may be left out.

        ValueError on bad input, and nothing changes then.
        """
        unknown = set(body) - {"errorRate", "latencyMs", "healthy", "memoryMB"}
        if unknown:
            raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
        rate = float(body.get("errorRate", self.error_rate))
        if not 0.0 <= rate <= 1.0:
            raise ValueError("errorRate must be within 0..1")
        lat = body.get("latencyMs", {"p50": self.p50_ms, "p95": self.p95_ms})
        if not isinstance(lat, dict) or set(lat) - {"p50", "p95"}:
            raise ValueError("latencyMs must be {p50, p95}")
        p50 = float(lat.get("p50", self.p50_ms))
        p95 = float(lat.get("p95", self.p95_ms))
        law = fit(p50, p95)
        healthy = body.get("healthy", self.healthy)
        if not isinstance(healthy, bool):
            raise ValueError("healthy must be true or false")
        memory = float(body.get("memoryMB", self.memory_mb))
        if memory < 0:
            raise ValueError("memoryMB must not be negative")
        with self._lock:
            self.error_rate, self.p50_ms, self.p95_ms, self._law = rate, p50, p95, law
            self.healthy, self.memory_mb = healthy, memory

    def draw(self) -> tuple[float, bool]:
        """(latency in seconds, fail?) for one request."""
        with self._lock:
            if self._spread is not None:
                return self._spread.draw(self._law, self.error_rate)
            return self._law.sample(self._rng), self._rng.random() < self.error_rate

    def wire(self) -> dict[str, Any]:
        with self._lock:
            return {"errorRate": self.error_rate, "latencyMs": {"p50": self.p50_ms, "p95": self.p95_ms},
                    "healthy": self.healthy, "memoryMB": self.memory_mb}


class DemoApp:
    """The server and its metrics; a separate registry keeps the process's default collectors out of the way."""

    def __init__(self, port: int, service: str, namespace: str, version: str, behaviour: Behaviour,
                 host: str = "127.0.0.1", label_services: tuple[str, ...] = (), *, pod: bool = False,
                 admin_from: tuple[str, ...] = (), admin_port: int | None = None) -> None:
        self.service, self.namespace, self.version = service, namespace, version
        self.role = version
        self.pod = pod
        self.configured = not pod  # a pod is ready once the harness has told it what it is
        self.admin_from = {ipaddress.ip_address(a) for a in admin_from}
        self.behaviour = behaviour
        self.registry = CollectorRegistry()
        self.requests = Counter("http_requests_total", "Requests served, by status code and Service.",
                                ["code", "service"], registry=self.registry)
        self.duration = Histogram("http_request_duration_seconds", "Time to serve a request, by Service.",
                                  ["service"], buckets=BUCKETS, registry=self.registry)
        Gauge("app_memory_working_set_bytes", "Working set the version reports (set by the scenario).",
              registry=self.registry).set_function(lambda: self.behaviour.memory_mb * MB)
        self._services: set[str] = set()
        self._services_lock = threading.Lock()
        for svc in (service, *label_services):
            self._label(svc)
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.server.daemon_threads = True
        # a pod's admin on a port of its own, which no Service names: what a data plane forwards (from the host's
        # address too) never reaches it
        self.admin_server: ThreadingHTTPServer | None = None
        if admin_port is not None:
            self.admin_server = ThreadingHTTPServer((host, admin_port), self._handler())
            self.admin_server.daemon_threads = True

    def _label(self, service: str | None) -> str:
        """The `service` label for a request; series exist from the first sight, so "no traffic" reads as 0/0."""
        if not service or not _NAME.fullmatch(service):
            return self.service
        with self._services_lock:
            if service not in self._services:
                if len(self._services) >= MAX_SERVICES:
                    return self.service
                self._services.add(service)
                for code in ("200", "500"):
                    self.requests.labels(code=code, service=service)
                self.duration.labels(service=service)
        return service

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Silent: 60 requests a second would drown the run's logs."""

            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(app.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = app.behaviour.healthy
                    self._send(200 if ok else 503, b"ok\n" if ok else b"unhealthy\n")
                elif path == "/ready":
                    ok = app.configured
                    self._send(200 if ok else 503, b"ok\n" if ok else b"not configured\n")
                elif path == "/admin/config" and self._admin():
                    self._send(200, json.dumps(app.wire()).encode(), "application/json")
                else:
                    app.serve(self)

            def _admin(self) -> bool:
                """Admin requests go to the admin port when there is one."""
                return app.admin_server is None or self.server is app.admin_server

            def do_POST(self) -> None:
                if self.path != "/admin/config" or not self._admin():
                    self._send(404, b"not found\n")
                    return
                caller = ipaddress.ip_address(self.client_address[0])
                if not (caller.is_loopback or caller in app.admin_from):
                    self._send(403, b"admin is loopback only (and --admin-from)\n")
                    return
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                    if not isinstance(body, dict):
                        raise ValueError("expected a JSON object")
                    app.configure(body)
                except (ValueError, TypeError) as e:
                    self._send(400, f"{e}\n".encode())
                    return
                self._send(200, json.dumps(app.wire()).encode(), "application/json")

        return Handler

    def configure(self, body: dict[str, Any]) -> None:
        """The behaviour's keys, and `service` / `role`; ValueError on bad input, and nothing changes then."""
        body = dict(body)
        service, role = body.pop("service", self.service), body.pop("role", self.role)
        if not isinstance(service, str) or not _NAME.fullmatch(service):
            raise ValueError("service must be a Service name")
        if role not in ("stable", "canary", self.version):
            raise ValueError("role must be stable or canary")
        self.behaviour.update(body)
        self._label(service)
        self.service, self.role, self.configured = service, str(role), True

    def wire(self) -> dict[str, Any]:
        return {**self.behaviour.wire(), "service": self.service, "role": self.role}

    def serve(self, req: BaseHTTPRequestHandler) -> None:
        """One application request: wait the drawn latency, count it, then answer 200 or 500 (counted first, so
        that a scrape right after the answer sees it)."""
        start = time.perf_counter()
        service = self._label(req.headers.get(SERVICE_HEADER))
        delay, fail = self.behaviour.draw()
        if delay > 0:
            time.sleep(delay)
        code = 500 if fail else 200
        body = json.dumps({"service": service, "version": self.version, "code": code}).encode()
        self.duration.labels(service=service).observe(time.perf_counter() - start)
        self.requests.labels(code=str(code), service=service).inc()
        req.send_response(code)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        req.send_header(ROLE_HEADER, self.role)
        req.end_headers()
        req.wfile.write(body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.demoapp", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--service", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--version", default="1.0")
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--p50", type=float, default=20.0, help="median latency, ms")
    p.add_argument("--p95", type=float, default=80.0, help="95th percentile latency, ms")
    p.add_argument("--error-mode", choices=("spread", "random"), default="spread",
                   help="spread: errors and latencies evenly spread (reproducible); random: independent draws")
    p.add_argument("--unhealthy", action="store_true", help="/healthz answers 503")
    p.add_argument("--memory-mb", type=float, default=50.0, help="app_memory_working_set_bytes, in MB (10^6 bytes)")
    p.add_argument("--label-service", action="append", default=[],
                   help="another Service requests may come through; its series exist from the start")
    p.add_argument("--pod", action="store_true",
                   help="the container of a real pod: listen on all of the pod's addresses, /ready once configured")
    p.add_argument("--admin-from", action="append", default=[], type=ipaddress.ip_address,
                   help="(with --pod) an address besides loopback that may POST /admin/config")
    p.add_argument("--admin-port", type=int, default=None,
                   help="(with --pod) serve /admin/config on this port only, not on --port")
    a = p.parse_args(argv)
    if (a.admin_from or a.admin_port is not None) and not a.pod:
        p.error("--admin-from and --admin-port need --pod")
    host = "0.0.0.0" if a.pod else a.host  # a pod's own network namespace: its addresses only
    if not a.pod and not ipaddress.ip_address(host).is_loopback:
        p.error("the demo app listens on loopback only (unless it runs in a pod: --pod)")
    behaviour = Behaviour(a.error_rate, a.p50, a.p95, a.error_mode, not a.unhealthy, a.memory_mb)
    app = DemoApp(a.port, a.service, a.namespace, a.version, behaviour, host, tuple(a.label_service), pod=a.pod,
                  admin_from=tuple(str(x) for x in a.admin_from), admin_port=a.admin_port)
    if app.admin_server is not None:
        threading.Thread(target=app.admin_server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    def stop(*_: object) -> None:
        """As a well-behaved pod: not ready at once, serving on for DRAIN_SECONDS while the endpoints and the data
        plane let go of it (the kubelet's SIGTERM and the EndpointSlice update race), then gone. A process stops
        at once."""
        def later() -> None:
            if a.pod:
                app.configured = False
                time.sleep(DRAIN_SECONDS)
            app.server.shutdown()
            if app.admin_server is not None:
                app.admin_server.shutdown()
        threading.Thread(target=later, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    print(f"demoapp {a.service}/{a.namespace} version {a.version} on {host}:{app.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        app.server.serve_forever(poll_interval=0.2)
    app.server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
