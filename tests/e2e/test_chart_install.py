"""The Helm chart installed into the local cluster: its objects exist and its ServiceAccount has exactly its RBAC.

The local cluster's nodes are kwok fakes: they run no containers, so the operator pod is scheduled and reported
Running but the operator process never starts in it. What is checked is the chart's objects, as the real API server
admits them (RBAC, Pod Security admission), and the permissions of a real ServiceAccount token. The operator's
behaviour under that token is the scenario suite's job (tests.e2e.chart.sa_kubeconfig).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.chart import NAMESPACE, RELEASE, can_i, helm, install, sa_kubeconfig, uninstall
from tests.e2e.cluster import ensure_cluster, kubectl

pytestmark = pytest.mark.e2e

# Namespaces of the rbac.scope=namespaced install: their own, so a concurrent scenario in `default` is unaffected.
WATCHED = ("sr-chart-e2e-a", "sr-chart-e2e-b")
UNWATCHED = "sr-chart-e2e-c"


def _namespace(name: str, **labels: str) -> None:
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    kubectl("apply", "-f", "-", input=json.dumps(body))


def _release_objects(release: str, namespace: str) -> list[str]:
    """kind/name of every object in the release's manifest, as the API server has them (fails if one is missing)."""
    manifest = helm("get", "manifest", release, "-n", namespace).stdout
    return kubectl("get", "-f", "-", "-o", "name", input=manifest).stdout.split()


def _wait_for_pod(release: str, namespace: str, timeout: float = 60) -> list[str]:
    """The release's pods once the ReplicaSet created them: Pod Security admission let the pod spec in."""
    deadline = time.monotonic() + timeout
    while True:
        pods = kubectl("get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}", "-o", "name").stdout.split()
        if pods or time.monotonic() > deadline:
            return pods
        time.sleep(0.5)


def _failed_creates(namespace: str) -> str:
    return kubectl("get", "events", "-n", namespace, "--field-selector", "reason=FailedCreate", "-o",
                   "jsonpath={range .items[*]}{.message}{'\\n'}{end}").stdout


@pytest.fixture(scope="module")
def cluster() -> Path:
    return ensure_cluster()


@pytest.fixture
def default_install(cluster: Path) -> Iterator[float]:
    # Pod Security "restricted" on the release namespace: the pod is only created if the chart's spec complies.
    _namespace(NAMESPACE, **{"pod-security.kubernetes.io/enforce": "restricted"})
    seconds = install(RELEASE, NAMESPACE)
    print(f"\nhelm install {RELEASE} charts/saferollout -n {NAMESPACE} --create-namespace --wait=false: {seconds:.2f} s")
    try:
        yield seconds
    finally:
        uninstall(RELEASE, NAMESPACE)


