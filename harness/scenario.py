"""Load a scenario file and run it against the local cluster, with the operator as a subprocess.

A run builds the world the rollout refers to (namespace, target Deployment, Services, Gateway API objects, the DSN
Secret), starts the stand-in processes, the router, Prometheus and PostgreSQL, applies the rollout with the real
kubectl, then polls the SafeRollout four times a second while it injects faults and changes the apps' behaviour,
and finally checks every expectation. A `Session` owns the expensive servers so the e2e suite reuses them.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from harness.demoapp import ROLE_HEADER
from harness.expect import Advance, CaseOutcome, Check, Observed, check_all
from harness.format import (
    TERMINAL_PHASES,
    Behaviour,
    Fault,
    Scenario,
    ScenarioError,
    load,
    merge_patch,
    object_name,
    substitute,
)
from harness.incluster import RELEASE as OPERATOR_RELEASE
from harness.incluster import ClusterOperator, ClusterOperatorRun
from harness.isolation import database_names, isolated, tagged_name
from harness.jobrunner import JobRunner
from harness.kube import (
    REPO,
    SR_PLURAL,
    Kube,
    available,
    default_kubeconfig,
    default_kubectl,
    gateway_class,
    images_of,
    world,
)
from harness.pods import DEMO_PORT, PodApps, PodState, PodWorld, bridge_gateway, build_images, stand_in_reason, tag_images
from harness.router import POLL_SECONDS as ROUTER_POLL
from harness.router import Router, bursts
from harness.services import AppDatabase, Postgres, Prometheus, ScrapeTarget, free_port, stop_process, wait_http
from harness.timeline import Timeline
from harness.traefik import Traefik, traefik_version
from harness.traefik import gateway_class as traefik_gateway_class
from harness.traffic import traffic_sources
from harness.webhook import WebhookReceiver

POLL = 0.25  # SafeRollout polling period
SETTLE = 2.0  # keep observing after the finish, for events and clean-up the operator does right after
TERMINAL_GRACE = 10.0  # a terminal phase other than the expected one, held this long with no fault pending, ends it
API_OUTAGE_LIMIT = 30.0  # seconds without an answer from the API server before a run gives up
RATE_WINDOW = "10s"
QUOTA_NAME = "harness-quota"  # extension `resourceQuota`
BASE_MANIFEST = Path(__file__).with_name("base-manifest.yaml")
GATEWAY_CRD = "httproutes.gateway.networking.k8s.io"


# ---------------------------------------------------------------------------------------------------- operator


@dataclass(frozen=True)
class OperatorLaunch:
    argv: list[str]
    env: dict[str, str]


def operator_launch(namespace: str, kubeconfig: Path, prometheus_url: str, snapshot_dir: Path) -> OperatorLaunch:
    """How the operator is started: the one place to change if its command line or settings change.

    `SAFEROLLOUT_HARNESS_OPERATOR` replaces the command (shell words, `{namespace}` is filled in).
    """
    override = os.environ.get("SAFEROLLOUT_HARNESS_OPERATOR")
    argv = (shlex.split(override.format(namespace=namespace)) if override
            else [sys.executable, "-m", "saferollout", "run", "--namespace", namespace])
    path = os.pathsep.join(p for p in (str(REPO / "operator"), str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    # SAFEROLLOUT_HARNESS_OPERATOR_KUBECONFIG: run the operator as someone else, e.g. the Helm chart's
    # ServiceAccount (a TokenRequest token), so that a missing RBAC rule fails the scenario
    operator_kubeconfig = os.environ.get("SAFEROLLOUT_HARNESS_OPERATOR_KUBECONFIG") or str(kubeconfig)
    env = {**os.environ, "KUBECONFIG": operator_kubeconfig, "SAFEROLLOUT_PROMETHEUS_URL": prometheus_url,
           "SAFEROLLOUT_RATE_WINDOW": RATE_WINDOW, "SAFEROLLOUT_SNAPSHOT_DIR": str(snapshot_dir),
           # its metrics server on loopback and a free port: runs in parallel must not fight over :8080
           "SAFEROLLOUT_METRICS_HOST": "127.0.0.1", "SAFEROLLOUT_METRICS_PORT": str(free_port()),
           "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    return OperatorLaunch(argv, env)


class OperatorProcess:
    """The operator as a subprocess in its own process group, logging to one file across restarts."""

    def __init__(self, launch: OperatorLaunch, log: Path, timeline: Timeline) -> None:
        self.launch, self.log, self.tl = launch, log, timeline
        self.proc: subprocess.Popen[bytes] | None = None
        self._expect_exit = False
        self._reported_exit = False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        with self.log.open("ab") as logf:
            self.proc = subprocess.Popen(self.launch.argv, env=self.launch.env, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, cwd=REPO)
        self._expect_exit = self._reported_exit = False
        self.tl.add("operator", f"started (pid {self.proc.pid}): {shlex.join(self.launch.argv)}")

    def kill(self, sig_name: str) -> None:
        """SIGKILL takes the whole process group, like a pod's container dying; other signals go to the process."""
        if not self.alive or self.proc is None:
            raise RuntimeError("the operator is not running")
        sig = getattr(signal, f"SIG{sig_name}")
        self._expect_exit = True
        if sig == signal.SIGKILL:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        self._expect_exit = True
        stop_process(self.proc, timeout=10, group=True)

    def check_exit(self) -> str | None:
        """A message once if the operator died without being asked to."""
        if self.proc is None or self._reported_exit or self.proc.poll() is None:
            return None
        self._reported_exit = True
        code = self.proc.returncode
        if self._expect_exit:
            self.tl.add("operator", f"exited with code {code}")
            return None
        msg = f"the operator exited on its own with code {code} (see {self.log})"
        self.tl.add("error", msg)
        return msg


# ------------------------------------------------------------------------------------------------------ demo app


class DemoProcess:
    """One `harness.demoapp` process: the pods of the stable or of the canary version."""

    def __init__(self, role: str, service: str, namespace: str, version: str, behaviour: Behaviour, log: Path,
                 error_mode: str = "spread", label_services: tuple[str, ...] = ()) -> None:
        self.role, self.service, self.namespace, self.version = role, service, namespace, version
        self.behaviour = behaviour
        self.error_mode = error_mode
        self.label_services = label_services
        self.log = log
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        b = self.behaviour
        extra = [a for svc in self.label_services for a in ("--label-service", svc)]
        with self.log.open("ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "harness.demoapp", "--port", str(self.port), "--service", self.service,
                 "--namespace", self.namespace, "--version", self.version, "--error-rate", str(b.error_rate),
                 "--p50", str(b.p50_ms), "--p95", str(b.p95_ms), "--error-mode", self.error_mode,
                 "--memory-mb", str(b.memory_mb), *([] if b.healthy else ["--unhealthy"]), *extra],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])})
        # not /healthz: a scenario may start the version unhealthy
        if not wait_http(f"{self.url}/admin/config", 15):
            raise RuntimeError(f"the {self.role} demo app did not start; see {self.log}")

    def configure(self, behaviour: Behaviour) -> None:
        req = urllib.request.Request(f"{self.url}/admin/config", method="POST",
                                     data=json.dumps(behaviour.wire()).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            if r.status != 200:
                raise RuntimeError(f"{self.role} admin answered {r.status}")
        self.behaviour = behaviour

    def stop(self) -> None:
        stop_process(self.proc, timeout=5)


# ------------------------------------------------------------------------------------------------------ results

STAND_INS = "harness router (reads the route's weights, splits the load itself), demo app as local processes"


@dataclass
class Result:
    name: str
    file: str
    passed: bool
    checks: list[Check] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    timeline: list[dict[str, object]] = field(default_factory=list)
    timeline_text: str = ""
    seconds: float = 0.0
    run_dir: str = ""
    router: str = ""
    # Where the parts stood, so a result says what it proves (set by the run: real pods and Traefik, or the
    # stand-ins and why)
    operator_location: str = "local process"
    data_plane: str = STAND_INS

    def report(self) -> str:
        """The timeline, one PASS/FAIL line per expectation, and the verdict."""
        lines = [f"== scenario {self.name} ({self.file})", "-- timeline (seconds since the apply)",
                 self.timeline_text or "(empty)"]
        if self.router:
            lines.append(f"-- router: {self.router}")
        lines.append(f"-- operator: {self.operator_location}; data plane: {self.data_plane}")
        lines.append("-- expectations")
        lines += [c.line() for c in self.checks]
        lines += [f"ERROR {e}" for e in self.errors]
        lines.append(f"== {'PASSED' if self.passed else 'FAILED'} {self.name} in {self.seconds:.1f}s "
                     f"(logs in {self.run_dir})")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.file, "passed": self.passed, "seconds": round(self.seconds, 2),
                "runDir": self.run_dir, "router": self.router, "operator": self.operator_location,
                "dataPlane": self.data_plane, "errors": self.errors,
                "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in self.checks],
                "timeline": self.timeline}


