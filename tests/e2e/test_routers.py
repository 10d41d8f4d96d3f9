"""The traffic routers and the VolumeSnapshot provider against the real local API server (cluster/up.sh).

Each router test builds its own namespace (target Deployment on the kwok nodes, Services, the object the router
writes), moves the canary weight through 5, 25, 50, 100 and 0, and reads the object back after each call. It
times the call and the moment the write is visible to another reader: the time from the decision to the API
write that moves traffic. The replica router writes twice and waits for pods in between, so its first write is
timed as well. The table is printed at the end of the module. No data plane runs here, so what is measured is
the control-plane half; what a proxy takes to pick the change up comes on top.

The VolumeSnapshot test has no CSI driver: a thread in the test plays the snapshot controller (it sets the
status readyToUse and restoreSize through the status subresource), and no provisioner fills claims from
snapshots, so `verify` ends at "accepted", which is the weaker of its two outcomes.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from saferollout.adapters import kube, workloads
from saferollout.adapters.kube import RolloutRef
from saferollout.adapters.routers import nginx, router_for
from saferollout.adapters.routers.replicas import TOTAL, split
from saferollout.adapters.snapshots.volume import ROLE, ROLLOUT, VolumeSnapshotProvider, identity
from saferollout.core import models
from saferollout.core.models import SafeRolloutSpec, VolumeSnapshotDatabase
from tests.e2e.cluster import REPO, ensure_cluster, kubectl

pytestmark = pytest.mark.e2e

WEIGHTS = (5, 25, 50, 100, 0)
TOLERATE_KWOK = [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]
VS = ("snapshot.storage.k8s.io", "v1", "volumesnapshots")


@dataclass
class Row:
    router: str
    weight: int
    call_ms: float
    visible_ms: float
    first_ms: float


ROWS: list[Row] = []


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster() -> Iterator[bool]:
    """The adapters' shared client, pointed at the local cluster for this module and reset afterwards.

    Yields whether the SafeRollout CRD is served. Without it the tests still run: owner references then name a
    kind the garbage collector cannot resolve, and it leaves such objects alone.
    """
    path = ensure_cluster()
    config.load_kube_config(config_file=str(path))
    # Not `_api = None`: kube.api() would load the config again from the default location (the client reads
    # $KUBECONFIG once, at import), so the adapters get a client built from this configuration instead.
    kube._api = client.ApiClient()
    crd = f"crd/{models.PLURAL}.{models.GROUP}"
    applied = kubectl("apply", "--server-side", "--force-conflicts", "-f",
                      str(REPO / "crds" / "saferollout.dev_saferollouts.yaml"), check=False)
    if applied.returncode != 0:
        warnings.warn(f"the SafeRollout CRD does not apply: {applied.stderr.strip()}", stacklevel=1)
    # an earlier version of the CRD, applied by another run, serves these tests' small specs as well
    served = kubectl("wait", "--for=condition=Established", crd, "--timeout=60s", check=False).returncode == 0
    if not served:
        warnings.warn("no SafeRollout CRD is served, so no SafeRollout object is created", stacklevel=1)
    yield served
    kube._api = None


@pytest.fixture(scope="module", autouse=True)
def latency_table(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print, after the module, the time from each set_weight call to its write being visible."""
    yield
    if not ROWS:
        return
    lines = ["", "from the set_weight call to: its return (call), another GET seeing the first write (first write)",
             "and another GET seeing all of it (visible); milliseconds",
             "router     weight   first write    call   visible"]
    lines += [f"{r.router:<10} {r.weight:>6} {r.first_ms:>13.1f} {r.call_ms:>7.1f} {r.visible_ms:>9.1f}" for r in ROWS]
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print("\n".join(lines), flush=True)


