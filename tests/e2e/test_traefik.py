"""Traefik v3 (harness.traefik) as the Gateway API data plane, against the local cluster (cluster/up.sh).

What is proven, with real requests through Traefik's entrypoint on loopback:

- it applies an HTTPRoute's backend weights as the operator writes them (`weighted_rules`, the Gateway API
  router's own rewrite): 100 requests at 80/20 split 80/20 within `SPLIT_SLACK`, at 0/100 and 100/0 exactly;
- a weight change takes effect within `PROPAGATION_LIMIT` seconds of the write's success (the time the operator
  starts a stage's clock). Measured per change: after a quiet spell, and right after another change (Traefik applies
  at most one change per `providersThrottleDuration`, 2 s by default). The figures are printed after the module;
- an endpoint marked not ready in its EndpointSlice gets no traffic (and gets its share once ready again).

Until the cluster has a node with real pods, the backends are `harness.demoapp` servers inside a network namespace
made here (a veth pair, addresses from a /24 of `NET_POOL` that nothing on the machine uses, no default route in
the namespace): the API server refuses loopback addresses in an EndpointSlice, and these addresses lead nowhere but
into that namespace. The Services have no selector; the test writes their EndpointSlices. Namespace and veth are
removed in teardown. Needs root (ip netns); no skip: a missing Traefik binary or missing privileges fail.
tests/e2e/test_traefik_routing.py runs the routing stages in a world of its own made the same way (`open_world`).
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import random
import secrets
import signal
import socketserver
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from harness import traefik as tr
from harness.demoapp import Behaviour, DemoApp
from harness.services import stop_process, wait_http
from saferollout.adapters.routers.gateway import weighted_rules
from tests.e2e.cluster import REPO, ensure_cluster, kubectl

pytestmark = pytest.mark.e2e

NET_POOL = ipaddress.IPv4Network("10.213.0.0/16")  # not podman's 10.88/16, nor the cluster's 10.96/16 or 10.244/16
BACKEND_PORT = 8080
SPLIT_REQUESTS = 100
SPLIT_SLACK = 2  # Traefik's weighted round robin is deterministic; a couple of requests of slack at most
PROPAGATION_LIMIT = 5.0  # seconds from the write's success to every request following it
CONFIRM_SECONDS = 1.0  # after the change shows, this long with nothing from the old backends
QUIET_SECONDS = 2.5  # more than Traefik's providersThrottleDuration (2 s): the next change is not held back
ROUTE = "web"
STABLE, CANARY = "web", "web-canary"
GW_GROUP, GW_VERSION = "gateway.networking.k8s.io", "v1"


@dataclass
class Delay:
    what: str
    seconds: float


DELAYS: list[Delay] = []


# ---------------------------------------------------------------------------------------- network namespace


def _ip(*args: str, netns: str | None = None) -> str:
    argv = ["ip", *(("netns", "exec", netns, "ip") if netns else ()), *args]
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {r.stderr.strip()}")
    return r.stdout


def _taken() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Every network the machine has an address or a route in (any table), the default route excepted."""
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for link in json.loads(_ip("-j", "-4", "addr")):
        for a in link.get("addr_info", []):
            nets.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
    for route in json.loads(_ip("-j", "-4", "route", "show", "table", "all")):
        dst = route.get("dst", "default")
        if dst != "default":
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False))
    return nets


@dataclass
class Netns:
    """A network namespace joined to the host by a veth pair: host side .1, addresses .2 and up inside."""

    name: str
    subnet: ipaddress.IPv4Network
    host_if: str
    addresses: list[str] = field(default_factory=list)

    @property
    def host_address(self) -> str:
        return str(self.subnet[1])

    @classmethod
    def create(cls, count: int) -> Netns:
        taken = _taken()
        free = [s for s in NET_POOL.subnets(new_prefix=24) if not any(s.overlaps(t) for t in taken)]
        if not free:
            raise RuntimeError(f"no free /24 in {NET_POOL}")
        subnet = random.choice(free[1:-1] or free)
        tag = secrets.token_hex(3)
        ns = cls(f"srtf-{tag}", subnet, f"srtf{tag}h", [str(subnet[2 + i]) for i in range(count)])
        peer = f"srtf{tag}n"
        _ip("netns", "add", ns.name)
        try:
            _ip("link", "add", ns.host_if, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", ns.name)
            _ip("addr", "add", f"{ns.host_address}/24", "dev", ns.host_if)
            _ip("link", "set", ns.host_if, "up")
            _ip("link", "set", "lo", "up", netns=ns.name)
            for a in ns.addresses:
                _ip("addr", "add", f"{a}/24", "dev", peer, netns=ns.name)
            _ip("link", "set", peer, "up", netns=ns.name)
        except BaseException:
            ns.delete()
            raise
        return ns

    def route_dev(self, address: str) -> str:
        """The interface the host sends to `address` through (must be our veth: nothing goes out of the machine)."""
        routes = json.loads(_ip("-j", "route", "get", address))
        return str(routes[0].get("dev", "")) if routes else ""

    def delete(self) -> None:
        """Deleting the namespace deletes the veth inside it, and with it its host side."""
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, check=False)


