"""The operator installed by Helm runs in the cluster, on the real node, and reconciles rollouts there (issue 16).

The other e2e tests run the operator as a local process (under the chart's ServiceAccount at most). Here it is the
image built from the Dockerfile (scripts/image.sh, cached), imported into the real node's containerd
(cluster/node/images.sh import), installed with `helm install` into a namespace that ENFORCES Pod Security
`restricted`, pinned to sr-real-node (nodeSelector and a toleration of its taint), `imagePullPolicy: Never`. The
module fails, never skips, without root, a tool, or the real node.

Servers stay on loopback. The pods reach the host only at the bridge's gateway address (10.240.0.1: how they reach
the API server, through node.sh's socat), so a bounded forwarder (harness.services.TcpForwarder) listens there, on
that one address, for Prometheus and PostgreSQL. Prometheus scrapes the operator's /metrics through the chart's
metrics Service: host -> ClusterIP -> kube-proxy's rules -> the pod.

Checked:
- the pod is Running and Ready (its /healthz probes) on sr-real-node, as uid 10001 with a read-only root
  filesystem, under the chart's ServiceAccount, in a namespace where a non-compliant pod is refused;
- a SafeRollout in the watched namespace (a Deployment on the kwok nodes, an HTTPRoute, three short stages, a
  custom query on what Prometheus scrapes of the operator itself) goes to Succeeded: the HTTPRoute's weights move
  5 -> 50 -> 100 and back to the target, the target runs the new image; the operator's saferollout_* series (its
  analysis verdicts, its rollouts by phase) are read back from Prometheus;
- a SafeRollout with a PostgreSQL snapshot (DSN in a Secret naming 10.240.0.1): pg_dump runs inside the image
  and writes the dump to the chart's snapshot volume (an emptyDir), as uid 10001, and the file's sha256 is the
  one in the status; the snapshot is verified by a restore into a scratch database (pg_restore in the image);
- a SafeRollout whose query breaches on the canary only rolls back: traffic to stable at stage 1, the target's
  image untouched, the canary Deployment gone, the incident report written, the stable version verified, and
  saferollout_rollbacks_total read back from Prometheus.

Figures are printed (`-s`): image build, import, helm install to Ready, rollout wall times.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.scenario import Session
from harness.services import Postgres, Prometheus, ScrapeTarget, TcpForwarder
from tests.e2e.chart import CHART, helm, install, service_account, uninstall
from tests.e2e.cluster import CLUSTER_DIR, REPO, ensure_cluster, kubeconfig_path, kubectl, tools_dir

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]  # the first test may build the image cold

RELEASE = "sr-incluster"
OPERATOR_NS = "saferollout-incluster"
WORKLOAD_NS = "sr-incluster-shop"
IMAGE_REPOSITORY = "localhost/saferollout/operator"
NODE_NAME = "sr-real-node"
JOB = "saferollout-operator"  # Prometheus' job for the operator's metrics Service
TARGET = "web"
TOLERATE_KWOK = [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]


def _run(*args: str, timeout: float = 900) -> tuple[str, float]:
    start = time.monotonic()
    result = subprocess.run(list(args), cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            check=False, timeout=timeout)
    seconds = time.monotonic() - start
    assert result.returncode == 0, \
        f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result.stdout.strip(), seconds


def _version() -> str:
    m = re.search(r'^appVersion:\s*"?([^"\s]+)"?\s*$', (CHART / "Chart.yaml").read_text(), re.M)
    assert m, "no appVersion in charts/saferollout/Chart.yaml"
    return m.group(1)


def _settings() -> dict[str, str]:
    path = kubeconfig_path().parent / "node" / "settings"
    assert path.is_file(), f"no real node's settings at {path}: the cluster runs without the real node"
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def _gateway() -> str:
    """The bridge's gateway address (the first of SR_NODE_SUBNET), checked to be on the project's bridge."""
    s = _settings()
    net, last = s["SR_NODE_SUBNET"].split("/")[0].rsplit(".", 1)
    address = f"{net}.{int(last) + 1}"
    out, _ = _run("ip", "-4", "-o", "addr", "show", "dev", s["SR_NODE_BRIDGE"])
    assert f"inet {address}/" in out, f"{address} is not on the bridge {s['SR_NODE_BRIDGE']}: {out}"
    return address


def _apply(*objects: dict[str, Any], ns: str = WORKLOAD_NS) -> None:
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def _get(kind: str, name: str, ns: str | None = WORKLOAD_NS) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(kubectl("get", *(("-n", ns) if ns else ()), kind, name, "-o", "json").stdout)
    return out


def _wait(what: str, probe: Any, timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"{what}: not after {timeout:g} s (last: {last!r})")


# ---------------------------------------------------------------------------------------------------- fixtures


@dataclass
class Image:
    ref: str
    archive: Path
    build_seconds: float
    import_seconds: float


@pytest.fixture(scope="module")
def image() -> Image:
    """The operator image, built by scripts/image.sh (cached) and imported into the real node's containerd."""
    if os.geteuid() != 0:
        pytest.fail("needs root: the real node (cluster/up.sh) and scripts/image.sh (buildah) run as root")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SR_REAL_NODE", "1")
        ensure_cluster()
    version = _version()
    out, build = _run("bash", "scripts/image.sh")
    archive = REPO / ".cache" / "images" / f"saferollout-operator-{version}.tar"
    assert archive.is_file(), f"scripts/image.sh made no {archive}:\n{out}"
    _, imported = _run("bash", str(CLUSTER_DIR / "node" / "images.sh"), "import", str(archive))
    ref = f"{IMAGE_REPOSITORY}:{version}"
    ctr = ["ctr", "--address", str(kubeconfig_path().parent / "node" / "containerd" / "containerd.sock"), "-n", "k8s.io"]
    listed, _ = _run(*ctr, "images", "ls", "-q")
    assert ref in listed.split(), f"{ref} is not in the node's containerd after the import: {listed}"
    print(f"\nimage: scripts/image.sh {build:.1f} s ({out.splitlines()[-1] if out else ''}); "
          f"archive {archive.stat().st_size / 1e6:.0f} MB; import into containerd {imported:.1f} s")
    return Image(ref, archive, build, imported)