# ------------------------------------------------------------------------------------------------------ session


class Session:
    """Owns Prometheus, PostgreSQL and the cluster connection across scenario runs (the e2e suite uses one).

    Runs may go on in several threads at once (harness.pool): the servers start once, and each thread has its own
    API client.
    """

    def __init__(self, kubeconfig: Path | None = None, kubectl: Path | None = None, *, operator: bool = True,
                 runs_dir: Path | None = None, crds: list[Path] | None = None, pods: bool = False,
                 in_cluster: bool = False) -> None:
        self.kubeconfig = kubeconfig or default_kubeconfig()
        self.kubectl_path = kubectl or default_kubectl()
        self.start_operator = operator
        self.runs_dir = runs_dir or Path(os.environ.get("SAFEROLLOUT_HARNESS_RUNS") or
                                         REPO / ".cache" / "harness" / "runs")
        self.crds = crds if crds is not None else sorted((REPO / "crds").glob("*.yaml"))
        self.root: Path | None = None
        self._local = threading.local()
        self._lock = threading.RLock()
        self._prometheus: Prometheus | None = None
        self._postgres: Postgres | None = None
        self._cluster_checked = False
        # pods mode: the scenarios that can run on real pods and Traefik do (harness.pods.stand_in_reason)
        self.pods = pods
        # in_cluster: one operator for every run, installed by helm from the image (harness.incluster)
        self.in_cluster = in_cluster and operator
        self._images: dict[str, str] | None = None
        self._cluster_operator: ClusterOperator | None = None
        self._cluster_error: str | None = None

    def images(self) -> dict[str, str]:
        """The operator and demo app images in the real node's containerd, built and imported once."""
        with self._lock:
            if self._images is None:
                self._images = build_images(REPO, self.kubeconfig)
            return self._images

    def demo_image(self, names: list[str]) -> None:
        """The demo app image, tagged with these names in the node's containerd."""
        source = self.images()["demoapp"]
        with self._lock:
            tag_images(self.kubeconfig, source, names)

    @property
    def cluster_operator(self) -> ClusterOperator:
        """The helm-installed operator of the session, installed at the first use (its pod Ready)."""
        with self._lock:
            if self._cluster_operator is None:
                assert self.root is not None, "use Session as a context manager"
                self.prepare_cluster()
                if self._cluster_error is not None:  # every later run fails with the first reason
                    raise RuntimeError(f"the in-cluster operator could not be installed: {self._cluster_error}")
                op = ClusterOperator(REPO, self.kube.kubectl, self.kubectl_path.parent / "helm", self.kubeconfig,
                                     bridge_gateway(self.kubeconfig), self.images()["operator"], self.prometheus.port,
                                     self.postgres.port, self.root / "operator-store", RATE_WINDOW)
                try:
                    op.install()
                except Exception as e:
                    self._cluster_error = str(e)
                    op.close()  # what the failed install left
                    raise
                self._cluster_operator = op
            return self._cluster_operator

    @property
    def operator_location(self) -> str:
        if self.in_cluster:
            return (f"in-cluster pod on the real node (helm release {OPERATOR_RELEASE}, image "
                    f"{self.images()['operator']}, restricted Pod Security)")
        return "local process" if self.start_operator else "not started by the harness"

    def __enter__(self) -> Session:
        self.root = Path(tempfile.mkdtemp(prefix="saferollout-harness-"))
        os.chmod(self.root, 0o755)  # postgres (another OS user) must reach its directory inside
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._cluster_operator is not None:
            self._cluster_operator.close()
        if self._prometheus is not None:
            self._prometheus.stop()
        if self._postgres is not None:
            self._postgres.stop()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    @property
    def kube(self) -> Kube:
        kube: Kube | None = getattr(self._local, "kube", None)
        if kube is None:
            kube = self._local.kube = Kube(self.kubeconfig, self.kubectl_path)
        return kube

    @property
    def prometheus(self) -> Prometheus:
        with self._lock:
            if self._prometheus is None:
                assert self.root is not None, "use Session as a context manager"
                self._prometheus = Prometheus(self.root / "prometheus")
            self._prometheus.start()
            return self._prometheus

    @property
    def postgres(self) -> Postgres:
        with self._lock:
            if self._postgres is None:
                assert self.root is not None, "use Session as a context manager"
                self._postgres = Postgres(self.root / "postgres")
            if not self._postgres.running:
                self._postgres.start()
            return self._postgres

    def set_targets(self, targets: list[ScrapeTarget], key: str | None) -> None:
        """Prometheus's targets, without starting it: during a stopPrometheus outage they take effect at the restart."""
        with self._lock:
            prom = self._prometheus
        if prom is None:
            prom = self.prometheus
        prom.set_targets(targets, key=key)

    def stop_prometheus(self) -> None:
        """The `stopPrometheus` fault: the server goes away, its data directory and port stay for the restart."""
        if self._prometheus is not None:
            self._prometheus.stop()

    def prepare_cluster(self) -> None:
        """Apply the project's CRDs once and check the Gateway API is installed; the shared GatewayClass too, so
        concurrent runs do not race to create it."""
        with self._lock:
            if self._cluster_checked:
                return
            self.kube.ensure_crds(self.crds)
            if not self.kube.has_crd(GATEWAY_CRD):
                raise RuntimeError(f"the cluster has no {GATEWAY_CRD} CRD: the Gateway API CRDs must be installed "
                                   "(cluster/up.sh does it)")
            self.kube.apply([gateway_class(), *([traefik_gateway_class()] if self.pods else [])])
            self._cluster_checked = True

    def run(self, scenario: str | Path | Scenario, *, isolate: str | None = None) -> Result:
        """Run one scenario; invalid files and harness failures come back as a failed Result, never raise.

        `isolate` (a tag such as `s3`) renames what the run makes so that it may run beside others
        (harness.isolation): namespace `<ns>-s3`, database and role `app_s3`, its own Prometheus jobs.
        """
        started = time.monotonic()
        try:
            s = scenario if isinstance(scenario, Scenario) else load(scenario)
        except (ScenarioError, OSError) as e:
            return Result(Path(str(scenario)).stem, str(scenario), False, errors=[f"invalid scenario: {e}"])
        if isolate is not None:
            s = isolated(s, isolate)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        n = 1
        while True:
            run_dir = self.runs_dir / (f"{s.name}-{stamp}" + (f"-{n}" if n > 1 else ""))
            try:
                run_dir.mkdir()
                break
            except FileExistsError:
                n += 1
        runner: _CasesRun | _RolloutRun = (_CasesRun(self, s, run_dir, isolate) if s.cases
                                           else _RolloutRun(self, s, run_dir, isolate))
        result = runner.execute()
        result.seconds = time.monotonic() - started
        (run_dir / "result.json").write_text(json.dumps(result.to_json(), indent=2))
        (run_dir / "report.txt").write_text(result.report() + "\n")
        return result


