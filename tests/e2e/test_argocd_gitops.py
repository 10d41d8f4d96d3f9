"""Releases through Git on a real Argo CD (v3.2.11, automated sync with selfHeal and prune): the flows of
docs/gitops.md, end to end.

Each flow has its own Git repository (served by `git daemon`), its own Application and namespace; the four run at
the same time. Git holds the Deployment `web` (with the label `saferollout.dev/target`, as the doc advises), the
Services `web` and `web-canary`, the HTTPRoute `web` (100/0, with the fields the API server defaults written out, as
the doc says) and a SafeRollout without `template`. The Application's `syncPolicy` and `ignoreDifferences` are read
from docs/gitops.md ("Argo CD: the one ignoreDifferences stanza"), so the test uses exactly what the doc tells users.
One operator watches the three namespaces, runs under the chart's ServiceAccount and serves the admission webhook
(registered by a MutatingWebhookConfiguration, failurePolicy Fail), as in test_target_template.py; the harness's demo
apps, router and Prometheus stand in for the pods.

1. promote: a commit changes the pod template (image, args, env); the webhook holds it in Argo CD's write, the
   canary is healthy, the rollout promotes; the Application is Synced at every sample outside the release, and
   Synced and Healthy after it, with the cluster's Deployment equal to Git. Writes to the target per manager, and
   Argo CD's sync operations, are counted and bounded.
2. rollback: a failing commit is rolled back; the stable version serves, the Deployment stays paused on the refused
   template (Argo CD writes nothing back), the SafeRollout is Degraded naming it; a revert commit brings the
   Application back to Synced/Healthy and starts nothing.
3. third: a third commit while the second version is at 25% abandons the second's canary (weight 0 first) and the
   third gets no more than the first stage's weight before it is analysed there.
4. config: Git holds a ConfigMap the Deployment reads (envFrom, a volume) and a SafeRollout with trackConfig. The
   operator's first write gives the stable pods immutable copies; a ConfigMap-only commit with a bad config is
   canaried on copies of it and refused, the stable pods never read it (not replaced, still on the old copies);
   its revert starts nothing; a good config is promoted by one write and the stable pods move to its copies.
   Argo CD never writes the Deployment, and the Application is Synced at every sample.

No Gateway controller runs (the harness's router is the data plane): the test writes the HTTPRoute's status as one
would (Accepted), without which Argo CD's own HTTPRoute health check says Progressing for ever.

Prints per flow: the writes to the target and to the HTTPRoute by manager, Argo CD's sync operations, the sync
status samples, and the times. A missing tool (Argo CD, the cluster) fails the test, it is never skipped.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from harness.format import Behaviour, TrafficRefs
from harness.router import Router, backend_weights, canary_share
from harness.scenario import DemoProcess, OperatorProcess, Session
from harness.services import ScrapeTarget
from harness.timeline import Timeline
from harness.traffic import traffic_sources
from saferollout.adapters.certs import write_self_signed
from saferollout.core.configs import CONFIG_LABEL, references
from saferollout.core.templates import (
    HELD_ANNOTATION,
    REVISION_ANNOTATION,
    STABLE_ANNOTATION,
    TARGET_LABEL,
    template_hash_of,
)
from tests.e2e import argocd as acd
from tests.e2e.cluster import REPO, ensure_cluster, kubectl, tools_dir
from tests.e2e.gitops import TargetWatch, start_operator_with_webhook

pytestmark = pytest.mark.e2e

Json = dict[str, Any]
RELEASE, RELEASE_NAMESPACE = "sr-argocd-gitops", "saferollout-argocd-gitops"
TARGET = "web"
REFS = TrafficRefs("gatewayAPI", "web", "web-canary", "web")
HEALTHY = Behaviour(error_rate=0.0, p50_ms=20, p95_ms=60)
FAILING = Behaviour(error_rate=0.5, p50_ms=20, p95_ms=60)
TOLERATE_KWOK = [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]
FIRST_WEIGHT = 5
SAMPLE = 0.5  # seconds between samples of the Application and the SafeRollout
FAST = 0.1  # seconds between samples of the canary Deployment and the HTTPRoute (flow 3)
QUIET = 8.0  # seconds observed before a commit and after a rollout's end (more than one Argo CD resync, 5 s)


# ----------------------------------------------------------------------------------------------- what Git holds


@dataclass(frozen=True)
class Version:
    name: str  # also the Deployment's saferollout.dev/revision annotation
    image: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]


V1 = Version("v1", "demo/web:1.0", ("--greeting=hello",), (("MODE", "blue"),))
V2 = Version("v2", "demo/web:2.0", ("--greeting=hi", "--workers=4"), (("MODE", "green"), ("CACHE", "on")))
V3 = Version("v3", "demo/web:3.0", ("--greeting=hey", "--workers=8"), (("MODE", "red"), ("CACHE", "off")))


def container(v: Version) -> Json:
    return {"name": "web", "image": v.image, "args": list(v.args), "env": [{"name": k, "value": x} for k, x in v.env],
            "ports": [{"containerPort": 8080}]}


def as_in_git(c: Json) -> Json:
    """A live container reduced to what Git says of it (the API server adds defaults: protocol, pull policy...)."""
    return {"name": c.get("name"), "image": c.get("image"), "args": c.get("args"), "env": c.get("env"),
            "ports": [{"containerPort": p.get("containerPort")} for p in c.get("ports") or []]}


def deployment(v: Version, config: bool = False) -> Json:
    """The Deployment as Git holds it: our label (so the operator never writes it), the revision annotation on its
    metadata (never on the pod template), no `paused`. With `config`, its container reads the ConfigMap
    `web-config` (envFrom) and mounts it."""
    labels = {"app": TARGET}
    c = container(v)
    pod: Json = {"containers": [c], "tolerations": TOLERATE_KWOK}
    if config:
        c["envFrom"] = [{"configMapRef": {"name": CONFIGMAP}}]
        c["volumeMounts"] = [{"name": "config", "mountPath": "/etc/web"}]
        pod["volumes"] = [{"name": "config", "configMap": {"name": CONFIGMAP}}]
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": TARGET, "labels": {**labels, TARGET_LABEL: TARGET},
                         "annotations": {REVISION_ANNOTATION: v.name}},
            "spec": {"replicas": 2, "selector": {"matchLabels": dict(labels)},
                     "template": {"metadata": {"labels": dict(labels)}, "spec": pod}}}


CONFIGMAP = "web-config"
GOOD_CONFIG, BAD_CONFIG, NEW_CONFIG = {"MODE": "blue"}, {"MODE": "broken"}, {"MODE": "green", "CACHE": "on"}


def configmap(data: dict[str, str]) -> Json:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIGMAP}, "data": dict(data)}


def services() -> list[Json]:
    port = [{"name": "http", "port": 80, "targetPort": 8080}]
    return [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
             "spec": {"selector": {"app": TARGET}, "ports": port}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-canary"},
             "spec": {"selector": {"saferollout.dev/canary-of": TARGET}, "ports": port}}]


GATEWAY = "harness-gateway"


def httproute() -> Json:
    """As docs/gitops.md says to write it: every field the API server defaults spelled out (`group`, `kind`, the
    rule's `matches`), so that Argo CD's re-apply of the live rules (RespectIgnoreDifferences) leaves no diff."""
    backend = {"group": "", "kind": "Service", "port": 80}
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "web"},
            "spec": {"parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": GATEWAY}],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                                "backendRefs": [{**backend, "name": "web", "weight": 100},
                                                {**backend, "name": "web-canary", "weight": 0}]}]}}


def accepted_route_status() -> Json:
    """What a Gateway controller writes once it serves the route. None runs here (the harness's router is the data
    plane), and Argo CD's own health check of an HTTPRoute says Progressing until a parent has conditions; these carry
    no observedGeneration, so they hold for every generation the operator's weight writes make."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    conditions = [{"type": t, "status": "True", "reason": t, "message": "", "lastTransitionTime": now}
                  for t in ("Accepted", "ResolvedRefs")]
    return {"status": {"parents": [{"parentRef": {"name": GATEWAY}, "controllerName": "saferollout.dev/harness",
                                    "conditions": conditions}]}}


