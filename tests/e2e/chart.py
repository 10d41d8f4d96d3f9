"""Installing the Helm chart into the local test cluster, and acting as the chart's ServiceAccount.

`sa_kubeconfig()` writes a kubeconfig that authenticates with a TokenRequest token of the chart's ServiceAccount
against the local cluster. An operator process run with it (KUBECONFIG=...) has exactly the chart's RBAC, so a
rule missing from the chart fails the scenario that needs it instead of passing with admin rights.

    with installed_chart() as seconds:
        kubeconfig = sa_kubeconfig(tmp_path)
        subprocess.Popen([...python, "-m", "saferollout", "run"], env={**os.environ, "KUBECONFIG": str(kubeconfig)})
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml

from tests.e2e.cluster import REPO, kubeconfig_path, kubectl, tools_dir

CHART = REPO / "charts" / "saferollout"
RELEASE = "sr"
NAMESPACE = "saferollout-system"


def helm(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Runs the built helm against the test cluster, with its config and cache under .cache/ (no user settings)."""
    path = tools_dir() / "helm"
    if not path.is_file():
        raise RuntimeError(f"helm is not built at {path}: run `make tools`")
    home = REPO / ".cache" / "helm"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig_path()), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_CACHE_HOME": str(home / "cache"), "HELM_DATA_HOME": str(home / "data")}
    result = subprocess.run([str(path), *args], capture_output=True, text=True, env=env, check=False,
                            stdin=subprocess.DEVNULL, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} failed with exit code {result.returncode}:\n{result.stderr}")
    return result


def install(release: str = RELEASE, namespace: str = NAMESPACE, values: Sequence[str] = ()) -> float:
    """`helm install --wait=false` of the chart, after removing a release of the same name left by an aborted run.

    values: extra helm arguments, e.g. ("--set", "replicaCount=2"). Returns the seconds helm install took.
    """
    uninstall(release, namespace)
    start = time.monotonic()
    helm("install", release, str(CHART), "-n", namespace, "--create-namespace", "--wait=false", *values)
    return time.monotonic() - start


def uninstall(release: str = RELEASE, namespace: str = NAMESPACE) -> None:
    """Removes the release (CRDs stay, as with every Helm uninstall); a missing release is fine.

    Foreground cascade and --wait: returns once the ReplicaSets and pods are gone too, so a re-install at once does
    not collide with the old ReplicaSet of the same name (the Deployment controller would back off for seconds).
    """
    helm("uninstall", release, "-n", namespace, "--ignore-not-found", "--cascade=foreground", "--wait", "--timeout", "120s")


@contextlib.contextmanager
def installed_chart(release: str = RELEASE, namespace: str = NAMESPACE, values: Sequence[str] = ()) -> Iterator[float]:
    """The chart installed for the block (yields the install time in seconds), uninstalled afterwards."""
    seconds = install(release, namespace, values)
    try:
        yield seconds
    finally:
        uninstall(release, namespace)


def service_account(release: str = RELEASE, namespace: str = NAMESPACE) -> str:
    """The name of the release's ServiceAccount, found by its labels (so fullnameOverride does not matter)."""
    out = kubectl("get", "serviceaccounts", "-n", namespace, "-o", "jsonpath={.items[*].metadata.name}",
                  "-l", f"app.kubernetes.io/instance={release},app.kubernetes.io/name=saferollout").stdout.split()
    if len(out) != 1:
        raise RuntimeError(f"expected one ServiceAccount of release {release!r} in {namespace!r}, found {out}: "
                           "is the chart installed (tests.e2e.chart.install)?")
    return out[0]


def sa_kubeconfig(tmp_path: Path, release: str = RELEASE, namespace: str = NAMESPACE, duration: str = "2h") -> Path:
    """Writes tmp_path/sa-kubeconfig: the local cluster's server and CA, and a TokenRequest token of the chart's SA.

    The token is bound to the ServiceAccount only (not to a pod) and expires after `duration` (the API server
    may shorten it). The chart must be installed; the file's path is returned.
    """
    admin = yaml.safe_load(kubeconfig_path().read_text())
    cluster = admin["clusters"][0]["cluster"]
    ca = cluster.get("certificate-authority-data")
    if ca is None:
        ca = base64.b64encode(Path(cluster["certificate-authority"]).read_bytes()).decode()
    sa = service_account(release, namespace)
    token = kubectl("create", "token", sa, "-n", namespace, f"--duration={duration}").stdout.strip()
    if not token:
        raise RuntimeError(f"kubectl create token {sa} -n {namespace} returned no token")
    user = f"system:serviceaccount:{namespace}:{sa}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "saferollout", "cluster": {"server": cluster["server"], "certificate-authority-data": ca}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "saferollout-sa", "context": {"cluster": "saferollout", "user": user, "namespace": namespace}}],
        "current-context": "saferollout-sa",
    }
    path = tmp_path / "sa-kubeconfig"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def can_i(kubeconfig: Path, verb: str, resource: str, *flags: str) -> bool:
    """`kubectl auth can-i` as the kubeconfig's user (a SelfSubjectAccessReview, which every user may create)."""
    result = subprocess.run([str(tools_dir() / "kubectl"), "--kubeconfig", str(kubeconfig), "auth", "can-i", verb, resource,
                             *flags], capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, timeout=60)
    answer = result.stdout.strip()
    if answer not in ("yes", "no"):
        raise RuntimeError(f"kubectl auth can-i {verb} {resource} {' '.join(flags)}: {answer!r}\n{result.stderr}")
    return answer == "yes"