@pytest.fixture
def namespace(cluster: bool, request: pytest.FixtureRequest) -> Iterator[str]:
    ns = f"sr-e2e-{request.node.name.removeprefix('test_').replace('_', '-')[:30]}-{secrets.token_hex(3)}"
    kubectl("create", "namespace", ns)
    yield ns
    kubectl("delete", "namespace", ns, "--wait=false", check=False)


# ----------------------------------------------------------------------------------------------------- helpers


def rollout(ns: str, traffic: dict[str, Any], database: dict[str, Any] | None = None, *,
            real: bool = True) -> tuple[RolloutRef, SafeRolloutSpec]:
    """A real SafeRollout (paused; no operator watches these namespaces), so owner references resolve and GC keeps them.

    With `real` False (no CRD) only the spec is validated, and the uid is made up.
    """
    spec: dict[str, Any] = {"targetRef": {"name": "web"},
                            "template": {"containers": [{"name": "app", "image": "demo/x:2"}]},
                            "strategy": {"canary": {"traffic": traffic}}, "paused": True}
    if database is not None:
        spec["database"] = database
    parsed = SafeRolloutSpec.model_validate(spec)
    if not real:
        return RolloutRef(ns, "web", str(uuid.uuid4())), parsed
    body = {"apiVersion": f"{models.GROUP}/{models.VERSION}", "kind": models.KIND,
            "metadata": {"name": "web", "namespace": ns}, "spec": spec}
    obj = kube.custom().create_namespaced_custom_object(models.GROUP, models.VERSION, ns, models.PLURAL, body)
    return RolloutRef(ns, "web", obj["metadata"]["uid"]), parsed