# ---------------------------------------------------------------------------------------------------- base run


class _BaseRun:
    def __init__(self, session: Session, s: Scenario, run_dir: Path, isolate: str | None = None) -> None:
        self.sess, self.s, self.run_dir, self.isolate = session, s, run_dir, isolate
        self.tl = Timeline()
        self.errors: list[str] = []
        self.operator: OperatorProcess | ClusterOperatorRun | None = None
        if session.in_cluster:  # the operator pod's store: a hostPath volume every run shares (by namespace/name)
            self.store = session.cluster_operator.store
        else:
            self.store = run_dir / "snapshots"
            self.store.mkdir(exist_ok=True)

    @property
    def kube(self) -> Kube:
        return self.sess.kube

    def error(self, msg: str) -> None:
        self.errors.append(msg)
        self.tl.add("error", msg)

    def start_operator(self, ns: str) -> None:
        if not self.sess.start_operator:
            self.tl.add("operator", "not started by the harness (--no-operator)")
            return
        if self.sess.in_cluster:
            self.operator = ClusterOperatorRun(self.sess.cluster_operator, self.run_dir / "operator.log", self.tl.add)
            self.operator.start()
            return
        launch = operator_launch(ns, self.sess.kubeconfig, self.sess.prometheus.url, self.store)
        self.operator = OperatorProcess(launch, self.run_dir / "operator.log", self.tl)
        self.operator.start()

    def result(self, checks: list[Check], router: str = "") -> Result:
        passed = bool(checks) and all(c.passed for c in checks) and not self.errors
        return Result(self.s.name, str(self.s.path), passed, checks, list(self.errors), self.tl.as_json(),
                      self.tl.render(), 0.0, str(self.run_dir), router, self.sess.operator_location)

    def operator_paths(self, path: str) -> list[Path]:
        """Where a file the operator might write at `path` would be: here, and for the in-cluster operator under
        /tmp its pods' /tmp volume (the only writable place of its filesystem besides the store)."""
        out = [Path(path)]
        if self.sess.in_cluster and path.startswith("/tmp/"):
            out += [d / path[len("/tmp/"):] for d in self.sess.cluster_operator.tmp_dirs()]
        return out


# ------------------------------------------------------------------------------------------------- bad manifests


class _CasesRun(_BaseRun):
    """Each case's patch on the base manifest must be refused by `kubectl apply`, naming the field, creating nothing."""

    def execute(self) -> Result:
        ns = f"harness-{self.s.name}" if self.isolate is None else tagged_name(f"harness-{self.s.name}", self.isolate)
        checks: list[Check] = []
        try:
            self.sess.prepare_cluster()
            self.kube.delete_namespace(ns)
            self.kube.kubectl("create", "namespace", ns)
            self.start_operator(ns)
            base = yaml.safe_load(BASE_MANIFEST.read_text())
            base["metadata"]["namespace"] = ns
            name = str(base["metadata"]["name"])
            self.tl.t0 = time.monotonic()
            dry = self.kube.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(base), check=False)
            if dry.returncode != 0:
                raise RuntimeError(f"the base manifest {BASE_MANIFEST.name} is itself refused: {dry.stderr.strip()}")
            self.tl.add("harness", "base manifest accepted (server dry run)")
            outcomes: list[CaseOutcome] = []
            for i, case in enumerate(self.s.cases):
                manifest = merge_patch(base, case.patch)
                r = self.kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest), check=False)
                message = (r.stderr + r.stdout).strip()
                created = self.kube.get_rollout(ns, name) is not None
                if created:
                    self.kube.kubectl("delete", SR_PLURAL, name, "-n", ns, "--wait=true", check=False)
                outcome = CaseOutcome(i, case.why, case.patch, r.returncode, message, created)
                outcomes.append(outcome)
                self.tl.add("apply", f"{outcome.label}: {'refused' if outcome.refused else 'ACCEPTED'}: {message}")
            alive = None
            if self.operator is not None:
                time.sleep(2)
                alive = self.operator.alive and self.operator.check_exit() is None
            obs = Observed(finished_in=time.monotonic() - self.tl.t0, cases=outcomes)
            checks = check_all(self.s.expect, obs, ns, name)  # refusedAtApply, messageNamesField, withinSeconds
            if self.operator is not None:
                checks.append(Check("operator survived the bad manifests", bool(alive),
                                    "still running" if alive else f"exited; see {self.operator.log}"))
        except Exception as e:  # a harness failure is a failed result with the reason, not a traceback
            self.error(f"{type(e).__name__}: {e}")
        finally:
            if self.operator is not None:
                self.operator.stop()
            try:
                self.kube.delete_namespace(ns)
            except Exception as e:
                self.error(f"clean-up: {e}")
        return self.result(checks)


# ------------------------------------------------------------------------------------------------- rollout runs