@dataclass
class Servers:
    session: Session
    prometheus: Prometheus
    postgres: Postgres
    gateway: str
    prom_forward: TcpForwarder
    pg_forward: TcpForwarder


@pytest.fixture(scope="module")
def servers(image: Image) -> Iterator[Servers]:
    """Prometheus and PostgreSQL on loopback; forwarders on the bridge's gateway address for the pods."""
    gateway = _gateway()
    with Session(kubeconfig=kubeconfig_path(), kubectl=tools_dir() / "kubectl", operator=False) as session:
        session.prepare_cluster()  # the repository's CRDs (server-side apply): helm installs its crds/ only once
        prom, pg = session.prometheus, session.postgres
        with TcpForwarder(gateway, prom.port) as pf, TcpForwarder(gateway, pg.port) as gf:
            yield Servers(session, prom, pg, gateway, pf, gf)


def _namespace(name: str, **labels: str) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}))


def helm_values(image: Image, prometheus_url: str) -> list[str]:
    """The exact flags of the install (docs/install.md quotes them)."""
    repository, tag = image.ref.rsplit(":", 1)
    return ["--set", f"image.repository={repository}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never",
            "--set-json", 'nodeSelector={"saferollout.dev/node":"real"}',
            "--set-json", 'tolerations=[{"key":"saferollout.dev/real-node","operator":"Exists","effect":"NoSchedule"}]',
            "--set", "rbac.scope=namespaced", "--set", f"watchNamespaces={{{WORKLOAD_NS}}}",
            "--set", f"prometheus.address={prometheus_url}"]


@dataclass
class Installed:
    pod: str
    install_seconds: float
    ready_seconds: float
    metrics_ip: str
    metrics_port: int


