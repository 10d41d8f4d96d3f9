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
from harness.router import Router


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
    assert 'http_requests_total{code="200"} 5.0' in metrics
    assert 'http_requests_total{code="500"} 1.0' in metrics
    assert 'http_request_duration_seconds_bucket{le="2.0"} 6.0' in metrics
    assert 'le="2.5"' in metrics


def test_router_follows_weights(apps: tuple[DemoApp, DemoApp]) -> None:
    stable, canary = apps
    route: dict[str, Any] = {"spec": {"rules": [{"backendRefs": [{"name": "web", "weight": 100},
                                                                 {"name": "web-canary", "weight": 0}]}]}}
    seen: list[str] = []
    r = Router(lambda: route, "web", "web-canary", stable.port, canary.port, rps=100, max_seconds=5,
               on_change=seen.append)
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
