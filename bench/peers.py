"""SafeRollout side by side with Flagger and Argo Rollouts: the same cluster, Prometheus, demo app and query.

Each controller runs in turn, as a local process against the local cluster (cluster/up.sh), with the nearest
equivalent manifest: a SafeRollout (Gateway API router), a Flagger Canary with a MetricTemplate (Gateway API,
`-mesh-provider gatewayapi:v1`) and an Argo Rollouts Rollout with an AnalysisTemplate (its replica-ratio canary:
Argo Rollouts has no Gateway API router built in, that needs a plugin). The harness's data plane (harness.router)
follows what each controller writes: harness.versions maps every backend to the version its Service selects,
whatever the controller calls its Services and Deployments, so the load and the failures reach each one's objects.

Cases (per controller, N runs each):
  failing  the canary fails 8% of its requests from its first request: seconds from its first request (the failure)
           to the controller's decision (its status says rollback) and to canary weight 0 at the data plane;
  healthy  a canary with no errors: seconds from the new version being applied to the controller's success;
  noisy    a healthy canary with 0.4% random errors (~20 requests in the window at 5%): a rollback is a false one;
  outage   a healthy canary, Prometheus stopped for 30 s once the second stage's weight is set: what each does.
And the controllers' CPU and resident memory idle and, with `--load N`, with N rollouts held in their first stage
(one namespace each, a synthetic healthy counter per Service; SafeRollout: one operator watching all of them).
`--json` keeps every figure, `--report` prints the tables of earlier files again.

The equal setting: analysis interval 10 s (Flagger's floor: a shorter interval is raised to 10 s), 3 failed checks
roll back (SafeRollout failureLimit 3, Flagger threshold 3, Argo Rollouts failureLimit 2: it fails when failures
exceed the limit), stages 5/25/50/100 % of one interval each, the same error-rate query with a 10 s window and a 1%
maximum. Argo Rollouts' analysis starts one interval after the update (initialDelay), as Flagger's first check does.
`--setting defaults` leaves out of each manifest every field with a documented default (DEFAULTS below).

Needs: the cluster (SR_* variables as for cluster/up.sh, KUBECONFIG or SR_STATE_DIR), `bash bench/peers/build.sh all`.
Run: .venv/bin/python bench/peers.py [--runs 3] [--controllers saferollout,flagger,argo-rollouts]
     [--cases failing,healthy,noisy,outage] [--load 20] [--setting equal|defaults] [--json out.json]
     | --report a.json b.json
Prints tables; not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT)]

from harness.format import Behaviour  # noqa: E402
from harness.kube import GATEWAY, GATEWAY_CLASS, Kube, default_kubectl, get_or_none  # noqa: E402
from harness.router import Backend, Router  # noqa: E402
from harness.scenario import DemoProcess, OperatorLaunch, OperatorProcess, operator_launch  # noqa: E402
from harness.services import (  # noqa: E402
    Prometheus,
    ScrapeTarget,
    TextExporter,
    free_port,
    stop_process,
    wait_http,
)
from harness.timeline import Timeline  # noqa: E402
from harness.versions import RouteReader  # noqa: E402

STABLE_IMAGE, CANARY_IMAGE = "demo/web:1.0", "demo/web:2.0"
ROLES = {STABLE_IMAGE: "stable", CANARY_IMAGE: "canary"}
FLAGGER_VERSION = os.environ.get("FLAGGER_VERSION", "v1.36.1")
ROLLOUTS_VERSION = os.environ.get("ROLLOUTS_VERSION", "v1.10.2")
PEERS_BIN = Path(os.environ.get("SR_PEERS_BIN", ROOT / ".cache" / "bin" / "peers"))
TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
POLL = 0.25
RPS = 40.0  # 2 requests/s to a 5% canary: ~20 requests in the 10 s rate window at the first stage (row 2)
NOISY_ERRORS = 0.004  # row 2: a healthy canary's noise, under the 1% limit
OUTAGE_S = 30.0


@dataclass(frozen=True)
class Setting:
    interval_s: int = 10
    failures: int = 3  # failed checks that roll back
    weights: tuple[int, ...] = (5, 25, 50, 100)
    window: str = "10s"
    max_error: float = 0.01
    hold: bool = False  # row 5's load: the rollouts stay in their first stages (an hour; Flagger: 1..99% a step)
    # each tool's documented defaults: what each leaves out gets its own default (see DEFAULTS); stage durations
    # and Argo Rollouts' measurement interval, which have none, are `stage_s`
    defaults: bool = False
    stage_s: int | None = None

    @property
    def stage(self) -> str:
        return f"{self.stage_s or self.interval_s}s"

    @property
    def label(self) -> str:
        if self.defaults:
            return (f"documented defaults: SafeRollout interval 30s, failureLimit 3, rate window 1m; Flagger interval "
                    f"60s, threshold 1 (its CRD requires both: its code's fallbacks), metric interval 1m; Argo "
                    f"Rollouts failureLimit 0, no initialDelay, and (no default) interval {self.stage}, query window "
                    f"1m; stages {', '.join(map(str, self.weights))} % "
                    f"of {self.stage} each, 1% maximum error rate")
        return (f"equal setting: interval {self.interval_s}s, {self.failures} failed checks roll back, stages "
                f"{', '.join(map(str, self.weights))} % of {self.stage} each, query window {self.window}, "
                f"{self.max_error:.0%} maximum error rate")


# Row 1-4's second setting: every field with a documented default is left out of each tool's manifest. Stage
# durations have no default in any of them (Flagger advances one step per interval, 60 s by default, so 60 s for
# all); Argo Rollouts' metric interval has none either (without it a background analysis measures once), so it
# takes the same 60 s.
DEFAULTS = Setting(interval_s=60, window="1m", defaults=True, stage_s=60)


def error_rate_query(ns: str, service: str, window: str) -> str:
    """SafeRollout's built-in error-rate template (saferollout.core.queries), filled in for one Service."""
    sel = f'service="{service}",namespace="{ns}"'
    return (f'(sum(rate(http_requests_total{{{sel},code=~"5.."}}[{window}])) or vector(0))'
            f" / sum(rate(http_requests_total{{{sel}}}[{window}]))")