def saferollout(stages: list[Json], track: bool = False) -> Json:
    return {"apiVersion": "saferollout.dev/v1alpha1", "kind": "SafeRollout", "metadata": {"name": TARGET},
            "spec": {"targetRef": {"kind": "Deployment", "name": TARGET},  # no template: the Deployment's is the version
                     **({"trackConfig": True} if track else {}),
                     "strategy": {"canary": {"stages": stages, "traffic": {"gatewayAPI": {
                         "httpRoute": "web", "stableService": "web", "canaryService": "web-canary"}}}},
                     "analysis": {"interval": "1s", "failureLimit": 2, "metrics": [
                         {"name": "error-rate", "template": "error-rate", "max": 0.05, "onBreach": "rollback",
                          "severity": "critical"}]},
                     "rollback": {"verify": {"duration": "30s", "successes": 2}}}}


def git_files(v: Version, stages: list[Json], config: dict[str, str] | None = None) -> dict[str, str | None]:
    """The repository's layout of docs/gitops.md, for one service; with `config`, the ConfigMap the Deployment reads
    and a SafeRollout with trackConfig."""
    dump = yaml.safe_dump
    files: dict[str, str | None] = {
        "deploy/deployment.yaml": dump(deployment(v, config is not None), sort_keys=False),
        "deploy/services.yaml": yaml.safe_dump_all(services(), sort_keys=False),
        "deploy/httproute.yaml": dump(httproute(), sort_keys=False),
        "deploy/saferollout.yaml": dump(saferollout(stages, config is not None), sort_keys=False)}
    if config is not None:
        files["deploy/config.yaml"] = dump(configmap(config), sort_keys=False)
    return files


