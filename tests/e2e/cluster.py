"""Helpers to reach the local test cluster (cluster/up.sh) from the end-to-end tests.

The cluster is a real control plane (etcd, kube-apiserver, controller-manager, scheduler) with kwok fake
nodes, built from pinned sources by cluster/build.sh. These helpers only start it and run its kubectl;
fixtures live elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLUSTER_DIR = REPO / "cluster"


def _versions() -> dict[str, str]:
    """Reads cluster/versions.env, the one place the tool versions are pinned (shared with the shell scripts)."""
    versions: dict[str, str] = {}
    for line in (CLUSTER_DIR / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            versions[key.strip()] = value.strip().strip("\"'")
    return versions


def tools_dir() -> Path:
    """The directory of the built cluster binaries (kubectl, helm, ...), as cluster/build.sh lays it out.

    Honours SR_BIN like the scripts do, so a relocated build is found by both.
    """
    override = os.environ.get("SR_BIN")
    if override:
        return Path(override)
    return REPO / ".cache" / "bin" / _versions()["K8S_VERSION"]


def kubeconfig_path() -> Path:
    """Where cluster/up.sh writes the admin kubeconfig (SR_STATE_DIR moves it, as in the scripts)."""
    state = os.environ.get("SR_STATE_DIR")
    return (Path(state) if state else REPO / ".cache" / "cluster") / "kubeconfig"


def ensure_cluster() -> Path:
    """Starts the cluster unless it already runs, and returns its kubeconfig path.

    up.sh is idempotent (a no-op when the cluster is healthy) and serialised by a lock, so every test session or
    worker may call this. On failure its stderr, which names the component and shows its log, is in the error.
    """
    result = subprocess.run(
        ["bash", str(CLUSTER_DIR / "up.sh")],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"cluster/up.sh failed with exit code {result.returncode}:\n{result.stderr}")
    lines = result.stdout.strip().splitlines()
    path = Path(lines[-1]) if lines else kubeconfig_path()
    if not path.is_file():
        raise RuntimeError(f"cluster/up.sh succeeded but wrote no kubeconfig at {path}:\n{result.stderr}")
    return path


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl call whose message carries kubectl's stderr, so a test failure says why."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{self.stderr}"


def kubectl(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Runs the built kubectl against the test cluster, never the user's ~/.kube/config or another version.

    With check=True a non-zero exit raises KubectlError (a CalledProcessError) whose message has kubectl's stderr.
    """
    env = {**os.environ, "KUBECONFIG": str(kubeconfig_path())}
    result = subprocess.run(
        [str(tools_dir() / "kubectl"), *args],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if check and result.returncode != 0:
        raise KubectlError(result.returncode, result.args, result.stdout, result.stderr)
    return result


def wait_established(crd: str, timeout: float = 60) -> None:
    """Until the CRD is served. `kubectl wait --for=condition=Established` right after a create fails at once
    ("status.conditions accessor error") while the API server has written no condition yet: poll instead."""
    deadline = time.monotonic() + timeout
    path = '{.status.conditions[?(@.type=="Established")].status}'
    while True:
        out = kubectl("get", "crd", crd, "-o", f"jsonpath={path}", check=False)
        if out.returncode == 0 and out.stdout.strip() == "True":
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"CRD {crd} not Established within {timeout:g}s: {out.stderr.strip()}")
        time.sleep(0.5)