class _RolloutRun(_BaseRun):
    def __init__(self, session: Session, s: Scenario, run_dir: Path, isolate: str | None = None) -> None:
        super().__init__(session, s, run_dir, isolate)
        self.ns, self.name, self.target = s.namespace, s.rollout_name, s.target
        self.refs = s.traffic
        self.obs = Observed(store=self.store)
        self.stable: DemoProcess | None = None
        self.canary: DemoProcess | None = None
        # pods mode: the demo app's real pods and Traefik; `stand_in` says why a run keeps the stand-ins instead
        self.stand_in = stand_in_reason(s) if session.pods else "the session runs the stand-ins (pods mode off)"
        self.traefik: Traefik | None = None
        self.pod_apps: PodApps | None = None
        self.scrape_jobs: list[str] = []
        self.router: Router | None = None
        self.preview: Router | None = None  # blueGreen: the test load through the preview Service
        self.webhook: WebhookReceiver | None = None
        self.webhook_url = ""
        self.process_urls: dict[str, str] = {}  # @canaryUrl@, @stableUrl@: where the operator reaches the processes
        self.pg: Postgres | None = None
        self.db: AppDatabase | None = None  # the scenario's role and database on self.pg
        self.password: str | None = None
        # what the last poll saw
        self.last: dict[str, Any] = {"phase": None, "stage": None, "weight": None, "images": None,
                                     "canary": None, "conditions": {}, "history": 0}
        self.last_poll = 0.0
        self.stage_started: dict[int, float] = {}
        self.phase_started: dict[str, float] = {}
        self.fault_done: dict[int, float] = {}
        self.promoted_now = False
        self.migrated = False
        # spec.migration's Job pods that ask for the harness's runner are run here (harness/jobrunner.py)
        self.jobs = JobRunner(self.kube, self.ns, lambda text: self.tl.add("migration", text))
        self.poll_failing_since: float | None = None
        self.target_generation: int | None = None

    @property
    def t0(self) -> float:
        assert self.tl.t0 is not None
        return self.tl.t0

    # --------------------------------------------------------------------------------------------- flow
    def execute(self) -> Result:
        checks: list[Check] = []
        try:
            self.setup()
            self.apply()
            self.observe()
            self.collect()
            checks = check_all(self.s.expect, self.obs, self.ns, self.name)
            pending = [f for f in self.s.faults if f.index not in self.fault_done]
            if self.s.faults:
                checks.append(Check("faults injected", not pending,
                                    f"never ran: {[f.describe() for f in pending]}" if pending
                                    else f"all {len(self.s.faults)} ran"))
        except Exception as e:
            self.error(f"{type(e).__name__}: {e}")
        finally:
            self.teardown()
        summary = self.router.summary() if self.router else ""
        if self.preview is not None:
            summary += f"\n-- preview load: {self.preview.summary()}"
        result = self.result(checks, summary)
        result.data_plane = (f"{self.data_plane()}, demo app in real pods on the real node" if self.stand_in is None
                             else f"{STAND_INS} ({self.stand_in})")
        return result

    def setup(self) -> None:
        s, tl = self.s, self.tl
        self.sess.prepare_cluster()
        if self.kube.namespace_exists(self.ns):
            tl.add("harness", f"namespace {self.ns} left from an earlier run: deleting it")
            self.kube.delete_rollouts(self.ns, timeout=5)
            self.kube.delete_namespace(self.ns)
        dsn = None
        if s.needs_database:
            self.pg = self.sess.postgres
            self.password = (s.database.password if s.database and s.database.password
                             else "pw-" + secrets.token_hex(12))
            self.obs.password = self.password
            user, dbname = database_names(self.isolate) if self.isolate else (Postgres.APP_USER, Postgres.APP_DB)
            self.db = self.pg.reset_database(self.password, user, dbname)
            where = self._database_address()
            dsn = self.db.dsn(*where)
            tl.add("database", f"fresh database {dbname} (role {user}) on 127.0.0.1:{self.pg.port}")
            if s.database and s.database.seed:
                self.db.run(s.database.seed)
                tl.add("database", "seed run")
            if "database" in s.expect:
                self.obs.checksum_before = self.db.checksum()
                tl.add("database", f"checksum before the rollout {self.obs.checksum_before[:12]}")
            secret_value = s.database.render_secret(self.db.facts(*where)) if s.database else None
            if secret_value is not None:  # extension: database.secretValue replaces the DSN in the Secret
                dsn = secret_value
                tl.add("database", "the Secret holds the scenario's secretValue, not the harness's DSN")
        self._clear_paths()
        prom = self.sess.prometheus
        pods: PodWorld | None = None
        if self.stand_in is None:
            self.sess.demo_image(sorted({*s.initial_target_images().values(), *s.template_images.values()}))
            port = 0
            if self.refs.kind == "gatewayAPI":  # the others' traffic goes through their Services (kube-proxy)
                self.traefik = Traefik(self.run_dir / "traefik", self.sess.kubeconfig, namespaces=[self.ns])
                self.traefik.start()
                port = self.traefik.port
            pods = PodWorld(bridge_gateway(self.sess.kubeconfig), port)
            self.pod_apps = PodApps(self.kube.new_api(), self.ns, self.target, self.refs.stable_service,
                                    self.refs.canary_service,
                                    s.template_images, self._pod_targets, lambda text: self.tl.add("app", text))
            tl.add("harness", f"real pods and {self.data_plane()}" + (f" on {self.traefik.url} (log "
                                                                    f"{self.traefik.log})" if self.traefik else ""))
        else:
            both = (self.refs.stable_service, self.refs.canary_service) if self.refs.kind == "blueGreen" else ()
            self.stable = DemoProcess("stable", self.refs.stable_service, self.ns, "stable", s.stable.base,
                                      self.run_dir / "stable.log", s.stable.error_mode, both)
            self.canary = DemoProcess("canary", self.refs.canary_service, self.ns, "canary", s.canary.base,
                                      self.run_dir / "canary.log", s.canary.error_mode, both)
            self.stable.start()
            self.canary.start()
            for token, proc in (("stableUrl", self.stable), ("canaryUrl", self.canary)):
                self.process_urls[token] = (f"http://{self.sess.cluster_operator.forward(proc.port)}"
                                            if self.sess.in_cluster and token in s.tokens else proc.url)
            tl.add("app", f"stable on :{self.stable.port} ({s.stable.base.describe()}), "
                          f"canary on :{self.canary.port} ({s.canary.base.describe()})")
            self.scrape_jobs = [f"{self.ns}-stable", f"{self.ns}-canary"]
            prom.set_targets([ScrapeTarget(self.scrape_jobs[0], self.stable.port, self.refs.stable_service, self.ns),
                              ScrapeTarget(self.scrape_jobs[1], self.canary.port, self.refs.canary_service, self.ns)],
                             key=self.isolate)
        if "webhookUrl" in s.tokens:
            self.webhook = WebhookReceiver()
            self.webhook.start()
            self.webhook_url = self.webhook.url
            if self.sess.in_cluster:  # the pod reaches it through a forwarder on the bridge
                self.webhook_url = f"http://{self.sess.cluster_operator.forward(self.webhook.port)}"
            tl.add("harness", f"webhook receiver on {self.webhook.url}"
                   + (f", reached by the operator at {self.webhook_url}" if self.webhook_url != self.webhook.url else ""))
        secret = (*s.secret_ref, dsn) if s.secret_ref and dsn else None
        docs = world(self.ns, self.target, s.initial_target_images(), s.target_replicas, self.refs, secret, pods)
        self.kube.apply(docs)
        tl.add("harness", f"created namespace {self.ns}: Deployment {self.target} {s.initial_target_images()}, "
                          f"Services {self.refs.stable_service} and {self.refs.canary_service}"
                          + (f", {self.refs.describe}" if self.refs.obj else "")
                          + (f", Secret {secret[0]}" if secret else ""))
        deadline = time.monotonic() + 90
        while not available(self.kube.get_target(self.ns, self.target, self.refs)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the target Deployment {self.target} did not become available in 90s"
                                   + (f" (its pods: {self.pod_apps.phases()})" if self.pod_apps else ""))
            if self.pod_apps is not None:
                self._behaviours(time.monotonic())  # a pod is Ready once it has been told its behaviour
            time.sleep(0.5)
        tl.add("harness", f"target Deployment {self.target} available")
        if self.refs.kind == "partition":  # extension: the revision the StatefulSet's pods start on
            while not ((self.kube.get_statefulset(self.ns, self.target) or {}).get("status") or {}).get(
                    "currentRevision"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"StatefulSet {self.target} has no currentRevision after 90s")
                time.sleep(0.5)
            sts = self.kube.get_statefulset(self.ns, self.target) or {}
            self.obs.initial_revision = (sts.get("status") or {}).get("currentRevision")
            tl.add("harness", f"StatefulSet {self.target}: pods on revision {self.obs.initial_revision}")
        if s.resource_quota:
            self._quota(s.resource_quota)
        if s.objects:  # extension `objects`: before the rollout, which may name them
            self._apply_objects(list(s.objects))
        upstreams = self._upstreams()
        if "main" in upstreams:  # (blue-green's preview Service selects no pod before the rollout)
            self._wait_data_plane(upstreams["main"][0])
        sources = traffic_sources(self.refs, self.ns, self.target, self.kube.new_api())
        ports = {"stable": self.stable.port, "canary": self.canary.port} if self.stable and self.canary else {}
        main = sources["main"]
        up, label = upstreams.get("main", (None, None))
        self.router = Router(main.read, main.backends, ports, s.rps, s.within_seconds + 120,
                             on_change=lambda text: self.tl.add("router", text), what=main.what,
                             canary_share=s.canary_share, tagged=s.tagged, users=s.users, upstream=up,
                             upstream_label=label)
        self.router.start()
        if not self.router.first_read.wait(15):
            raise RuntimeError(f"the router could not read {self.refs.describe}: {self.router.last_error}")
        if "preview" in sources:
            pv = sources["preview"]
            up, label = upstreams.get("preview", (None, None))
            self.preview = Router(pv.read, pv.backends, ports, s.preview_rps, s.within_seconds + 120,
                                  on_change=lambda text: self.tl.add("preview", text), what=pv.what, upstream=up,
                                  upstream_label=label)
            self.preview.start()
        self._warm_up(prom)
        self.start_operator(self.ns)

    def _quota(self, hard: dict[str, str]) -> None:
        """Extension `resourceQuota`: a ResourceQuota in the namespace, made once the target's pods run. The quota
        admission refuses every pod while the quota's usage is not yet counted, so the rollout is applied only once
        it is (`pods: 1` beside a target of one replica leaves no room for the canary's pods)."""
        self.kube.apply([{"apiVersion": "v1", "kind": "ResourceQuota",
                          "metadata": {"name": QUOTA_NAME, "namespace": self.ns}, "spec": {"hard": hard}}])
        deadline = time.monotonic() + 30
        while True:
            quota = self.kube.get_resource_quota(self.ns, QUOTA_NAME) or {}
            used = (quota.get("status") or {}).get("used")
            if used is not None and set(hard) <= set(used):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"ResourceQuota {QUOTA_NAME}: its usage was not counted within 30s")
            time.sleep(0.25)
        self.tl.add("harness", f"ResourceQuota {QUOTA_NAME}: hard {hard}, used {used}")

    def _apply_objects(self, objs: list[dict[str, Any]]) -> None:
        """kubectl apply -n <ns>: a namespaced object lands in the scenario's namespace, a cluster-scoped one in none."""
        text = yaml.safe_dump_all(objs, sort_keys=False)
        r = self.kube.kubectl("apply", "-n", self.ns, "-f", "-", input=text, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"kubectl apply of {', '.join(object_name(o) for o in objs)} was refused: "
                               f"{r.stderr.strip()}")
        self.tl.add("harness", r.stdout.strip().replace("\n", "; "))

    def _delete_objects(self) -> None:
        """What `objects` and applyObject made: the namespace takes its own along, not the cluster-scoped ones."""
        objs = self.s.made_objects
        if objs:
            self.kube.kubectl("delete", "-n", self.ns, "--ignore-not-found", "--wait=false", "-f", "-",
                              input=yaml.safe_dump_all(objs, sort_keys=False), check=False)

    def _clear_paths(self) -> None:
        """`expect.pathAbsent`: a file left by an earlier run must neither fail nor pass this one."""
        paths = [str(p) for path in self.s.expect.get("pathAbsent", ()) for p in self.operator_paths(path)]
        for path in clear_paths(paths):
            self.tl.add("harness", f"removed {path}, left from an earlier run (pathAbsent)")

    def data_plane(self) -> str:
        if self.traefik is not None:
            return f"Traefik {traefik_version()} (Gateway API provider)"
        return "the Services' ClusterIPs (kube-proxy's iptables rules)"

    def _upstreams(self) -> dict[str, tuple[tuple[str, int], str | None]]:
        """Where each stream's requests go in pods mode, and the Service they are labelled with (None: the pod's
        own): Traefik; or for the other routers the Service's ClusterIP, which kube-proxy spreads over its ready
        pods (replicas: the stable Service before both versions; blue-green: active, and preview for the test
        load, each labelled with its Service as blue-green's analysis reads it)."""
        if self.pod_apps is None:
            return {}
        if self.traefik is not None:
            return {"main": (("127.0.0.1", self.traefik.port), None)}

        def cluster_ip(name: str) -> tuple[str, int]:
            svc = self.kube.get_service(self.ns, name) or {}
            ip = (svc.get("spec") or {}).get("clusterIP")
            if not ip or ip == "None":
                raise RuntimeError(f"Service {name} has no ClusterIP")
            return str(ip), 80
        if self.refs.kind == "blueGreen":
            return {"main": (cluster_ip(self.refs.stable_service), self.refs.stable_service),
                    "preview": (cluster_ip(self.refs.canary_service), self.refs.canary_service)}
        return {"main": (cluster_ip(self.refs.stable_service), None)}

    def _wait_data_plane(self, where: tuple[str, int], timeout: float = 30) -> None:
        """Until a request there reaches a pod (Traefik loads the route, then the endpoints, ~1-2 s; kube-proxy
        its rules), so the load starts on a data plane that serves."""
        deadline = time.monotonic() + timeout
        url = f"http://{where[0]}:{where[1]}/"
        last = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.headers.get(ROLE_HEADER):
                        self.tl.add("harness", f"{url} reaches a pod")
                        return
                    last = f"answered {r.status} without a pod"
            except urllib.error.HTTPError as e:
                last = f"answered {e.code}" + ("" if e.headers.get(ROLE_HEADER) else " itself")
                if e.headers.get(ROLE_HEADER):
                    self.tl.add("harness", f"{url} reaches a pod")
                    return
            except OSError as e:
                last = str(e)
            time.sleep(0.2)
        raise RuntimeError(f"{url} ({self.data_plane()}) reaches no pod after {timeout:g}s (last: {last})")

    def _database_address(self) -> tuple[str, int | None]:
        """Where the operator reaches PostgreSQL: loopback, or the in-cluster operator's forwarder."""
        if self.sess.in_cluster:
            fwd = self.sess.cluster_operator.pg_forward
            return fwd.listen_host, fwd.port
        return "127.0.0.1", None

    def _pod_targets(self, pods: list[PodState]) -> None:
        """Prometheus scrapes each configured pod at its address, labelled with the Service it is behind."""
        assert self.pod_apps is not None
        targets = [ScrapeTarget(f"{self.ns}-{p.name}", DEMO_PORT, self.pod_apps.service(p), self.ns, p.ip)
                   for p in pods]
        self.sess.set_targets(targets, self.isolate)
        self.scrape_jobs = [t.job for t in targets]
        self.tl.add("harness", f"Prometheus scrapes {', '.join(f'{t.host} ({t.service})' for t in targets) or 'no pod'}")

    def _warm_up(self, prom: Prometheus) -> None:
        """Wait until Prometheus has the stable version's request rate, so a stableHealthy gate has data."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            up = prom.targets_up()
            if self.scrape_jobs and all(up.get(job) for job in self.scrape_jobs):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"Prometheus does not scrape the demo apps: {prom.targets_up()}")
        if self.s.rps <= 0:
            return
        q = (f'sum(rate(http_requests_total{{service="{self.refs.stable_service}",namespace="{self.ns}"}}'
             f"[{RATE_WINDOW}])) > 0")
        while time.monotonic() < deadline:
            if prom.query(q):
                self.tl.add("harness", "Prometheus sees the stable traffic")
                time.sleep(2)
                return
            time.sleep(0.5)
        raise RuntimeError("Prometheus has no request rate for the stable version after 30s")

    def tokens(self) -> dict[str, str]:
        """The values of the manifest's substitution tokens (docs/harness.md); pods mode has no process URLs."""
        out = dict(self.process_urls)
        if self.webhook is not None:
            out["webhookUrl"] = self.webhook_url
        return out

    def apply(self) -> None:
        assert self.s.rollout is not None
        doc = substitute(json.loads(json.dumps(self.s.rollout)), self.tokens())
        doc["metadata"]["namespace"] = self.ns
        self.tl.t0 = time.monotonic()
        r = self.kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc, sort_keys=False), check=False)
        if r.returncode != 0:
            raise RuntimeError(f"kubectl apply of the rollout was refused: {r.stderr.strip()}")
        self.tl.add("apply", r.stdout.strip())
        self.last_poll = time.monotonic()

    # ------------------------------------------------------------------------------------------ observation
    def observe(self) -> None:
        """The polling loop: record, apply behaviour changes, inject faults, until the finish or the deadline."""
        expected = self.s.expect.get("phase")
        deadline = self.t0 + self.s.within_seconds
        finish_at: float | None = None
        other_terminal_since: float | None = None
        while True:
            now = time.monotonic()
            phase = self._poll(now)
            self._behaviours(now)
            self._faults(now)
            if self.operator is not None and (msg := self.operator.check_exit()):
                self.errors.append(msg)
            if finish_at is None:
                if phase in TERMINAL_PHASES and (expected is None or phase == expected):
                    finish_at = now
                    self.obs.finished_in = now - self.t0
                    self.tl.add("harness", f"finished: phase {phase}")
                elif phase in TERMINAL_PHASES and len(self.fault_done) == len(self.s.faults):
                    other_terminal_since = other_terminal_since or now
                    if now - other_terminal_since >= TERMINAL_GRACE:
                        self.tl.add("harness", f"stopped: phase {phase} held {TERMINAL_GRACE:g}s, expected {expected}")
                        break
                else:
                    other_terminal_since = None
            elif now >= finish_at + SETTLE:
                break
            if finish_at is None and now >= deadline:
                if expected is not None and expected not in TERMINAL_PHASES and phase == expected:
                    self.obs.finished_in = self.phase_started.get(expected, now) - self.t0
                self.tl.add("harness", f"deadline of {self.s.within_seconds:g}s reached in phase {phase}")
                break
            self.last_poll = now
            time.sleep(max(0.0, POLL - (time.monotonic() - now)))

    def _advance(self, now: float, what: str) -> None:
        self.obs.advances.append(Advance(self.last_poll, now, what))

    def _poll(self, now: float) -> str | None:
        tl, last = self.tl, self.last
        try:
            ro = self.kube.get_rollout(self.ns, self.name)
            target = self.kube.get_target(self.ns, self.target, self.refs)
            canary = self.kube.get_deployment(self.ns, f"{self.target}-canary")
        except Exception as e:  # the API server may blink; the next poll tries again, a long outage ends the run
            if self.poll_failing_since is None:
                self.poll_failing_since = now
                tl.add("harness", f"polling the API server fails: {e}")
            elif now - self.poll_failing_since > API_OUTAGE_LIMIT:
                raise RuntimeError(f"the API server has not answered for {API_OUTAGE_LIMIT:g}s: {e}") from e
            return last["phase"]  # type: ignore[no-any-return]
        if self.poll_failing_since is not None:
            tl.add("harness", f"polling works again after {now - self.poll_failing_since:.1f}s")
            self.poll_failing_since = None
        status = (ro or {}).get("status") or {}
        phase, stage, weight = status.get("phase"), status.get("stage"), status.get("weight")
        if phase != last["phase"]:
            msg = status.get("message")
            tl.add("phase", f"{last['phase']} -> {phase}" + (f": {msg}" if msg else ""), now)
            if phase is not None:
                self.phase_started.setdefault(phase, now)
            if phase in ("Promoting", "Succeeded") and last["phase"] not in ("Promoting", "Succeeded"):
                self._advance(now, f"phase {phase}")
            last["phase"] = phase
        if stage != last["stage"]:
            tl.add("stage", f"stage {last['stage']} -> {stage}", now)
            if isinstance(stage, int):
                self.stage_started.setdefault(stage, now)
                if isinstance(last["stage"], int) and stage > last["stage"]:
                    self._advance(now, f"stage {last['stage']} -> {stage}")
            last["stage"] = stage
        if weight != last["weight"]:
            tl.add("weight", f"status.weight {last['weight']} -> {weight}", now)
            if isinstance(weight, int) and isinstance(last["weight"], int) and weight > last["weight"]:
                self._advance(now, f"status.weight {last['weight']} -> {weight}")
            last["weight"] = weight
        conds: dict[str, tuple[str, str]] = {}
        for c in status.get("conditions") or []:
            if isinstance(c, dict):
                ctype, cstatus, reason = str(c.get("type")), str(c.get("status")), str(c.get("reason"))
                conds[ctype] = (cstatus, reason)
                self.obs.conditions_seen.add((ctype, reason, cstatus))
                if last["conditions"].get(ctype) != (cstatus, reason):
                    tl.add("condition", f"{ctype}={cstatus} {reason}: {c.get('message', '')}", now)
        last["conditions"] = conds
        history = status.get("history") or []
        for h in history[last["history"]:]:
            if isinstance(h, dict):
                tl.add("history", f"{h.get('action')} at stage {h.get('stage')} weight {h.get('weight')} "
                                  f"{h.get('metric') or ''}: {h.get('message') or ''}", now)
        last["history"] = len(history)
        migration = status.get("migration") or {}
        if migration.get("state") != last.get("migration"):
            if migration:
                tl.add("migration", f"Job {migration.get('job')} {migration.get('state')}", now)
            last["migration"] = migration.get("state")
        if migration.get("state") in ("Creating", "Running"):
            self.jobs.poll()
        self._target_unchanged(target, now)
        images = images_of(target)
        if images != last["images"]:
            if last["images"] is not None:
                tl.add("target", f"target images {images}", now)
            last["images"] = images
        tmpl = self.s.template_images
        promoted = bool(images) and all(images.get(n) == i for n, i in tmpl.items())
        if self.refs.kind == "partition":  # a StatefulSet holds the new template from the start: promoted once
            st = (target or {}).get("status") or {}  # every pod runs it (extension)
            promoted = promoted and bool(st.get("updateRevision")) and st.get("currentRevision") == st.get(
                "updateRevision") and int(st.get("updatedReplicas") or 0) >= self.s.target_replicas and int(
                st.get("observedGeneration") or 0) >= int(((target or {}).get("metadata") or {}).get("generation") or 0)
            self._partition(target, now)
        if promoted and not self.promoted_now:
            self._advance(now, "target got the new template")
            tl.add("app", "target runs the new template: the stable process now behaves as the canary", now)
        elif self.promoted_now and not promoted:
            tl.add("app", "target images reverted: the stable process behaves as the stable version again", now)
        self.promoted_now = promoted
        self.obs.promoted_seen |= promoted
        canary_state = ("available" if available(canary) else "present") if canary and not (
            canary.get("metadata") or {}).get("deletionTimestamp") else "absent"
        if canary_state != last["canary"]:
            if last["canary"] is not None or canary_state != "absent":
                tl.add("canary", f"canary Deployment {canary_state}" +
                       (f" {images_of(canary)}" if canary_state != "absent" else ""), now)
            last["canary"] = canary_state
        if canary_state == "available" and not self.migrated:
            self.migrated = True
            if self.s.database and self.s.database.migration and self.db is not None:
                try:
                    self.db.run(self.s.database.migration)
                    tl.add("database", "the canary ran its migration")
                except Exception as e:
                    self.error(f"migration failed: {e}")
        return phase if isinstance(phase, str) else None

    def _partition(self, target: dict[str, Any] | None, now: float) -> None:
        """A StatefulSet target: its partition and its pods' revisions in the timeline, as they change."""
        if target is None:
            return
        st = target.get("status") or {}
        part = ((((target.get("spec") or {}).get("updateStrategy") or {}).get("rollingUpdate") or {})
                .get("partition"))
        seen = (part, st.get("updatedReplicas"), st.get("currentRevision"), st.get("updateRevision"))
        if seen != self.last.get("partition"):
            self.last["partition"] = seen
            self.tl.add("target", f"StatefulSet partition {part}, {st.get('updatedReplicas')} pod(s) on update "
                                  f"revision {st.get('updateRevision')}, current {st.get('currentRevision')}", now)
            self.obs.partitions_seen.append(int(part or 0))

    def _target_unchanged(self, target: dict[str, Any] | None, now: float) -> None:
        """Record any change of the target's spec (its generation) and any poll with fewer pods available."""
        if target is None:
            if not self.obs.target_changes or self.obs.target_changes[-1] != "the target Deployment is gone":
                self.obs.target_changes.append("the target Deployment is gone")
            return
        gen = (target.get("metadata") or {}).get("generation")
        if self.target_generation is None:
            self.target_generation = gen
        elif gen != self.target_generation:
            self.obs.target_changes.append(f"generation {self.target_generation} -> {gen}")
            self.tl.add("target", f"the target Deployment's spec changed (generation {gen})", now)
            self.target_generation = gen
        up = int((target.get("status") or {}).get("availableReplicas") or 0)
        if up < self.s.target_replicas:
            text = f"{up} of {self.s.target_replicas} replicas available"
            if not self.obs.target_changes or self.obs.target_changes[-1] != text:
                self.obs.target_changes.append(text)
                self.tl.add("target", f"the target has {text}", now)

    def _behaviours(self, now: float) -> None:
        """Level-triggered `when` rules, and the promoted target running the canary's code."""
        weight = self.router.canary_weight if self.router is not None else 0
        elapsed = now - self.tl.t0 if self.tl.t0 is not None else None
        if self.pod_apps is not None:  # each pod: the behaviour of the code it runs (the new code at 100%
            def behaviour(p: PodState) -> Behaviour:  # once the target runs it)
                if p.role == "canary":
                    return self.s.canary.effective(weight, elapsed)
                return self.s.canary.effective(100, elapsed) if p.new_code else self.s.stable.effective(weight, elapsed)
            for msg in self.pod_apps.poll(behaviour):
                self.error(msg)
            return
        assert self.stable is not None and self.canary is not None
        canary_b = self.s.canary.effective(weight, elapsed)
        stable_b = self.s.canary.effective(100, elapsed) if self.promoted_now else self.s.stable.effective(weight,
                                                                                                          elapsed)
        for proc, b in ((self.stable, stable_b), (self.canary, canary_b)):
            if b != proc.behaviour:
                try:
                    proc.configure(b)
                    self.tl.add("app", f"{proc.role} now {b.describe()} (canary weight {weight}%)")
                except Exception as e:
                    self.error(f"could not reconfigure the {proc.role} app: {e}")

    # --------------------------------------------------------------------------------------------- faults
    def _anchor(self, f: Fault) -> float | None:
        at = f.at
        if at.anchor == "apply":
            return self.t0
        if at.anchor == "stage":
            return self.stage_started.get(at.stage or 0)
        if at.anchor == "phase":
            return self.phase_started.get(at.phase or "")
        return self.fault_done.get(at.fault if at.fault is not None else -1)

    def _faults(self, now: float) -> None:
        for f in self.s.faults:
            if f.index in self.fault_done:
                continue
            anchor = self._anchor(f)
            if anchor is None or now < anchor + f.at.seconds:
                continue
            try:
                self._inject(f)
                self.tl.add("fault", f"{f.describe()} ({f.at.describe()})")
            except Exception as e:
                self.error(f"{f.describe()} failed: {e}")
            self.fault_done[f.index] = time.monotonic()

    def _outage(self, kind: str, down: bool, at: float) -> None:
        downs, ups = self.obs.outages.setdefault(kind, ([], []))
        (downs if down else ups).append(at)

    def _inject(self, f: Fault) -> None:
        if f.do == "stopPrometheus":
            self.sess.stop_prometheus()
            self._outage("prometheus", True, time.monotonic())
        elif f.do == "startPrometheus":
            self._outage("prometheus", False, time.monotonic())
            self.sess.prometheus.start()
        elif f.do == "killOperator":
            if self.operator is None:
                raise RuntimeError("the harness did not start the operator")
            self.operator.kill(f.signal)
            self._outage("operator", True, time.monotonic())
        elif f.do == "restartOperator":
            if self.operator is None:
                raise RuntimeError("the harness did not start the operator")
            self._outage("operator", False, time.monotonic())
            self.operator.restart()
        elif f.do == "patch":
            self.kube.kubectl("patch", SR_PLURAL, self.name, "-n", self.ns, "--type=merge", "-p",
                              json.dumps(f.patch))
        elif f.do == "sql":
            assert self.db is not None and f.sql is not None
            self.db.run(f.sql)
        elif f.do == "stopDatabase":
            assert self.pg is not None
            self.pg.stop()
            self._outage("database", True, time.monotonic())
        elif f.do == "startDatabase":
            assert self.pg is not None
            self._outage("database", False, time.monotonic())
            self.pg.start()
        elif f.do == "applyObject":
            assert f.obj is not None
            self._apply_objects([f.obj])
        elif f.do == "patchObject":
            assert f.kind is not None and f.name is not None
            self.kube.kubectl("patch", f.kind, f.name, "-n", self.ns, "--type=merge", "-p", json.dumps(f.patch))
        elif f.do == "deleteObject":
            assert f.kind is not None and f.name is not None
            self.kube.kubectl("delete", f.kind, f.name, "-n", self.ns, "--ignore-not-found")
        elif f.do == "corruptSnapshot":
            self.tl.add("fault", f"corrupted {corrupt_latest_snapshot(self.store, self.ns, self.name)}")
        else:  # format.FAULT_ACTIONS and this list must agree
            raise RuntimeError(f"unknown fault {f.do}")

    # ------------------------------------------------------------------------------------------- the end
    def collect(self) -> None:
        obs = self.obs
        if self.webhook is not None and ("notifications" in self.s.expect
                                         or "notifications" in self.s.expect.get("secretAbsentFrom", [])):
            self.webhook.wait_quiet(quiet=2.0, limit=10.0)  # the last notification is sent after the last status
        if self.preview is not None:
            self.preview.stop()
        if self.router is not None:
            self.router.stop()
            obs.router_changes = list(self.router.changes)
            for first, last, code, n in bursts(self.router.stats.data_plane):  # what no pod answered
                self.tl.add("router", (f"the data plane answered {code} itself" if code else "no answer (connection "
                                       "error or timeout)") + f" to {n} request(s) until {last - self.t0:.2f}s", first)
            obs.requests_seen = dict(self.router.stats.seen)
            prev: int | None = None
            for t, w in obs.router_changes:
                if prev is not None and w > prev:
                    obs.advances.append(Advance(t - 1.5 * ROUTER_POLL, t, f"router canary weight {prev} -> {w}"))
                prev = w
        ro = self.kube.get_rollout(self.ns, self.name)
        obs.rollout = ro
        obs.phase = obs.status.get("phase")
        final_target = self.kube.get_target(self.ns, self.target, self.refs)
        obs.target_images = images_of(final_target)
        obs.target_replicas = ((final_target or {}).get("spec") or {}).get("replicas")
        if self.refs.kind == "partition":
            obs.statefulset = final_target
        canary = self.kube.get_deployment(self.ns, f"{self.target}-canary")
        obs.canary_present = canary is not None and not (canary.get("metadata") or {}).get("deletionTimestamp")
        obs.events = self.kube.events(self.ns)
        self._events_to_timeline(obs.events)
        ref = ((obs.status.get("incident") or {}).get("reportRef"))
        if isinstance(ref, str) and ref:
            ns, _, name = ref.rpartition("/")
            obs.report_name = name
            obs.report = self.kube.get_configmap(ns or self.ns, name)
        if "database" in self.s.expect and self.db is not None:
            try:
                obs.checksum_after = self.db.checksum()
                self.tl.add("database", f"checksum after the run {obs.checksum_after[:12]}")
            except Exception as e:
                obs.checksum_error = str(e)
        if isinstance(self.operator, ClusterOperatorRun):
            self.operator.stop()  # the pod's log so far into operator.log (the pod goes on)
        if self.operator is not None and self.operator.log.exists():
            obs.operator_log = self.operator.log.read_text(errors="replace")
        for path in self.s.expect.get("pathAbsent", ()):
            there = [d for p in self.operator_paths(path) if (d := describe_path(p, self.t0))]
            obs.paths_present[path] = "; ".join(there) or None
        for svc, _ in self.s.expect.get("serviceSelector", []):
            found = self.kube.get_service(self.ns, svc)
            obs.selectors[svc] = ((found.get("spec") or {}).get("selector") or {}) if found else None
        if self.webhook is not None:
            obs.notifications = self.webhook.received
            obs.webhooks = [{**hook, "url": substitute(hook.get("url", ""), self.tokens())} for hook in self.s.webhooks]
            (self.run_dir / "notifications.json").write_text(json.dumps(
                [{"t": round(r.at - self.t0, 3), "path": r.path, "body": r.body or r.raw} for r in obs.notifications],
                indent=2))
            for r in obs.notifications:
                self.tl.add("notify", f"{r.path} {r.format} severity {r.severity}: "
                                      f"{(r.body or {}).get('title') or (r.body or {}).get('text') or r.raw[:80]}", r.at)
        obs.end = time.monotonic()
        (self.run_dir / "rollout.json").write_text(json.dumps(ro, indent=2, default=str))
        (self.run_dir / "events.json").write_text(json.dumps(obs.events, indent=2, default=str))

    def _events_to_timeline(self, events: list[dict[str, Any]]) -> None:
        """Events about the SafeRollout, placed by their (second-resolution, wall-clock) time."""
        offset = time.time() - time.monotonic()
        for e in events:
            obj = e.get("involvedObject") or {}
            if obj.get("kind") != "SafeRollout" or obj.get("name") != self.name:
                continue
            stamp = e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp")
            try:
                at = datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp() - offset
            except ValueError:
                continue
            count = int(e.get("count") or 1)
            self.tl.add("event", f"~{e.get('type', '')} {e.get('reason')}: {e.get('message', '')}"
                                 + (f" (x{count})" if count > 1 else ""), at)

    def _stop_webhook(self) -> None:
        if self.webhook is not None:
            self.webhook.stop()
        if self.sess.in_cluster:  # the forwarders this run asked for
            for url in (self.webhook_url, *self.process_urls.values()):
                if url:
                    self.sess.cluster_operator.unforward(url.removeprefix("http://"))

    def _stop_apps(self) -> None:
        for p in (self.stable, self.canary):
            if p is not None:
                p.stop()

    def teardown(self) -> None:
        """Stop what this run started, delete its namespace, leave the session's servers ready for the next."""
        steps: list[tuple[str, Any]] = [
            ("router", lambda: self.router.stop() if self.router else None),
            ("preview router", lambda: self.preview.stop() if self.preview else None),
            ("traefik", lambda: self.traefik.stop() if self.traefik else None),
            ("rollout", lambda: self.kube.delete_rollouts(self.ns, timeout=20)),
            ("operator", lambda: self.operator.stop() if self.operator else None),
            ("apps", self._stop_apps),
            ("webhook receiver", self._stop_webhook),
            ("objects", self._delete_objects),
            ("namespace", lambda: self.kube.delete_namespace(self.ns)),
            ("prometheus", lambda: self.sess.prometheus.set_targets([], key=self.isolate)),
            ("postgres", lambda: self.sess.postgres if self.pg is not None else None),
            ("database", self._drop_database),
        ]
        for what, step in steps:
            began = time.monotonic()
            try:
                step()
            except Exception as e:
                self.error(f"clean-up of {what}: {e}")
            if time.monotonic() - began > 2:
                self.tl.add("harness", f"clean-up of {what} took {time.monotonic() - began:.1f}s")


    def _drop_database(self) -> None:
        """An isolated run's role and database go with it (the next run of the same name starts afresh anyway)."""
        if self.isolate is not None and self.db is not None:
            self.sess.postgres.drop_database(self.db)