def _operator_pods() -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = json.loads(kubectl("get", "pods", "-n", OPERATOR_NS, "-l",
                                                    f"app.kubernetes.io/instance={RELEASE}", "-o", "json").stdout)["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def _ready(pod: dict[str, Any]) -> bool:
    conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return pod.get("status", {}).get("phase") == "Running" and conds.get("Ready") == "True"


def _remove_rollouts() -> None:
    """Deletes the rollouts while the operator runs (its finalizers), then drops what finalizers remain."""
    kubectl("delete", "saferollouts.saferollout.dev", "--all", "-n", WORKLOAD_NS, "--wait=false", "--ignore-not-found",
            check=False)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        left = kubectl("get", "saferollouts.saferollout.dev", "-n", WORKLOAD_NS, "-o", "name", check=False).stdout.split()
        if not left:
            return
        time.sleep(0.5)
    for name in left:
        kubectl("patch", "-n", WORKLOAD_NS, name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)


@pytest.fixture(scope="module")
def installed(image: Image, servers: Servers) -> Iterator[Installed]:
    _remove_rollouts()
    uninstall(RELEASE, OPERATOR_NS)
    kubectl("delete", "namespace", WORKLOAD_NS, "--ignore-not-found", "--timeout=120s")
    _namespace(OPERATOR_NS, **{"pod-security.kubernetes.io/enforce": "restricted"})
    _namespace(WORKLOAD_NS)
    start = time.monotonic()
    seconds = install(RELEASE, OPERATOR_NS, helm_values(image, f"http://{servers.prom_forward.address}"))
    try:
        def ready_pod() -> dict[str, Any] | None:
            return next((p for p in _operator_pods() if _ready(p)), None)

        deadline = time.monotonic() + 180
        pod = None
        while pod is None and time.monotonic() < deadline:
            pod = ready_pod()
            time.sleep(0.25)
        if pod is None:
            described = kubectl("describe", "pods", "-n", OPERATOR_NS, "-l", f"app.kubernetes.io/instance={RELEASE}",
                                check=False).stdout
            events = kubectl("get", "events", "-n", OPERATOR_NS, check=False).stdout
            logs = kubectl("logs", "-n", OPERATOR_NS, "-l", f"app.kubernetes.io/instance={RELEASE}", "--tail=50",
                           check=False).stdout
            pytest.fail(f"the operator pod is not Ready after 180 s:\n{described[-4000:]}\n{events[-2000:]}\n{logs}")
        ready = time.monotonic() - start
        svc = _get("service", f"{RELEASE}-saferollout-metrics", OPERATOR_NS)
        print(f"\nhelm install: {seconds:.1f} s; install to pod Ready: {ready:.1f} s")
        yield Installed(pod["metadata"]["name"], seconds, ready, svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["port"])
    finally:
        _remove_rollouts()
        logs = kubectl("logs", "-n", OPERATOR_NS, "-l", f"app.kubernetes.io/instance={RELEASE}", "--tail=-1",
                       check=False).stdout
        (REPO / ".cache" / "incluster-operator.log").write_text(logs)
        uninstall(RELEASE, OPERATOR_NS)
        kubectl("delete", "namespace", WORKLOAD_NS, OPERATOR_NS, "--ignore-not-found", "--timeout=120s", check=False)


@pytest.fixture(scope="module")
def scraped(installed: Installed, servers: Servers) -> Installed:
    """Prometheus scrapes the operator through its metrics Service (the ClusterIP, kube-proxy's rules)."""
    servers.prometheus.set_targets([ScrapeTarget(JOB, installed.metrics_port, f"{RELEASE}-saferollout-metrics",
                                                 OPERATOR_NS, host=installed.metrics_ip)])
    _wait("Prometheus scrapes the operator through its Service",
          lambda: servers.prometheus.targets_up().get(JOB), 30)
    return installed


# ------------------------------------------------------------------------------------------------------ tests


def _exec(pod: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return kubectl("exec", "-n", OPERATOR_NS, pod, "-c", "operator", "--", *argv, check=check)


def test_operator_pod_runs_restricted_on_the_real_node(installed: Installed) -> None:
    pod = _get("pod", installed.pod, OPERATOR_NS)
    assert pod["spec"]["nodeName"] == NODE_NAME, pod["spec"].get("nodeName")
    assert pod["spec"]["serviceAccountName"] == service_account(RELEASE, OPERATOR_NS) == f"{RELEASE}-saferollout"
    container = pod["spec"]["containers"][0]
    assert container["image"] == f"{IMAGE_REPOSITORY}:{_version()}" and container["imagePullPolicy"] == "Never"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz", container[probe]
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] and "running" in status["state"], status
    # The probes are the kubelet's: Ready means its GET of /healthz on the pod's IP succeeded.
    assert pod["status"]["podIP"].startswith(_gateway().rsplit(".", 1)[0] + "."), pod["status"]["podIP"]

    # Inside: uid and gid 10001, the root filesystem read-only (the kernel's mount flag), /tmp and the snapshot
    # directory writable.
    assert _exec(installed.pod, "id", "-u").stdout.strip() == "10001"
    assert _exec(installed.pod, "id", "-g").stdout.strip() == "10001"
    flags = _exec(installed.pod, "python", "-c",
                  "import os; print(bool(os.statvfs('/').f_flag & os.ST_RDONLY), "
                  "bool(os.statvfs('/tmp').f_flag & os.ST_RDONLY), "
                  "bool(os.statvfs('/var/lib/saferollout/snapshots').f_flag & os.ST_RDONLY))").stdout.split()
    assert flags == ["True", "False", "False"], flags
    denied = _exec(installed.pod, "touch", "/etc/x", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr, denied
    uid_line = _exec(installed.pod, "grep", "^Uid:", "/proc/1/status").stdout.split()
    assert uid_line[1:] == ["10001"] * 4, uid_line  # PID 1 (the operator) too, all four uids
    # The operator authenticated as the chart's ServiceAccount: in-cluster config, the projected token.
    token = _exec(installed.pod, "cat", "/var/run/secrets/kubernetes.io/serviceaccount/token").stdout
    review = json.loads(kubectl("create", "-f", "-", "-o", "json", input=json.dumps({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}})).stdout)
    assert review["status"]["user"]["username"] == f"system:serviceaccount:{OPERATOR_NS}:{RELEASE}-saferollout"

    # Pod Security "restricted" is enforced there: the operator's pod was admitted, a non-compliant one is not.
    labels = _get("namespace", OPERATOR_NS, None)["metadata"]["labels"]
    assert labels.get("pod-security.kubernetes.io/enforce") == "restricted", labels
    rogue = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "rogue", "namespace": OPERATOR_NS},
             "spec": {"containers": [{"name": "c", "image": "demo/x:1", "securityContext": {"privileged": True}}]}}
    refused = kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(rogue), check=False)
    assert refused.returncode != 0 and 'violates PodSecurity "restricted' in refused.stderr, refused.stderr
    failed = kubectl("get", "events", "-n", OPERATOR_NS, "--field-selector", "reason=FailedCreate", "-o", "name").stdout
    assert not failed.strip(), failed
    assert status["restartCount"] == 0, status


