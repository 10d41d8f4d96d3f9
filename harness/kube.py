"""The cluster side of a run: the real kubectl for what a user does, the Python client for what the harness reads.

Applying the rollout (and the bad manifests) goes through kubectl, so the messages checked are the ones a person
sees. Reads go through the kubernetes client, which is cheaper when polling four times a second.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from harness.format import TrafficRefs
from harness.pods import PodWorld, pod_template_spec
from harness.traefik import gateway as traefik_gateway

SR_GROUP, SR_VERSION, SR_PLURAL = "saferollout.dev", "v1alpha1", "saferollouts"
GW_GROUP, GW_VERSION = "gateway.networking.k8s.io", "v1"
GATEWAY_CLASS = "saferollout-harness"
GATEWAY = "harness-gateway"
REPO = Path(__file__).resolve().parent.parent


def default_kubeconfig() -> Path:
    return Path(os.environ.get("KUBECONFIG") or REPO / ".cache" / "cluster" / "kubeconfig")


def default_kubectl() -> Path:
    """The kubectl built with the cluster (cluster/versions.env), else the one on PATH."""
    explicit = os.environ.get("SAFEROLLOUT_KUBECTL")
    if explicit:
        return Path(explicit)
    versions = REPO / "cluster" / "versions.env"
    if versions.exists():
        for line in versions.read_text().splitlines():
            if line.startswith("K8S_VERSION="):
                built = REPO / ".cache" / "bin" / line.split("=", 1)[1].strip() / "kubectl"
                if built.exists():
                    return built
    found = shutil.which("kubectl")
    if not found:
        raise RuntimeError("no kubectl: build the cluster tools (cluster/build.sh) or set SAFEROLLOUT_KUBECTL")
    return Path(found)


def get_or_none(fn: Callable[[], Any], api: client.ApiClient) -> dict[str, Any] | None:
    """An object read by `fn` as a plain dict, or None when it does not exist (other API errors raise)."""
    try:
        obj = fn()
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    out = obj if isinstance(obj, dict) else api.sanitize_for_serialization(obj)
    return out if isinstance(out, dict) else None


class Kube:
    def __init__(self, kubeconfig: Path, kubectl: Path) -> None:
        if not kubeconfig.exists():
            raise RuntimeError(f"no kubeconfig at {kubeconfig}: start the cluster (cluster/up.sh) or set KUBECONFIG")
        self.kubeconfig = kubeconfig
        self.kubectl_bin = kubectl
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.ext = client.ApiextensionsV1Api(self.api)

    def new_api(self) -> client.ApiClient:
        """A client of its own for another thread (urllib3 pools are shared per ApiClient)."""
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    # --------------------------------------------------------------------------------------------- kubectl
    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        r = subprocess.run([str(self.kubectl_bin), *args], input=input, capture_output=True, text=True, env=env,
                           timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {r.stderr.strip() or r.stdout.strip()}")
        return r

    def apply(self, docs: list[dict[str, Any]], check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs, sort_keys=False), check=check)

    # ---------------------------------------------------------------------------------------------- checks
    def has_crd(self, name: str) -> bool:
        try:
            crd = self.ext.read_custom_resource_definition(name)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        conds = (crd.status.conditions if crd.status else None) or []
        return any(c.type == "Established" and c.status == "True" for c in conds)

    def ensure_crds(self, files: list[Path], timeout: float = 60) -> None:
        """Apply the project's CRDs (idempotent) and wait until they are served."""
        for f in files:
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(f))
            for doc in yaml.safe_load_all(f.read_text()):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    name = doc["metadata"]["name"]
                    deadline = time.monotonic() + timeout
                    while not self.has_crd(name):
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"CRD {name} not established after {timeout:g}s")
                        time.sleep(0.5)

    # ----------------------------------------------------------------------------------------------- reads
    def get_rollout(self, ns: str, name: str) -> dict[str, Any] | None:
        return get_or_none(lambda: self.custom.get_namespaced_custom_object(SR_GROUP, SR_VERSION, ns, SR_PLURAL, name),
                           self.api)

    def get_deployment(self, ns: str, name: str) -> dict[str, Any] | None:
        return get_or_none(lambda: self.apps.read_namespaced_deployment(name, ns), self.api)

    def get_statefulset(self, ns: str, name: str) -> dict[str, Any] | None:
        return get_or_none(lambda: self.apps.read_namespaced_stateful_set(name, ns), self.api)

    def get_target(self, ns: str, name: str, refs: TrafficRefs) -> dict[str, Any] | None:
        """The target workload: a StatefulSet for the partition router, else a Deployment."""
        return self.get_statefulset(ns, name) if refs.kind == "partition" else self.get_deployment(ns, name)

    def get_service(self, ns: str, name: str) -> dict[str, Any] | None:
        return get_or_none(lambda: self.core.read_namespaced_service(name, ns), self.api)

    def get_configmap(self, ns: str, name: str) -> dict[str, Any] | None:
        return get_or_none(lambda: self.core.read_namespaced_config_map(name, ns), self.api)

    def get_resource_quota(self, ns: str, name: str) -> dict[str, Any] | None:
        return get_or_none(lambda: self.core.read_namespaced_resource_quota(name, ns), self.api)

    def events(self, ns: str) -> list[dict[str, Any]]:
        out = self.core.list_namespaced_event(ns)
        items = self.api.sanitize_for_serialization(out).get("items") or []
        return [i for i in items if isinstance(i, dict)]

    # ------------------------------------------------------------------------------------------- namespace
    def namespace_exists(self, ns: str) -> bool:
        try:
            self.core.read_namespace(ns)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    def delete_rollouts(self, ns: str, timeout: float = 30) -> None:
        """Delete the namespace's SafeRollouts and, if the operator does not release them in time, drop finalizers."""
        try:
            items = self.custom.list_namespaced_custom_object(SR_GROUP, SR_VERSION, ns, SR_PLURAL).get("items", [])
        except ApiException as e:
            if e.status == 404:
                return
            raise
        names = [i["metadata"]["name"] for i in items]
        for name in names:
            self.kubectl("delete", SR_PLURAL, name, "-n", ns, "--wait=false", "--ignore-not-found", check=False)
        deadline = time.monotonic() + timeout
        while names and time.monotonic() < deadline:
            names = [n for n in names if self.get_rollout(ns, n) is not None]
            time.sleep(0.5)
        for name in names:
            self.kubectl("patch", SR_PLURAL, name, "-n", ns, "--type=merge",
                         "-p", json.dumps({"metadata": {"finalizers": None}}), check=False)

    def delete_namespace(self, ns: str, timeout: float = 120) -> None:
        """Delete and wait until it is gone, so the next scenario can reuse the name."""
        if not self.namespace_exists(ns):
            return
        self.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)
        deadline = time.monotonic() + timeout
        unstuck = False
        while self.namespace_exists(ns):
            if time.monotonic() > deadline:
                raise RuntimeError(f"namespace {ns} still terminating after {timeout:g}s")
            if not unstuck and time.monotonic() > deadline - timeout / 2:
                self.delete_rollouts(ns, timeout=0)  # a finalizer with no operator to release it
                unstuck = True
            time.sleep(0.5)


