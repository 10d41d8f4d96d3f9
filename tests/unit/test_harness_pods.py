"""Pods mode's local parts: the demo app as a pod's container, the router in front of a real data plane, the
scenarios that keep the stand-ins, image names as containerd keeps them, the world built for real pods."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.demoapp import ROLE_HEADER, Behaviour, DemoApp
from harness.format import load
from harness.kube import world
from harness.pods import PodWorld, normalised, stand_in_reason
from harness.router import Backend, Router, backend_weights

REPO = Path(__file__).resolve().parents[2]


def serve(app: DemoApp) -> threading.Thread:
    t = threading.Thread(target=app.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    return t


@pytest.fixture
def pod() -> Iterator[DemoApp]:
    app = DemoApp(0, "web", "demo", "stable", Behaviour(0.0, 1, 2), pod=True, admin_from=("10.240.0.1",))
    serve(app)
    yield app
    app.server.shutdown()
    app.server.server_close()


def test_a_pods_admin_is_on_its_own_port_only() -> None:
    """What a data plane forwards (from the host's address, like the harness) must not reach the admin."""
    app = DemoApp(0, "web", "demo", "stable", Behaviour(0.0, 1, 2), pod=True, admin_port=0)
    assert app.admin_server is not None
    serve(app)
    threading.Thread(target=app.admin_server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        main = f"http://127.0.0.1:{app.port}"
        admin = f"http://127.0.0.1:{app.admin_server.server_address[1]}"
        assert call(f"{main}/admin/config", {"errorRate": 1.0})[0] == 404
        assert b"errorRate" not in call(f"{main}/admin/config")[1]  # an application request there, not the config
        assert call(f"{admin}/admin/config", {"errorRate": 1.0})[0] == 200
        assert call(f"{main}/")[0] == 500
    finally:
        for srv in (app.server, app.admin_server):
            srv.shutdown()
            srv.server_close()


def call(url: str, body: dict[str, Any] | None = None) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def test_a_pod_is_not_ready_until_configured_then_serves_as_its_role_and_service(pod: DemoApp) -> None:
    base = f"http://127.0.0.1:{pod.port}"
    assert call(f"{base}/ready")[0] == 503
    code, _, _ = call(f"{base}/admin/config", {"errorRate": 1.0, "service": "web-canary", "role": "canary"})
    assert code == 200
    assert call(f"{base}/ready")[0] == 200
    code, _, headers = call(f"{base}/")
    assert code == 500 and headers[ROLE_HEADER] == "canary"
    metrics = call(f"{base}/metrics")[1].decode()
    assert 'http_requests_total{code="500",service="web-canary"} 1.0' in metrics
    # bad input changes nothing, and says what is wrong
    for bad in ({"role": "boss"}, {"service": "Not A Name"}, {"errorRate": 2}):
        code, body, _ = call(f"{base}/admin/config", bad)
        assert code == 400 and body.strip(), bad
    assert json.loads(call(f"{base}/admin/config")[1]) == {
        "errorRate": 1.0, "latencyMs": {"p50": 1.0, "p95": 2.0}, "healthy": True, "memoryMB": 50.0,
        "service": "web-canary", "role": "canary"}


def test_the_demoapp_refuses_to_listen_beyond_loopback_unless_it_is_a_pod() -> None:
    from harness.demoapp import main
    with pytest.raises(SystemExit):
        main(["--port", "0", "--host", "0.0.0.0", "--service", "web", "--namespace", "demo"])
    with pytest.raises(SystemExit):
        main(["--port", "0", "--service", "web", "--namespace", "demo", "--admin-from", "10.0.0.1"])


def test_the_router_sends_everything_to_the_data_plane_and_counts_by_the_answering_pod(pod: DemoApp) -> None:
    assert call(f"http://127.0.0.1:{pod.port}/admin/config", {"service": "web-canary", "role": "canary"})[0] == 200
    route = {"spec": {"rules": [{"backendRefs": [{"name": "web", "weight": 90}, {"name": "web-canary", "weight": 10}]}]}}
    backends = {"web": Backend("stable", None), "web-canary": Backend("canary", None)}
    # the "data plane" here is the canary pod itself: every request reaches it, whatever the weights say
    r = Router(lambda: backend_weights(route), backends, {}, rps=50, max_seconds=3, upstream=("127.0.0.1", pod.port))
    r.start()
    time.sleep(1.5)
    r.stop()
    assert r.canary_weight == 10  # read from the route, for the timeline and the expectations
    assert r.stats.sent["stable"] == 0 and r.stats.sent["canary"] > 40
    assert r.stats.codes["canary 200"] == r.stats.sent["canary"]
    # within UPSTREAM_SETTLE of the route's (first) reading, a request is not counted under its plan: the data plane
    # may not have applied it yet
    assert {label for label, _, _, _ in r.stats.seen} == {"settling"}
    r = Router(lambda: backend_weights(route), backends, {}, rps=50, max_seconds=3, upstream=("127.0.0.1", pod.port),
               settle=0.0)
    r.start()
    time.sleep(0.5)
    r.stop()
    assert {label for label, _, _, _ in r.stats.seen} == {"weight"}


def test_image_names_as_containerd_keeps_them() -> None:
    assert normalised("demo/web:2.0") == "docker.io/demo/web:2.0"
    assert normalised("web:1") == "docker.io/library/web:1"
    assert normalised("web") == "docker.io/library/web:latest"
    assert normalised("localhost/saferollout/demoapp:0.1.0") == "localhost/saferollout/demoapp:0.1.0"
    assert normalised("registry.example:5000/team/web:3") == "registry.example:5000/team/web:3"
    assert normalised("ghcr.io/team/web") == "ghcr.io/team/web:latest"


def test_which_scenarios_keep_the_stand_ins_and_why() -> None:
    files = sorted((REPO / "scenarios").glob("*.yaml"))
    reasons = {f.stem: stand_in_reason(s) for f in files if not (s := load(f)).cases}
    assert reasons["router-istio"] and "istio" in reasons["router-istio"]
    assert reasons["router-nginx"] and "nginx" in reasons["router-nginx"]
    assert reasons["mirror-rollback"] and "mirror" in reasons["mirror-rollback"]
    assert reasons["sticky-canary-rollback"] and "sticky" in reasons["sticky-canary-rollback"]
    assert reasons["traffic-split-not-applied"] and "canaryShare" in reasons["traffic-split-not-applied"]
    assert reasons["judge-equal"] and "judged" in reasons["judge-equal"]
    assert reasons["header-match-rollback"] is None  # Traefik applies header matches as written
    assert reasons["router-replicas"] is None and reasons["blue-green-rollback"] is None  # kube-proxy's ClusterIPs
    assert reasons["statefulset-partition-rollback"] and "partition" in reasons["statefulset-partition-rollback"]


def test_the_world_for_real_pods_pins_them_to_the_real_node_behind_a_readiness_probe() -> None:
    s = load(REPO / "scenarios" / "header-match-rollback.yaml")
    docs = world("ns1", s.target, s.initial_target_images(), 1, s.traffic, None, PodWorld("10.240.0.1", 18080))
    dep = next(d for d in docs if d["kind"] == "Deployment")
    spec = dep["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"saferollout.dev/node": "real"}
    (c,) = spec["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["args"][:1] == ["--pod"] and c["args"][-2:] == ["--admin-from", "10.240.0.1"]
    gw = next(d for d in docs if d["kind"] == "Gateway")
    assert gw["spec"]["gatewayClassName"] == "saferollout-traefik"
    assert gw["spec"]["listeners"][0]["port"] == 18080


def test_requests_sent_just_before_a_change_was_seen_or_while_it_settles_count_as_settling() -> None:
    """A data plane may apply a route before the harness's next read sees it, and after it, for a while, still the
    old one: only what it did with a route it has surely applied counts under that route's plan."""
    from harness.router import SEEN_LATE, SETTLING
    r = Router(lambda: None, {"web": Backend("stable", None), "web-canary": Backend("canary", None)}, {}, rps=0,
               max_seconds=1, upstream=("127.0.0.1", 9), settle=2.5)
    r.raw_changes = [(100.0, {"web": 100}), (110.0, {"web": 50})]  # changes seen at 100 s and 110 s
    for sent in (100.5, 103.0, 109.7, 110 - SEEN_LATE - 0.05, 112.0, 113.0):
        r._answered.append((sent, "match", True, "canary", False))
    r.stop()
    assert r.stats.seen[(SETTLING, True, "canary", False)] == 3  # 100.5 and 112.0 settle, 109.7 came just before
    assert r.stats.seen[("match", True, "canary", False)] == 3  # 103.0, 109.35, 113.0
