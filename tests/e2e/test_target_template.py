"""A SafeRollout without spec.template on the real local cluster: the Deployment's own pod template is the version.

What a GitOps user does, without Argo CD in between (tests/e2e/test_argocd_*.py add it): the Deployment is applied
with `kubectl apply` (client-side, as Argo CD's sync does), a SafeRollout without `template` watches it, and a new
version is one `kubectl apply` of the Deployment with another pod template (image, args and resources). The
operator runs as a local process under the Helm chart's ServiceAccount (so its RBAC is the chart's) and serves the
admission webhook on https://127.0.0.1:<port> with a self-signed certificate; the test registers it with a
MutatingWebhookConfiguration (URL clientConfig, failurePolicy Fail) limited to the test's namespace. The harness's
demo apps, router and Prometheus stand in for the pods (KWOK's pods run nothing).

Asserted: the apply that changes the template comes back paused (the webhook held it in that very write), the
stable pods and ReplicaSet are never replaced, the canary Deployment runs the new template (every field), and

- healthy: the rollout promotes with one write to the target (the unpause), which then runs the new template;
- failing: it rolls back with no write to the target, which stays paused on the refused template, and the
  status names it (hash and generation); an apply of the old template then unpauses it in its own write and
  starts nothing (no canary, no traffic).

Each run prints a timeline and the writes to the target by manager (from managedFields, through a watch).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.format import Behaviour, TrafficRefs
from harness.kube import world
from harness.router import Router
from harness.scenario import DemoProcess, OperatorProcess, Session
from harness.services import ScrapeTarget
from harness.timeline import Timeline
from harness.traffic import traffic_sources
from saferollout.adapters.certs import write_self_signed
from saferollout.core.templates import HELD_ANNOTATION, STABLE_ANNOTATION, TARGET_LABEL, template_hash_of
from tests.e2e.cluster import REPO, ensure_cluster, tools_dir
from tests.e2e.gitops import TargetWatch, start_operator_with_webhook

pytestmark = pytest.mark.e2e

RELEASE, RELEASE_NAMESPACE = "sr-gitops", "saferollout-gitops"
NAMESPACES = ("gitops-promote", "gitops-rollback")
TARGET = "web"
REFS = TrafficRefs("gatewayAPI", "web", "web-canary", "web")
HEALTHY = Behaviour(error_rate=0.0, p50_ms=20, p95_ms=60)
FAILING = Behaviour(error_rate=0.5, p50_ms=20, p95_ms=60)
TOLERATE_KWOK = [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]


def deployment(image: str, args: list[str], memory: str) -> dict[str, Any]:
    """The Deployment as Git holds it: no label of ours, no `paused`."""
    labels = {"app": TARGET}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": TARGET, "labels": labels},
            "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {
                         "containers": [{"name": "web", "image": image, "args": args,
                                         "ports": [{"containerPort": 8080}],
                                         "resources": {"requests": {"cpu": "10m", "memory": memory},
                                                       "limits": {"memory": memory}}}],
                         "tolerations": TOLERATE_KWOK}}}}


V1 = deployment("demo/web:1.0", ["--greeting=hello"], "64Mi")
V2 = deployment("demo/web:2.0", ["--greeting=hi", "--workers=4"], "128Mi")  # image, args and resources change


def rollout(namespace: str) -> dict[str, Any]:
    return {"apiVersion": "saferollout.dev/v1alpha1", "kind": "SafeRollout",
            "metadata": {"name": TARGET, "namespace": namespace},
            "spec": {"targetRef": {"name": TARGET},  # no template: the Deployment's own pod template is the version
                     "strategy": {"canary": {"stages": [{"weight": 10, "duration": "8s"}, {"weight": 50, "duration": "8s"},
                                                        {"weight": 100, "duration": "5s"}],
                                             "traffic": {"gatewayAPI": {"httpRoute": "web", "stableService": "web",
                                                                        "canaryService": "web-canary"}}}},
                     "analysis": {"interval": "1s", "failureLimit": 2, "metrics": [
                         {"name": "error-rate", "template": "error-rate", "max": 0.05, "onBreach": "rollback",
                          "severity": "critical"}]},
                     "rollback": {"verify": {"duration": "30s", "successes": 2}}}}


# ---------------------------------------------------------------------------------------------------- fixtures


@dataclass
class Env:
    session: Session
    operator_kubeconfig: Path
    cert: Path
    key: Path
    root: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from tests.e2e.chart import install, sa_kubeconfig, uninstall

    kubeconfig = ensure_cluster()
    install(RELEASE, RELEASE_NAMESPACE, ("--set", "watchNamespaces={" + ",".join(NAMESPACES) + "}"))
    root = tmp_path_factory.mktemp("gitops")
    sa = sa_kubeconfig(root, RELEASE, RELEASE_NAMESPACE)
    cert, key = write_self_signed(root / "tls", ["127.0.0.1"])
    try:
        with Session(kubeconfig=kubeconfig, kubectl=tools_dir() / "kubectl") as session:
            session.prepare_cluster()
            yield Env(session, sa, cert, key, root)
    finally:
        uninstall(RELEASE, RELEASE_NAMESPACE)


# ------------------------------------------------------------------------------------------------------ the run


@dataclass
class Run:
    env: Env
    ns: str
    canary: Behaviour
    tl: Timeline = field(default_factory=Timeline)
    watch: TargetWatch | None = None
    procs: list[Any] = field(default_factory=list)
    operator: OperatorProcess | None = None
    router: Router | None = None

    @property
    def kube(self) -> Any:
        return self.env.session.kube

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return str(self.kube.kubectl(*args, input=input).stdout)

    # ----------------------------------------------------------------------------------------------- setup
    def start(self) -> None:
        kube, tl = self.kube, self.tl
        tl.t0 = time.monotonic()
        if kube.namespace_exists(self.ns):
            kube.delete_rollouts(self.ns, timeout=5)
            kube.delete_namespace(self.ns)
        run_dir = REPO / ".cache" / "harness" / "runs" / f"target-template-{self.ns}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir = run_dir
        stable = DemoProcess("stable", REFS.stable_service, self.ns, "stable", HEALTHY, run_dir / "stable.log")
        canary = DemoProcess("canary", REFS.canary_service, self.ns, "canary", self.canary, run_dir / "canary.log")
        for p in (stable, canary):
            p.start()
            self.procs.append(p)
        prom = self.env.session.prometheus
        prom.set_targets([ScrapeTarget(f"{self.ns}-stable", stable.port, REFS.stable_service, self.ns),
                          ScrapeTarget(f"{self.ns}-canary", canary.port, REFS.canary_service, self.ns)])
        docs = [d for d in world(self.ns, TARGET, {"web": "demo/web:1.0"}, 2, REFS, None) if d["kind"] != "Deployment"]
        kube.apply(docs)
        self.apply_target(V1)
        self.wait(lambda: (self.target().get("status") or {}).get("availableReplicas") == 2, 90, "target available")
        self._watch_target()
        source = traffic_sources(REFS, self.ns, TARGET, kube.new_api())["main"]
        self.router = Router(source.read, source.backends, {"stable": stable.port, "canary": canary.port}, 30, 600,
                             on_change=lambda text: tl.add("router", text), what=source.what)
        self.router.start()
        q = f'sum(rate(http_requests_total{{service="web",namespace="{self.ns}"}}[10s])) > 0'
        self.wait(lambda: bool(prom.query(q)), 60, "Prometheus sees the stable traffic")
        self._webhook_and_operator()
        kube.apply([rollout(self.ns)])
        tl.add("apply", "SafeRollout web without spec.template")

    def _webhook_and_operator(self) -> None:
        self.operator = start_operator_with_webhook(self.kube, [self.ns], self.env.operator_kubeconfig,
                                                    self.env.session.prometheus.url, self.run_dir, self.env.cert,
                                                    self.env.key, self.tl)

    def stop(self) -> None:
        if self.watch is not None:
            self.watch.stop()
        if self.router is not None:
            self.router.stop()
        steps: list[Callable[[], Any]] = [
            lambda: self.kube.delete_rollouts(self.ns, timeout=20),
            lambda: self.operator.stop() if self.operator else None,
            lambda: self.kube.kubectl("delete", "mutatingwebhookconfiguration", f"saferollout-{self.ns}",
                                      "--ignore-not-found", check=False),
            *[p.stop for p in self.procs],
            lambda: self.kube.delete_namespace(self.ns),
            lambda: self.env.session.prometheus.set_targets([]),
        ]
        for step in steps:
            try:
                step()
            except Exception as e:  # clean-up goes on
                self.tl.add("error", f"clean-up: {e}")

    # -------------------------------------------------------------------------------------------- the world
    def apply_target(self, doc: dict[str, Any]) -> None:
        """What a sync does: a client-side `kubectl apply` of the Deployment as Git holds it."""
        d = copy.deepcopy(doc)
        d["metadata"]["namespace"] = self.ns
        out = self.kubectl("apply", "-f", "-", input=yaml.safe_dump(d))
        self.tl.add("git", f"kubectl apply: {out.strip()} ({d['spec']['template']['spec']['containers'][0]['image']})")

    def target(self) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", "deployment", TARGET, "-n", self.ns, "-o", "json")))

    def rollout(self) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", "saferollout", TARGET, "-n", self.ns, "-o", "json")))

    def status(self) -> dict[str, Any]:
        return dict(self.rollout().get("status") or {})

    def canary_deployment(self) -> dict[str, Any] | None:
        out = self.kube.kubectl("get", "deployment", f"{TARGET}-canary", "-n", self.ns, "-o", "json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def target_pods(self) -> dict[str, str]:
        """{pod uid: its ReplicaSet} of the target's pods (the canary's carry no `app` label)."""
        pods = json.loads(self.kubectl("get", "pods", "-n", self.ns, "-l", f"app={TARGET}", "-o", "json"))["items"]
        return {p["metadata"]["uid"]: p["metadata"]["ownerReferences"][0]["name"] for p in pods
                if not p["metadata"].get("deletionTimestamp")}

    def replica_sets(self) -> set[str]:
        items = json.loads(self.kubectl("get", "replicasets", "-n", self.ns, "-l", f"app={TARGET}", "-o", "json"))["items"]
        return {r["metadata"]["name"] for r in items}

    def wait(self, cond: Callable[[], bool], seconds: float, what: str, *every: Callable[[], object]) -> None:
        """Poll `cond` (and run each of `every`, the invariants and the logging) until it holds."""
        deadline = time.monotonic() + seconds
        while True:
            for fn in every:
                fn()
            if cond():
                self.tl.add("harness", what)
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {seconds:g}s: {what}\n{self.report()}")
            time.sleep(0.25)

    def _watch_target(self) -> None:
        """Every write to the target's spec or metadata, with the manager that made it (managedFields)."""
        self.watch = TargetWatch(self.kube.new_api(), self.ns, TARGET, self.tl)
        self.watch.start()

    def writes_by(self, since: float = 0.0) -> dict[str, int]:
        return self.watch.writes_by(since) if self.watch is not None else {}

    def report(self) -> str:
        return f"-- timeline ({self.ns})\n{self.tl.render()}\n-- writes to the target: {self.writes_by()}\n" \
               f"-- logs in {self.run_dir}"

    # -------------------------------------------------------------------------------------------- observing
    def stable_untouched(self, pods: dict[str, str], sets: set[str], held_only: bool = True) -> Callable[[], None]:
        """While the target is held (paused), its pods and ReplicaSets do not change; with held_only=False, not at
        all. (The Deployment is read before and after: a promotion's unpause between the reads is not a violation.)"""
        def check() -> None:
            if held_only and not self.target()["spec"].get("paused"):
                return
            now_pods, now_sets = self.target_pods(), self.replica_sets()
            if held_only and not self.target()["spec"].get("paused"):
                return  # promoted meanwhile: the new ReplicaSet may be the promotion's
            assert now_pods == pods, f"the stable pods changed: {pods} -> {now_pods}\n{self.report()}"
            assert now_sets == sets, f"a ReplicaSet of the new template appeared: {now_sets - sets}\n{self.report()}"
        return check

    def phase_log(self) -> Callable[[], None]:
        seen: dict[str, Any] = {}

        def poll() -> None:
            st = self.status()
            for key in ("phase", "weight", "stage"):
                if st.get(key) != seen.get(key):
                    self.tl.add(key, f"{seen.get(key)} -> {st.get(key)}" + (
                        f": {st.get('message')}" if key == "phase" else ""))
                    seen[key] = st.get(key)
        return poll