def deployment(ns: str, name: str, replicas: int, volumes: list[dict[str, Any]] | None = None) -> None:
    pod: dict[str, Any] = {"containers": [{"name": "app", "image": "demo/x:1", "ports": [{"containerPort": 8080}]}],
                           "tolerations": TOLERATE_KWOK}
    if volumes:
        pod["volumes"] = volumes
        pod["containers"][0]["volumeMounts"] = [{"name": v["name"], "mountPath": f"/{v['name']}"} for v in volumes]
    kube.apps().create_namespaced_deployment(ns, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": pod}}})


def services(ns: str) -> None:
    for name, selector in (("web", {"app": "web"}), ("web-canary", {workloads.CANARY_OF: "web"})):
        kube.core().create_namespaced_service(ns, {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0, pause: float = 0.0) -> float:
    """Poll `check` until true; returns the time it took. `pause` 0 polls back to back (each GET is a round trip)."""
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(pause)
    return time.perf_counter() - start


def move(router: str, ref: RolloutRef, spec: SafeRolloutSpec, weight: int, visible: Callable[[], bool],
         first: Callable[[], bool] | None = None) -> None:
    """One set_weight through router_for, timed to its return and to another reader seeing it.

    `first` is for routers that write more than once (replicas): it tells when the first write shows, which the
    test watches from this thread while the call runs in another.
    """
    start = time.perf_counter()
    first_ms: float | None = None
    if first is None:
        router_for(spec).set_weight(ref, spec, weight)
        called = time.perf_counter()
    else:
        failure: list[BaseException] = []
        done = threading.Event()

        def call() -> None:
            try:
                router_for(spec).set_weight(ref, spec, weight)
            except BaseException as e:
                failure.append(e)
            finally:
                done.set()

        worker = threading.Thread(target=call, daemon=True)
        worker.start()
        wait_for(f"{router}: the first write for weight {weight}", lambda: first() or bool(failure), timeout=10)
        first_ms = 1000 * (time.perf_counter() - start)
        done.wait(60)
        called = time.perf_counter()
        if failure:
            raise failure[0]
    wait_for(f"{router} at weight {weight}", visible, timeout=10)
    visible_ms = 1000 * (time.perf_counter() - start)
    ROWS.append(Row(router, weight, 1000 * (called - start), visible_ms, visible_ms if first_ms is None else first_ms))


def deploy_dict(ns: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = kube.api().sanitize_for_serialization(kube.apps().read_namespaced_deployment(name, ns))
    return out


# ----------------------------------------------------------------------------------------------------- routers


def test_gateway_api_router(namespace: str, cluster: bool) -> None:
    """The existing router, measured the same way as the new ones for comparison."""
    deployment(namespace, "web", 2)
    services(namespace)
    g, v, p = "gateway.networking.k8s.io", "v1", "httproutes"
    kube.custom().create_namespaced_custom_object(g, v, namespace, p, {
        "apiVersion": f"{g}/{v}", "kind": "HTTPRoute", "metadata": {"name": "web"},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}})
    traffic = {"gatewayAPI": {"httpRoute": "web", "stableService": "web", "canaryService": "web-canary"}}
    ref, spec = rollout(namespace, traffic, real=cluster)

    def weights() -> list[tuple[str, int]]:
        route = kube.custom().get_namespaced_custom_object(g, v, namespace, p, "web")
        return [(b["name"], b.get("weight", 1)) for b in route["spec"]["rules"][0]["backendRefs"]]

    for w in WEIGHTS:
        move("gatewayAPI", ref, spec, w, lambda w=w: weights() == [("web", 100 - w), ("web-canary", w)])  # type: ignore[misc]


def test_an_autoscaled_targets_canary_gets_its_own_hpa(namespace: str, cluster: bool) -> None:
    """The canary of a target with an HPA: a copy of the HPA aimed at the canary, which the operator then leaves
    to scale it; removed with the canary. The replica router refuses such a target before it makes anything."""
    deployment(namespace, "web", 3)
    services(namespace)
    auto = kube.autoscaling()
    auto.create_namespaced_horizontal_pod_autoscaler(namespace, {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "web-hpa"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                 "minReplicas": 2, "maxReplicas": 6,
                 "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                     "type": "Utilization", "averageUtilization": 70}}}]}})
    traffic = {"gatewayAPI": {"httpRoute": "web", "stableService": "web", "canaryService": "web-canary"}}
    ref, spec = rollout(namespace, traffic, real=cluster)
    workloads.ensure_canary(ref, spec, {"app": "demo/x:2"})
    hpa = kube.read_or_none(auto.read_namespaced_horizontal_pod_autoscaler, "web-canary", namespace)
    assert hpa is not None and hpa["spec"]["scaleTargetRef"]["name"] == "web-canary"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert kube.owned_by(hpa, ref)
    canary = kube.apps().read_namespaced_deployment("web-canary", namespace)
    assert canary.spec.replicas == 3  # the target's current count to start with
    # the HPA scales the canary (here: a write of its replicas, as the HPA controller's would be)
    kube.apps().patch_namespaced_deployment("web-canary", namespace, {"spec": {"replicas": 5}})
    wait_for("the canary available", lambda: workloads.ensure_canary(ref, spec, {"app": "demo/x:2"}), pause=0.2)
    assert kube.apps().read_namespaced_deployment("web-canary", namespace).spec.replicas == 5  # left to its HPA
    workloads.delete_canary(ref, spec)
    assert kube.read_or_none(auto.read_namespaced_horizontal_pod_autoscaler, "web-canary", namespace) is None
    assert kube.read_or_none(auto.read_namespaced_horizontal_pod_autoscaler, "web-hpa", namespace) is not None
    replica_spec = rollout(namespace, {"replicas": {}}, real=False)[1]
    with pytest.raises(kube.Refused, match="HorizontalPodAutoscaler web-hpa scales the target web"):
        router_for(replica_spec).prepare(ref, replica_spec, 5)


def test_istio_router(namespace: str, cluster: bool) -> None:
    deployment(namespace, "web", 2)
    services(namespace)
    g, v, p = "networking.istio.io", "v1", "virtualservices"
    kube.custom().create_namespaced_custom_object(g, v, namespace, p, {
        "apiVersion": f"{g}/{v}", "kind": "VirtualService", "metadata": {"name": "web"},
        "spec": {"hosts": ["web.example"], "gateways": ["mesh"], "http": [
            {"name": "admin", "match": [{"uri": {"prefix": "/admin"}}], "route": [{"destination": {"host": "admin"}}]},
            {"name": "main", "timeout": "5s", "route": [{"destination": {"host": "web", "port": {"number": 80}}}]}]}})
    ref, spec = rollout(namespace, {"istio": {"virtualService": "web", "route": "main"}}, real=cluster)

    def vs() -> dict[str, Any]:
        out: dict[str, Any] = kube.custom().get_namespaced_custom_object(g, v, namespace, p, "web")
        return out

    def routed(w: int) -> bool:
        return [(d["destination"]["host"], d["destination"].get("port"), d["weight"])
                for d in vs()["spec"]["http"][1]["route"]] == [("web", {"number": 80}, 100 - w),
                                                                 ("web-canary", {"number": 80}, w)]

    for w in WEIGHTS:
        move("istio", ref, spec, w, lambda w=w: routed(w))  # type: ignore[misc]
    after = vs()["spec"]
    assert after["http"][0] == {"name": "admin", "match": [{"uri": {"prefix": "/admin"}}],
                                "route": [{"destination": {"host": "admin"}}]}
    assert after["http"][1]["timeout"] == "5s" and after["hosts"] == ["web.example"] and after["gateways"] == ["mesh"]


def test_nginx_router(namespace: str, cluster: bool) -> None:
    deployment(namespace, "web", 2)
    services(namespace)
    net = client.NetworkingV1Api(kube.api())
    net.create_namespaced_ingress(namespace, {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "web", "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "8m"}},
        "spec": {"ingressClassName": "nginx", "rules": [{"host": "web.example", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"name": "http"}}}}]}}]}})
    ref, spec = rollout(namespace, {"nginx": {"ingress": "web"}}, real=cluster)

    def canary() -> dict[str, Any] | None:
        try:
            out: dict[str, Any] = kube.api().sanitize_for_serialization(net.read_namespaced_ingress("web-canary", namespace))
            return out
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def weighted(w: int) -> bool:
        c = canary()
        return c is not None and c["metadata"]["annotations"].get(nginx.CANARY_WEIGHT) == str(w)

    for w in WEIGHTS:
        move("nginx", ref, spec, w, lambda w=w: weighted(w))  # type: ignore[misc]
    c = canary()
    assert c is not None  # weight 0 keeps the canary Ingress
    assert c["metadata"]["annotations"] == {"nginx.ingress.kubernetes.io/proxy-body-size": "8m",
                                            nginx.CANARY: "true", nginx.CANARY_WEIGHT: "0"}
    assert [o["uid"] for o in c["metadata"]["ownerReferences"]] == [ref.uid]
    assert c["spec"]["rules"][0]["http"]["paths"][0]["backend"] == {"service": {"name": "web-canary", "port": {"name": "http"}}}
    stable = kube.api().sanitize_for_serialization(net.read_namespaced_ingress("web", namespace))
    assert "nginx.ingress.kubernetes.io/canary" not in stable["metadata"]["annotations"]  # the stable one untouched
    router_for(spec).clean_up(ref, spec)
    wait_for("the canary Ingress to go", lambda: canary() is None, pause=0.05)


