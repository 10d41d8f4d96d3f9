"""The demo app as real pods on the real node, and Traefik as the data plane: a scenario's "pods" mode.

In this mode the target Deployment (and so the canary the operator copies from it) runs the demo app image
(harness/demoapp.Containerfile) on the real node (cluster/node/node.sh), under the image names the scenario gives:
the harness tags the one image with each of them in the node's containerd, so `demo/web:2.0` is a real image that
pulls nothing. A pod is not Ready until the harness has pushed it its behaviour: the behaviour of the version it
runs, its role and the Service it is behind (`PodApps.poll`), over the bridge from the host. Prometheus scrapes
each pod at its address. For the Gateway API, Traefik (harness.traefik) reads the HTTPRoute and sends each request
to a ready endpoint of the Service a backendRef names; the load counts where a request went by the answering pod's
`X-Harness-Role`.

`stand_in_reason` says why a scenario cannot run this way (it then runs with local processes and the harness's
router, and its result says so).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from harness.format import Behaviour, Scenario

DEMO_PORT = 8080
ADMIN_PORT = 8081  # the demo app's admin in a pod: no Service names it
REAL_NODE_SELECTOR = {"saferollout.dev/node": "real"}
REAL_NODE_TOLERATION = {"key": "saferollout.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}
CANARY_OF = "saferollout.dev/canary-of"
PUSH_TIMEOUT = 1.0


def stand_in_reason(s: Scenario) -> str | None:
    """None when the scenario runs on real pods and Traefik; else why it keeps the local processes and router."""
    refs = s.traffic
    if refs.kind in ("istio", "nginx"):
        return f"router {refs.kind}: no data plane for it is built here, the harness's router splits the load"
    if refs.kind == "partition":
        return "partition: not yet moved to real pods (a pod's role would follow its StatefulSet revision)"
    if s.canary_share is not None:
        return "load.canaryShare: a data plane that does not apply the weights is the harness's router"
    if s.tokens & {"canaryUrl", "stableUrl"}:
        return "@canaryUrl@/@stableUrl@ name a local process"
    if len(s.template_images) != 1 or len(s.initial_target_images()) != 1:
        return "more than one container: the demo app image serves one port"
    metrics = ((s.spec.get("analysis") or {}).get("metrics")) or []
    if any(isinstance(m, dict) and "judge" in m for m in metrics):
        return ("a judged metric: on real pods it compares the canary's p95 from a quarter of the requests with "
                "the stable's, and this machine's latency outliers move the former more (docs/harness.md)")
    stages = (((s.spec.get("strategy") or {}).get("canary") or {}).get("stages")) or []
    if any(isinstance(st, dict) and ("mirror" in st or st.get("sticky")) for st in stages):
        return "a mirror or sticky stage: Traefik v3.6 does not support it (the operator refuses it there)"
    return None


def node_settings(kubeconfig: Path) -> dict[str, str]:
    """What cluster/node/node.sh wrote about the real node; an error when the cluster runs without one."""
    path = kubeconfig.parent / "node" / "settings"
    if not path.is_file():
        raise RuntimeError(f"no real node's settings at {path}: start the cluster with the real node "
                           "(cluster/up.sh; SR_REAL_NODE=0 leaves it out)")
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def bridge_gateway(kubeconfig: Path) -> str:
    """The host's address on the node's bridge (the first of SR_NODE_SUBNET): where pods reach the host."""
    net, last = node_settings(kubeconfig)["SR_NODE_SUBNET"].split("/")[0].rsplit(".", 1)
    return f"{net}.{int(last) + 1}"


def normalised(image: str) -> str:
    """The name containerd keeps for an image reference, as the kubelet normalises it (docker.io/library/...)."""
    first, _, rest = image.partition("/")
    if not rest:
        image = f"docker.io/library/{image}"
    elif not ("." in first or ":" in first or first == "localhost"):
        image = f"docker.io/{image}"
    name_part = image.rsplit("/", 1)[-1]
    return image if ":" in name_part or "@" in name_part else f"{image}:latest"


def tag_images(kubeconfig: Path, source: str, names: list[str]) -> None:
    """Give the demo app image these names in the node's containerd (where the kubelet looks: namespace k8s.io)."""
    sock = kubeconfig.parent / "node" / "containerd" / "containerd.sock"
    for name in names:
        r = subprocess.run(["ctr", "--address", str(sock), "-n", "k8s.io", "images", "tag", "--force", source,
                            normalised(name)], capture_output=True, text=True, check=False, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"ctr images tag {source} {normalised(name)} failed: {r.stderr.strip()}")