def serve(argv: list[str]) -> int:
    """A backend inside the namespace: the demo app on one of its addresses (`python -m tests.e2e.test_traefik`).

    The demo app's command line takes loopback only; here the address is one that exists only in our namespace.
    Its answers go out in two writes (head, then body): without TCP_NODELAY the body waits for Traefik's delayed
    ACK, some 40 ms a request, which would be the resolution of every delay measured here.
    """
    host, port, service, version = argv
    app = DemoApp(int(port), service, "traefik-e2e", version, Behaviour(0.0, 1.0, 2.0), host=host)
    handler = app.server.RequestHandlerClass
    assert isinstance(handler, type) and issubclass(handler, socketserver.StreamRequestHandler)
    handler.disable_nagle_algorithm = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=app.server.shutdown, daemon=True).start())
    print(f"backend {version} on {host}:{app.port}", flush=True)
    app.server.serve_forever(poll_interval=0.2)
    app.server.server_close()
    return 0


# ------------------------------------------------------------------------------------------------ the world


@dataclass
class Answer:
    version: str  # the answering backend's version, or "HTTP <code>" when it is not a backend's 200
    headers: http.client.HTTPMessage


@dataclass
class World:
    ns: str
    netns: Netns
    traefik: tr.Traefik
    api: client.ApiClient
    versions: dict[str, str]  # backend address -> the version it answers with
    last_change: float = 0.0
    conn: http.client.HTTPConnection | None = None

    # ------------------------------------------------------------------------------------------- requests
    def fetch(self, headers: dict[str, str] | None = None) -> Answer:
        """One request through Traefik (the connection kept alive), with these request headers."""
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.traefik.port, timeout=5)
            try:
                self.conn.request("GET", "/", headers=headers or {})
                resp = self.conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
                continue
            if resp.status != 200:
                return Answer(f"HTTP {resp.status}", resp.headers)
            return Answer(str(json.loads(body)["version"]), resp.headers)
        raise AssertionError("unreachable")

    def get(self, headers: dict[str, str] | None = None) -> str:
        """The answering backend's version, or "HTTP <code>"."""
        return self.fetch(headers).version

    def split(self, n: int = SPLIT_REQUESTS, headers: dict[str, str] | None = None) -> Counter[str]:
        return Counter(self.get(headers) for _ in range(n))

    def received(self, version: str) -> int:
        """Application requests the backend has served, whoever sent them (its demo app's counter, read directly)."""
        address = next(a for a, v in self.versions.items() if v == version)
        with urllib.request.urlopen(f"http://{address}:{BACKEND_PORT}/metrics", timeout=5) as r:
            text = r.read().decode()
        return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("http_requests_total{")))

    # --------------------------------------------------------------------------------------------- writes
    def quiet(self) -> None:
        """Wait until the previous change (its write, or once seen, its taking effect) is older than Traefik's
        throttle, so this one is not held back."""
        time.sleep(max(0.0, self.last_change + QUIET_SECONDS - time.monotonic()))

    def set_weights(self, canary: int) -> float:
        """Write the canary weight as the operator's Gateway API router does; returns when the write succeeded."""
        custom = client.CustomObjectsApi(self.api)
        route = custom.get_namespaced_custom_object(GW_GROUP, GW_VERSION, self.ns, "httproutes", ROUTE)
        rules = weighted_rules(route["spec"]["rules"], STABLE, CANARY, canary)
        body = {"metadata": {"resourceVersion": route["metadata"]["resourceVersion"]}, "spec": {"rules": rules}}
        custom.patch_namespaced_custom_object(GW_GROUP, GW_VERSION, self.ns, "httproutes", ROUTE, body,
                                              _content_type="application/merge-patch+json")
        self.last_change = time.monotonic()
        return self.last_change

    def set_ready(self, address: str, ready: bool) -> float:
        """Mark one endpoint of the stable Service's EndpointSlice ready or not; returns when the write succeeded."""
        disco = client.DiscoveryV1Api(self.api)
        eps = self.api.sanitize_for_serialization(disco.read_namespaced_endpoint_slice(f"{STABLE}-1", self.ns))
        index = next(i for i, e in enumerate(eps["endpoints"]) if e["addresses"] == [address])
        patch = [{"op": "test", "path": f"/endpoints/{index}/addresses/0", "value": address},
                 {"op": "replace", "path": f"/endpoints/{index}/conditions",
                  "value": {"ready": ready, "serving": ready, "terminating": False}}]
        disco.patch_namespaced_endpoint_slice(f"{STABLE}-1", self.ns, patch,
                                              _content_type="application/json-patch+json")
        self.last_change = time.monotonic()
        return self.last_change

    def wait_weighted(self, weights: list[int], timeout: float = PROPAGATION_LIMIT) -> None:
        """Until Traefik's API shows the route's weighted service with these weights (the change is loaded)."""
        deadline = time.monotonic() + timeout
        seen: list[list[int]] = []
        while time.monotonic() < deadline:
            seen = [[int(s.get("weight", 0)) for s in (svc.get("weighted") or {}).get("services") or []]
                    for svc in self.traefik.services() if svc.get("type") == "weighted"]
            if weights in seen:
                time.sleep(0.2)  # the API shows the configuration as the new handlers are being put in place
                return
            time.sleep(0.05)
        raise AssertionError(f"traefik did not load weights {weights} in {timeout:g}s (its weighted services: {seen})")