def images_of(deployment: dict[str, Any] | None) -> dict[str, str]:
    """{container name: image} of a Deployment's pod template."""
    if not deployment:
        return {}
    containers = ((((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers")) or []
    return {str(c.get("name")): str(c.get("image")) for c in containers}


def available(deployment: dict[str, Any] | None) -> bool:
    """True when the Deployment has at least one available replica and is not being deleted."""
    if not deployment or (deployment.get("metadata") or {}).get("deletionTimestamp"):
        return False
    status = deployment.get("status") or {}
    return int(status.get("availableReplicas") or 0) >= 1


def gateway_class() -> dict[str, Any]:
    """The GatewayClass of every run's Gateway: cluster-scoped, made once and left in place."""
    return {"apiVersion": f"{GW_GROUP}/{GW_VERSION}", "kind": "GatewayClass", "metadata": {"name": GATEWAY_CLASS},
            "spec": {"controllerName": "saferollout.dev/harness"}}


def world(ns: str, target: str, images: dict[str, str], replicas: int, refs: TrafficRefs,
          secret: tuple[str, str, str] | None, pods: PodWorld | None = None) -> list[dict[str, Any]]:
    """The objects a rollout refers to: namespace, target Deployment, Services, the router's object, DSN Secret.

    The Services are the stable one (blueGreen: the active one), selecting the target's pods, and the canary one
    (blueGreen: the preview one), selecting the canary's. The router's object sends everything to the stable
    Service: an HTTPRoute (with a Gateway and its class), a VirtualService with one HTTP route and only the stable
    destination (the operator adds the canary's), or an Ingress; replicas and blueGreen have no object. The pods
    land on KWOK's fake nodes (the toleration is harmless elsewhere) and run nothing; the harness's local
    processes do the serving. With `pods`, they run the demo app on the real node (harness.pods), and the Gateway
    is Traefik's, its listener on Traefik's port.
    """
    labels = {"app": target}
    stable_svc, canary_svc = refs.stable_service, refs.canary_service
    port = [{"name": "http", "port": 80, "targetPort": 8080}]
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"saferollout.dev/harness": "1"}}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": target, "namespace": ns, "labels": labels},
         "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels},
                               "spec": {"containers": [{"name": n, "image": i, "ports": [{"containerPort": 8080}]}
                                                       for n, i in images.items()],
                                        "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists",
                                                         "effect": "NoSchedule"}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": stable_svc, "namespace": ns},
         "spec": {"selector": labels, "ports": port}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": canary_svc, "namespace": ns},
         "spec": {"selector": {"saferollout.dev/canary-of": target}, "ports": port}},
    ]
    if pods is not None:
        both = (stable_svc, canary_svc) if refs.kind == "blueGreen" else ()  # their series exist from the start
        docs[1]["spec"]["template"]["spec"] = pod_template_spec(images, stable_svc, ns, pods.admin_from, both)
    if refs.kind == "partition":  # extension: a StatefulSet; the operator makes the canary Service (by revision)
        target_doc = docs[1]
        target_doc["kind"] = "StatefulSet"
        target_doc["spec"].update({"serviceName": stable_svc, "podManagementPolicy": "Parallel",
                                   "updateStrategy": {"type": "RollingUpdate"}})
        docs = [d for d in docs if not (d["kind"] == "Service" and d["metadata"]["name"] == canary_svc)]
    if refs.kind == "gatewayAPI":
        docs += [
            gateway_class(),
            {"apiVersion": f"{GW_GROUP}/{GW_VERSION}", "kind": "Gateway", "metadata": {"name": GATEWAY, "namespace": ns},
             "spec": {"gatewayClassName": GATEWAY_CLASS,
                      "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}
            if pods is None else traefik_gateway(ns, pods.gateway_port, GATEWAY),
            {"apiVersion": f"{GW_GROUP}/{GW_VERSION}", "kind": "HTTPRoute", "metadata": {"name": refs.obj, "namespace": ns},
             "spec": {"parentRefs": [{"name": GATEWAY}],
                      "rules": [{"backendRefs": [{"name": stable_svc, "port": 80, "weight": 100},
                                                 {"name": canary_svc, "port": 80, "weight": 0}]}]}},
        ]
    elif refs.kind == "istio":
        docs.append({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                     "metadata": {"name": refs.obj, "namespace": ns},
                     "spec": {"hosts": [stable_svc],
                              "http": [{"name": refs.route or "primary",
                                        "route": [{"destination": {"host": stable_svc, "port": {"number": 80}},
                                                   "weight": 100}]}]}})
    elif refs.kind == "nginx":
        docs.append({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                     "metadata": {"name": refs.obj, "namespace": ns},
                     "spec": {"ingressClassName": "nginx",
                              "rules": [{"host": f"{target}.example.com", "http": {"paths": [
                                  {"path": "/", "pathType": "Prefix",
                                   "backend": {"service": {"name": stable_svc, "port": {"number": 80}}}}]}}]}})
    if secret is not None:
        name, key, dsn = secret
        docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
                     "type": "Opaque", "stringData": {key: dsn}})
    return docs