def test_replica_ratio_router(namespace: str, cluster: bool) -> None:
    total = 10
    deployment(namespace, "web", total)
    services(namespace)
    ref, spec = rollout(namespace, {"replicas": {}}, real=cluster)
    wait_for("the target to be available", lambda: workloads.available(deploy_dict(namespace, "web")), pause=0.2)
    # what the executor does for EnsureCanary with this router: the canary starts at the first stage's size
    plan = router_for(spec).prepare(ref, spec, WEIGHTS[0])
    first = plan.replicas
    assert first is not None and first == 1 and plan.behind_stable
    workloads.ensure_canary(ref, spec, {"app": "demo/x:2"}, plan)
    wait_for("the canary to be available", lambda: workloads.available(deploy_dict(namespace, "web-canary")), pause=0.2)

    def scaled(w: int) -> bool:
        t, c = deploy_dict(namespace, "web")["spec"]["replicas"], deploy_dict(namespace, "web-canary")["spec"]["replicas"]
        return (t, c) == split(total, w)

    def moved_from(previous: tuple[int, int]) -> bool:
        t, c = deploy_dict(namespace, "web")["spec"]["replicas"], deploy_dict(namespace, "web-canary")["spec"]["replicas"]
        return (t, c) != previous

    now = (total, first)
    for w in WEIGHTS:
        move("replicas", ref, spec, w, lambda w=w: scaled(w), lambda now=now: moved_from(now))  # type: ignore[misc]
        now = split(total, w)
        assert deploy_dict(namespace, "web-canary")["metadata"]["annotations"][TOTAL] == str(total)
    # called again, and after a "restart" (a new router), the numbers stay: the total is the recorded one
    router_for(spec).set_weight(ref, spec, 25)
    router_for(spec).set_weight(ref, spec, 25)
    assert scaled(25)
    router_for(spec).set_weight(ref, spec, 0)
    assert scaled(0)
    wait_for("the target back at full size", lambda: workloads.available(deploy_dict(namespace, "web")), pause=0.2)


