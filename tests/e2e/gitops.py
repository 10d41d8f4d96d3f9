"""What the GitOps e2e tests share (test_target_template.py without Argo CD, test_argocd_gitops.py with it): the
operator run locally with its admission webhook registered by a MutatingWebhookConfiguration, and a watch that
records every write to the target Deployment with the manager that made it (from managedFields).

    operator = start_operator_with_webhook(kube, ["ns1", "ns2"], sa_kubeconfig, prometheus_url, run_dir, cert, key, tl)
    watch = TargetWatch(kube.new_api(), "ns1", "web", tl)
    watch.start()
    ...
    watch.writes_by(since)   # {manager: number of writes}
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, watch

from harness.kube import Kube
from harness.scenario import OperatorProcess, operator_launch
from harness.services import free_port
from harness.timeline import Timeline
from saferollout.core.configs import CONFIG_LABEL
from saferollout.core.templates import TARGET_LABEL, template_hash_of

WEBHOOK_NAME = "hold-template.saferollout.dev"
CONFIG_WEBHOOK_NAME = "config-copies.saferollout.dev"


def webhook_configuration(name: str, namespaces: Sequence[str], port: int, cert: Path) -> dict[str, Any]:
    """The chart's MutatingWebhookConfiguration (both webhooks), pointed at an operator on https://127.0.0.1:<port>
    (URL clientConfig, failurePolicy Fail), limited to `namespaces`."""
    def hook(name: str, group: str, resource: str, operation: str, label: str, path: str) -> dict[str, Any]:
        return {
            "name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Fail", "timeoutSeconds": 5, "matchPolicy": "Equivalent",
            "reinvocationPolicy": "IfNeeded",
            "rules": [{"apiGroups": [group], "apiVersions": ["v1"], "resources": [resource],
                       "operations": [operation], "scope": "Namespaced"}],
            "objectSelector": {"matchExpressions": [{"key": label, "operator": "Exists"}]},
            "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In",
                                                        "values": list(namespaces)}]},
            "clientConfig": {"url": f"https://127.0.0.1:{port}/{path}",
                             "caBundle": base64.b64encode(cert.read_bytes()).decode()},
        }
    return {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [hook(WEBHOOK_NAME, "apps", "deployments", "UPDATE", TARGET_LABEL, "hold-template"),
                     # trackConfig's: a pod of a tracked target is given the copies of its config version
                     hook(CONFIG_WEBHOOK_NAME, "", "pods", "CREATE", CONFIG_LABEL, "config-copies")]}


def start_operator_with_webhook(kube: Kube, namespaces: Sequence[str], operator_kubeconfig: Path, prometheus_url: str,
                                run_dir: Path, cert: Path, key: Path, tl: Timeline, *,
                                config_name: str | None = None) -> OperatorProcess:
    """Registers the webhook for `namespaces` (MutatingWebhookConfiguration `config_name`, default
    saferollout-<first namespace>), starts one operator watching them that serves it, and returns once it listens.
    The caller stops the operator and deletes the configuration."""
    port = free_port()
    kube.apply([webhook_configuration(config_name or f"saferollout-{namespaces[0]}", namespaces, port, cert)])
    launch = operator_launch(namespaces[0], operator_kubeconfig, prometheus_url, run_dir / "snapshots")
    for ns in namespaces[1:]:
        launch.argv.extend(["--namespace", ns])
    launch.env.update({"SAFEROLLOUT_WEBHOOK_PORT": str(port), "SAFEROLLOUT_WEBHOOK_ADDR": "127.0.0.1",
                       "SAFEROLLOUT_WEBHOOK_HOSTS": "127.0.0.1", "SAFEROLLOUT_WEBHOOK_CERT_FILE": str(cert),
                       "SAFEROLLOUT_WEBHOOK_KEY_FILE": str(key), "SAFEROLLOUT_SOURCE_POLL_SECONDS": "2"})
    operator = OperatorProcess(launch, run_dir / "operator.log", tl)
    operator.start()
    deadline = time.monotonic() + 60
    while True:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                tl.add("harness", "the operator serves the webhook")
                return operator
        if not operator.alive or time.monotonic() > deadline:
            operator.stop()
            raise AssertionError(f"the operator does not serve the webhook on 127.0.0.1:{port} (see {operator.log})")
        time.sleep(0.25)


def _entry_key(m: dict[str, Any]) -> str:
    return f"{m.get('manager')}|{m.get('operation')}"


@dataclass
class TargetWrite:
    t: float  # time.monotonic()
    manager: str  # managedFields' manager of the newest entry: who made the write
    what: str
    paused: bool = False  # spec.paused after the write
    template_hash: str = ""  # the pod template's hash after the write


class TargetWatch:
    """Every write to a Deployment's spec, labels or annotations (not its status, not the Deployment controller's
    revision annotation), with the manager that made it: the newest managedFields entry of the object it left."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str, tl: Timeline, label: str = "") -> None:
        self.api, self.ns, self.name, self.tl = api, namespace, name, tl
        self.label = label  # prefixed to the timeline entries
        self.writes: list[TargetWrite] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"target-watch-{namespace}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        apps = client.AppsV1Api(self.api)
        last: tuple[Any, ...] | None = None
        before: dict[str, str] = {}  # manager|operation -> its managedFields entry (time and fields) as last seen
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for ev in w.stream(apps.list_namespaced_deployment, self.ns, field_selector=f"metadata.name={self.name}",
                                   timeout_seconds=5):
                    if self._stop.is_set():
                        break
                    obj = client.ApiClient().sanitize_for_serialization(ev["object"])
                    meta = obj["metadata"]
                    ann = {k: v for k, v in (meta.get("annotations") or {}).items()
                           if k != "deployment.kubernetes.io/revision"}
                    key = (json.dumps(obj["spec"], sort_keys=True), json.dumps(meta.get("labels"), sort_keys=True),
                           json.dumps(ann, sort_keys=True))
                    entries = [m for m in meta.get("managedFields") or [] if not m.get("subresource")]
                    now = {_entry_key(m): json.dumps(m, sort_keys=True) for m in entries}
                    if last is not None and key != last:
                        # the writer: the manager whose entry changed (times have a resolution of one second, so
                        # the newest time alone cannot tell two writes of the same second apart)
                        changed = [m for m in entries if before.get(_entry_key(m)) != now[_entry_key(m)]]
                        newest = max(changed or entries, key=lambda m: str(m.get("time")))
                        paused = bool(obj["spec"].get("paused"))
                        what = f"generation {meta.get('generation')}, paused={obj['spec'].get('paused')}"
                        self.writes.append(TargetWrite(time.monotonic(), str(newest.get("manager")), what, paused,
                                                       template_hash_of(obj["spec"].get("template"))))
                        self.tl.add("write", f"{self.label}{newest.get('manager')}: {what}")
                    last, before = key, now
            except Exception as e:  # a watch that broke is started again
                if not self._stop.is_set():
                    time.sleep(0.5)
                    self.tl.add("harness", f"{self.label}target watch restarted: {type(e).__name__}")

    def since(self, t: float = 0.0) -> list[TargetWrite]:
        return [w for w in list(self.writes) if w.t >= t]

    def writes_by(self, since: float = 0.0) -> dict[str, int]:
        out: dict[str, int] = {}
        for w in self.since(since):
            out[w.manager] = out.get(w.manager, 0) + 1
        return out