def test_default_install_objects_and_service_account_rights(default_install: float, tmp_path: Path) -> None:
    objects = _release_objects(RELEASE, NAMESPACE)
    kinds = sorted(o.split("/")[0] for o in objects)
    assert kinds == sorted(["serviceaccount", "clusterrole.rbac.authorization.k8s.io",
                            "clusterrolebinding.rbac.authorization.k8s.io", "service", "deployment.apps",
                            "networkpolicy.networking.k8s.io"]), objects
    kubectl("get", "crd", "saferollouts.saferollout.dev", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")
    pods = _wait_for_pod(RELEASE, NAMESPACE)
    assert pods, f"no operator pod was created; ReplicaSet events:\n{_failed_creates(NAMESPACE)}"

    kubeconfig = sa_kubeconfig(tmp_path)
    whoami = kubectl("--kubeconfig", str(kubeconfig), "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout
    assert whoami == f"system:serviceaccount:{NAMESPACE}:sr-saferollout"

    # what the operator does, in any namespace (cluster scope)
    for verb, resource, *flags in [
        ("patch", "saferollouts.saferollout.dev", "--subresource=status", "-n", "default"),
        ("watch", "saferollouts.saferollout.dev", "--all-namespaces"),
        ("patch", "httproutes.gateway.networking.k8s.io", "-n", "default"),
        ("create", "deployments.apps", "-n", "shop"),
        ("delete", "deployments.apps", "-n", "shop"),
        ("get", "secrets", "-n", "shop"),
        ("update", "configmaps", "-n", "shop"),
        ("create", "events", "-n", "shop"),
        ("patch", "virtualservices.networking.istio.io", "-n", "shop"),
        ("create", "volumesnapshots.snapshot.storage.k8s.io", "-n", "shop"),
        ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
    ]:
        assert can_i(kubeconfig, verb, resource, *flags), f"the chart's ServiceAccount cannot {verb} {resource} {flags}"
    # what it must never do
    for verb, resource, *flags in [
        ("delete", "secrets", "-n", "default"),
        ("list", "secrets", "--all-namespaces"),
        ("list", "secrets", "-n", "default"),
        ("delete", "pods", "-n", "default"),
        ("create", "pods", "-n", "default"),
        ("create", "pods", "--subresource=exec", "-n", "default"),
        ("delete", "saferollouts.saferollout.dev", "-n", "default"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        ("create", "serviceaccounts", "--subresource=token", "-n", NAMESPACE),
        ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
        ("patch", "clusterkopfpeerings.kopf.dev"),  # one replica: no peering, no peering rights
    ]:
        assert not can_i(kubeconfig, verb, resource, *flags), f"the chart's ServiceAccount can {verb} {resource} {flags}"


@pytest.fixture
def namespaced_install(cluster: Path) -> Iterator[float]:
    for ns in (*WATCHED, UNWATCHED):
        _namespace(ns)
    release, namespace = "sr-ns", "saferollout-system-ns"
    seconds = install(release, namespace, ("--set", "rbac.scope=namespaced", "--set", f"watchNamespaces={{{','.join(WATCHED)}}}",
                                           "--set", "replicaCount=2"))
    print(f"\nhelm install (rbac.scope=namespaced, 2 replicas): {seconds:.2f} s")
    try:
        yield seconds
    finally:
        uninstall(release, namespace)
        # waited for: the next run re-creates them, and a namespace still terminating refuses new objects
        kubectl("delete", "namespace", *WATCHED, UNWATCHED, namespace, "--ignore-not-found", "--timeout=120s")


def test_namespaced_install_is_confined_to_the_watched_namespaces(namespaced_install: float, tmp_path: Path) -> None:
    release, namespace = "sr-ns", "saferollout-system-ns"
    objects = _release_objects(release, namespace)
    for ns in WATCHED:
        kubectl("get", "role,rolebinding", "sr-ns-saferollout", "-n", ns)
        kubectl("get", "kopfpeerings.kopf.dev", "saferollout", "-n", ns)
    assert "poddisruptionbudget.policy/sr-ns-saferollout" in objects
    args = kubectl("get", "deployment", "sr-ns-saferollout", "-n", namespace, "-o",
                   "jsonpath={.spec.template.spec.containers[0].args}").stdout
    assert json.loads(args) == ["--namespace", WATCHED[0], "--namespace", WATCHED[1], "--peering", "saferollout"]

    kubeconfig = sa_kubeconfig(tmp_path, release, namespace)
    for ns in WATCHED:
        assert can_i(kubeconfig, "create", "deployments.apps", "-n", ns)
        assert can_i(kubeconfig, "patch", "saferollouts.saferollout.dev", "--subresource=status", "-n", ns)
        assert can_i(kubeconfig, "patch", "kopfpeerings.kopf.dev", "-n", ns)
        assert not can_i(kubeconfig, "list", "secrets", "-n", ns)
    assert can_i(kubeconfig, "list", "customresourcedefinitions.apiextensions.k8s.io")
    for flags in (("-n", UNWATCHED), ("-n", "default"), ("--all-namespaces",)):
        assert not can_i(kubeconfig, "create", "deployments.apps", *flags)
        assert not can_i(kubeconfig, "list", "saferollouts.saferollout.dev", *flags)
        assert not can_i(kubeconfig, "get", "secrets", *flags)
    # namespace names are readable: kopf, told which namespaces to watch, lists them (else it retries ~54 s at start)
    assert can_i(kubeconfig, "list", "namespaces")
    assert not can_i(kubeconfig, "delete", "namespaces")