def documented_application() -> Json:
    """The Application of docs/gitops.md's section "Argo CD: the one ignoreDifferences stanza", as written there."""
    text = (REPO / "docs" / "gitops.md").read_text()
    section = text.split("## Argo CD: the one ignoreDifferences stanza", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block, "docs/gitops.md: no yaml block in the section 'Argo CD: the one ignoreDifferences stanza'"
    app: Json = yaml.safe_load(block.group(1))
    assert app["kind"] == "Application" and app["spec"]["ignoreDifferences"], app
    return app


def application(name: str, repo_url: str, namespace: str) -> Json:
    """The documented Application's syncPolicy and ignoreDifferences, verbatim, with this flow's repository and
    namespace (and the e2e helpers' history limit and cascade finalizer)."""
    doc = documented_application()
    manifest = acd.application_manifest(name, repo_url, dest_namespace=namespace, path="deploy")
    manifest["spec"]["syncPolicy"] = copy.deepcopy(doc["spec"]["syncPolicy"])
    manifest["spec"]["ignoreDifferences"] = copy.deepcopy(doc["spec"]["ignoreDifferences"])
    return manifest


# ------------------------------------------------------------------------------------------------- who wrote


def is_argocd(manager: str) -> bool:
    """Argo CD's writes: its controller's field manager, or kubectl's apply library that it syncs with."""
    return "argocd" in manager or manager.startswith("kubectl")


def newest_manager(obj: Json) -> str:
    entries = [m for m in (obj.get("metadata") or {}).get("managedFields") or [] if not m.get("subresource")]
    return str(max(entries, key=lambda m: str(m.get("time"))).get("manager")) if entries else "?"


# ------------------------------------------------------------------------------------------------ the world


@dataclass
class Sample:
    t: float
    sync: str
    revision: str
    health: str
    operation: str
    phase: str | None
    stage: int | None
    weight: int | None
    template_hash: str | None
    attempt: int | None
    stage_checks: int | None  # analysis runs since the current stage's weight was applied
    canary_hash: str | None  # the canary Deployment's saferollout.dev/template-hash, None when there is none
    healths: str = ""  # Argo CD's health of the Deployment and of the SafeRollout


@dataclass
class RouteSample:
    t: float
    canary_hash: str | None  # read first
    weight: int  # the HTTPRoute's canary weight, read after
    manager: str


@dataclass
class Released:
    """V2 committed, synced, held, canaried, and its rollout ended: the samples of each step."""

    sha: str
    t_commit: float
    held: str
    synced: Sample
    canary: Sample
    end: Sample


@dataclass
class Env:
    session: Session
    operator_kubeconfig: Path
    root: Path
    git_url: Callable[[acd.GitRepo], str]
    tl: Timeline


@dataclass
class Flow:
    name: str
    canary: Behaviour
    stages: list[Json]
    tl: Timeline = field(default_factory=Timeline)
    samples: list[Sample] = field(default_factory=list)
    route_samples: list[RouteSample] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    procs: list[DemoProcess] = field(default_factory=list)
    router: Router | None = None
    watch: TargetWatch | None = None
    repo: acd.GitRepo | None = None
    env: Env | None = None
    fast: bool = False  # sample the canary Deployment and the HTTPRoute every FAST seconds (else every SAMPLE / 2)
    config: dict[str, str] | None = None  # the ConfigMap's data in Git (trackConfig); None: no ConfigMap
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def ns(self) -> str:
        return f"gitops-acd-{self.name}"

    @property
    def app(self) -> str:
        return f"gitops-acd-{self.name}"

    @property
    def e(self) -> Env:
        assert self.env is not None
        return self.env

    def kubectl(self, *args: str, check: bool = True) -> str:
        out = self.e.session.kube.kubectl(*args, check=check)
        return str(out.stdout) if out.returncode == 0 else ""

    def log(self, kind: str, text: str) -> None:
        self.tl.add(kind, text)

    # ---------------------------------------------------------------------------------------------- reads
    def target(self) -> Json:
        """The Deployment as the API server serves it (raw JSON: its template's hash is the operator's)."""
        return dict(json.loads(self.kubectl("get", "deployment", TARGET, "-n", self.ns, "-o", "json")))

    def status(self) -> Json:
        out = self.kubectl("get", "saferollout", TARGET, "-n", self.ns, "-o", "json", check=False)
        return dict((json.loads(out).get("status") or {}) if out else {})

    def replica_sets(self) -> set[str]:
        items = json.loads(self.kubectl("get", "replicasets", "-n", self.ns, "-l", f"app={TARGET}", "-o", "json"))
        return {r["metadata"]["name"] for r in items["items"]}

    def sync_ops(self) -> int:
        return sum(acd.sync_operations(self.app).values())

    def wait(self, cond: Callable[[], bool], seconds: float, what: str) -> float:
        """Polls cond until it holds; returns the time it did (monotonic)."""
        deadline = time.monotonic() + seconds
        while True:
            if cond():
                self.log("harness", what)
                return time.monotonic()
            if time.monotonic() > deadline:
                raise AssertionError(f"[{self.name}] not within {seconds:g}s: {what}\n{self.report()}")
            time.sleep(0.25)

    def last_sample(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def wait_sample(self, cond: Callable[[Sample], bool], since: float, seconds: float, what: str) -> Sample:
        """Waits until a sample taken at or after `since` satisfies cond; returns the first that does."""
        found: list[Sample] = []

        def check() -> bool:
            found[:] = [s for s in list(self.samples) if s.t >= since and cond(s)][:1]
            return bool(found)
        self.wait(check, seconds, what)
        return found[0]

    # ----------------------------------------------------------------------------------------- samplers
    def _sampler(self, api: client.ApiClient) -> None:
        custom, apps = client.CustomObjectsApi(api), client.AppsV1Api(api)
        seen: dict[str, Any] = {}
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                app = custom.get_namespaced_custom_object("argoproj.io", "v1alpha1", acd.NAMESPACE, "applications",
                                                          self.app)
            except Exception:
                app = {}
            try:
                sr = custom.get_namespaced_custom_object("saferollout.dev", "v1alpha1", self.ns, "saferollouts", TARGET)
                st = sr.get("status") or {}
            except Exception:
                st = {}
            canary = self._canary_hash(apps)
            s = Sample(t, acd.sync_status(app), acd.synced_revision(app), acd.app_health(app), acd.operation_phase(app),
                       st.get("phase"), st.get("stage"), st.get("weight"), st.get("templateHash"), st.get("attempt"),
                       st.get("stageChecks"), canary, f"Deployment {acd.resource_health(app, 'Deployment', TARGET)}"
                       f", SafeRollout {acd.resource_health(app, 'SafeRollout', TARGET)}")
            self.samples.append(s)
            for key, value in (("app", f"{s.sync} {s.revision[:8]} {s.health} op={s.operation} ({s.healths})"),
                               ("phase", f"{s.phase} stage={s.stage} weight={s.weight} tpl={s.template_hash}"),
                               ("canary", f"canary Deployment {s.canary_hash}")):
                if seen.get(key) != value:
                    self.log(key, value)
                    seen[key] = value
            time.sleep(max(0.0, SAMPLE - (time.monotonic() - t)))

    def _canary_hash(self, apps: client.AppsV1Api) -> str | None:
        try:
            dep = apps.read_namespaced_deployment(f"{TARGET}-canary", self.ns)
        except Exception:
            return None
        if dep.metadata.deletion_timestamp is not None:
            return None
        return str((dep.metadata.annotations or {}).get("saferollout.dev/template-hash") or "?")

    def _route_sampler(self, api: client.ApiClient, every: float) -> None:
        """The canary Deployment first, then the HTTPRoute: a sample showing the route still weighted for a canary that
        is already gone means the canary was removed before its traffic."""
        custom, apps = client.CustomObjectsApi(api), client.AppsV1Api(api)
        last: tuple[int, str] | None = None
        while not self._stop.is_set():
            t = time.monotonic()
            canary = self._canary_hash(apps)
            try:
                route = custom.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", self.ns, "httproutes", "web")
            except Exception:
                time.sleep(every)
                continue
            w = canary_share(backend_weights(route), "web", "web-canary")
            manager = newest_manager(route)
            self.route_samples.append(RouteSample(t, canary, w, manager))
            if last is None or last[0] != w:
                self.log("route", f"canary weight {w} (newest manager {manager}), canary Deployment {canary}")
            last = (w, manager)
            time.sleep(max(0.0, every - (time.monotonic() - t)))

    # --------------------------------------------------------------------------------------------- setup
    def prepare(self, env: Env) -> None:
        """Before the shared operator starts: namespace, the demo apps (their ports go into Prometheus's targets)."""
        self.env = env
        kube = env.session.kube
        acd.delete_application(self.app)
        if kube.namespace_exists(self.ns):
            kube.delete_rollouts(self.ns, timeout=5)
            kube.delete_namespace(self.ns)
        kube.apply([{"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": self.ns, "labels": {"saferollout.dev/harness": "1"}}}])
        self.run_dir = env.root / self.name
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.stable = DemoProcess("stable", REFS.stable_service, self.ns, "stable", HEALTHY, self.run_dir / "stable.log")
        self.canary_proc = DemoProcess("canary", REFS.canary_service, self.ns, "canary", self.canary,
                                       self.run_dir / "canary.log")
        for p in (self.stable, self.canary_proc):
            p.start()
            self.procs.append(p)

    def scrape_targets(self) -> list[ScrapeTarget]:
        return [ScrapeTarget(f"{self.ns}-stable", self.stable.port, REFS.stable_service, self.ns),
                ScrapeTarget(f"{self.ns}-canary", self.canary_proc.port, REFS.canary_service, self.ns)]

    def start(self) -> str:
        """v1 in Git, the Application created and synced, the SafeRollout adopted, the stable traffic seen by
        Prometheus, the samplers running. Returns v1's commit."""
        kube, tl = self.e.session.kube, self.tl
        tl.t0 = time.monotonic()
        self.watch = TargetWatch(kube.new_api(), self.ns, TARGET, tl)
        self.watch.start()
        self.repo = acd.GitRepo.create(self.e.root / "git" / self.name)
        sha = self.repo.commit("web v1, its Services, route and SafeRollout", git_files(V1, self.stages, self.config))
        start = time.monotonic()
        acd.apply_application(application(self.app, self.e.git_url(self.repo), self.ns))
        acd.wait_synced(self.app, sha, timeout=120)
        self.figures.append(f"first sync of the Application: {time.monotonic() - start:.1f} s")
        self.kubectl("patch", "httproute", "web", "-n", self.ns, "--subresource=status", "--type=merge",
                     "-p", json.dumps(accepted_route_status()))
        self.wait(lambda: self.status().get("phase") == "Succeeded" and bool(self.status().get("source")), 60,
                  "the SafeRollout adopted the Deployment")
        self.wait(lambda: (self.target().get("status") or {}).get("availableReplicas") == 2, 90, "target available")
        source = traffic_sources(REFS, self.ns, TARGET, kube.new_api())["main"]
        self.router = Router(source.read, source.backends, {"stable": self.stable.port, "canary": self.canary_proc.port},
                             25, 900, on_change=lambda text: tl.add("router", text), what=source.what)
        self.router.start()
        q = f'sum(rate(http_requests_total{{service="web",namespace="{self.ns}"}}[10s])) > 0'
        self.wait(lambda: bool(self.e.session.prometheus.query(q)), 60, "Prometheus sees the stable traffic")
        threading.Thread(target=self._sampler, args=(kube.new_api(),), daemon=True, name=f"sample-{self.name}").start()
        threading.Thread(target=self._route_sampler, args=(kube.new_api(), FAST if self.fast else SAMPLE / 2),
                         daemon=True, name=f"route-{self.name}").start()
        app = acd.wait_for_app(self.app, lambda a: acd.is_synced(a, sha) and acd.app_health(a) == "Healthy",
                               "Synced and Healthy at v1", timeout=60)
        assert acd.resource_health(app, "SafeRollout", TARGET) == "Healthy", acd.describe(app)
        source_status = self.status()["source"]
        if self.config is None:  # trackConfig's version covers the ConfigMap's data too (core.configs.version_hash)
            assert source_status["stableTemplateHash"] == template_hash_of(self.target()["spec"]["template"])
        assert source_status.get("application") == self.app, source_status  # from Argo CD's tracking annotation
        time.sleep(QUIET)  # the quiet time before the release: sampled, must be Synced throughout
        return sha

    def stop(self) -> None:
        self._stop.set()
        if self.watch is not None:
            self.watch.stop()
        if self.router is not None:
            self.router.stop()
        for p in self.procs:
            p.stop()

    def commit(self, v: Version, message: str, config: dict[str, str] | None = None) -> tuple[str, float]:
        assert self.repo is not None
        t = time.monotonic()
        self.config = config if config is not None else self.config
        sha = self.repo.commit(message, git_files(v, self.stages, self.config))
        self.log("git", f"commit {sha[:8]}: {message}")
        return sha, t

    def cleanup(self) -> None:
        kube = self.e.session.kube
        steps: list[Callable[[], object]] = [lambda: acd.delete_application(self.app),
                                             lambda: kube.delete_rollouts(self.ns, timeout=20),
                                             lambda: kube.delete_namespace(self.ns)]
        for step in steps:
            try:
                step()
            except Exception as e:  # clean-up goes on
                self.log("error", f"clean-up: {e}")

    def release(self, message: str) -> Released:
        """Commit V2 and follow it: Synced at it, held, the canary on the held template, no new ReplicaSet, the end."""
        sets = self.replica_sets()
        sha, t_commit = self.commit(V2, message)
        held = self.held_after(t_commit)
        synced = self.wait_sample(lambda s: s.sync == "Synced" and s.revision == sha and s.operation != "Running",
                                  t_commit, 90, "Application Synced at v2")
        canary = self.wait_sample(lambda s: s.canary_hash == held, t_commit, 60,
                                  "the canary Deployment runs the held template")
        assert self.replica_sets() == sets, "a ReplicaSet of the new template appeared while the Deployment is held"
        end = self.wait_sample(lambda s: s.phase in ("Succeeded", "RolledBack", "Failed") and s.template_hash == held,
                               t_commit, 240, "the rollout ended")
        return Released(sha, t_commit, held, synced, canary, end)

    # ----------------------------------------------------------------------------------------- observing
    def held_after(self, since: float) -> str:
        """The commit arrived: the Deployment came back paused from Argo CD's write, holding a new template."""
        self.wait(lambda: bool((self.target()["metadata"].get("annotations") or {}).get(HELD_ANNOTATION)), 90,
                  "Argo CD synced the commit: the Deployment is held")
        dep = self.target()
        assert dep["spec"].get("paused") is True, "the webhook did not hold the new template in Argo CD's write"
        held = template_hash_of(dep["spec"]["template"])
        assert dep["metadata"]["annotations"][HELD_ANNOTATION] == held
        assert dep["metadata"]["annotations"][STABLE_ANNOTATION] == self.status()["source"]["stableTemplateHash"]
        return held

    def sync_samples(self, start: float, end: float) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.samples:
            if start <= s.t < end:
                out[s.sync or "?"] = out.get(s.sync or "?", 0) + 1
        return out

    def healths(self, start: float, end: float) -> list[str]:
        """Argo CD's health verdicts in [start, end), in order, changes only: `app (Deployment, SafeRollout)`."""
        out: list[str] = []
        for s in self.samples:
            if start <= s.t < end and (not out or out[-1] != f"{s.health} ({s.healths})"):
                out.append(f"{s.health} ({s.healths})")
        return out

    def writes(self, since: float) -> tuple[int, int, dict[str, int]]:
        """(operator writes, Argo CD writes, writes by manager) to the target since `since`."""
        assert self.watch is not None
        by = self.watch.writes_by(since)
        argocd = sum(n for m, n in by.items() if is_argocd(m))
        return sum(by.values()) - argocd, argocd, by

    def route_writes(self, since: float) -> dict[str, int]:
        out: dict[str, int] = {}
        prev: int | None = None
        for r in self.route_samples:
            if r.t >= since and prev is not None and r.weight != prev:
                out[r.manager] = out.get(r.manager, 0) + 1
            prev = r.weight
        return out

    def report(self) -> str:
        by = self.watch.writes_by() if self.watch else {}
        try:
            app = acd.describe(acd.get_application(self.app))
        except Exception as e:
            app = f"({e})"
        return (f"-- timeline ({self.name}, {self.ns})\n{self.tl.render()}\n-- writes to the target: {by}\n"
                f"-- Application: {app}\n-- logs in {self.run_dir}")


# ----------------------------------------------------------------------------------------------------- flows


def flow_promote(f: Flow) -> None:
    """1. A release by commit: held in Argo CD's write, canaried, promoted with one write; Synced outside the release."""
    sha1 = f.start()
    ops0, hist0 = f.sync_ops(), len(acd.history(acd.get_application(f.app)))
    sets = f.replica_sets()
    r = f.release("web v2: image, args and env")
    sha2, t_commit, held, synced, canary, end = r.sha, r.t_commit, r.held, r.synced, r.canary, r.end
    st = f.status()
    assert st["phase"] == "Succeeded", f.report()
    app = acd.wait_for_app(f.app, lambda a: acd.is_synced(a, sha2) and acd.app_health(a) == "Healthy",
                           "Synced and Healthy after the promotion", timeout=90)
    healthy_at = time.monotonic()
    f.wait(lambda: len(f.replica_sets() - sets) == 1 and (f.target().get("status") or {}).get("updatedReplicas") == 2
           and (f.target().get("status") or {}).get("availableReplicas") == 2, 60,
           "the stable pods run the promoted template (a new ReplicaSet)")
    time.sleep(QUIET)  # after the promotion: sampled, must stay Synced
    t_done = time.monotonic()

    # the cluster's Deployment equals Git
    dep = f.target()
    live = dep["spec"]["template"]["spec"]["containers"][0]
    assert as_in_git(live) == container(V2), f"the live container is not Git's: {live} != {container(V2)}"
    assert not dep["spec"].get("paused") and template_hash_of(dep["spec"]["template"]) == held
    assert dep["metadata"]["annotations"][STABLE_ANNOTATION] == held and HELD_ANNOTATION not in dep["metadata"]["annotations"]
    assert acd.resource_status(app, "Deployment", TARGET) == "Synced" and acd.resource_health(app, "Deployment", TARGET) \
        == "Healthy", acd.describe(app)
    assert st["source"]["targetWrites"] == 1 and st["source"]["stableTemplateHash"] == held, st["source"]
    assert st["source"].get("revision") == V2.name, st["source"]

    operator, argocd, by = f.writes(t_commit)
    ops, hist = f.sync_ops() - ops0, len(acd.history(acd.get_application(f.app))) - hist0
    before, during, after = (f.sync_samples(0, t_commit), f.sync_samples(synced.t, end.t),
                             f.sync_samples(end.t, t_done))
    f.figures += [
        f"commit -> Application Synced at v2: {synced.t - t_commit:.1f} s; -> canary Deployment: "
        f"{canary.t - t_commit:.1f} s; -> Succeeded: {end.t - t_commit:.1f} s; -> Synced+Healthy: "
        f"{healthy_at - t_commit:.1f} s",
        f"writes to the target during the rollout: operator {operator}, Argo CD {argocd} (by manager: {by}); "
        f"status.source.targetWrites {st['source']['targetWrites']}",
        f"HTTPRoute weight changes by manager: {f.route_writes(t_commit)}",
        f"Argo CD sync operations for the commit: {ops} (argocd_app_sync_total), status.history +{hist}",
        f"sync status samples (every {SAMPLE}s): before the commit {before}; from the sync of v2 to the promotion "
        f"{during}; after the promotion {after}",
        f"Argo CD health from the commit on: {' -> '.join(f.healths(t_commit, t_done))}",
    ]
    assert operator == 1, by
    assert argocd >= 1, by
    # no Argo CD write undoes the operator's (the unpause): none comes after it
    assert f.watch is not None
    op_write = next(w for w in f.watch.since(t_commit) if not is_argocd(w.manager))
    later = [w for w in f.watch.since(op_write.t) if is_argocd(w.manager)]
    assert not later, f"Argo CD wrote the target after the operator's unpause: {later}"
    assert 1 <= ops <= 3, ops
    assert not any(is_argocd(m) for m in f.route_writes(t_commit)), f"Argo CD wrote the weights: {f.route_writes(0)}"
    assert set(before) == {"Synced"}, before
    assert set(during) == {"Synced"}, during
    assert set(after) == {"Synced"}, after
    assert sha1 != sha2


def flow_rollback(f: Flow) -> None:
    """2. A failing commit is refused with no write to the target; a revert commit starts nothing."""
    f.start()
    ops0 = f.sync_ops()
    sets = f.replica_sets()
    r = f.release("web v2: image, args and env (a bad one)")
    sha2, t_commit, held, synced, canary, end = r.sha, r.t_commit, r.held, r.synced, r.canary, r.end
    st = f.status()
    assert st["phase"] == "RolledBack", f.report()
    degraded_app = acd.wait_for_app(f.app, lambda a: acd.app_health(a) == "Degraded", "Application Degraded", 30)
    time.sleep(QUIET)  # Argo CD has had its resyncs: nothing may write the old template back
    dep = f.target()
    assert dep["spec"]["paused"] is True and template_hash_of(dep["spec"]["template"]) == held, "not paused on v2"
    assert f.replica_sets() == sets, "the stable ReplicaSet was replaced"
    assert (dep.get("status") or {}).get("availableReplicas") == 2
    refused = st["source"]["refused"]
    assert refused["templateHash"] == held and refused["generation"] == dep["metadata"]["generation"], refused
    assert refused.get("revision") == V2.name, refused
    assert st["source"]["targetWrites"] == 0 and st["source"]["stableTemplateHash"] != held
    degraded = next(c for c in st["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and held in degraded["message"], degraded
    # the stable version still serves: all the traffic, and it answers
    assert f.router is not None and f.router.canary_weight == 0
    served = f.router.stats.codes.get("stable 200", 0)
    time.sleep(2)
    assert f.router.stats.codes.get("stable 200", 0) > served, f.router.stats
    app = acd.get_application(f.app)
    assert acd.is_synced(app, sha2), acd.describe(app)  # Git says v2, the cluster holds v2 (paused)
    operator, argocd, by = f.writes(t_commit)
    assert f.watch is not None
    written = f.watch.since(t_commit)
    assert written, "no write to the target was seen for the commit"
    back = [w for w in written if w.template_hash != written[0].template_hash]
    assert not back, f"the template was written back: {back}"
    assert operator == 0, by
    assert not any(is_argocd(m) for m in f.route_writes(t_commit)), f"Argo CD wrote the weights: {f.route_writes(0)}"
    ops = f.sync_ops() - ops0
    f.figures += [
        f"commit -> Application Synced at v2: {synced.t - t_commit:.1f} s; -> canary: {canary.t - t_commit:.1f} s; "
        f"-> RolledBack: {end.t - t_commit:.1f} s; Application health then {acd.app_health(degraded_app)}, "
        f"SafeRollout {acd.resource_health(degraded_app, 'SafeRollout', TARGET)}, Deployment "
        f"{acd.resource_health(degraded_app, 'Deployment', TARGET)}",
        f"writes to the target during the rollout and after the rollback: operator {operator}, Argo CD {argocd} "
        f"(by manager: {by}); sync operations {ops}; HTTPRoute weight changes by manager {f.route_writes(t_commit)}",
        f"refused: {refused}",
        f"Argo CD health from the commit on: {' -> '.join(f.healths(t_commit, time.monotonic()))}",
        f"sync status samples: before the commit {f.sync_samples(0, t_commit)}; from the sync of v2 to the end of "
        f"the rollback +{QUIET:g}s {f.sync_samples(synced.t, time.monotonic())}",
    ]
    assert set(f.sync_samples(0, t_commit)) == {"Synced"}
    assert set(f.sync_samples(synced.t, time.monotonic())) == {"Synced"}

    # the revert commit
    attempt, ops1 = st["attempt"], f.sync_ops()
    sha3, t_revert = f.commit(V1, "Revert \"web v2\"")
    app = acd.wait_for_app(f.app, lambda a: acd.is_synced(a, sha3) and acd.app_health(a) == "Healthy",
                           "Synced and Healthy after the revert", timeout=90)
    healthy_at = time.monotonic()
    dep = f.target()
    assert not dep["spec"].get("paused") and HELD_ANNOTATION not in (dep["metadata"].get("annotations") or {})
    f.wait(lambda: f.status().get("phase") == "Succeeded" and f.status().get("attempt") == attempt + 1, 60,
           "the revert is seen: Succeeded, nothing rolled out")
    quiet_from = time.monotonic()
    time.sleep(10)
    samples = [s for s in f.samples if s.t >= t_revert]
    assert not any(s.canary_hash for s in samples), "a canary Deployment appeared after the revert"
    assert all(s.weight in (0, None) for s in samples if s.t >= quiet_from), "traffic moved after the revert"
    st = f.status()
    assert st["phase"] == "Succeeded" and st.get("weight", 0) == 0 and st["source"]["targetWrites"] == 0, st
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["reason"] == "TemplateReverted", ready
    assert next(c for c in st["conditions"] if c["type"] == "Degraded")["status"] == "False"
    assert f.replica_sets() == sets, "the revert replaced the stable pods"
    assert f.router.canary_weight == 0
    operator, argocd, by = f.writes(t_revert)
    app = acd.get_application(f.app)
    assert acd.is_synced(app, sha3) and acd.app_health(app) == "Healthy", acd.describe(app)
    f.figures += [
        f"revert commit -> Synced+Healthy: {healthy_at - t_revert:.1f} s; writes to the target: operator {operator}, "
        f"Argo CD {argocd} (by manager: {by}); sync operations {f.sync_ops() - ops1}; no canary in the "
        f"{time.monotonic() - t_revert:.0f} s after it",
        f"sync status samples after the revert was synced: {f.sync_samples(healthy_at, time.monotonic())}",
        f"Argo CD health from the revert on: {' -> '.join(f.healths(t_revert, time.monotonic()))}",
    ]
    assert operator == 0, by
    assert set(f.sync_samples(healthy_at, time.monotonic())) == {"Synced"}


def flow_third(f: Flow) -> None:
    """3. A third commit while the second version is at 25%: stable first, then the third from stage 1."""
    f.start()
    ops0 = f.sync_ops()
    _, t2 = f.commit(V2, "web v2")
    held2 = f.held_after(t2)
    at25 = f.wait_sample(lambda s: s.template_hash == held2 and s.weight == 25 and s.canary_hash == held2, t2, 120,
                         "v2 at 25%")
    sha3, t3 = f.commit(V3, "web v3, while v2 is at 25%")
    f.wait(lambda: template_hash_of(f.target()["spec"]["template"]) != held2, 90, "Argo CD synced v3")
    dep = f.target()
    held3 = template_hash_of(dep["spec"]["template"])
    assert dep["spec"].get("paused") is True and dep["metadata"]["annotations"][HELD_ANNOTATION] == held3
    v3_canary = f.wait_sample(lambda s: s.canary_hash == held3, t3, 60, "the v3 canary Deployment")
    v3_stage2 = f.wait_sample(lambda s: s.template_hash == held3 and (s.stage or 0) >= 2, t3, 120, "v3 past stage 1")
    end = f.wait_sample(lambda s: s.phase in ("Succeeded", "RolledBack", "Failed") and s.template_hash == held3, t3,
                        240, "v3's rollout ended")
    st = f.status()
    assert st["phase"] == "Succeeded", f.report()
    app = acd.wait_for_app(f.app, lambda a: acd.is_synced(a, sha3) and acd.app_health(a) == "Healthy",
                           "Synced and Healthy at v3", timeout=90)
    dep = f.target()
    assert not dep["spec"].get("paused") and template_hash_of(dep["spec"]["template"]) == held3
    assert as_in_git(dep["spec"]["template"]["spec"]["containers"][0]) == container(V3)

    # the weights after v3's commit, sampled every FAST s (canary Deployment read before the route)
    after = [r for r in f.route_samples if r.t >= t3]
    weights = [r.weight for r in after]
    compact = [w for i, w in enumerate(weights) if i == 0 or weights[i - 1] != w]
    zero = next(i for i, r in enumerate(after) if r.weight == 0)
    # v2's canary is never gone while the route still sends it traffic: weight 0 first
    early = [r for r in after[:zero] if r.canary_hash != held2]
    assert not early, f"v2's canary was replaced before its weight was 0: {early[:3]}"
    first_v3 = next(r for r in after[zero:] if r.weight > 0)
    assert first_v3.weight == FIRST_WEIGHT and first_v3.canary_hash == held3, first_v3
    # the next weight comes only after the first stage's duration, and after an analysis of v3 at that stage
    more = next((r for r in after[zero:] if r.weight > FIRST_WEIGHT), None)
    assert more is not None and more.t - first_v3.t >= float(f.stages[0]["duration"].rstrip("s")) - 0.5, (more, first_v3)
    assert compact[compact.index(0):][:3] == [0, FIRST_WEIGHT, f.stages[1]["weight"]], compact
    at_stage1 = [s for s in f.samples if s.template_hash == held3 and s.stage == 1 and s.t < more.t]
    assert at_stage1 and max(s.stage_checks or 0 for s in at_stage1) >= 1, at_stage1[-3:]
    time.sleep(QUIET)
    operator, argocd, by = f.writes(t2)
    ops = f.sync_ops() - ops0
    route_by = f.route_writes(t2)
    f.figures += [
        f"v3 committed {t3 - at25.t:.1f} s after v2 reached 25%; -> v3 canary {v3_canary.t - t3:.1f} s; "
        f"-> v3 past stage 1 {v3_stage2.t - t3:.1f} s; -> Succeeded {end.t - t3:.1f} s",
        f"canary weight of the HTTPRoute after the v3 commit (every {FAST}s, changes only): {compact}",
        f"weight {FIRST_WEIGHT} held {more.t - first_v3.t:.1f} s before the next stage",
        f"writes to the target for v2 and v3: operator {operator}, Argo CD {argocd} (by manager: {by}); "
        f"HTTPRoute weight changes by manager: {route_by}; sync operations for the two commits {ops}",
        f"sync status samples from the v2 commit on: {f.sync_samples(t2, time.monotonic())}",
        f"Argo CD health from the v2 commit on: {' -> '.join(f.healths(t2, time.monotonic()))}",
    ]
    assert operator == 1, by
    assert not any(is_argocd(m) for m in route_by), f"Argo CD wrote the HTTPRoute's weights: {route_by}"
    assert 2 <= ops <= 5, ops
    assert acd.resource_status(app, "HTTPRoute", "web") == "Synced", acd.describe(app)


def pods_of(f: Flow, selector: str) -> list[Json]:
    items = json.loads(f.kubectl("get", "pods", "-n", f.ns, "-l", selector, "-o", "json"))["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


ADMISSION_ADDS = "kube-root-ca.crt"  # the ServiceAccount token's projected volume: never renamed


def config_refs(pod: Json) -> set[str]:
    """The ConfigMap names a pod reads (envFrom, volumes, projected sources), but the one admission adds to every
    pod, which must keep its name: checked here too."""
    token = [v for v in pod["spec"].get("volumes") or [] if v["name"].startswith("kube-api-access-")]
    for v in token:
        names = [src["configMap"]["name"] for src in v["projected"]["sources"] if "configMap" in src]
        assert names == [ADMISSION_ADDS], f"the token volume's ConfigMap was renamed: {v}"
    return {n for k, n in references(pod["spec"]) if k == "ConfigMap"} - {ADMISSION_ADDS}


def stable_pods_read(f: Flow, config: str) -> bool:
    """Every stable pod (2) reads the copies of `config`, and only them."""
    pods = pods_of(f, f"app={TARGET},!saferollout.dev/canary-of")
    return len(pods) == 2 and all(config_refs(p) == {f"{CONFIGMAP}-sr-{config}"} for p in pods)


def config_label(f: Flow) -> str | None:
    labels = f.target()["spec"]["template"]["metadata"].get("labels") or {}
    return labels.get(CONFIG_LABEL)


def copy_exists(f: Flow, config: str) -> bool:
    return bool(f.kubectl("get", "configmap", f"{CONFIGMAP}-sr-{config}", "-n", f.ns, "-o", "name", check=False))


def flow_config(f: Flow) -> None:
    """4. ConfigMap-only commits (trackConfig): a bad one is refused with the stable pods never reading it, its revert
    starts nothing, a good one is canaried and promoted by one write; Argo CD never writes the Deployment."""
    sha1 = f.start()
    t0 = time.monotonic()
    f.wait(lambda: config_label(f) is not None, 30, "trackConfig's first write: the pods are given copies")
    c1 = str(config_label(f))
    f.wait(lambda: stable_pods_read(f, c1), 90, f"the stable pods read the copies of config {c1}")
    tokens = sum(1 for p in pods_of(f, f"app={TARGET}") for v in p["spec"].get("volumes") or []
                 if v["name"].startswith("kube-api-access-"))
    f.figures.append(f"stable pods with the ServiceAccount token's volume (kube-root-ca.crt kept): {tokens} of 2")
    copy = json.loads(f.kubectl("get", "configmap", f"{CONFIGMAP}-sr-{c1}", "-n", f.ns, "-o", "json"))
    assert copy.get("immutable") is True and copy["data"] == GOOD_CONFIG, copy
    assert not any(k.startswith("argocd.argoproj.io") for k in (copy["metadata"].get("annotations") or {})), copy
    acd.wait_for_app(f.app, lambda a: acd.is_synced(a, sha1) and acd.app_health(a) == "Healthy",
                     "Synced and Healthy after the pods were given copies", timeout=90)
    adopted = time.monotonic()
    operator, argocd, by = f.writes(0)
    f.figures.append(f"trackConfig's first write -> stable pods on copies of {c1}: {adopted - t0:.1f} s; writes to "
                     f"the target since the first sync: operator {operator}, Argo CD {argocd} (by manager: {by})")
    assert operator == 1, by  # the label naming the copies (the target label is in Git)
    sets = f.replica_sets()
    stable_pods = {p["metadata"]["name"] for p in pods_of(f, f"app={TARGET},!saferollout.dev/canary-of")}

    # a bad config: canaried from copies of it, refused; the stable pods never read it
    f.canary_proc.configure(FAILING)
    ops0 = f.sync_ops()
    sha2, t2 = f.commit(V1, "web-config: MODE=broken", config=BAD_CONFIG)
    synced = f.wait_sample(lambda s: s.sync == "Synced" and s.revision == sha2 and s.operation != "Running", t2, 90,
                           "Application Synced at the bad config")
    canary = f.wait_sample(lambda s: s.canary_hash is not None, t2, 60, "a canary Deployment for the new config")
    canary_pods = pods_of(f, f"saferollout.dev/canary-of={TARGET}")
    c2 = str(json.loads(f.kubectl("get", "deployment", f"{TARGET}-canary", "-n", f.ns, "-o", "json"))["spec"]
             ["template"]["metadata"]["labels"][CONFIG_LABEL])
    assert c2 != c1 and all(config_refs(p) == {f"{CONFIGMAP}-sr-{c2}"} for p in canary_pods), canary_pods
    assert not f.target()["spec"].get("paused"), "a config-only version holds nothing: the template is approved"
    end = f.wait_sample(lambda s: s.phase in ("Succeeded", "RolledBack", "Failed"), canary.t, 240, "the rollout ended")
    st = f.status()
    assert st["phase"] == "RolledBack", f.report()
    degraded_app = acd.wait_for_app(f.app, lambda a: acd.app_health(a) == "Degraded", "Application Degraded", 30)
    assert acd.is_synced(degraded_app, sha2), acd.describe(degraded_app)  # Git's ConfigMap is the live one
    time.sleep(QUIET)
    assert f.replica_sets() == sets and stable_pods_read(f, c1), "the stable pods were replaced or read the bad config"
    assert {p["metadata"]["name"] for p in pods_of(f, f"app={TARGET},!saferollout.dev/canary-of")} == stable_pods
    assert st["source"].get("refused"), st["source"]
    f.wait(lambda: not copy_exists(f, c2), 20, "the refused version's copies are removed")
    operator, argocd, by = f.writes(t2)
    assert operator == 0 and argocd == 0, by
    f.figures += [
        f"bad config commit -> Synced: {synced.t - t2:.1f} s; -> canary on copies of {c2}: {canary.t - t2:.1f} s; "
        f"-> RolledBack: {end.t - t2:.1f} s; Application {acd.app_health(degraded_app)} (SafeRollout "
        f"{acd.resource_health(degraded_app, 'SafeRollout', TARGET)}); writes to the target: operator {operator}, "
        f"Argo CD {argocd}; sync operations {f.sync_ops() - ops0}",
        f"Argo CD health from the bad commit on: {' -> '.join(f.healths(t2, time.monotonic()))}",
    ]

    # its revert: nothing starts
    attempt, ops1 = st["attempt"], f.sync_ops()
    sha3, t3 = f.commit(V1, "Revert \"web-config: MODE=broken\"", config=GOOD_CONFIG)
    acd.wait_for_app(f.app, lambda a: acd.is_synced(a, sha3) and acd.app_health(a) == "Healthy",
                     "Synced and Healthy after the revert", timeout=90)
    syncing = [(t2, synced.t), (t3, f.wait_sample(lambda s: s.sync == "Synced" and s.revision == sha3, t3, 30,
                                                  "Application Synced at the revert").t)]
    f.wait(lambda: f.status().get("phase") == "Succeeded" and f.status().get("attempt") == attempt + 1, 60,
           "the revert is seen: Succeeded, nothing rolled out")
    time.sleep(5)
    assert not any(s.canary_hash for s in f.samples if s.t >= t3), "a canary Deployment appeared after the revert"
    ready = next(c for c in f.status()["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "TemplateReverted", ready
    assert f.replica_sets() == sets and stable_pods_read(f, c1)
    operator, argocd, by = f.writes(t3)
    assert operator == 0 and argocd == 0, by
    f.figures.append(f"revert commit: writes to the target operator {operator}, Argo CD {argocd}; sync operations "
                     f"{f.sync_ops() - ops1}; no canary")

    # a good config: canaried, promoted by one write (the label naming the new copies), the stable pods replaced
    f.canary_proc.configure(HEALTHY)
    ops2 = f.sync_ops()
    sha4, t4 = f.commit(V1, "web-config: MODE=green, CACHE=on", config=NEW_CONFIG)
    syncing.append((t4, f.wait_sample(lambda s: s.sync == "Synced" and s.revision == sha4, t4, 90,
                                      "Application Synced at the good config").t))
    end = f.wait_sample(lambda s: s.phase in ("Succeeded", "RolledBack", "Failed") and s.canary_hash is None
                        and (s.attempt or 0) > attempt + 1, t4, 240, "the good config's rollout ended")
    st = f.status()
    assert st["phase"] == "Succeeded" and st["source"]["targetWrites"] >= 1, f.report()
    c4 = str(config_label(f))
    assert c4 not in (c1, c2)
    f.wait(lambda: stable_pods_read(f, c4), 90, f"the stable pods read the copies of config {c4}")
    app = acd.wait_for_app(f.app, lambda a: acd.is_synced(a, sha4) and acd.app_health(a) == "Healthy",
                           "Synced and Healthy after the promotion", timeout=90)
    time.sleep(QUIET)
    f.wait(lambda: not copy_exists(f, c1) and copy_exists(f, c4), 20, "only the promoted version's copies remain")
    operator, argocd, by = f.writes(t4)
    assert operator == 1 and argocd == 0, by
    assert acd.resource_status(app, "Deployment", TARGET) == "Synced", acd.describe(app)
    # Synced at every sample but those between a commit and its sync (Argo CD's own OutOfSync while it applies it)
    bounds = [0.0, *[t for w in syncing for t in w], time.monotonic()]
    outside: dict[str, int] = {}
    for a, b in zip(bounds[::2], bounds[1::2], strict=True):
        for k, n in f.sync_samples(a, b).items():
            outside[k] = outside.get(k, 0) + n
    inside = [f.sync_samples(a, b) for a, b in syncing]
    f.figures += [
        f"good config commit -> Succeeded: {end.t - t4:.1f} s; writes to the target: operator {operator} (the label "
        f"{CONFIG_LABEL}={c4}), Argo CD {argocd}; sync operations {f.sync_ops() - ops2}",
        f"sync status samples (every {SAMPLE}s) outside the three commits' syncs: {outside}; from each commit to its "
        f"sync: {inside}",
        f"Argo CD health from the good commit on: {' -> '.join(f.healths(t4, time.monotonic()))}",
    ]
    assert set(outside) == {"Synced"}, outside


FLOWS: dict[str, tuple[Callable[[Flow], None], Behaviour, list[Json], bool]] = {
    "promote": (flow_promote, HEALTHY, [{"weight": FIRST_WEIGHT, "duration": "8s"}, {"weight": 25, "duration": "8s"},
                                        {"weight": 100, "duration": "4s"}], False),
    "rollback": (flow_rollback, FAILING, [{"weight": FIRST_WEIGHT, "duration": "8s"}, {"weight": 25, "duration": "8s"},
                                          {"weight": 100, "duration": "4s"}], False),
    "third": (flow_third, HEALTHY, [{"weight": FIRST_WEIGHT, "duration": "8s"}, {"weight": 25, "duration": "40s"},
                                    {"weight": 100, "duration": "4s"}], True),
    "config": (flow_config, HEALTHY, [{"weight": FIRST_WEIGHT, "duration": "6s"}, {"weight": 25, "duration": "6s"},
                                      {"weight": 100, "duration": "4s"}], False),
}
CONFIG_IN_GIT = {"config": GOOD_CONFIG}  # the flows whose Git holds a ConfigMap (and a SafeRollout with trackConfig)


# -------------------------------------------------------------------------------------------------- fixtures


@dataclass
class Outcome:
    flow: Flow
    seconds: float = 0.0
    error: BaseException | None = None
    trace: str = ""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    """Runs the flows at once (one Argo CD, one operator, one Prometheus), each in a thread of its own."""
    from tests.e2e.chart import install, sa_kubeconfig, uninstall

    acd.ensure_argocd()  # starts the cluster too; a missing or failed build raises
    kubeconfig_path = ensure_cluster()  # a no-op now: returns its kubeconfig
    flows = {name: Flow(name, behaviour, stages, fast=fast, config=CONFIG_IN_GIT.get(name))
             for name, (_, behaviour, stages, fast) in FLOWS.items()}
    namespaces = [f.ns for f in flows.values()]
    install(RELEASE, RELEASE_NAMESPACE, ("--set", "watchNamespaces={" + ",".join(namespaces) + "}"))
    root = tmp_path_factory.mktemp("argocd-gitops")
    sa = sa_kubeconfig(root, RELEASE, RELEASE_NAMESPACE)
    cert, key = write_self_signed(root / "tls", ["127.0.0.1"])
    (root / "git").mkdir()
    tl = Timeline()
    tl.t0 = time.monotonic()
    operator: OperatorProcess | None = None
    out: dict[str, Outcome] = {}
    try:
        with Session(kubeconfig=kubeconfig_path, kubectl=tools_dir() / "kubectl") as session, \
                acd.git_daemon(root / "git") as git_url:
            session.prepare_cluster()
            env = Env(session, sa, root, git_url, tl)
            for f in flows.values():
                f.prepare(env)
            session.prometheus.set_targets([t for f in flows.values() for t in f.scrape_targets()])
            operator = start_operator_with_webhook(session.kube, namespaces, sa, session.prometheus.url, root, cert,
                                                   key, tl, config_name="saferollout-argocd-gitops")

            def run(name: str) -> None:
                o = out[name]
                start = time.monotonic()
                try:
                    FLOWS[name][0](o.flow)
                except BaseException as e:  # reported by the flow's test
                    o.error, o.trace = e, traceback.format_exc()
                finally:
                    o.seconds = time.monotonic() - start
            threads = []
            for name, f in flows.items():
                out[name] = Outcome(f)
                threads.append(threading.Thread(target=run, args=(name,), name=f"flow-{name}"))
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            print(f"\n(operator log and flow directories in {root})")
            yield out
            for f in flows.values():
                f.cleanup()
    finally:
        for f in flows.values():
            f.stop()
        if operator is not None:
            operator.stop()
        kubectl("delete", "mutatingwebhookconfiguration", "saferollout-argocd-gitops", "--ignore-not-found", check=False)
        uninstall(RELEASE, RELEASE_NAMESPACE)


def check(outcomes: dict[str, Outcome], name: str) -> None:
    o = outcomes[name]
    f = o.flow
    print(f"\n== flow {name} ({f.ns}, Application argocd/{f.app}): {o.seconds:.1f} s wall time")
    for line in f.figures:
        print(f"   {line}")
    if f.env is not None:
        report = f.report()
        (f.run_dir / "report.txt").write_text(report + "\n")
        print(f"   (timeline in {f.run_dir / 'report.txt'})")
    if o.error is not None:
        print(report if f.env is not None else "")
        print(o.trace)
        raise o.error


@pytest.mark.timeout(1200)
def test_a_commit_is_released_as_a_canary_and_promoted(outcomes: dict[str, Outcome]) -> None:
    check(outcomes, "promote")


@pytest.mark.timeout(1200)
def test_a_failing_commit_is_refused_and_a_revert_starts_nothing(outcomes: dict[str, Outcome]) -> None:
    check(outcomes, "rollback")


@pytest.mark.timeout(1200)
def test_a_third_commit_abandons_the_second_and_starts_at_stage_one(outcomes: dict[str, Outcome]) -> None:
    check(outcomes, "third")


@pytest.mark.timeout(1200)
def test_a_config_only_commit_is_canaried_refused_reverted_and_promoted(outcomes: dict[str, Outcome]) -> None:
    check(outcomes, "config")