def clear_paths(paths: Iterable[str]) -> list[str]:
    """Delete the files (or symlinks) at these paths before a run; the ones that were there. A directory is an
    error: the harness never removes one."""
    removed = []
    for path in paths:
        p = Path(path)
        if p.is_dir() and not p.is_symlink():
            raise RuntimeError(f"pathAbsent: {path} is a directory; the harness removes files only")
        if p.is_symlink() or p.exists():
            p.unlink()
            removed.append(path)
    return removed


def describe_path(p: Path, t0: float) -> str | None:
    """None when nothing is at the path; else what is there and when it was last written (seconds since t0)."""
    try:
        st = p.lstat()
    except FileNotFoundError:
        return None
    kind = "a symlink" if p.is_symlink() else "a directory" if p.is_dir() else f"a file of {st.st_size} bytes"
    at = st.st_mtime - (time.time() - time.monotonic()) - t0
    return f"{kind}, written {at:.1f}s after the apply"


def corrupt_latest_snapshot(store: Path, ns: str, name: str) -> Path:
    """Overwrite bytes in the middle of the newest `*.dump` of the rollout that is not a pre-restore dump."""
    d = store / ns / name
    dumps = [p for p in d.glob("*.dump") if not p.name.startswith("pre-restore-")] if d.is_dir() else []
    if not dumps:
        raise RuntimeError(f"no snapshot to corrupt in {d}")
    newest = max(dumps, key=lambda p: p.stat().st_mtime)
    size = newest.stat().st_size
    length = max(1, min(4096, size // 4))
    with newest.open("r+b") as fh:
        fh.seek(max(0, size // 2 - length // 2))
        fh.write(bytes((0xA5 ^ i) & 0xFF for i in range(length)))
    return newest
