"""The real node of the local cluster (SR_REAL_NODE=1 cluster/up.sh): real containers, real limits, a real data plane.

The module's fixture starts the cluster with the real node itself when the running one has none (up.sh then starts
the cluster anew). Nothing is skipped: a missing tool, no root, or a node that does not come up fails the module.
The image is this repository's testapp (cluster/node/testapp, a static Go binary), written as an OCI archive by
cluster/node/images.sh and imported into the node's containerd; there is no registry, so pods use
imagePullPolicy: Never.

Checked here: the node registers Ready with its label and taint, and the taint keeps pods that do not tolerate it
away; `kubectl logs` and `kubectl exec`; a pod reaches the API server through the kubernetes Service with its
ServiceAccount token; a memory limit is enforced by the kernel (OOMKilled); a ClusterIP Service answers from the
host through kube-proxy's rules, from both pods; a pod that is not Ready is out of the EndpointSlice's ready
endpoints and gets no traffic; and the routes send nothing off the machine.
"""

from __future__ import annotations

import http.client
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import CLUSTER_DIR, REPO, ensure_cluster, kubeconfig_path, kubectl

pytestmark = pytest.mark.e2e

IMAGES = CLUSTER_DIR / "node" / "images.sh"
LABEL = "saferollout.dev/node"
TAINT = "saferollout.dev/real-node"
TOLERATE = [{"key": TAINT, "operator": "Exists", "effect": "NoSchedule"}]