def pod_template_spec(containers: dict[str, str], stable_service: str, namespace: str, admin_from: str,
                      label_services: tuple[str, ...] = ()) -> dict[str, Any]:
    """The target's pod spec: the demo app on the real node, Ready only once the harness has configured it."""
    name, image = next(iter(containers.items()))
    return {
        "nodeSelector": dict(REAL_NODE_SELECTOR), "tolerations": [dict(REAL_NODE_TOLERATION)],
        "terminationGracePeriodSeconds": 5, "enableServiceLinks": False,  # it drains for 2 s (demoapp)
        "containers": [{
            "name": name, "image": image, "imagePullPolicy": "IfNotPresent",
            "args": ["--pod", "--port", str(DEMO_PORT), "--service", stable_service, "--namespace", namespace,
                     "--version", "stable", "--admin-port", str(ADMIN_PORT),
                     *(a for svc in label_services for a in ("--label-service", svc)), "--admin-from", admin_from],
            "ports": [{"containerPort": DEMO_PORT, "name": "http"}, {"containerPort": ADMIN_PORT, "name": "admin"}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": DEMO_PORT}, "periodSeconds": 1,
                               "failureThreshold": 1, "successThreshold": 1},
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
                                "seccompProfile": {"type": "RuntimeDefault"}},
        }],
    }


@dataclass(frozen=True)
class PodWorld:
    """What `harness.kube.world` needs to build a run's objects for real pods and Traefik."""

    admin_from: str  # the host's address on the node's bridge
    gateway_port: int  # Traefik's entrypoint port: the Gateway listener's


@dataclass(frozen=True)
class PodState:
    name: str
    ip: str
    role: str  # canary: a pod of the canary Deployment; stable: of the target
    new_code: bool  # it runs the rollout's template images


@dataclass(frozen=True)
class Pushed:
    role: str
    service: str
    behaviour: Behaviour