def _workload(image: str) -> list[dict[str, Any]]:
    labels = {"app": TARGET}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": TARGET, "labels": labels},
        "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"tolerations": TOLERATE_KWOK,  # the kwok nodes (default scheduling; the real node is tainted)
                     "containers": [{"name": "web", "image": image, "ports": [{"containerPort": 8080}]}]}}}}
    services = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                 "spec": {"selector": selector, "ports": [{"port": 80, "targetPort": 8080}]}}
                for name, selector in ((TARGET, labels), (f"{TARGET}-canary", {"saferollout.dev/canary-of": TARGET}))]
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": TARGET},
             "spec": {"parentRefs": [{"name": "gateway"}], "rules": [{"backendRefs": [
                 {"name": TARGET, "port": 80, "weight": 100}, {"name": f"{TARGET}-canary", "port": 80, "weight": 0}]}]}}
    return [deployment, *services, route]


SCRAPED = {"name": "operator-scraped", "query": f'min(up{{job="{JOB}"}})', "min": 1, "severity": "critical",
           "onBreach": "rollback"}
# 1 while the canary is analysed ({{ service }} is the canary Service), 0 for the stable version (the rollback's
# verification runs the rollout's metrics against it): a breach on the canary only, from a series Prometheus scrapes.
BREACHED = {"name": "canary-breach", "max": 0, "severity": "critical", "onBreach": "rollback",
            "query": f'count(label_replace(up{{job="{JOB}"}}, "analysed", "{{{{ service }}}}", "", "") and on(analysed) '
                     f'label_replace(vector(1), "analysed", "{TARGET}-canary", "", "")) or vector(0)'}


def _rollout(name: str, image: str, *, database: bool = False, metric: dict[str, Any] = SCRAPED) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "targetRef": {"kind": "Deployment", "name": TARGET},
        "template": {"containers": [{"name": "web", "image": image}]},
        "strategy": {"canary": {
            "stages": [{"weight": 5, "duration": "4s"}, {"weight": 50, "duration": "4s"}, {"weight": 100, "duration": "3s"}],
            "traffic": {"gatewayAPI": {"httpRoute": TARGET, "stableService": TARGET, "canaryService": f"{TARGET}-canary"}}}},
        "analysis": {"interval": "1s", "failureLimit": 2, "inconclusiveLimit": 5, "onInconclusive": "rollback",
                     # a series Prometheus really scrapes: the operator itself, through its metrics Service
                     "metrics": [metric]},
    }
    if metric is BREACHED:
        spec["rollback"] = {"verify": {"duration": "30s", "successes": 2}}
    if database:
        spec["preflight"] = {"databaseReachable": True}
        spec["database"] = {"postgres": {"secretRef": {"name": "web-db", "key": "dsn"}},
                            "snapshotBeforeRollout": True, "verifySnapshot": True, "restoreOnRollback": True}
    return {"apiVersion": "saferollout.dev/v1alpha1", "kind": "SafeRollout", "metadata": {"name": name}, "spec": spec}