@pytest.fixture
def run_in(env: Env) -> Iterator[Callable[[str, Behaviour], Run]]:
    runs: list[Run] = []

    def make(ns: str, canary: Behaviour) -> Run:
        r = Run(env, ns, canary)
        runs.append(r)
        r.start()
        return r
    yield make
    for r in runs:
        print(r.report())
        r.stop()


def adopted(r: Run) -> None:
    log = r.phase_log()
    r.wait(lambda: r.status().get("phase") == "Succeeded"
           and (r.target()["metadata"].get("labels") or {}).get(TARGET_LABEL) == TARGET, 60,
           "the SafeRollout adopted the Deployment (label set)", log)
    source = r.status()["source"]
    assert source["stableTemplateHash"] == template_hash_of(r.target()["spec"]["template"])


@dataclass
class Release:
    """V2 applied and held: when, the stable pods and ReplicaSets, V2's hash, and the checks run while waiting."""

    since: float
    pods: dict[str, str]
    sets: set[str]
    held: str
    untouched: Callable[[], None]
    log: Callable[[], None]


def release(r: Run) -> Release:
    """Apply V2; the apply's own write comes back paused."""
    since = time.monotonic()
    pods, sets = r.target_pods(), r.replica_sets()
    assert len(pods) == 2 and len(sets) == 1
    r.apply_target(V2)
    dep = r.target()
    assert dep["spec"].get("paused") is True, "the webhook did not hold the new template in the apply's write"
    held = template_hash_of(dep["spec"]["template"])
    assert dep["metadata"]["annotations"][HELD_ANNOTATION] == held
    assert dep["metadata"]["annotations"][STABLE_ANNOTATION] == r.status()["source"]["stableTemplateHash"]
    untouched, log = r.stable_untouched(pods, sets), r.phase_log()
    r.wait(lambda: (c := r.canary_deployment()) is not None
           and (c.get("metadata", {}).get("annotations") or {}).get("saferollout.dev/template-hash") == held, 60,
           "the canary Deployment exists, made from the held template", untouched, log)
    canary = r.canary_deployment()
    assert canary is not None
    got, want = canary["spec"]["template"]["spec"]["containers"][0], dep["spec"]["template"]["spec"]["containers"][0]
    assert got == want, f"the canary's container is not the new template's: {got} != {want}"
    labels = canary["spec"]["template"]["metadata"]["labels"]
    assert "app" not in labels and labels["saferollout.dev/canary-of"] == TARGET
    return Release(since, pods, sets, held, untouched, log)