class PodApps:
    """Follows the namespace's demo pods: pushes each its behaviour when it changes, keeps Prometheus's targets on
    the running ones. Called from the run's polling loop (one thread)."""

    def __init__(self, api: client.ApiClient, namespace: str, target: str, stable_service: str, canary_service: str,
                 template_images: dict[str, str], on_targets: Callable[[list[PodState]], None],
                 note: Callable[[str], None]) -> None:
        self.core = client.CoreV1Api(api)
        self.ns, self.target = namespace, target
        self.stable_service, self.canary_service = stable_service, canary_service
        self.template_images = dict(template_images)
        self.on_targets, self.note = on_targets, note
        self.pushed: dict[str, Pushed] = {}  # by pod uid and its containers' restarts (a restarted one is new)
        self.targets: tuple[tuple[str, str, str], ...] = ()
        self.pods: list[PodState] = []
        self._lock = threading.Lock()

    def running(self) -> list[tuple[str, PodState]]:
        out = []
        for p in self.core.list_namespaced_pod(self.ns).items:
            if p.metadata.deletion_timestamp is not None or not p.status or not p.status.pod_ip:
                continue
            labels = p.metadata.labels or {}
            if p.status.phase != "Running" or not (labels.get("app") == self.target or
                                                   labels.get(CANARY_OF) == self.target):
                continue  # only the target's and the canary's pods run the demo app
            images = {c.name: c.image for c in p.spec.containers}
            role = "canary" if CANARY_OF in labels else "stable"
            new = bool(images) and all(images.get(n) == i for n, i in self.template_images.items())
            restarts = sum(c.restart_count or 0 for c in p.status.container_statuses or [])
            out.append((f"{p.metadata.uid}/{restarts}", PodState(p.metadata.name, p.status.pod_ip, role, new)))
        return out

    def poll(self, behaviour: Callable[[PodState], Behaviour]) -> list[str]:
        """Push what changed; the errors (a pod not yet listening is retried on the next poll, silently)."""
        errors: list[str] = []
        with self._lock:
            listed = self.running()
            self.pods = [st for _, st in listed]
            for uid, st in listed:
                service = self.service(st)
                want = Pushed(st.role, service, behaviour(st))
                if self.pushed.get(uid) == want:
                    continue
                try:
                    self._push(st, want)
                except OSError:
                    continue  # starting: its readiness probe keeps it out of the Services meanwhile
                except RuntimeError as e:
                    errors.append(str(e))
                    continue
                first = uid not in self.pushed
                self.pushed[uid] = want
                self.note(f"pod {st.name} ({st.ip}, {st.role}{', new code' if st.new_code else ''}) "
                          f"{'configured' if first else 'now'}: {want.behaviour.describe()} behind {service}")
            self.pushed = {uid: v for uid, v in self.pushed.items() if uid in {u for u, _ in listed}}
            targets = tuple(sorted((st.name, st.ip, self.pushed[u].service) for u, st in listed if u in self.pushed))
            if targets != self.targets:
                try:
                    self.on_targets([st for u, st in listed if u in self.pushed])
                    self.targets = targets  # only once Prometheus took them: a failed reload is tried again
                except Exception as e:
                    errors.append(f"Prometheus's targets for the pods: {e}")
        return errors

    def service(self, pod: PodState) -> str:
        """The Service a pod is behind: the label of the requests it serves (no header comes through Traefik)."""
        return self.canary_service if pod.role == "canary" else self.stable_service

    def phases(self) -> str:
        pods = self.core.list_namespaced_pod(self.ns).items
        return "; ".join(f"{p.metadata.name} {p.status.phase} on {p.spec.node_name}" for p in pods) or "none"

    @staticmethod
    def _push(st: PodState, want: Pushed) -> None:
        body = {**want.behaviour.wire(), "service": want.service, "role": want.role}
        req = urllib.request.Request(f"http://{st.ip}:{ADMIN_PORT}/admin/config", method="POST",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=PUSH_TIMEOUT) as r:
                if r.status != 200:
                    raise RuntimeError(f"pod {st.name}: admin answered {r.status}")
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"pod {st.name}: admin answered {e.code}: {e.read()[:200]!r}") from e


def chart_version(repo: Path) -> str:
    """The images' tag: the chart's appVersion, as scripts/image.sh tags them."""
    for line in (repo / "charts" / "saferollout" / "Chart.yaml").read_text().splitlines():
        if line.startswith("appVersion:"):
            return line.split(":", 1)[1].strip().strip("\"'")
    raise RuntimeError("no appVersion in charts/saferollout/Chart.yaml")


def build_images(repo: Path, kubeconfig: Path) -> dict[str, str]:
    """scripts/image.sh (cached: seconds when nothing changed), then the operator and demo app images into the node's
    containerd; their references by name (operator, demoapp)."""
    env = {**os.environ, "SR_STATE_DIR": str(kubeconfig.parent)}
    version = chart_version(repo)
    archives = [str(repo / ".cache" / "images" / f"saferollout-{name}-{version}.tar") for name in ("operator", "demoapp")]
    for argv in (["bash", "scripts/image.sh"], ["bash", "cluster/node/images.sh", "import", *archives]):
        r = subprocess.run(argv, cwd=repo, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           check=False, timeout=1200)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {(r.stdout + r.stderr)[-2000:]}")
    return {name: f"localhost/saferollout/{name}:{version}" for name in ("operator", "demoapp")}