def _run(*args: str) -> str:
    result = subprocess.run(list(args), cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
    return result.stdout.strip()


def _settings() -> dict[str, str]:
    """The real node's settings as up.sh recorded them (bridge, CIDRs, ports)."""
    path = kubeconfig_path().parent / "node" / "settings"
    assert path.is_file(), f"no real node's settings at {path}: the cluster runs without the real node"
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def _node() -> dict[str, Any]:
    nodes = json.loads(kubectl("get", "nodes", "-l", f"{LABEL}=real", "-o", "json").stdout)["items"]
    assert len(nodes) == 1, f"expected one node labelled {LABEL}=real, found {len(nodes)}"
    node: dict[str, Any] = nodes[0]
    return node


@pytest.fixture(scope="module")
def image() -> str:
    """The testapp image, built (cached) and imported into the real node's containerd; its reference."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SR_REAL_NODE", "1")
        ensure_cluster()
    archive = _run("bash", str(IMAGES), "build", "testapp")
    _run("bash", str(IMAGES), "import", archive)
    return _run("bash", str(IMAGES), "ref", "testapp")


@pytest.fixture(scope="module")
def ns(image: str) -> Iterator[str]:
    name = f"sr-real-node-{secrets.token_hex(3)}"
    kubectl("create", "namespace", name)
    deadline = time.monotonic() + 60
    while kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
        assert time.monotonic() < deadline, f"no default ServiceAccount in {name} after 60 s"
        time.sleep(0.2)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def _pod(name: str, image: str, *args: str, memory: str = "64Mi", restart: str = "Always",
         tolerate: bool = True, labels: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "nodeSelector": {LABEL: "real"},
        "terminationGracePeriodSeconds": 1,
        "restartPolicy": restart,
        "containers": [{
            "name": "app", "image": image, "imagePullPolicy": "Never", "args": list(args),
            "ports": [{"containerPort": 8080}],
            "resources": {"limits": {"memory": memory, "cpu": "250m"}},
        }],
    }
    if tolerate:
        spec["tolerations"] = TOLERATE
    if not args:  # the server: ready while /tmp/not-ready is absent
        spec["containers"][0]["readinessProbe"] = {
            "httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1, "failureThreshold": 1}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def _apply(ns: str, *objects: dict[str, Any]) -> None:
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def _ready(ns: str, *pods: str) -> None:
    for pod in pods:
        result = kubectl("wait", "-n", ns, "--for=condition=Ready", f"pod/{pod}", "--timeout=90s", check=False)
        if result.returncode != 0:
            described = kubectl("describe", "-n", ns, f"pod/{pod}", check=False).stdout
            pytest.fail(f"pod {pod} did not become Ready on the real node:\n{result.stderr}\n{described[-3000:]}")


def _get(ip: str, port: int, path: str = "/") -> tuple[int, str]:
    """An HTTP GET from this host; http.client, so no proxy setting of the environment is ever used."""
    conn = http.client.HTTPConnection(ip, port, timeout=3)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def _pod_json(ns: str, pod: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(kubectl("get", "-n", ns, f"pod/{pod}", "-o", "json").stdout)
    return result


# ------------------------------------------------------------------------------------------------------ tests


def test_node_is_ready_labelled_and_tainted(ns: str, image: str) -> None:
    node = _node()
    settings = _settings()
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions.get("Ready") == "True", conditions
    assert {"key": TAINT, "value": "true", "effect": "NoSchedule"} in node["spec"].get("taints", [])
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == _node_ip(settings["SR_NODE_SUBNET"]), addresses
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://1.6")
    kwok = json.loads(kubectl("get", "nodes", "-l", "type=kwok", "-o", "json").stdout)["items"]
    assert kwok, "the kwok nodes are gone"

    # A pod that does not tolerate the taint is never scheduled there, even when it asks for the node.
    _apply(ns, _pod("untolerated", image, tolerate=False))
    deadline = time.monotonic() + 30
    while True:
        conds = {c["type"]: c for c in _pod_json(ns, "untolerated")["status"].get("conditions", [])}
        if conds.get("PodScheduled", {}).get("reason") == "Unschedulable":
            assert "1 node(s) had untolerated taint" in conds["PodScheduled"]["message"], conds["PodScheduled"]
            break
        assert time.monotonic() < deadline, f"the untolerating pod was not refused: {conds}"
        time.sleep(0.3)
    kubectl("delete", "-n", ns, "pod/untolerated", "--wait=false")


def test_logs_exec_and_the_api_server_from_a_pod(ns: str, image: str) -> None:
    _apply(ns, _pod("app", image))
    _ready(ns, "app")
    pod = _pod_json(ns, "app")
    assert pod["spec"]["nodeName"] == _node()["metadata"]["name"]
    logs = kubectl("logs", "-n", ns, "pod/app").stdout
    assert "testapp app listening on :8080" in logs, logs
    out = kubectl("exec", "-n", ns, "pod/app", "--", "/testapp", "echo", "hello", "from", "exec").stdout
    assert out.strip() == "hello from exec"
    # As an in-cluster client: the kubernetes Service's ClusterIP, kube-proxy, the node address, the API server;
    # TLS verified with the ServiceAccount's CA, authenticated with its token.
    version = json.loads(kubectl("exec", "-n", ns, "pod/app", "--", "/testapp", "api", "/version").stdout)
    server = json.loads(kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert version["gitVersion"] == server["gitVersion"]
    denied = kubectl("exec", "-n", ns, "pod/app", "--", "/testapp", "api", f"/api/v1/namespaces/{ns}/secrets", check=False)
    assert denied.returncode != 0 and f"system:serviceaccount:{ns}:default" in denied.stdout, denied.stdout


def test_memory_limit_is_enforced(ns: str, image: str) -> None:
    _apply(ns, _pod("hog", image, "alloc", "256", memory="48Mi", restart="Never"))
    deadline = time.monotonic() + 90
    while True:
        statuses = _pod_json(ns, "hog")["status"].get("containerStatuses", [])
        terminated = statuses[0]["state"].get("terminated") if statuses else None
        if terminated:
            break
        assert time.monotonic() < deadline, f"the pod allocating 256 MiB under a 48 MiB limit still runs: {statuses}"
        time.sleep(0.5)
    assert terminated["reason"] == "OOMKilled" and terminated["exitCode"] == 137, terminated
    logs = kubectl("logs", "-n", ns, "pod/hog").stdout
    assert "allocated 8 MiB" in logs and "holding 256 MiB" not in logs, logs


def test_cluster_ip_from_the_host_and_a_not_ready_pod_gets_no_traffic(ns: str, image: str) -> None:
    labels = {"app": "web"}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]}}
    _apply(ns, _pod("web-a", image, labels=labels), _pod("web-b", image, labels=labels), service)
    _ready(ns, "web-a", "web-b")
    ips = {name: _pod_json(ns, name)["status"]["podIP"] for name in ("web-a", "web-b")}
    cluster_ip = json.loads(kubectl("get", "-n", ns, "service/web", "-o", "json").stdout)["spec"]["clusterIP"]

    def ready_endpoints() -> dict[str, bool]:
        slices = json.loads(kubectl("get", "endpointslices", "-n", ns, "-l", "kubernetes.io/service-name=web",
                                    "-o", "json").stdout)["items"]
        return {e["addresses"][0]: bool(e["conditions"].get("ready")) for s in slices for e in s.get("endpoints") or []}

    def answers(n: int) -> set[str]:
        """Who answers n connections; a refused one (kube-proxy's REJECT until its next sync) counts as "refused"."""
        seen = set()
        for _ in range(n):
            try:
                status, body = _get(cluster_ip, 80)
            except ConnectionRefusedError:
                seen.add("refused")
                continue
            assert status == 200, (status, body)
            seen.add(body.strip().removeprefix("hello from "))
        return seen

    deadline = time.monotonic() + 30
    while ready_endpoints() != {ips["web-a"]: True, ips["web-b"]: True}:
        assert time.monotonic() < deadline, f"the EndpointSlice never listed both pods as ready: {ready_endpoints()}"
        time.sleep(0.3)
    # kube-proxy picks an endpoint at random per connection: 40 connections miss one of two with p = 2^-39.
    # Its rules follow the EndpointSlice within a sync (minSyncPeriod 1 s); until then the Service refuses.
    deadline = time.monotonic() + 30
    while (seen := answers(40)) != {"web-a", "web-b"}:
        assert time.monotonic() < deadline, f"the ClusterIP {cluster_ip} from the host reached only {seen}"
        time.sleep(0.5)

    kubectl("exec", "-n", ns, "pod/web-b", "--", "/testapp", "not-ready")
    deadline = time.monotonic() + 30
    while ready_endpoints() != {ips["web-a"]: True, ips["web-b"]: False}:
        assert time.monotonic() < deadline, f"web-b is not Ready but the EndpointSlice says {ready_endpoints()}"
        time.sleep(0.3)
    conds = {c["type"]: c["status"] for c in _pod_json(ns, "web-b")["status"]["conditions"]}
    assert conds["Ready"] == "False", conds
    # kube-proxy syncs its rules at most once a second (minSyncPeriod); then every answer is web-a's
    deadline = time.monotonic() + 15
    while (seen := answers(20)) != {"web-a"}:
        assert time.monotonic() < deadline, f"the not-Ready pod still gets traffic: {seen}"
        time.sleep(0.5)


def _route(*args: str) -> str:
    """The kernel's routing decision (`ip route get`; nothing is sent). A blackhole route answers EINVAL."""
    result = subprocess.run(["ip", "-4", "route", "get", *args], stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, check=False)
    if result.returncode != 0 and "Invalid argument" in result.stderr:
        return "blackhole"
    assert result.returncode == 0, f"ip route get {' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


def _node_ip(subnet: str) -> str:
    """The bridge's gateway address, the first of its subnet (up.sh's rule)."""
    net, last = subnet.split("/")[0].rsplit(".", 1)
    return f"{net}.{int(last) + 1}"


def test_nothing_leaves_the_machine(ns: str, image: str) -> None:
    s = _settings()
    bridge, subnet = s["SR_NODE_BRIDGE"], s["SR_NODE_SUBNET"]
    net = subnet.split("/")[0].rsplit(".", 1)[0]
    pod_ip, other_pod = f"{net}.200", f"{net}.201"
    # What the pods send is routed by their own table: the bridge's subnet, else a blackhole (no packet is sent
    # here: `ip route get` asks the kernel for its decision).
    for outside in ("1.1.1.1", "192.0.2.1", "203.0.113.7", "10.0.0.1"):
        decision = _route(outside, "from", pod_ip, "iif", bridge)
        assert decision == "blackhole", f"a pod's packet to {outside} would be routed: {decision}"
    assert f"dev {bridge}" in _route(other_pod, "from", pod_ip, "iif", bridge)  # the same question, answered
    assert _route(_node_ip(subnet), "from", pod_ip, "iif", bridge).startswith("local")
    # From the host: pod CIDRs (this node's beyond the bridge, kwok's) are blackholed; the Service CIDR goes to the
    # sink device, where a packet that kube-proxy's rules did not rewrite is dropped.
    pod_cidr = s["SR_NODE_POD_CIDR"].split("/")[0]
    beyond = pod_cidr.rsplit(".", 2)[0] + ".250.1"
    assert _route(beyond) == "blackhole", _route(beyond)
    kwok = s["SR_POD_CIDR"].split("/")[0]
    assert _route(kwok) == "blackhole", _route(kwok)
    service = s["SR_SERVICE_CIDR"].split("/")[0].rsplit(".", 1)[0] + ".123"
    assert f"dev {s['SR_NODE_SINK']}" in _route(service), _route(service)
    # Only the bridge forwards: the machine's own setting is what it was before the cluster started.
    saved = dict(line.split(" ", 1) for line in (kubeconfig_path().parent / "node" / "sysctl.saved").read_text().splitlines())
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == saved["net.ipv4.ip_forward"]
    assert Path(f"/proc/sys/net/ipv4/conf/{bridge}/forwarding").read_text().strip() == "1"
    # And inside a pod there is no route off the machine at all.
    _apply(ns, _pod("prober", image))
    _ready(ns, "prober")
    probe = kubectl("exec", "-n", ns, "pod/prober", "--", "/testapp", "dial", "203.0.113.7:80", check=False)
    assert probe.returncode != 0 and "network is unreachable" in probe.stderr + probe.stdout, probe