def _run_rollout(name: str, image: str, timeout: float = 120, **kw: Any) -> tuple[dict[str, Any], float, list[int]]:
    """Applies the rollout, records the HTTPRoute's canary weights as they change, and waits for a terminal phase."""
    start = time.monotonic()
    _apply(_rollout(name, image, **kw))
    weights: list[int] = []
    deadline = start + timeout
    while True:
        sr = _get("saferollouts.saferollout.dev", name)
        refs = _get("httproute", TARGET)["spec"]["rules"][0]["backendRefs"]
        canary = next((r.get("weight", 0) for r in refs if r["name"] == f"{TARGET}-canary"), 0)
        if not weights or weights[-1] != canary:
            weights.append(canary)
        phase = sr.get("status", {}).get("phase")
        if phase in ("Succeeded", "RolledBack", "Failed", "Blocked"):
            return sr, time.monotonic() - start, weights
        if time.monotonic() > deadline:
            pytest.fail(f"rollout {name} not finished after {timeout:g} s: {json.dumps(sr.get('status'), indent=1)[-3000:]}")
        time.sleep(0.2)


def _fresh_target(image: str) -> None:
    """One rollout per target: the previous test's goes first (its finalizer run by the operator); the target is
    made with `image` if an earlier test did not leave it, and is rolled out."""
    kubectl("delete", "saferollouts.saferollout.dev", "--all", "-n", WORKLOAD_NS, "--ignore-not-found",
            "--timeout=30s")
    if kubectl("get", "deployment", TARGET, "-n", WORKLOAD_NS, check=False).returncode != 0:
        _apply(*_workload(image))
    kubectl("rollout", "status", "-n", WORKLOAD_NS, f"deployment/{TARGET}", "--timeout=60s")


