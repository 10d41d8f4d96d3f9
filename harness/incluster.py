"""The operator as users run it: the image from the Dockerfile, installed by `helm install` of charts/saferollout,
one pod on the real node for every scenario of a session.

What the pod needs from the host it reaches at the bridge's gateway address (harness.pods.bridge_gateway): the API
server (cluster/node's socat), and through bounded forwarders (harness.services.TcpForwarder) Prometheus,
PostgreSQL and each run's webhook receiver, which all stay on loopback. Its namespace enforces Pod Security
`restricted`. Its snapshot store is the chart's PersistentVolumeClaim, bound to a hostPath PersistentVolume made
here, so the harness reads the dumps (and corrupts one, for `corruptSnapshot`) where they are, and a replaced pod
finds the dumps of the one before. Its /tmp is the chart's emptyDir, which the harness reads on the host (the
kubelet's pod directory) for `pathAbsent`.

Faults: `killOperator` scales the Deployment to 0 (SIGKILL: the pod is also deleted at once, with no grace period);
`restartOperator` scales it back to 1. Both act on every run at once, so they are exclusive (harness.isolation).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.pods import REAL_NODE_SELECTOR, REAL_NODE_TOLERATION
from harness.services import TcpForwarder

RELEASE = "saferollout-harness"
NAMESPACE = "saferollout-harness"
FULLNAME = "sr-harness"
STORE_MOUNT = "/var/lib/saferollout/snapshots"  # charts/saferollout values: snapshots.dir
KUBELET_PODS = Path("/var/lib/kubelet/pods")  # cluster/node/node.sh leaves the kubelet's --root-dir as it is
OPERATOR_UID = 10001


class ClusterOperator:
    """The chart's release for a session: install, stop/start, its pod, its logs, its files."""

    def __init__(self, repo: Path, kubectl: Callable[..., subprocess.CompletedProcess[str]], helm: Path,
                 kubeconfig: Path, gateway: str, image: str, prometheus_port: int, postgres_port: int, store: Path,
                 rate_window: str) -> None:
        self.repo, self.kubectl, self.helm, self.kubeconfig = repo, kubectl, helm, kubeconfig
        self.gateway, self.image, self.store, self.rate_window = gateway, image, store, rate_window
        self.prom_forward = TcpForwarder(gateway, prometheus_port)
        self.pg_forward = TcpForwarder(gateway, postgres_port)
        self.forwarders: list[TcpForwarder] = []
        self.install_seconds = 0.0
        self.restarts_seen = 0

    # ---------------------------------------------------------------------------------------------- lifecycle
    def _helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        home = self.repo / ".cache" / "helm"
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "HELM_CONFIG_HOME": str(home / "config"),
               "HELM_CACHE_HOME": str(home / "cache"), "HELM_DATA_HOME": str(home / "data")}
        r = subprocess.run([str(self.helm), *args], capture_output=True, text=True, env=env, check=False,
                           stdin=subprocess.DEVNULL, timeout=300)
        if check and r.returncode != 0:
            raise RuntimeError(f"helm {args[0]} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
        return r

    def values(self) -> list[str]:
        repository, tag = self.image.rsplit(":", 1)
        return ["--set", f"fullnameOverride={FULLNAME}",
                "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
                "--set", "image.pullPolicy=Never",
                "--set-json", f"nodeSelector={json.dumps(REAL_NODE_SELECTOR)}",
                "--set-json", f"tolerations={json.dumps([REAL_NODE_TOLERATION])}",
                "--set", f"prometheus.address=http://{self.prom_forward.address}",
                "--set", f"analysis.rateWindow={self.rate_window}",
                "--set", "snapshots.persistence.enabled=true", "--set", "snapshots.persistence.storageClass=-",
                "--set", "snapshots.persistence.keep=false"]

    def install(self, timeout: float = 180) -> None:
        """Forwarders, namespace, the store's volume, `helm install`; returns once the pod is Ready."""
        if not self.forwarders:
            for f in (self.prom_forward, self.pg_forward):
                f.start()
                self.forwarders.append(f)
        self.uninstall()
        self.store.mkdir(parents=True, exist_ok=True)
        os.chown(self.store, OPERATOR_UID, OPERATOR_UID)
        os.chmod(self.store, 0o750)
        ns = {"apiVersion": "v1", "kind": "Namespace",
              "metadata": {"name": NAMESPACE, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
        pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{FULLNAME}-snapshots"},
              "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"],
                       "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                       "hostPath": {"path": str(self.store), "type": "Directory"},
                       "claimRef": {"namespace": NAMESPACE, "name": f"{FULLNAME}-snapshots"}}}
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [ns, pv]}))
        start = time.monotonic()
        self._helm("install", RELEASE, str(self.repo / "charts" / "saferollout"), "-n", NAMESPACE, "--wait=false",
                   *self.values())
        if not self.wait_ready(timeout):
            described = self.kubectl("describe", "pods", "-n", NAMESPACE, check=False).stdout
            raise RuntimeError(f"the operator pod is not Ready {timeout:g}s after helm install:\n{described[-3000:]}")
        self.install_seconds = time.monotonic() - start
        self.restarts_seen = self.restarts()

    def uninstall(self) -> None:
        self._helm("uninstall", RELEASE, "-n", NAMESPACE, "--ignore-not-found", "--cascade=foreground", "--wait",
                   "--timeout", "120s", check=False)
        self.kubectl("delete", "pv", f"{FULLNAME}-snapshots", "--ignore-not-found", "--wait=true", "--timeout=60s",
                     check=False)

    def close(self) -> None:
        self.uninstall()
        self.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false", check=False)
        for f in self.forwarders:
            f.stop()

    def forward(self, port: int) -> str:
        """host:port where pods reach a server on loopback:port (a webhook receiver): a bounded forwarder."""
        f = TcpForwarder(self.gateway, port)
        f.start()
        self.forwarders.append(f)
        return f.address

    def unforward(self, address: str) -> None:
        for f in [f for f in self.forwarders if f.address == address and f not in (self.prom_forward,
                                                                                      self.pg_forward)]:
            f.stop()
            self.forwarders.remove(f)

    # -------------------------------------------------------------------------------------------------- state
    def pods(self) -> list[dict[str, Any]]:
        r = self.kubectl("get", "pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "json")
        return [p for p in json.loads(r.stdout)["items"] if not p["metadata"].get("deletionTimestamp")]

    @staticmethod
    def ready(pod: dict[str, Any]) -> bool:
        return any(c.get("type") == "Ready" and c.get("status") == "True"
                   for c in (pod.get("status") or {}).get("conditions") or [])

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(self.ready(p) for p in self.pods()):
                return True
            time.sleep(0.5)
        return False

    @property
    def alive(self) -> bool:
        return any(self.ready(p) for p in self.pods())

    def restarts(self) -> int:
        return sum(int(c.get("restartCount") or 0) for p in self.pods()
                   for c in (p.get("status") or {}).get("containerStatuses") or [])

    def logs(self, since: datetime) -> str:
        r = self.kubectl("logs", "-n", NAMESPACE, f"deployment/{FULLNAME}", "--tail=-1",
                         f"--since-time={since.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}",
                         check=False)
        return r.stdout

    def tmp_dirs(self) -> list[Path]:
        """The pods' /tmp (the chart's emptyDir `tmp`) as the host sees it."""
        return [KUBELET_PODS / p["metadata"]["uid"] / "volumes" / "kubernetes.io~empty-dir" / "tmp"
                for p in self.pods()]

    # ------------------------------------------------------------------------------------------------- faults
    def stop(self, signal: str) -> None:
        """Down until start(): scaled to 0; SIGKILL also deletes the pod with no grace period (kill -9)."""
        pods = [p["metadata"]["name"] for p in self.pods()]
        self.kubectl("scale", f"deployment/{FULLNAME}", "-n", NAMESPACE, "--replicas=0")
        if signal == "KILL" and pods:
            self.kubectl("delete", "pod", "-n", NAMESPACE, *pods, "--grace-period=0", "--force", "--wait=false",
                         check=False)

    def start(self) -> None:
        self.kubectl("scale", f"deployment/{FULLNAME}", "-n", NAMESPACE, "--replicas=1")


class ClusterOperatorRun:
    """One run's handle on the session's operator pod, in place of a local OperatorProcess: the faults act on the
    pod, the run's log is the pod's log since the run began, and a container restart nobody asked for is an error."""

    def __init__(self, op: ClusterOperator, log: Path, note: Callable[[str, str], None]) -> None:
        self.op, self.log, self.note = op, log, note
        self.since = datetime.now(UTC)
        self._expect_down = False
        self._reported = False
        self._checked = 0.0

    @property
    def alive(self) -> bool:
        return self.op.alive

    def _save_logs(self) -> None:
        with self.log.open("a", encoding="utf-8") as f:
            f.write(self.op.logs(self.since))
        self.since = datetime.now(UTC)

    def start(self) -> None:
        pods = ", ".join(p["metadata"]["name"] for p in self.op.pods()) or "none yet"
        self.note("operator", f"the session's in-cluster operator (helm release {RELEASE}, pod {pods})")

    def kill(self, sig_name: str) -> None:
        self._save_logs()
        self._expect_down = True
        self.op.stop(sig_name)
        self.note("operator", f"scaled to 0 ({'pod deleted with no grace period' if sig_name == 'KILL' else sig_name})")

    def restart(self) -> None:
        self.op.start()
        self._expect_down = False
        self.note("operator", "scaled to 1")

    def stop(self) -> None:
        """The end of the run: the pod goes on serving the other runs; its log since the run began is kept. A run
        that ended with the operator down (killed, never restarted) brings it back for the next."""
        self._save_logs()
        if self._expect_down:
            self.restart()
            if not self.op.wait_ready(120):
                raise RuntimeError("the in-cluster operator is not Ready again 120s after scaling it back to 1")

    def check_exit(self) -> str | None:
        """Once, when the container restarted without a fault asking for it (checked every 2 s)."""
        now = time.monotonic()
        if self._reported or self._expect_down or now - self._checked < 2:
            return None
        self._checked = now
        restarts = self.op.restarts()
        if restarts <= self.op.restarts_seen:
            return None
        self._reported = True
        self.op.restarts_seen = restarts
        msg = f"the in-cluster operator's container restarted on its own ({restarts} restarts; see {self.log})"
        self.note("error", msg)
        return msg