@pytest.mark.timeout(600)
def test_a_new_pod_template_is_held_canaried_and_promoted(run_in: Callable[[str, Behaviour], Run]) -> None:
    r = run_in(NAMESPACES[0], HEALTHY)
    adopted(r)
    rel = release(r)
    since, pods, held, untouched, log = rel.since, rel.pods, rel.held, rel.untouched, rel.log
    r.wait(lambda: r.status().get("phase") in ("Promoting", "Succeeded", "RolledBack", "Failed"), 240,
           "the canary's stages passed", untouched, log)
    r.wait(lambda: r.status().get("phase") in ("Succeeded", "RolledBack", "Failed"), 120, "the rollout ended", log)
    st = r.status()
    assert st["phase"] == "Succeeded", r.report()
    dep = r.target()
    assert not dep["spec"].get("paused") and template_hash_of(dep["spec"]["template"]) == held
    assert st["source"]["stableTemplateHash"] == held and st["templateHash"] == held
    assert st["source"]["targetWrites"] == 1, st["source"]
    assert dep["metadata"]["annotations"][STABLE_ANNOTATION] == held
    assert HELD_ANNOTATION not in dep["metadata"]["annotations"]
    r.wait(lambda: r.canary_deployment() is None, 30, "the canary is gone")
    r.wait(lambda: set(r.target_pods().values()) - set(pods.values()) != set() and
           len(r.target_pods()) == 2 and set(pods.values()).isdisjoint(r.target_pods().values()), 60,
           "the stable pods now run the promoted template (new ReplicaSet)")
    operator_writes = {m: n for m, n in r.writes_by(since).items() if not m.startswith("kubectl")}
    print(f"\nwrites to the target during the rollout: {r.writes_by(since)}; status.source.targetWrites "
          f"{st['source']['targetWrites']}")
    assert sum(operator_writes.values()) == 1, r.writes_by(since)