def settle(world: World, t0: float, done: Callable[[str], bool], what: str, confirm: bool = True,
           headers: dict[str, str] | None = None, record: list[Delay] | None = None) -> float:
    """Seconds from `t0` (a write's success) to the first request after which every answer satisfies `done`.

    Requests (with `headers`) go back to back. With `confirm` the change counts as applied once `CONFIRM_SECONDS`
    of answers (at least 50) all satisfy `done`; without, at the first answer that does. AssertionError after
    `PROPAGATION_LIMIT`. The delay goes into `record` (DELAYS by default).
    """
    good_since: float | None = None
    good = 0
    while True:
        sent = time.monotonic()
        answer = world.get(headers)
        if done(answer):
            if good_since is None:
                good_since = sent
            good += 1
            if not confirm or (sent - good_since >= CONFIRM_SECONDS and good >= 50):
                delay = good_since - t0
                (DELAYS if record is None else record).append(Delay(what, delay))
                world.last_change = max(world.last_change, good_since)  # Traefik's throttle runs from here
                return delay
        else:
            good_since, good = None, 0
            if sent - t0 > PROPAGATION_LIMIT:
                raise AssertionError(f"{what}: still answered by {answer!r} {sent - t0:.2f}s after the write")


def print_uncaptured(request: pytest.FixtureRequest, lines: list[str]) -> None:
    """Past pytest's capture, so that the figures show in a plain run."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print("\n".join(lines), flush=True)


def delay_lines(delays: list[Delay], kinds: tuple[str, ...]) -> list[str]:
    lines = ["", "Traefik: from the write's success to every following request obeying it (seconds)"]
    lines += [f"  {d.what:<64} {d.seconds:6.3f}" for d in delays]
    for kind in kinds:
        xs = [d.seconds for d in delays if d.what.startswith(kind)]
        if xs:
            lines.append(f"  {kind}: median {statistics.median(xs):.3f}  max {max(xs):.3f}  over {len(xs)}")
    return lines


@pytest.fixture(scope="module", autouse=True)
def delay_table(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print, after the module, how long each change took from its write to the traffic."""
    yield
    if DELAYS:
        print_uncaptured(request, delay_lines(DELAYS, ("weights, quiet", "weights, right after")))


