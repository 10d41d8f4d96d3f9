"""The demo app and the router on loopback, without a cluster: what the scenarios' traffic rests on."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from harness.demoapp import Behaviour, DemoApp
from harness.router import Backend, Router, backend_weights
from harness.webhook import WebhookReceiver


@pytest.fixture
def apps() -> Iterator[tuple[DemoApp, DemoApp]]:
    pair = (DemoApp(0, "web", "demo", "1.0", Behaviour(0.0, 1, 2)),
            DemoApp(0, "web-canary", "demo", "2.0", Behaviour(1.0, 1, 2)))
    threads = [threading.Thread(target=a.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
               for a in pair]
    for t in threads:
        t.start()
    yield pair
    for a in pair:
        a.server.shutdown()
        a.server.server_close()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_demoapp_answers_counts_and_reconfigures(apps: tuple[DemoApp, DemoApp]) -> None:
    stable, canary = apps
    base = f"http://127.0.0.1:{stable.port}"
    assert get(f"{base}/healthz")[0] == 200
    assert [get(f"{base}/")[0] for _ in range(5)] == [200] * 5
    assert get(f"http://127.0.0.1:{canary.port}/")[0] == 500
    req = urllib.request.Request(f"{base}/admin/config", method="POST",
                                 data=json.dumps({"errorRate": 1.0, "latencyMs": {"p50": 1, "p95": 3}}).encode())
    with urllib.request.urlopen(req, timeout=5) as r:
        assert json.load(r)["errorRate"] == 1.0
    assert get(f"{base}/")[0] == 500
    bad = urllib.request.Request(f"{base}/admin/config", method="POST", data=b'{"errorRate": 3}')
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(bad, timeout=5)
    metrics = get(f"{base}/metrics")[1].decode()
    assert 'http_requests_total{code="200",service="web"} 5.0' in metrics
    assert 'http_requests_total{code="500",service="web"} 1.0' in metrics
    assert 'http_request_duration_seconds_bucket{le="2.0",service="web"} 6.0' in metrics
    assert 'le="2.5"' in metrics


def run_for(seconds: float, r: Router) -> Router:
    """The router's load for this long, then stopped (also when the wait is interrupted)."""
    r.start()
    try:
        time.sleep(seconds)
    finally:
        r.stop()
    return r


def test_router_follows_weights(apps: tuple[DemoApp, DemoApp]) -> None:
    stable, canary = apps
    route: dict[str, Any] = {"spec": {"rules": [{"backendRefs": [{"name": "web", "weight": 100},
                                                                 {"name": "web-canary", "weight": 0}]}]}}
    seen: list[str] = []
    backends = {"web": Backend("stable", "web"), "web-canary": Backend("canary", "web-canary")}
    r = Router(lambda: backend_weights(route), backends, {"stable": stable.port, "canary": canary.port}, rps=100,
               max_seconds=5, on_change=seen.append)
    r.start()
    try:
        time.sleep(1.0)
        assert r.stats.sent["canary"] == 0
        route = {"spec": {"rules": [{"backendRefs": [{"name": "web", "weight": 50},
                                                     {"name": "web-canary", "weight": 50}]}]}}
        time.sleep(1.5)
    finally:
        r.stop()
    assert [w for _, w in r.changes] == [0, 50]
    assert r.stats.sent["canary"] > 20
    assert r.stats.codes["canary 500"] == r.stats.sent["canary"]
    assert r.stats.failed == 0
    assert len(seen) == 2


def test_a_router_with_a_fixed_canary_share_reads_the_weights_and_ignores_them(apps: tuple[DemoApp, DemoApp]
                                                                               ) -> None:
    stable, canary = apps
    route: dict[str, Any] = {"spec": {"rules": [{"backendRefs": [{"name": "web", "weight": 95},
                                                                 {"name": "web-canary", "weight": 5}]}]}}
    backends = {"web": Backend("stable", "web"), "web-canary": Backend("canary", "web-canary")}
    r = run_for(2.0, Router(lambda: backend_weights(route), backends, {"stable": stable.port, "canary": canary.port},
                            rps=100, max_seconds=3, canary_share=50))
    assert r.canary_weight == 5  # what the route says, as the timeline shows it
    sent = r.stats.sent
    assert sent["canary"] + sent["stable"] > 100 and 0.35 < sent["canary"] / (sent["canary"] + sent["stable"]) < 0.65