@pytest.mark.timeout(600)
def test_a_failing_pod_template_is_refused_and_a_revert_starts_nothing(run_in: Callable[[str, Behaviour], Run]) -> None:
    r = run_in(NAMESPACES[1], FAILING)
    adopted(r)
    rel = release(r)
    since, pods, held, untouched, log = rel.since, rel.pods, rel.held, rel.untouched, rel.log
    r.wait(lambda: r.status().get("phase") in ("RolledBack", "Failed", "Succeeded"), 240, "the rollout ended",
           untouched, log)
    st = r.status()
    assert st["phase"] == "RolledBack", r.report()
    dep = r.target()
    assert dep["spec"]["paused"] is True and template_hash_of(dep["spec"]["template"]) == held
    refused = st["source"]["refused"]
    assert refused["templateHash"] == held and refused["generation"] == dep["metadata"]["generation"]
    assert st["source"]["targetWrites"] == 0 and st["source"]["stableTemplateHash"] != held
    degraded = next(c for c in st["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and held in degraded["message"]
    untouched()
    rollback_writes = r.writes_by(since)
    print(f"\nwrites to the target during the rollout: {rollback_writes}; status.source.targetWrites 0")
    assert all(m.startswith("kubectl") for m in rollback_writes), rollback_writes
    # the revert commit: the apply's own write is unpaused by the webhook; the operator writes nothing, starts nothing
    attempt, reverted_at = st["attempt"], time.monotonic()
    untouched = r.stable_untouched(pods, rel.sets, held_only=False)  # the old template again: no pod may change
    r.apply_target(V1)
    dep = r.target()
    assert not dep["spec"].get("paused") and HELD_ANNOTATION not in (dep["metadata"].get("annotations") or {})
    canaries: list[bool] = []
    r.wait(lambda: r.status().get("phase") == "Succeeded" and r.status().get("attempt") == attempt + 1, 60,
           "the revert is seen: Succeeded, nothing rolled out",
           untouched, log, lambda: canaries.append(r.canary_deployment() is not None))
    end = time.monotonic() + 8
    while time.monotonic() < end:  # and nothing starts afterwards either
        untouched()
        canaries.append(r.canary_deployment() is not None)
        assert r.status().get("phase") == "Succeeded"
        time.sleep(0.5)
    st = r.status()
    assert not any(canaries), "a canary was created after the revert"
    assert st["source"]["targetWrites"] == 0 and st.get("weight", 0) == 0
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["reason"] == "TemplateReverted"
    assert next(c for c in st["conditions"] if c["type"] == "Degraded")["status"] == "False"
    assert r.router is not None and r.router.canary_weight == 0
    revert_writes = r.writes_by(reverted_at)
    print(f"writes to the target after the revert: {revert_writes}")
    assert all(m.startswith("kubectl") for m in revert_writes), revert_writes