def _objects(ns: str, netns: Netns, port: int) -> list[dict[str, Any]]:
    stable_a, canary, stable_b = netns.addresses
    svc_port = [{"name": "http", "port": 80, "targetPort": BACKEND_PORT}]

    def service(name: str) -> dict[str, Any]:  # no selector: the EndpointSlices are ours
        return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
                "spec": {"ports": svc_port}}

    def slice_(service: str, endpoints: list[tuple[str, bool]]) -> dict[str, Any]:
        return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                "metadata": {"name": f"{service}-1", "namespace": ns,
                             "labels": {"kubernetes.io/service-name": service,
                                        "endpointslice.kubernetes.io/managed-by": "saferollout.dev-e2e"}},
                "ports": [{"name": "http", "port": BACKEND_PORT, "protocol": "TCP"}],
                "endpoints": [{"addresses": [a], "conditions": {"ready": r, "serving": r, "terminating": False}}
                              for a, r in endpoints]}

    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        service(STABLE), service(CANARY),
        slice_(STABLE, [(stable_a, True), (stable_b, False)]), slice_(CANARY, [(canary, True)]),
        tr.gateway_class(), tr.gateway(ns, port),
        {"apiVersion": f"{GW_GROUP}/{GW_VERSION}", "kind": "HTTPRoute", "metadata": {"name": ROUTE, "namespace": ns},
         "spec": {"parentRefs": [{"name": tr.GATEWAY}],
                  "rules": [{"backendRefs": [{"name": STABLE, "port": 80, "weight": 100},
                                             {"name": CANARY, "port": 80, "weight": 0}]}]}},
    ]


@contextlib.contextmanager
def open_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A namespace, three backends in a network namespace and a Traefik of its own; all removed on exit."""
    kubeconfig = ensure_cluster()
    binary = tr.default_binary()
    if not binary.is_file():
        pytest.fail(f"no traefik binary at {binary}: build it with `bash cluster/build-traefik.sh`", pytrace=False)
    ns = f"sr-e2e-traefik-{secrets.token_hex(3)}"
    netns = Netns.create(3)
    procs: list[subprocess.Popen[bytes]] = []
    traefik = tr.Traefik(tmp_path_factory.mktemp("traefik"), kubeconfig, binary=binary, namespaces=[ns])
    api = config.new_client_from_config(config_file=str(kubeconfig))
    w = World(ns, netns, traefik, api, dict(zip(netns.addresses, ("stable-a", "canary", "stable-b"), strict=True)))
    try:
        for address in netns.addresses:  # nothing may leave the machine: each backend is behind our veth
            assert netns.route_dev(address) == netns.host_if, f"{address} is not routed into {netns.name}"
        log = traefik.root / "backends.log"
        for address, version in w.versions.items():
            service = CANARY if version == "canary" else STABLE
            with log.open("ab") as logf:
                procs.append(subprocess.Popen(
                    ["ip", "netns", "exec", netns.name, sys.executable, "-m", "tests.e2e.test_traefik", address,
                     str(BACKEND_PORT), service, version],
                    cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=logf, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL))
        for address in netns.addresses:
            assert wait_http(f"http://{address}:{BACKEND_PORT}/healthz", 20), f"backend {address} did not start; {log}"
        kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                       "items": _objects(ns, netns, traefik.port)}))
        traefik.start()
        traefik.wait_routers(1)
        deadline = time.monotonic() + 30
        while w.get() != "stable-a":
            assert time.monotonic() < deadline, f"no answer from the stable backend through traefik; see {traefik.log}"
            time.sleep(0.1)
        w.last_change = time.monotonic()
        yield w
    finally:
        if w.conn is not None:
            w.conn.close()
        traefik.stop()
        for p in procs:
            stop_process(p, timeout=5)
        kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)
        api.close()
        netns.delete()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with open_world(tmp_path_factory) as w:
        yield w


# ----------------------------------------------------------------------------------------------------- tests


def test_static_config_stays_on_the_machine(tmp_path: Path) -> None:
    """Entrypoints on loopback only, Traefik's version check and usage report off."""
    cfg = tr.Traefik(tmp_path, tmp_path / "kubeconfig").static_config()
    assert cfg["global"] == {"checkNewVersion": False, "sendAnonymousUsage": False}
    assert all(ep["address"].startswith("127.0.0.1:") for ep in cfg["entryPoints"].values())


def test_missing_binary_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "kubeconfig").write_text("{}")
    with pytest.raises(RuntimeError, match="no traefik binary"):
        tr.Traefik(tmp_path, tmp_path / "kubeconfig", binary=tmp_path / "absent").start()