def test_router_users_keep_the_sticky_cookie_and_the_rule_keeps_them_on_the_canary(apps: tuple[DemoApp, DemoApp]
                                                                                    ) -> None:
    from harness.router import rule_plan
    from saferollout.adapters.routers.gateway import routed_rules
    from saferollout.core.actions import Routing

    stable, canary = apps
    base = [{"backendRefs": [{"name": "web", "weight": 100}, {"name": "web-canary", "weight": 0}]}]
    route = {"spec": {"rules": routed_rules(base, "web", "web-canary", 25, Routing(sticky="sr-web=v2"))}}
    backends = {"web": Backend("stable", "web"), "web-canary": Backend("canary", "web-canary")}
    r = run_for(2.0, Router(lambda: rule_plan(route), backends, {"stable": stable.port, "canary": canary.port},
                            rps=100, max_seconds=3, users=5))
    seen = r.stats.seen
    assert seen[("sticky", False, "canary", False)] >= 1  # the weight brought users there
    assert seen[("sticky", False, "canary", True)] > 50  # the cookie kept them
    assert seen[("sticky", False, "stable", True)] == 0
    assert all(jar == {"sr-web": "v2"} for jar in r.jars)  # 5 users, 25%: every one got the canary soon


def test_demoapp_labels_by_the_service_the_request_came_through(apps: tuple[DemoApp, DemoApp]) -> None:
    stable, _ = apps
    base = f"http://127.0.0.1:{stable.port}"
    req = urllib.request.Request(f"{base}/", headers={"X-Harness-Service": "web-preview"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert json.load(r)["service"] == "web-preview"
    bad = urllib.request.Request(f"{base}/", headers={"X-Harness-Service": 'x"}'})  # not a name: own label
    with urllib.request.urlopen(bad, timeout=5) as r:
        assert json.load(r)["service"] == "web"
    metrics = get(f"{base}/metrics")[1].decode()
    assert 'http_requests_total{code="200",service="web-preview"} 1.0' in metrics
    assert 'http_requests_total{code="500",service="web-preview"} 0.0' in metrics  # made with the label
    assert 'http_requests_total{code="200",service="web"} 1.0' in metrics
    assert "app_memory_working_set_bytes 5e+07" in metrics


def test_demoapp_health_and_memory_follow_the_behaviour(apps: tuple[DemoApp, DemoApp]) -> None:
    stable, _ = apps
    base = f"http://127.0.0.1:{stable.port}"
    body = json.dumps({"healthy": False, "memoryMB": 130}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{base}/admin/config", method="POST", data=body), timeout=5):
        pass
    assert get(f"{base}/healthz")[0] == 503
    assert "app_memory_working_set_bytes 1.3e+08" in get(f"{base}/metrics")[1].decode()
    for wrong in ({"healthy": "no"}, {"memoryMB": -1}):
        req = urllib.request.Request(f"{base}/admin/config", method="POST", data=json.dumps(wrong).encode())
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(req, timeout=5)


def test_router_sends_the_service_label_and_follows_any_weights(apps: tuple[DemoApp, DemoApp]) -> None:
    stable, canary = apps
    pods = {"web": 1, "web-canary": 0}  # a Service's pods, as the blue-green and replica routers read them
    backends = {"web": Backend("stable", "active"), "web-canary": Backend("canary", "active")}
    r = Router(lambda: dict(pods), backends, {"stable": stable.port, "canary": canary.port}, rps=50, max_seconds=5)
    r.start()
    try:
        time.sleep(0.8)
        pods.update({"web": 0, "web-canary": 1})
        time.sleep(1.0)
    finally:
        r.stop()
    assert [w for _, w in r.changes] == [0, 100]
    assert r.stats.sent["stable"] > 10 and r.stats.sent["canary"] > 10
    assert 'http_requests_total{code="500",service="active"}' in get(f"http://127.0.0.1:{canary.port}/metrics")[1].decode()


def test_webhook_receiver_records_posts() -> None:
    rx = WebhookReceiver()
    rx.start()
    try:
        for path, body in (("/generic", b'{"rollout": "a", "severity": "high", "title": "t", "text": "x"}'),
                           ("/slack", b"not json")):
            req = urllib.request.Request(rx.url + path, method="POST", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=5) as resp:
                assert resp.status == 200
        rx.wait_quiet(quiet=0.2, limit=2)
    finally:
        rx.stop()
    got = rx.received
    assert [(g.path, g.format, g.severity) for g in got] == [("/generic", "generic", "high"), ("/slack", "unknown", None)]