# ------------------------------------------------------------------------------------------- volume snapshots


class FakeSnapshotController(threading.Thread):
    """Plays the CSI snapshot controller: every new VolumeSnapshot becomes readyToUse, through the status subresource."""

    def __init__(self, namespace: str, delay: float = 0.3) -> None:
        super().__init__(daemon=True)
        self.ns, self.delay, self.stop = namespace, delay, threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.wait(0.1):
            try:
                for vs in kube.custom().list_namespaced_custom_object(*VS[:2], self.ns, VS[2])["items"]:
                    if (vs.get("status") or {}).get("readyToUse"):
                        continue
                    time.sleep(self.delay)  # the time a driver takes to cut it
                    status = {"readyToUse": True, "restoreSize": "1Gi",
                              "boundVolumeSnapshotContentName": f"snapcontent-{vs['metadata']['uid']}",
                              "creationTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
                    kube.custom().patch_namespaced_custom_object_status(
                        *VS[:2], self.ns, VS[2], vs["metadata"]["name"], {"status": status})
            except ApiException as e:
                if e.status != 404:  # a snapshot deleted under our feet is fine
                    self.errors.append(kube.error_text(e))


def volume_snapshots(ns: str, role: str | None = None) -> dict[str, dict[str, Any]]:
    selector = f"{ROLLOUT}=web" + (f",{ROLE}={role}" if role else "")
    items = kube.custom().list_namespaced_custom_object(*VS[:2], ns, VS[2], label_selector=selector)["items"]
    return {s["metadata"]["name"]: s for s in items}


def test_volume_snapshot_provider(namespace: str, cluster: bool) -> None:
    ns = namespace
    pv = f"{ns}-data"
    core = kube.core()
    # a statically provisioned volume pre-bound to the claim, so the claim really becomes Bound without a driver
    core.create_persistent_volume({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                 "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": f"/tmp/{pv}"},
                 "claimRef": {"namespace": ns, "name": "data"}}})
    controller = FakeSnapshotController(ns)
    try:
        core.create_namespaced_persistent_volume_claim(ns, {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": pv,
                     "resources": {"requests": {"storage": "1Gi"}}}})
        deployment(ns, "web", 1, volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                                          {"name": "cache", "emptyDir": {}}])
        rollout(ns, {"replicas": {}}, {"volumeSnapshot": {"pvc": "data"}, "snapshotBeforeRollout": True,
                                       "restoreOnRollback": True}, real=cluster)
        cfg = VolumeSnapshotDatabase(pvc="data")
        # with the SafeRollout object the target is read from its targetRef, as the operator would
        provider = VolumeSnapshotProvider(ns, "web", cfg, target=None if cluster else "web", ready_timeout=30,
                                          bind_timeout=2, poll=0.2)

        with pytest.raises(LookupError, match="not found"):
            VolumeSnapshotProvider(ns, "web", VolumeSnapshotDatabase(pvc="nope")).reachable(5)
        wait_for("the claim to bind", lambda: core.read_namespaced_persistent_volume_claim("data", ns).status.phase == "Bound",
                 pause=0.2)
        provider.reachable(5)

        controller.start()
        sid = "snap-1-20260101T000000"
        started = time.perf_counter()
        info = provider.take(sid)
        took = time.perf_counter() - started
        snaps = volume_snapshots(ns, "snapshot")
        assert list(snaps) == ["web-snap-1-20260101t000000"]
        vs = snaps["web-snap-1-20260101t000000"]
        assert vs["spec"]["source"] == {"persistentVolumeClaimName": "data"}
        assert info.size_bytes == 1 << 30 and info.tables == 0
        assert info.sha256 == identity(vs["metadata"]["uid"], f"snapcontent-{vs['metadata']['uid']}")
        assert info.location == f"volumesnapshot/{ns}/web-snap-1-20260101t000000"
        assert provider.take(sid) == info and len(volume_snapshots(ns, "snapshot")) == 1  # reused, never a second
        print(f"take waited {took:.2f}s for the (fake) snapshot controller")

        message = provider.verify(sid)
        assert "accepted" in message and "web-snap-1-20260101t000000" in message
        left = core.list_namespaced_persistent_volume_claim(ns, label_selector=f"{ROLE}=verify").items
        assert all(p.metadata.deletion_timestamp for p in left)  # the scratch claim is gone or going

        assert not provider.equals(sid)
        out = provider.restore(sid, None)
        assert out.ok, out.message
        assert out.pre_restore_dump == "web-pre-restore-snap-1-20260101t000000"
        pre = volume_snapshots(ns, "pre-restore")
        assert list(pre) == [out.pre_restore_dump] and pre[out.pre_restore_dump]["spec"]["source"] == {
            "persistentVolumeClaimName": "data"}
        restored = core.read_namespaced_persistent_volume_claim("data-restored-snap-1-20260101t000000", ns)
        assert restored.spec.data_source.name == "web-snap-1-20260101t000000"
        assert restored.metadata.labels[ROLLOUT] == "web"
        volumes = {v["name"]: v for v in deploy_dict(ns, "web")["spec"]["template"]["spec"]["volumes"]}
        assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "data-restored-snap-1-20260101t000000"}
        assert volumes["cache"] == {"name": "cache", "emptyDir": {}}  # the strategic merge touched one volume
        assert core.read_namespaced_persistent_volume_claim("data", ns).status.phase == "Bound"  # the old claim is kept
        assert provider.equals(sid)
        again = provider.restore(sid, out.pre_restore_dump)  # a retry after a restart: nothing done twice
        assert again.ok and "already" in again.message and len(volume_snapshots(ns, "pre-restore")) == 1

        for i in (2, 3):
            provider.take(f"snap-{i}-20260101T00000{i}")
        assert provider.prune(2, "snap-3-20260101T000003") == ["web-snap-1-20260101t000000"]
        assert provider.prune(1, "snap-2-20260101T000002") == ["web-snap-3-20260101t000003"]  # never the current one
        assert list(volume_snapshots(ns, "snapshot")) == ["web-snap-2-20260101t000002"]
        assert list(volume_snapshots(ns, "pre-restore")) == [out.pre_restore_dump]  # pre-restore ones are kept
        assert controller.errors == []
    finally:
        controller.stop.set()
        if controller.is_alive():
            controller.join(5)
        try:
            core.delete_persistent_volume(pv)
        except ApiException as e:
            if e.status != 404:
                raise