def test_applies_the_routes_weights(world: World) -> None:
    """100 requests: 80/20 within SPLIT_SLACK, 0/100 and 100/0 exactly; all answered by the backends."""
    results: dict[int, Counter[str]] = {}
    for canary, weights in ((20, [80, 20]), (100, [0, 100]), (0, [100, 0]), (50, [50, 50])):
        world.quiet()
        world.set_weights(canary)
        world.wait_weighted(weights)
        results[canary] = got = world.split()
        assert sum(got.values()) == SPLIT_REQUESTS and set(got) <= {"stable-a", "canary"}, got
        print(f"weights {weights}: {dict(got)}")
    assert abs(results[20]["canary"] - 20) <= SPLIT_SLACK, results[20]
    assert abs(results[50]["canary"] - 50) <= SPLIT_SLACK, results[50]
    assert results[100] == Counter({"canary": SPLIT_REQUESTS})
    assert results[0] == Counter({"stable-a": SPLIT_REQUESTS})


def test_weight_change_propagates(world: World) -> None:
    """0/100 <-> 100/0 flips: the time from the write's success to every request going the new way.

    Six after a quiet spell (longer than Traefik's throttle), then three pairs whose second write follows the first
    change's first answer at once: Traefik holds that one back until its throttle since the first has run out.
    """
    backend = {100: "canary", 0: "stable-a"}
    state = {"canary": 0}

    def flip(what: str, confirm: bool = True) -> None:
        canary = state["canary"] = 100 - state["canary"]
        want = backend[canary]
        t0 = world.set_weights(canary)
        settle(world, t0, lambda answer: answer == want, f"{what}: canary -> {canary}", confirm=confirm)

    world.quiet()
    world.set_weights(0)
    world.wait_weighted([100, 0])
    for i in range(6):
        world.quiet()
        flip(f"weights, quiet #{i + 1}")
    for i in range(3):
        world.quiet()
        flip(f"weights, quiet #{i + 7} (to its first answer)", confirm=False)
        flip(f"weights, right after #{i + 1}")
    assert len(DELAYS) >= 12 and all(d.seconds < PROPAGATION_LIMIT for d in DELAYS)


def test_not_ready_endpoint_gets_no_traffic(world: World) -> None:
    """The stable Service's second endpoint: nothing while not ready, its share while ready, nothing again after."""
    _, _, stable_b = world.netns.addresses
    world.quiet()
    world.set_weights(0)
    world.wait_weighted([100, 0])
    world.quiet()
    before = world.split()
    assert before == Counter({"stable-a": SPLIT_REQUESTS}), before
    t0 = world.set_ready(stable_b, True)
    seen_b = threading.Event()

    def both(answer: str) -> bool:  # ready: answers come from b as well (the first b answer starts the clock)
        if answer == "stable-b":
            seen_b.set()
        return seen_b.is_set() and answer in ("stable-a", "stable-b")

    settle(world, t0, both, "endpoint ready: gets traffic")
    ready = world.split()
    assert ready["stable-a"] + ready["stable-b"] == SPLIT_REQUESTS, ready
    assert abs(ready["stable-b"] - SPLIT_REQUESTS // 2) <= SPLIT_SLACK, ready
    world.quiet()
    t0 = world.set_ready(stable_b, False)
    settle(world, t0, lambda a: a == "stable-a", "endpoint not ready: gets none")
    after = world.split()
    assert after == Counter({"stable-a": SPLIT_REQUESTS}), after
    print(f"not ready: {dict(before)}; ready: {dict(ready)}; not ready again: {dict(after)}")


def test_traefik_talks_to_nothing_off_the_machine(world: World) -> None:
    """Every socket Traefik has open (TCP and UDP) is on loopback or in our namespace's subnet."""
    world.split(10)
    proc = world.traefik.process
    assert proc is not None and proc.poll() is None
    out = subprocess.run(["ss", "-Htunap"], capture_output=True, text=True, check=True).stdout
    peers = [line.split()[5] for line in out.splitlines() if f"pid={proc.pid}," in line]
    assert peers, f"no sockets of traefik (pid {proc.pid}) in `ss` output"
    for peer in peers:
        host = peer.rsplit(":", 1)[0].strip("[]")
        if host in ("*", "0.0.0.0", "::"):  # a listening socket's peer
            continue
        address = ipaddress.ip_address(host.split("%")[0])
        assert address.is_loopback or address in world.netns.subnet, f"traefik is connected to {peer}"


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1:]))