def test_rollout_reconciled_in_cluster_succeeds_and_its_metrics_reach_prometheus(scraped: Installed,
                                                                                servers: Servers) -> None:
    _apply(*_workload("demo/web:1.0"))
    kubectl("rollout", "status", "-n", WORKLOAD_NS, f"deployment/{TARGET}", "--timeout=60s")
    nodes = kubectl("get", "pods", "-n", WORKLOAD_NS, "-l", f"app={TARGET}", "-o",
                    "jsonpath={.items[*].spec.nodeName}").stdout.split()
    assert nodes and all(n.startswith("kwok-node-") for n in nodes), nodes

    sr, wall, weights = _run_rollout("web", "demo/web:2.0")
    status = sr["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[-3000:]
    print(f"\nrollout (3 stages of 4+4+3 s, analysis every 1 s) to Succeeded: {wall:.1f} s; canary weights {weights}")
    assert 5 in weights and 50 in weights, weights  # the stages were routed (a 0.2 s poll sees the 4 s stages)
    assert weights[-1] == 0, weights  # back to the target, which now runs the new version
    target = _get("deployment", TARGET)
    assert [c["image"] for c in target["spec"]["template"]["spec"]["containers"]] == ["demo/web:2.0"]
    assert kubectl("get", "deployment", f"{TARGET}-canary", "-n", WORKLOAD_NS, check=False).returncode != 0

    # The operator's own series, scraped through the Service, read back from Prometheus.
    prom = servers.prometheus
    passes = _wait("the operator's pass verdicts in Prometheus", lambda: prom.query(
        f'saferollout_analysis_results_total{{job="{JOB}",metric="operator-scraped",verdict="pass"}}'), 15)
    assert float(passes[0]["value"][1]) >= 3, passes
    succeeded = _wait("saferollout_rollouts{phase=Succeeded} in Prometheus", lambda: [
        r for r in prom.query(f'saferollout_rollouts{{job="{JOB}",phase="Succeeded"}}') if float(r["value"][1]) >= 1], 15)
    assert succeeded[0]["metric"]["instance"] == f"{scraped.metrics_ip}:{scraped.metrics_port}", succeeded
    queries = prom.query(f'saferollout_prometheus_queries_total{{job="{JOB}"}}')
    assert queries and float(queries[0]["value"][1]) >= 3, queries
    assert servers.prom_forward.accepted >= 1


def test_postgres_snapshot_taken_by_pg_dump_inside_the_image(scraped: Installed, servers: Servers) -> None:
    pg = servers.postgres
    password = secrets.token_urlsafe(16)
    pg.reset_app(password)
    pg.run_as_app("CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL);"
                  "INSERT INTO orders (item) SELECT 'item-' || g FROM generate_series(1, 500) g;")
    # The pod's DSN: the forwarder on the bridge's gateway address; PostgreSQL itself listens on 127.0.0.1 only.
    dsn = f"postgresql://app:{urllib.parse.quote(password, safe='')}@{servers.pg_forward.address}/app"
    _apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "web-db"}, "type": "Opaque",
            "stringData": {"dsn": dsn}})
    _fresh_target("demo/web:2.0")
    before = pg.checksum()

    sr, wall, _ = _run_rollout("web-db", "demo/web:3.0", database=True)
    status = sr["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[-3000:]
    snap = status["snapshot"]
    print(f"\nrollout with a verified PostgreSQL snapshot to Succeeded: {wall:.1f} s; snapshot {snap.get('sizeBytes')} "
          f"bytes, {snap.get('tables')} table(s); forwarded PostgreSQL connections: {servers.pg_forward.accepted}")
    assert snap["provider"] == "postgres" and snap["state"] == "Verified" and snap["verified"], snap
    location = snap["location"]
    assert location.startswith("/var/lib/saferollout/snapshots/"), location
    assert snap["tables"] == 1 and snap["sizeBytes"] > 0, snap
    # The dump is on the chart's snapshot volume in the pod, written by uid 10001, in pg_dump's custom format,
    # with the digest the status records.
    stat = _exec(scraped.pod, "stat", "-c", "%u %g %s", location).stdout.split()
    assert stat == ["10001", "10001", str(snap["sizeBytes"])], stat
    assert _exec(scraped.pod, "head", "-c", "5", location).stdout == "PGDMP"
    assert _exec(scraped.pod, "sha256sum", location).stdout.split()[0] == snap["sha256"]
    mounts = _exec(scraped.pod, "grep", " /var/lib/saferollout/snapshots ", "/proc/self/mountinfo").stdout
    assert "/volumes/kubernetes.io~empty-dir/snapshots" in mounts, mounts  # the chart's emptyDir, not the image
    assert pg.checksum() == before  # a snapshot changes nothing
    assert servers.pg_forward.accepted >= 2  # the gate, the dump, the verify: all through the forwarder
    helm("status", RELEASE, "-n", OPERATOR_NS)


def test_breach_rolls_back_in_cluster(scraped: Installed, servers: Servers) -> None:
    _fresh_target("demo/web:3.0")
    stable = [c["image"] for c in _get("deployment", TARGET)["spec"]["template"]["spec"]["containers"]]

    sr, wall, weights = _run_rollout("web-bad", "demo/web:4.0", metric=BREACHED)
    status = sr["status"]
    assert status["phase"] == "RolledBack", json.dumps(status, indent=1)[-3000:]
    incident = status["incident"]
    print(f"\nrollout with a breached metric to RolledBack: {wall:.1f} s; canary weights {weights}; incident "
          f"{incident.get('reason')} {incident.get('metric')}={incident.get('value')} ({incident.get('threshold')})")
    assert incident["metric"] == "canary-breach" and incident["value"] == 1, incident
    assert weights[-1] == 0 and max(weights) <= 5, weights  # never past stage 1, and traffic back on stable
    assert [c["image"] for c in _get("deployment", TARGET)["spec"]["template"]["spec"]["containers"]] == stable
    assert kubectl("get", "deployment", f"{TARGET}-canary", "-n", WORKLOAD_NS, check=False).returncode != 0
    report = _get("configmap", incident["reportRef"])  # the incident report, written by the in-cluster operator
    assert report["data"], report
    rollbacks = _wait("saferollout_rollbacks_total in Prometheus", lambda: [
        r for r in servers.prometheus.query(f'saferollout_rollbacks_total{{job="{JOB}"}}') if float(r["value"][1]) >= 1], 15)
    assert rollbacks, rollbacks