def container(image: str) -> dict[str, Any]:
    return {"name": "web", "image": image, "ports": [{"containerPort": 8080}]}


def deployment(ns: str, replicas: int) -> dict[str, Any]:
    labels = {"app": "web"}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [container(STABLE_IMAGE)], "tolerations": [TOLERATION]}}}}


def service(ns: str, name: str, selector: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


def gateway(ns: str) -> list[dict[str, Any]]:
    gw = "gateway.networking.k8s.io/v1"
    return [{"apiVersion": gw, "kind": "GatewayClass", "metadata": {"name": GATEWAY_CLASS},
             "spec": {"controllerName": "saferollout.dev/harness"}},
            {"apiVersion": gw, "kind": "Gateway", "metadata": {"name": GATEWAY, "namespace": ns},
             "spec": {"gatewayClassName": GATEWAY_CLASS, "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}]


def namespace(ns: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"saferollout.dev/bench": "1"}}}


def json_patch_image(kube: Kube, kind: str, ns: str) -> None:
    patch = [{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": CANARY_IMAGE}]
    kube.kubectl("-n", ns, "patch", kind, "web", "--type", "json", "-p", json.dumps(patch))


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:g}s")
        time.sleep(0.5)


def usage(pid: int) -> tuple[float, float]:
    """(CPU seconds so far, resident MB) of a process and its children that are still running."""
    cpu = rss = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        try:
            stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(stat[11]) + int(stat[12])) / tick
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) / 1024
        except OSError:
            continue
    return cpu, rss


# ------------------------------------------------------------------------------------------------ controllers


class Controller:
    """One controller: its process, its manifests, how to start a rollout and read its outcome."""

    name = ""
    labels: tuple[str | None, str | None] = (None, None)  # the X-Harness-Service of stable and canary requests

    def __init__(self, kube: Kube, prom: Prometheus, setting: Setting, logs: Path) -> None:
        self.kube, self.prom, self.setting, self.logs = kube, prom, setting, logs
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self) -> None:  # a cluster-wide controller, started once
        pass

    def stop(self) -> None:
        stop_process(self.proc, timeout=10, group=True)

    def _spawn(self, argv: list[str], health: str) -> None:
        log = (self.logs / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        if not wait_http(health, 60):
            raise RuntimeError(f"{self.name} did not start: see {self.logs / f'{self.name}.log'}")

    def objects(self, ns: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    def ready(self, ns: str) -> None:
        """Wait until the controller has taken over the stable version."""

    def begin(self, ns: str) -> None:
        raise NotImplementedError

    def end(self, ns: str) -> None:
        """After a run (SafeRollout: its namespaced operator stops)."""

    def load_ready(self, namespaces: list[str]) -> None:
        for ns in namespaces:
            self.ready(ns)

    def load_end(self) -> None:
        """After row 5's load."""

    def state(self, ns: str) -> str:
        """"rollback" once the controller has decided to roll back, "promoted" once it is done, else its phase."""
        raise NotImplementedError

    def reader(self, ns: str) -> RouteReader:
        raise NotImplementedError

    def backends(self) -> dict[str, Backend]:
        return {"stable": Backend("stable", self.labels[0]), "canary": Backend("canary", self.labels[1])}


class SafeRollout(Controller):
    name = "saferollout"
    labels = ("web", "web-canary")

    def __init__(self, kube: Kube, prom: Prometheus, setting: Setting, logs: Path) -> None:
        super().__init__(kube, prom, setting, logs)
        self.op: OperatorProcess | None = None
        kube.ensure_crds(sorted((ROOT / "crds").glob("*.yaml")))

    @property
    def pid(self) -> int | None:
        return self.op.proc.pid if self.op is not None and self.op.alive and self.op.proc is not None else None

    def objects(self, ns: str) -> list[dict[str, Any]]:
        route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                 "metadata": {"name": "web", "namespace": ns},
                 "spec": {"parentRefs": [{"name": GATEWAY}],
                          "rules": [{"backendRefs": [{"name": "web", "port": 80, "weight": 100},
                                                     {"name": "web-canary", "port": 80, "weight": 0}]}]}}
        return [namespace(ns), deployment(ns, 2), service(ns, "web", {"app": "web"}),
                service(ns, "web-canary", {"saferollout.dev/canary-of": "web"}), *gateway(ns), route]

    def _available(self, ns: str) -> bool:
        return int(((self.kube.get_deployment(ns, "web") or {}).get("status") or {}).get("availableReplicas") or 0) >= 1

    def ready(self, ns: str) -> None:
        wait_for("the target Deployment available", partial(self._available, ns), 60)
        self.ready_idle(ns)

    def ready_idle(self, ns: str) -> None:
        """Its operator, watching the namespace (it is started per namespace, with the harness's launch)."""
        snapshots = self.logs / f"snapshots-{ns}"
        snapshots.mkdir(exist_ok=True)
        self.op = OperatorProcess(self._launch(ns, snapshots), self.logs / f"saferollout-{ns}.log", Timeline())
        self.op.start()
        time.sleep(3)  # kopf's start-up, before the rollout exists: not counted

    def begin(self, ns: str) -> None:
        s = self.setting
        self.kube.apply([{
            "apiVersion": "saferollout.dev/v1alpha1", "kind": "SafeRollout", "metadata": {"name": "web", "namespace": ns},
            "spec": {"targetRef": {"kind": "Deployment", "name": "web"},
                     "template": {"containers": [{"name": "web", "image": CANARY_IMAGE}]},
                     "strategy": {"canary": {
                         "stages": [{"weight": 5, "duration": "1h"}, {"weight": 100, "duration": "1h"}] if s.hold
                         else [{"weight": w, "duration": s.stage} for w in s.weights],
                         "traffic": {"gatewayAPI": {"httpRoute": "web", "stableService": "web",
                                                    "canaryService": "web-canary"}}}},
                     "analysis": {**({} if s.defaults else {"interval": f"{s.interval_s}s", "failureLimit": s.failures}),
                                  "metrics": [{"name": "error-rate", "template": "error-rate", "max": s.max_error,
                                               "onBreach": "rollback"}]}},
        }])

    def _launch(self, ns: str, snapshots: Path) -> OperatorLaunch:
        launch = operator_launch(ns, self.kube.kubeconfig, self.prom.url, snapshots)
        if self.setting.defaults:  # the operator's own rate window (the harness's is 10 s)
            launch.env.pop("SAFEROLLOUT_RATE_WINDOW", None)
        return launch

    def end(self, ns: str) -> None:
        if self.op is not None:
            self.op.stop()

    def load_ready(self, namespaces: list[str]) -> None:
        """One operator watching every namespace of the load (it takes --namespace again and again)."""
        for ns in namespaces:
            wait_for(f"{ns}/web available", partial(self._available, ns), 120)
        snapshots = self.logs / "snapshots-load"
        snapshots.mkdir(exist_ok=True)
        launch = self._launch(namespaces[0], snapshots)
        extra = [a for ns in namespaces[1:] for a in ("--namespace", ns)]
        self.op = OperatorProcess(OperatorLaunch([*launch.argv, *extra], launch.env), self.logs / "saferollout-load.log",
                                  Timeline())
        self.op.start()
        time.sleep(3)

    def load_end(self) -> None:
        self.end("")

    def state(self, ns: str) -> str:
        phase = str(((self.kube.get_rollout(ns, "web") or {}).get("status") or {}).get("phase") or "none")
        return {"RollingBack": "rollback", "RolledBack": "rollback", "Succeeded": "promoted"}.get(phase, phase)

    def reader(self, ns: str) -> RouteReader:
        return RouteReader(self.kube.new_api(), ns, ROLES, httproute="web")


class Flagger(Controller):
    name = "flagger"
    labels = ("web-primary", "web-canary")  # the Services Flagger makes and routes to

    def __init__(self, kube: Kube, prom: Prometheus, setting: Setting, logs: Path) -> None:
        super().__init__(kube, prom, setting, logs)
        self.dir = PEERS_BIN / f"flagger-{FLAGGER_VERSION}"
        kube.ensure_crds([self.dir / "crds" / "crd.yaml"])

    def start(self) -> None:
        port = free_port()
        self._spawn([str(self.dir / "flagger"), "-kubeconfig", str(self.kube.kubeconfig),
                     "-mesh-provider", "gatewayapi:v1", "-metrics-server", self.prom.url, "-port", str(port)],
                    f"http://127.0.0.1:{port}/healthz")

    def objects(self, ns: str) -> list[dict[str, Any]]:
        s = self.setting
        flagger = "flagger.app/v1beta1"
        return [namespace(ns), deployment(ns, 2), *gateway(ns),
                {"apiVersion": flagger, "kind": "MetricTemplate", "metadata": {"name": "error-rate", "namespace": ns},
                 "spec": {"provider": {"type": "prometheus", "address": self.prom.url},
                          # defaults: Flagger fills in the metric's interval (1m unless given)
                          "query": error_rate_query(ns, "web-canary", "{{ interval }}" if s.defaults else s.window)}},
                {"apiVersion": flagger, "kind": "Canary", "metadata": {"name": "web", "namespace": ns},
                 "spec": {"provider": "gatewayapi:v1",
                          "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                          "progressDeadlineSeconds": 120,
                          "service": {"port": 80, "targetPort": 8080,
                                      "gatewayRefs": [{"name": GATEWAY, "namespace": ns}]},
                          # defaults: the CRD requires interval and threshold; they take the values Flagger's
                          # code falls back to (GetAnalysisInterval 60s, GetAnalysisThreshold 1)
                          "analysis": {**({"interval": "60s", "threshold": 1} if s.defaults else
                                          {"interval": f"{s.interval_s}s", "threshold": s.failures}),
                                       "stepWeights": list(range(1, 100)) if s.hold else list(s.weights),
                                       "metrics": [{"name": "error-rate", "templateRef": {"name": "error-rate"},
                                                    "thresholdRange": {"max": s.max_error},
                                                    **({} if s.defaults else {"interval": s.window})}]}}}]

    def _canary(self, ns: str) -> dict[str, Any]:
        return get_or_none(lambda: self.kube.custom.get_namespaced_custom_object(
            "flagger.app", "v1beta1", ns, "canaries", "web"), self.kube.api) or {}

    def ready(self, ns: str) -> None:
        wait_for("the Flagger Canary Initialized",  # it reconciles once an interval: a few of them
                 lambda: (self._canary(ns).get("status") or {}).get("phase") == "Initialized",
                 max(120, 4 * (60 if self.setting.defaults else self.setting.interval_s)))

    def begin(self, ns: str) -> None:
        json_patch_image(self.kube, "deployment", ns)

    def state(self, ns: str) -> str:
        phase = str((self._canary(ns).get("status") or {}).get("phase") or "none")
        return {"Failed": "rollback", "Succeeded": "promoted"}.get(phase, phase)

    def reader(self, ns: str) -> RouteReader:
        return RouteReader(self.kube.new_api(), ns, ROLES, httproute="web")


class ArgoRollouts(Controller):
    name = "argo-rollouts"
    replicas = 20  # 5% is one pod of twenty: the replica-ratio canary's weights are pod counts

    def __init__(self, kube: Kube, prom: Prometheus, setting: Setting, logs: Path) -> None:
        super().__init__(kube, prom, setting, logs)
        self.dir = PEERS_BIN / f"argo-rollouts-{ROLLOUTS_VERSION}"
        kube.ensure_crds(sorted((self.dir / "crds" / "crds").glob("*.yaml")))
        self.initial_hash: dict[str, str] = {}

    def start(self) -> None:
        health, metrics = free_port(), free_port()
        self._spawn([str(self.dir / "rollouts-controller"), "--kubeconfig", str(self.kube.kubeconfig),
                     "--leader-elect=false", "--healthzPort", str(health), "--metricsPort", str(metrics)],
                    f"http://127.0.0.1:{health}/healthz")

    def objects(self, ns: str) -> list[dict[str, Any]]:
        s = self.setting
        argo = "argoproj.io/v1alpha1"
        steps: list[dict[str, Any]] = []
        for w in (5,) if s.hold else s.weights:
            steps += [{"setWeight": w}, {"pause": {"duration": "1h" if s.hold else s.stage}}]
        labels = {"app": "web"}
        # defaults: failureLimit 0 (the first failed measurement fails it), no initialDelay; interval has no default
        timing = {"interval": s.stage} if s.defaults else {"interval": f"{s.interval_s}s",
                                                            "initialDelay": f"{s.interval_s}s",
                                                            "failureLimit": s.failures - 1}
        return [namespace(ns), service(ns, "web", labels),
                {"apiVersion": argo, "kind": "AnalysisTemplate", "metadata": {"name": "error-rate", "namespace": ns},
                 "spec": {"metrics": [{"name": "error-rate", **timing,
                                       "successCondition": f"result[0] <= {s.max_error}",
                                       "provider": {"prometheus": {"address": self.prom.url, "query":
                                                                   error_rate_query(ns, "web-canary", s.window)}}}]}},
                {"apiVersion": argo, "kind": "Rollout", "metadata": {"name": "web", "namespace": ns},
                 "spec": {"replicas": 2 if s.hold else self.replicas, "selector": {"matchLabels": labels},
                          "template": {"metadata": {"labels": labels},
                                       "spec": {"containers": [container(STABLE_IMAGE)], "tolerations": [TOLERATION]}},
                          "strategy": {"canary": {"analysis": {"templates": [{"templateName": "error-rate"}]},
                                                  "steps": steps}}}}]

    def _rollout(self, ns: str) -> dict[str, Any]:
        return get_or_none(lambda: self.kube.custom.get_namespaced_custom_object(
            "argoproj.io", "v1alpha1", ns, "rollouts", "web"), self.kube.api) or {}

    def ready(self, ns: str) -> None:
        wait_for("the Rollout Healthy", lambda: (self._rollout(ns).get("status") or {}).get("phase") == "Healthy", 120)
        self.initial_hash[ns] = str((self._rollout(ns).get("status") or {}).get("stableRS"))

    def begin(self, ns: str) -> None:
        json_patch_image(self.kube, "rollout", ns)

    def state(self, ns: str) -> str:
        st = self._rollout(ns).get("status") or {}
        if st.get("abort") or st.get("phase") == "Degraded":
            return "rollback"
        if st.get("phase") == "Healthy" and st.get("stableRS") not in (None, self.initial_hash.get(ns)) \
                and st.get("stableRS") == st.get("currentPodHash"):
            return "promoted"
        return str(st.get("phase") or "none")

    def reader(self, ns: str) -> RouteReader:
        return RouteReader(self.kube.new_api(), ns, ROLES, service="web")


CONTROLLERS: dict[str, type[Controller]] = {c.name: c for c in (SafeRollout, Flagger, ArgoRollouts)}


# -------------------------------------------------------------------------------------------------------- runs


@dataclass
class Outcome:
    controller: str
    case: str
    run: int
    final: str = "timeout"
    decision_s: float | None = None  # failing: from the canary's first request to the rollback decision
    zero_s: float | None = None  # failing: from its first request to canary weight 0 at the data plane
    promoted_s: float | None = None  # healthy: from the new version applied to the controller's success
    states: list[tuple[float, str]] = field(default_factory=list)
    weights: list[tuple[float, int]] = field(default_factory=list)
    note: str = ""
    outage: str = ""


def run_once(ctrl: Controller, case: str, i: int, root: Path, timeout: float) -> Outcome:
    ns = f"peers-{ctrl.name[:5]}-{case[:4]}-{i}-{int(time.time()) % 100000}"
    out = Outcome(ctrl.name, case, i)
    run_dir = root / ns
    run_dir.mkdir(parents=True)
    canary_errors = {"failing": 0.08, "noisy": NOISY_ERRORS}.get(case, 0.0)
    stable = DemoProcess("stable", "web", ns, "stable", Behaviour(0.0, 5, 20), run_dir / "stable.log")
    canary = DemoProcess("canary", "web-canary", ns, "canary", Behaviour(canary_errors, 5, 20), run_dir / "canary.log",
                         "random" if case == "noisy" else "spread")  # noisy: independent errors, not evenly spaced
    stable.start()
    canary.start()
    router: Router | None = None
    stop = threading.Event()
    try:
        ctrl.prom.set_targets([ScrapeTarget(f"{ns}-stable", stable.port, "web", ns),
                               ScrapeTarget(f"{ns}-canary", canary.port, "web-canary", ns)])
        ctrl.kube.apply(ctrl.objects(ns))
        ctrl.ready(ns)
        reader = ctrl.reader(ns)
        router = Router(reader, ctrl.backends(), {"stable": stable.port, "canary": canary.port}, RPS, timeout + 60)
        if ctrl.labels != (None, None):  # requests labelled with the Service they came through
            reader.live = router.backends
        router.start()
        if not router.first_read.wait(15):
            raise RuntimeError(f"the data plane could not read {ctrl.name}'s route: {router.last_error}")
        time.sleep(5)  # stable traffic before the release

        def watch() -> None:
            while not stop.is_set():
                try:
                    st = ctrl.state(ns)
                except Exception as e:  # the API server may blink
                    st = f"error {type(e).__name__}"
                if not out.states or out.states[-1][1] != st:
                    out.states.append((time.monotonic(), st))
                stop.wait(POLL)

        t_apply = time.monotonic()
        outage: list[float] = []

        def prometheus_outage() -> None:  # row 3: once the canary is at its second stage, Prometheus goes for 30 s
            while not stop.is_set() and router is not None and router.canary_weight < ctrl.setting.weights[1]:
                stop.wait(POLL)
            if stop.wait(2):
                return
            outage.append(time.monotonic())
            ctrl.prom.stop()
            stop.wait(OUTAGE_S)
            ctrl.prom.start()
            outage.append(time.monotonic())

        ctrl.begin(ns)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        if case == "outage":
            threading.Thread(target=prometheus_outage, daemon=True).start()
            deadline_extra = OUTAGE_S
        else:
            deadline_extra = 0.0
        deadline = t_apply + timeout + deadline_extra
        while time.monotonic() < deadline:
            final = out.states[-1][1] if out.states else ""
            if final in ("rollback", "promoted"):
                break
            time.sleep(POLL)
        if out.states and out.states[-1][1] == "rollback":  # and the data plane back on stable
            zero_deadline = time.monotonic() + 60
            while router.canary_weight > 0 and time.monotonic() < zero_deadline:
                time.sleep(POLL)
        time.sleep(1)
        stop.set()
        watcher.join(5)
        out.weights = [(t - t_apply, w) for t, w in router.changes]
        t_fail = next((t for t, w in router.changes if t >= t_apply and w > 0), None)
        first = {st: t for t, st in reversed(out.states)}
        out.final = out.states[-1][1] if out.states else "none"
        if case == "failing" and t_fail is not None:
            if "rollback" in first:
                out.decision_s = first["rollback"] - t_fail
            t_zero = next((t for t, w in router.changes if t > t_fail and w == 0), None)
            if t_zero is not None:
                out.zero_s = t_zero - t_fail
        if case in ("healthy", "noisy", "outage") and "promoted" in first:
            out.promoted_s = first["promoted"] - t_apply
        if case == "outage":
            if len(outage) < 2 and not ctrl.prom.running:
                ctrl.prom.start()
            if outage:
                a, b = outage[0], outage[1] if len(outage) > 1 else time.monotonic()
                during = [w for t, w in router.changes if a <= t <= b]
                acts = [f"{st}@{t - t_apply:.0f}s" for t, st in out.states if a <= t <= b + 15]
                out.outage = (f"Prometheus down {a - t_apply:.0f}-{b - t_apply:.0f}s; canary weight changes while "
                              f"down: {during or 'none'}; states to +15s after: {acts or 'unchanged'}")
        out.states = [(t - t_apply, st) for t, st in out.states]
        out.note = router.summary()
    finally:
        stop.set()
        if router is not None:
            router.stop()
        ctrl.end(ns)
        stable.stop()
        canary.stop()
        ctrl.kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    return out


class Exporter(TextExporter):
    """Row 5's load: a healthy request counter (20/s, no errors) per Service the load's rollouts query."""

    def __init__(self) -> None:
        super().__init__()
        self.namespaces: list[str] = []
        self.start = time.time()

    def body(self) -> bytes:
        t = 20 * (time.time() - self.start)
        lines = ["# TYPE http_requests_total counter"]
        for ns in list(self.namespaces):
            for svc in ("web", "web-primary", "web-canary"):
                lines += [f'http_requests_total{{service="{svc}",namespace="{ns}",code="200"}} {t:.3f}',
                          f'http_requests_total{{service="{svc}",namespace="{ns}",code="500"}} 0']
        return ("\n".join(lines) + "\n").encode()


def load_usage(ctrl: Controller, n: int, seconds: float, exporter: Exporter) -> tuple[float, float, int, int] | None:
    """(CPU %, resident MB, rollouts still running before, after) with `n` rollouts held in their first stages."""
    stamp = int(time.time()) % 100000
    namespaces = [f"peers-load-{ctrl.name[:5]}-{i}-{stamp}" for i in range(n)]
    ctrl.setting = replace(ctrl.setting, hold=True)
    exporter.namespaces = namespaces
    ctrl.prom.set_targets([ScrapeTarget("synthetic", int(exporter.server_address[1]), "synthetic", "synthetic")])
    try:
        docs = [d for ns in namespaces for d in ctrl.objects(ns)]
        for i in range(0, len(docs), 200):
            ctrl.kube.apply(docs[i:i + 200])
        ctrl.load_ready(namespaces)
        for ns in namespaces:
            ctrl.begin(ns)
        time.sleep(45)  # every rollout started and analysing
        before = sum(ctrl.state(ns) not in ("rollback", "promoted", "none") for ns in namespaces)
        sampled = idle_usage(ctrl, seconds)
        if sampled is None:
            return None
        cpu, rss = sampled
        after = sum(ctrl.state(ns) not in ("rollback", "promoted", "none") for ns in namespaces)
        return cpu, rss, before, after
    finally:
        ctrl.load_end()
        ctrl.setting = replace(ctrl.setting, hold=False)
        for ns in namespaces:
            ctrl.kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def idle_usage(ctrl: Controller, seconds: float) -> tuple[float, float] | None:
    """(CPU %, resident MB) of the controller over the next `seconds`, whatever it runs."""
    pid = ctrl.pid
    if pid is None:
        return None
    c0, _ = usage(pid)
    t0 = time.monotonic()
    time.sleep(seconds)
    c1, rss = usage(pid)
    return 100 * (c1 - c0) / (time.monotonic() - t0), rss


# ------------------------------------------------------------------------------------------------------ tables


def summary(values: list[float | None]) -> tuple[float | None, str]:
    got = [v for v in values if v is not None]
    if not got:
        return None, f"- (0/{len(values)})"
    med = statistics.median(got)
    spread = f" [{min(got):.1f}-{max(got):.1f}]" if len(got) > 1 else ""
    missing = f" ({len(got)}/{len(values)})" if len(got) < len(values) else ""
    return med, f"{med:.1f}{spread}{missing}"


def table(rows: list[tuple[str, dict[str, list[float | None]]]], names: list[str]) -> str:
    peers = [n for n in names if n != "saferollout"]
    head = ["row", *names, *(f"SR/{p}" for p in peers if "saferollout" in names)]
    lines = [head]
    for label, per in rows:
        meds: dict[str, float | None] = {}
        cells = [label]
        for n in names:
            meds[n], text = summary(per.get(n, []))
            cells.append(text)
        if "saferollout" in names:
            for p in peers:
                a, b = meds.get("saferollout"), meds.get(p)
                cells.append(f"{a / b:.2f}" if a is not None and b else "-")
        lines.append(cells)
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--controllers", default=",".join(CONTROLLERS))
    ap.add_argument("--cases", default="failing,healthy")
    ap.add_argument("--idle", type=float, default=20.0, help="seconds over which idle CPU is measured (0: skip)")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds a run may take")
    ap.add_argument("--load", type=int, default=0, help="row 5: this many rollouts held running (0: skip)")
    ap.add_argument("--json", type=Path, help="also write every run's outcome and the usage figures here")
    ap.add_argument("--report", type=Path, nargs="+", help="print the tables of earlier --json files; run nothing")
    ap.add_argument("--setting", choices=("equal", "defaults"), default="equal",
                    help="equal: the one aggressive setting for all; defaults: each tool's documented defaults")
    args = ap.parse_args(argv)
    if args.report:
        merged = Measured([], {}, {}, 0.0, 0)
        for f in args.report:
            merged.merge(Measured.read(f))
        report(merged)
        return 0
    state = Path(os.environ.get("SR_STATE_DIR", ROOT / ".cache" / "cluster"))
    kubeconfig = Path(os.environ.get("KUBECONFIG") or state / "kubeconfig")
    kube = Kube(kubeconfig, default_kubectl())
    root = Path(tempfile.mkdtemp(prefix="peers-"))
    prom = Prometheus(root / "prometheus")
    prom.start()
    names = [n for n in args.controllers.split(",") if n]
    cases = [c for c in args.cases.split(",") if c]
    if set(cases) - {"failing", "healthy", "noisy", "outage"}:
        ap.error("cases are failing, healthy, noisy and outage")
    setting = DEFAULTS if args.setting == "defaults" else Setting()
    outcomes: list[Outcome] = []
    idle: dict[str, tuple[float, float] | None] = {}
    loaded: dict[str, tuple[float, float, int, int] | None] = {}
    exporter = Exporter()
    threading.Thread(target=exporter.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    print(f"logs and run directories in {root}", file=sys.stderr)
    try:
        for name in names:
            ctrl = CONTROLLERS[name](kube, prom, setting, root)
            ctrl.start()
            try:
                if args.idle > 0 and name != "saferollout":  # SafeRollout's operator is started per run (below)
                    idle[name] = idle_usage(ctrl, args.idle)
                for case in cases:
                    for i in range(args.runs):
                        o = run_once(ctrl, case, i, root, args.timeout)
                        outcomes.append(o)
                        print(f"{name} {case} #{i}: final={o.final} decision={o.decision_s} zero={o.zero_s} "
                              f"promoted={o.promoted_s}\n  states {[(round(t, 1), s) for t, s in o.states]}\n"
                              f"  canary weight {[(round(t, 1), w) for t, w in o.weights]}\n  {o.note}",
                              file=sys.stderr, flush=True)
                if args.idle > 0 and name == "saferollout":
                    ns = f"peers-sr-idle-{int(time.time()) % 100000}"
                    kube.apply([namespace(ns)])
                    assert isinstance(ctrl, SafeRollout)
                    ctrl.ready_idle(ns)
                    idle[name] = idle_usage(ctrl, args.idle)
                    ctrl.end(ns)
                    kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)
                if args.load > 0:
                    loaded[name] = load_usage(ctrl, args.load, args.idle or 30, exporter)
                    print(f"{name} with {args.load} rollouts: {loaded[name]} (CPU %, RSS MB, running before, after)",
                          file=sys.stderr, flush=True)
            finally:
                ctrl.stop()
    finally:
        prom.stop()
        exporter.shutdown()
    measured = Measured(outcomes, idle, loaded, args.idle, args.load, args.setting)
    if args.json:
        args.json.write_text(json.dumps(measured.dump(), indent=1))
    report(measured)
    return 0


@dataclass
class Measured:
    outcomes: list[Outcome]
    idle: dict[str, tuple[float, float] | None]
    loaded: dict[str, tuple[float, float, int, int] | None]
    idle_s: float
    load: int
    setting: str = "equal"

    def dump(self) -> dict[str, Any]:
        return {"outcomes": [o.__dict__ for o in self.outcomes], "idle": self.idle, "loaded": self.loaded,
                "idle_s": self.idle_s, "load": self.load, "setting": self.setting}

    @classmethod
    def read(cls, path: Path) -> Measured:
        data = json.loads(path.read_text())
        if isinstance(data, list):  # outcomes only
            data = {"outcomes": data}
        outcomes = [Outcome(**{**o, "states": [tuple(x) for x in o["states"]],
                               "weights": [tuple(x) for x in o["weights"]]}) for o in data["outcomes"]]
        return cls(outcomes, {k: tuple(v) if v else None for k, v in (data.get("idle") or {}).items()},
                   {k: tuple(v) if v else None for k, v in (data.get("loaded") or {}).items()},
                   float(data.get("idle_s") or 0), int(data.get("load") or 0), str(data.get("setting") or "equal"))

    def merge(self, other: Measured) -> None:
        if self.outcomes and other.outcomes and other.setting != self.setting:
            raise SystemExit(f"--report: runs of the {self.setting} and the {other.setting} setting are not one table")
        self.outcomes += other.outcomes
        self.idle.update(other.idle)
        self.loaded.update(other.loaded)
        self.idle_s, self.load = other.idle_s or self.idle_s, other.load or self.load
        self.setting = other.setting if other.outcomes else self.setting


def promotion_begun(o: Outcome) -> float | None:
    """Seconds from the apply to the new version being made the stable one (SafeRollout and Flagger: their
    Promoting phase; Argo Rollouts has none and is done then)."""
    return next((t for t, st in o.states if st in ("Promoting", "promoted")), None)


def errors_served(o: Outcome) -> float | None:
    """The canary's 500 answers over the run, from the data plane's summary."""
    found = re.search(r"canary 500: (\d+)", o.note)
    return float(found.group(1)) if found else (0.0 if "answers" in o.note else None)


def report(m: Measured) -> None:
    outcomes, idle, loaded = m.outcomes, m.idle, m.loaded
    names = [n for n in CONTROLLERS if any(o.controller == n for o in outcomes) or n in idle or n in loaded]
    cases = {o.case for o in outcomes}
    runs = max((sum(o.controller == n and o.case == c for o in outcomes) for n in names for c in cases), default=0)

    def col(case: str, attr: str) -> dict[str, list[float | None]]:
        return {n: [getattr(o, attr) for o in outcomes if o.controller == n and o.case == case] for n in names}

    rows = []
    if "failing" in cases:
        rows += [("1a failing 8%: s from failure to decision", col("failing", "decision_s")),
                 ("1b failing 8%: s from failure to weight 0", col("failing", "zero_s"))]
    if "failing" in cases:
        failing = [o for o in outcomes if o.case == "failing"]
        rows += [("1c failing: highest canary weight %", {n: [float(max((w for _, w in o.weights), default=0))
                                                              for o in failing if o.controller == n] for n in names}),
                 ("1d failing: 500s served by the canary", {n: [errors_served(o) for o in failing if o.controller == n]
                                                            for n in names})]
    if "healthy" in cases:
        rows += [("4 healthy: s from apply to full promotion", col("healthy", "promoted_s")),
                 ("4b healthy: s from apply to promotion begun", {n: [promotion_begun(o) for o in outcomes if
                                                                     o.controller == n and o.case == "healthy"]
                                                                 for n in names})]
    if "outage" in cases:
        rows.append(("3 Prometheus out 30s: s to promotion", col("outage", "promoted_s")))
    idle_rows = {n: [v[0] if v else None] for n, v in idle.items()}
    rss_rows = {n: [v[1] if v else None] for n, v in idle.items()}
    if idle:
        rows += [(f"5a idle CPU % over {m.idle_s:g}s", idle_rows), ("5b idle RSS MB", rss_rows)]
    if loaded:
        rows += [(f"5c CPU % with {m.load} rollouts", {n: [v[0] if v else None] for n, v in loaded.items()}),
                 (f"5d RSS MB with {m.load} rollouts", {n: [v[1] if v else None] for n, v in loaded.items()})]
    s = DEFAULTS if m.setting == "defaults" else Setting()
    print(f"\n{s.label[0].upper()}{s.label[1:]}; {RPS:g} req/s; median [min-max] over {runs} run(s)")
    print(f"Flagger {FLAGGER_VERSION} (Gateway API), Argo Rollouts {ROLLOUTS_VERSION} (replica-ratio canary)\n")
    print(table(rows, names))
    if "noisy" in cases:
        print(f"\n2 noisy healthy canary ({NOISY_ERRORS:.1%} random errors, 1% limit): false rollbacks "
              + "; ".join(f"{n} {sum(o.final == 'rollback' for o in outcomes if o.controller == n and o.case == 'noisy')}"
                          f"/{sum(o.controller == n and o.case == 'noisy' for o in outcomes)}" for n in names))
    if "outage" in cases:
        print("\n3 Prometheus stopped 30 s at the second stage:")
        for o in outcomes:
            if o.case == "outage":
                print(f"  {o.controller} #{o.run}: {o.outage or 'no outage happened'}; final {o.final}")
    finals = {n: sorted(f"{o.case}:{o.final}" for o in outcomes if o.controller == n) for n in names}
    print("\noutcomes: " + "; ".join(f"{n} {', '.join(v)}" for n, v in finals.items()))
    if loaded:
        print("rollouts still running at the start and end of row 5's measurement: " + "; ".join(
            f"{n} {v[2]}/{m.load} -> {v[3]}/{m.load}" if v else f"{n} -" for n, v in loaded.items()))


if __name__ == "__main__":
    raise SystemExit(main())
