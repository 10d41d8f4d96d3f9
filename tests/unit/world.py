"""A simulated world for the decision core: the router, the workloads, Prometheus and the database as plain state."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import yaml

from saferollout.adapters.workloads import config_of, target_patch, view_of
from saferollout.core import actions as a
from saferollout.core import configs
from saferollout.core.analysis_templates import wanted
from saferollout.core.engine import Inputs, Settings, iso
from saferollout.core.loop import drive
from saferollout.core.models import TRAFFIC_CHECK, SafeRolloutSpec, SafeRolloutStatus
from saferollout.core.templates import (
    HELD_ANNOTATION,
    REVISION_ANNOTATION,
    STABLE_ANNOTATION,
    TARGET_LABEL,
    admit,
    merge,
    template_hash_of,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)

# value of a metric for (metric name, target, canary weight, seconds since start) -> value or None (no data)
MetricFn = Callable[[str, str, int, float], float | None]


def healthy(name: str, target: str, weight: int, t: float) -> float | None:
    return 0.001 if name == "error-rate" else 0.1


def spec_from(yaml_text: str) -> SafeRolloutSpec:
    return SafeRolloutSpec.model_validate(yaml.safe_load(yaml_text))


BASE = """
targetRef: {name: web}
template: {containers: [{name: web, image: demo/web:2.0}]}
strategy:
  canary:
    stages:
      - {weight: 5, duration: 10s}
      - {weight: 25, duration: 10s}
      - {weight: 50, duration: 10s}
      - {weight: 100, duration: 10s}
    traffic: {gatewayAPI: {httpRoute: web, stableService: web, canaryService: web-canary}}
analysis:
  interval: 2s
  failureLimit: 3
  metrics:
    - {name: error-rate, template: error-rate, max: 0.01, onBreach: rollback, severity: critical}
"""


def pod_template(image: str = "demo/web:1.0", **container: Any) -> dict[str, Any]:
    """A pod template as the API server holds it (the fields a real one has are not needed: the hash covers all)."""
    return {"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": image, **container}]}}


def target_deployment(template: dict[str, Any] | None = None, labelled: bool = False) -> dict[str, Any]:
    labels = {"app": "web", **({TARGET_LABEL: "web"} if labelled else {})}
    return {"metadata": {"name": "web", "generation": 1, "labels": labels, "annotations": {}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": template or pod_template()}}


def make_spec(**overrides: Any) -> SafeRolloutSpec:
    data = yaml.safe_load(BASE)
    for path, value in overrides.items():
        node = data
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return SafeRolloutSpec.model_validate(data)


@dataclass
class StatefulSet:
    """A StatefulSet and its controller as KWOK runs it (pods ready at once): RollingUpdate puts every pod at or
    above the partition on the update revision, from the highest ordinal down; pods below it keep theirs. A
    revision is named by its images (a template back to an old revision's is that revision again)."""

    replicas: int = 3
    partition: int = 0
    images: dict[str, str] = field(default_factory=lambda: {"web": "demo/web:1.0"})
    annotations: dict[str, str] = field(default_factory=dict)
    pods: list[str] = field(default_factory=list)  # the revision of each ordinal
    partitions_written: list[int] = field(default_factory=list)
    template_writes: int = 0

    current: str = ""

    def __post_init__(self) -> None:
        self.pods = self.pods or [self.update_revision] * self.replicas
        self.current = self.current or self.update_revision

    @staticmethod
    def revision_of(images: dict[str, str]) -> str:
        return "web-" + "-".join(v.rsplit(":", 1)[-1].replace(".", "") for _, v in sorted(images.items()))

    @property
    def update_revision(self) -> str:
        return self.revision_of(self.images)

    @property
    def current_revision(self) -> str:
        """status.currentRevision: the pods' revision before the update; the update's once every pod has it."""
        return self.current

    def reconcile(self) -> None:
        for i in reversed(range(self.replicas)):
            if i >= self.partition:
                self.pods[i] = self.update_revision
        if all(p == self.update_revision for p in self.pods):
            self.current = self.update_revision

    def on_new(self) -> int:
        return sum(p == self.update_revision for p in self.pods)

    def write(self, images: dict[str, str] | None = None, partition: int | None = None) -> None:
        if images is not None and images != self.images:
            self.images, self.template_writes = dict(images), self.template_writes + 1
        if partition is not None:
            self.partition = partition
            self.partitions_written.append(partition)
        self.reconcile()


@dataclass
class World:
    spec: SafeRolloutSpec
    metrics: MetricFn = healthy
    metric_errors: dict[str, str] = field(default_factory=dict)  # metric -> its query's error (no value)
    # (canary, stable) requests served in the rate window at a weight: by default a data plane that applies it
    served: Callable[[int], tuple[float | None, float | None]] = lambda w: (4.0 * w, 4.0 * (100 - w))
    target_images: dict[str, str] = field(default_factory=lambda: {"web": "demo/web:1.0"})
    weight: int = 0
    canary: dict[str, str] | None = None
    now: datetime = T0
    status: SafeRolloutStatus = field(default_factory=SafeRolloutStatus)
    weights_seen: list[int] = field(default_factory=list)
    routing: a.Routing | None = None  # the stage's match, mirror and sticky cookie the router last got
    routings_seen: list[str | None] = field(default_factory=list)  # their keys, None for by weight alone
    events: list[a.Event] = field(default_factory=list)
    notes: list[a.Notify] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    actions: list[a.Action] = field(default_factory=list)  # every action executed, in order
    command: str | None = None
    database_up: bool = True
    db_state: str = "v1"
    migration: str | None = None  # the database state the canary writes once it runs
    snapshots: dict[str, str] = field(default_factory=dict)
    snapshots_taken: int = 0
    restores: int = 0
    restore_fails: int = 0
    fail_set_weight: int = 0
    fail_ensure_canary: int = 0  # EnsureCanary calls that fail (the API server refusing the canary's writes)
    canary_available_at: float = 0.0  # seconds from T0 at which the canary's pods are available (inf: never)
    target_available_at: float = 0.0  # the same for the target's pods (spec.template rollouts)
    crash_after: type | None = None  # raise after executing this action type once (operator killed)
    writes: int = 0
    reports: dict[str, str] = field(default_factory=dict)
    settings: Settings = field(default_factory=Settings)
    ticks: int = 0
    wake_after: float | None = None
    # spec.template omitted: the target Deployment as the API server holds it, with the admission webhook in front
    deployment: dict[str, Any] | None = None
    webhook: bool = True
    target_writes: dict[str, int] = field(default_factory=lambda: {"operator": 0, "git": 0})
    running: str | None = None  # the hash of the template the stable pods run (the Deployment controller's work)
    ran: set[str] = field(default_factory=set)  # every template hash the stable pods ever ran
    canary_hash: str | None = None
    canary_template: dict[str, Any] | None = None
    # shared analysis templates as the API server holds them: (kind, namespace or "", name) -> (spec, resourceVersion)
    analysis_templates: dict[tuple[str, str, str], tuple[dict[str, Any], str]] = field(default_factory=dict)
    template_errors: dict[tuple[str, str, str], str] = field(default_factory=dict)  # the read fails so
    queried: list[dict[str, str | None]] = field(default_factory=list)  # each query's resolved metrics: name -> query
    # spec.migration's Job: how it ends ("Succeeded", "Failed", or "hang": never ends), after how long, its log, and
    # the database state it writes as it starts (a migration that fails half-way has still changed the database)
    job_outcome: str = "Succeeded"
    job_runs_for: float = 3.0
    job_logs: str = "ALTER TABLE\nUPDATE 5000"
    job_db_state: str | None = None
    jobs: dict[str, float] = field(default_factory=dict)  # Job name -> when it was created (seconds from T0)
    jobs_created: int = 0
    jobs_stopped: list[str] = field(default_factory=list)
    job_stop_polls: int = 0  # a stop's answers "still stopping" (its pods terminating) before the Job is gone
    job_check_fails: int = 0  # CheckMigration calls that fail (the executor's error: pods forbidden, ...)
    stopping: dict[str, int] = field(default_factory=dict)  # Job deleted, its pods still ending: polls left
    overlaps: list[str] = field(default_factory=list)  # what ran while another migration Job's pod still could
    sts: StatefulSet | None = None  # a StatefulSet target (the partition router) in place of the Deployment
    raised: str = ""  # what a promotion write with keep_capacity says it raised (an autoscaled target)
    autoscaler: str | None = None  # the HPA ReadTarget reports on the target
    # trackConfig: the ConfigMaps and Secrets as the API server holds them, (kind, name) -> data; the copies made;
    # the config version each pod of the stable ones and the canary reads (a pod given no copies reads the objects
    # as they are at that moment); every version the stable pods ever read
    config_objects: dict[configs.Ref, dict[str, Any]] | None = None
    copies: set[str] = field(default_factory=set)
    canary_config: str | None = None
    configs_read: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.deployment is not None:
            self.running = template_hash_of(self.deployment["spec"]["template"])
            self.ran.add(self.running)
            self.target_images = self._images()
            self._note_config()

    # --------------------------------------------------------------------------------- trackConfig's objects
    def config(self) -> str | None:
        """The config version of what the target's template references now (None: config is not tracked)."""
        if not self.spec.track_config:
            return None
        return self._live_config()

    def _live_config(self) -> str | None:
        """The config version of the objects the target's template references, as they are now."""
        if self.config_objects is None or self.deployment is None:
            return None
        refs = configs.references(self.deployment["spec"]["template"].get("spec"))
        return configs.config_hash({r: self.config_objects.get(r) for r in refs}, "shop/web")

    def stable_config(self) -> str | None:
        """What the stable pods read: the copies their template's label names, else the objects as they are."""
        if self.config_objects is None or self.deployment is None:
            return None
        label = config_of(self.deployment["spec"]["template"])
        if label and self.running == template_hash_of(self.deployment["spec"]["template"]):
            assert label in self.copies, f"the stable pods are given copies of {label}, which were never made"
            return label
        return self._live_config()

    def _note_config(self) -> None:
        cfg = self.stable_config()
        if cfg is not None:
            self.configs_read.add(cfg)

    def edit_config(self, kind: str, name: str, data: dict[str, str]) -> None:
        """A sync of a commit that changes a ConfigMap or Secret in place (the Deployment is not written)."""
        assert self.config_objects is not None
        self.config_objects[(kind, name)] = {"data": dict(data)}
        self.target_writes["git"] += 1
        self._note_config()

    # ----------------------------------------------------------------------- the target Deployment (no template)
    def _images(self) -> dict[str, str]:
        assert self.deployment is not None
        return {c["name"]: c["image"] for c in self.deployment["spec"]["template"]["spec"]["containers"]}

    def update_target(self, new: dict[str, Any], who: str) -> None:
        """An UPDATE through the API server: the webhook (objectSelector: the label) mutates it in the same write;
        a changed spec bumps the generation; an unpaused Deployment runs its template."""
        old = self.deployment
        assert old is not None
        new = copy.deepcopy(new)
        if self.webhook and TARGET_LABEL in (new["metadata"].get("labels") or {}):
            new = merge(new, admit(old, new))
        if new["spec"] != old["spec"]:
            new["metadata"]["generation"] = old["metadata"]["generation"] + 1
        self.deployment = new
        self.target_writes[who] += 1
        if not new["spec"].get("paused"):
            self.running = template_hash_of(new["spec"]["template"])
            self.ran.add(self.running)
            self.target_images = self._images()
        self._note_config()

    def commit(self, template: dict[str, Any], revision: str | None = None) -> None:
        """A sync of a commit that changes the pod template (Argo CD, or kubectl apply)."""
        assert self.deployment is not None
        new = copy.deepcopy(self.deployment)
        new["spec"]["template"] = copy.deepcopy(template)
        if revision:
            new["metadata"]["annotations"][REVISION_ANNOTATION] = revision
        self.update_target(new, "git")

    def view(self) -> a.TargetView:
        d = self.deployment
        assert d is not None
        if self.config() is not None:  # the adapter's own view of a tracked target
            v = view_of(d, self.config())
            return dataclasses.replace(v, available=self.running == template_hash_of(d["spec"]["template"]))
        ann = d["metadata"].get("annotations") or {}
        h = template_hash_of(d["spec"]["template"])
        return a.TargetView(h, self._images(), bool(d["spec"].get("paused")), d["metadata"]["generation"],
                            (d["metadata"].get("labels") or {}).get(TARGET_LABEL), ann.get(STABLE_ANNOTATION),
                            ann.get(HELD_ANNOTATION), ann.get(REVISION_ANNOTATION), None, self.running == h)

    def _target_write(self, act: a.Action) -> a.Result:
        assert self.deployment is not None
        if self.config() is not None and isinstance(act, a.HoldTarget | a.ReleaseTarget):
            return self._tracked_write(act)
        if isinstance(act, a.LabelTarget):
            patch: dict[str, Any] = {"metadata": {"labels": {TARGET_LABEL: "web"}}}
        elif isinstance(act, a.HoldTarget):
            patch = {"metadata": {"annotations": {STABLE_ANNOTATION: act.stable_hash, HELD_ANNOTATION: act.held_hash}},
                     "spec": {"paused": True}}
        else:
            assert isinstance(act, a.ReleaseTarget)
            patch = {"metadata": {"annotations": {STABLE_ANNOTATION: act.stable_hash, HELD_ANNOTATION: None}},
                     "spec": {"paused": False}}
        self.update_target(merge(self.deployment, patch), "operator")
        return a.Outcome(act, True, self.raised if isinstance(act, a.ReleaseTarget) and act.keep_capacity else "")

    def _tracked_write(self, act: a.HoldTarget | a.ReleaseTarget) -> a.Result:
        """The adapter's own patch (workloads.target_patch), with the copies made first, as _write_target does."""
        assert self.deployment is not None
        cfg = self.config()
        if isinstance(act, a.HoldTarget):
            body = target_patch(self.deployment, act.held_hash, {STABLE_ANNOTATION: act.stable_hash,
                                                                 HELD_ANNOTATION: act.held_hash}, True, cfg, False)
        else:
            self.copies.add(str(cfg))
            body = target_patch(self.deployment, act.stable_hash, {STABLE_ANNOTATION: act.stable_hash,
                                                                   HELD_ANNOTATION: None},
                                None if act.reason == "track" else False, cfg, True)
        self.update_target(merge(self.deployment, body), "operator")
        return a.Outcome(act, True)

    @property
    def t(self) -> float:
        return (self.now - T0).total_seconds()

    def execute(self, act: a.Action) -> a.Result | None:
        self.log.append(f"{self.t:5.1f} {act!r}")
        self.actions.append(act)
        result = self._execute(act)
        if self.crash_after is not None and isinstance(act, self.crash_after):
            self.crash_after = None
            raise Crash(act)
        return result

    def _execute(self, act: a.Action) -> a.Result | None:
        if isinstance(act, a.Event):
            self.events.append(act)
            return None
        if isinstance(act, a.Notify):
            self.notes.append(act)
            return None
        if self.sts is not None and isinstance(act, a.ReadTarget | a.EnsureCanary | a.SetWeight | a.SetTargetImages):
            return self._statefulset(act)
        if isinstance(act, a.ReadTarget):
            if self.deployment is not None:
                v = self.view()
                return a.TargetState(dict(v.images), v.available and not v.paused, "1", v, autoscaler=self.autoscaler)
            return a.TargetState(dict(self.target_images), self.t >= self.target_available_at, "1",
                                 autoscaler=self.autoscaler)
        if isinstance(act, a.TARGET_WRITES):
            return self._target_write(act)
        if isinstance(act, a.SetWeight):
            if self.fail_set_weight:
                self.fail_set_weight -= 1
                return a.Outcome(act, False, "HTTPRoute write refused")
            self.routing = act.routing
            if not self.routings_seen or self.routings_seen[-1] != (act.routing.key if act.routing else None):
                self.routings_seen.append(act.routing.key if act.routing else None)
            if act.weight != self.weight:
                self.weight = act.weight
                if act.weight and (not self.weights_seen or self.weights_seen[-1] != act.weight):
                    self.weights_seen.append(act.weight)
            return a.Outcome(act, True)
        if isinstance(act, a.EnsureCanary):
            if act.template_hash is not None:  # the canary is the target's template as it is
                assert self.deployment is not None
                template = self.deployment["spec"]["template"]
                if configs.version_hash(template, self.config()) != act.template_hash:
                    return a.Outcome(act, False, "the target's pod template changed")
                self.canary_hash, self.canary_template = act.template_hash, copy.deepcopy(template)
                self.canary_config = self.config()
                if self.canary_config is not None:
                    self.copies.add(self.canary_config)
            if self.fail_ensure_canary:
                self.fail_ensure_canary -= 1
                return a.Outcome(act, False, "deployments.apps is forbidden: exceeded quota")
            self.canary = dict(act.images)
            if self.t < self.canary_available_at:
                return a.CanaryState(False, "c1")
            self.db_state = self.migration or self.db_state
            return a.CanaryState(True, "c1")
        if isinstance(act, a.DeleteCanary):
            self.canary = self.canary_hash = self.canary_template = self.canary_config = None
            return a.Outcome(act, True)
        if isinstance(act, a.SetTargetImages):
            assert self.deployment is None, "a rollout without spec.template never writes images into the target"
            self.target_images = dict(act.images)
            return a.Outcome(act, True, self.raised if act.keep_capacity else "")
        if isinstance(act, a.QueryMetrics):
            names = act.metrics
            if act.definitions:  # as the executor: what the core resolved; an unresolved reference is not measured
                self.queried.append({m.name: m.query or m.template for m in act.definitions})
                names = tuple(n for n in act.metrics if n in {m.name for m in act.definitions})
            values = {n: None if n in self.metric_errors else self.metrics(n, act.target, self.weight, self.t)
                      for n in names}
            errors = {n: self.metric_errors[n] for n in names if n in self.metric_errors}
            pairs: dict[str, tuple[float | None, float | None]] = {}
            if TRAFFIC_CHECK in act.metrics:  # as the executor: both Services' request counts in the window
                values[TRAFFIC_CHECK] = None
                pairs[TRAFFIC_CHECK] = self.served(self.weight)
            return a.MetricValues(act.target, act.purpose, values, errors, pairs=pairs, asked_at=iso(self.now))
        if isinstance(act, a.CheckDatabase):
            return a.Outcome(act, self.database_up, "" if self.database_up else "connection refused")
        if isinstance(act, a.TakeSnapshot):
            if self.jobs_alive():
                self.overlaps.append(f"snapshot while {', '.join(self.jobs_alive())} ran")
            if act.snapshot_id not in self.snapshots:
                self.snapshots[act.snapshot_id] = self.db_state
                self.snapshots_taken += 1
            return a.SnapshotResult(act.snapshot_id, True, size_bytes=100, sha256="ab", taken_at=None)
        if isinstance(act, a.VerifySnapshot):
            return a.SnapshotResult(act.snapshot_id, True, "3 tables match")
        if isinstance(act, a.PruneSnapshots):
            return a.Outcome(act, True)
        if isinstance(act, a.RestoreDatabase):
            if self.jobs_alive():
                self.overlaps.append(f"restore while {', '.join(self.jobs_alive())} ran")
            self.restores += 1
            if self.restore_fails:
                self.restore_fails -= 1
                return a.RestoreResult(act.snapshot_id, False, "pg_restore: error", pre_restore_dump="pre-1.dump")
            self.db_state = self.snapshots[act.snapshot_id]
            return a.RestoreResult(act.snapshot_id, True, "ok", pre_restore_dump="pre-1.dump", verified=True)
        if isinstance(act, a.CheckRestored):
            ok = self.db_state == self.snapshots[act.snapshot_id]
            return a.RestoreResult(act.snapshot_id, ok, "checked", verified=ok)
        if isinstance(act, a.RunMigration):
            if act.job not in self.jobs and self.jobs_alive():
                self.overlaps.append(f"{act.job} created while {', '.join(self.jobs_alive())} ran")
            if act.job not in self.jobs:  # as the API server: a second create of that name finds the first
                self.jobs[act.job] = self.t
                self.jobs_created += 1
                self.db_state = self.job_db_state or self.db_state
            return a.MigrationState(act.job, "Created", created_at=iso(T0 + timedelta(seconds=self.jobs[act.job])))
        if isinstance(act, a.CheckMigration):
            if self.job_check_fails:
                self.job_check_fails -= 1
                return a.Outcome(act, False, 'pods is forbidden: cannot list resource "pods"')
            if act.job in self.stopping:  # deleted in the foreground: gone once its pods are
                if self.stopping[act.job] > 0:
                    self.stopping[act.job] -= 1
                    return a.MigrationState(act.job, "Running", "stopping: 1 pod of the Job still terminating")
                del self.stopping[act.job]
                return a.MigrationState(act.job, "Stopped", "the Job and its pods are gone", None, "none")
            if act.job not in self.jobs:
                return a.MigrationState(act.job, "Stopped" if act.stop else "Failed", "no such Job", None, "none")
            if act.stop and act.job in self.jobs_alive():
                del self.jobs[act.job]
                self.jobs_stopped.append(act.job)
                if self.job_stop_polls:
                    self.stopping[act.job] = self.job_stop_polls - 1
                    return a.MigrationState(act.job, "Running", "stopping: 1 pod of the Job still terminating",
                                            self.job_logs, "log")
                return a.MigrationState(act.job, "Stopped", "the Job and its pods are gone", self.job_logs, "log")
            if self.job_outcome == "hang" or self.t - self.jobs[act.job] < self.job_runs_for:
                return a.MigrationState(act.job, "Running")
            state: Literal["Succeeded", "Failed"] = "Succeeded" if self.job_outcome == "Succeeded" else "Failed"
            message = "" if state == "Succeeded" else "BackoffLimitExceeded: Job has reached the specified backoff limit"
            return a.MigrationState(act.job, state, message, self.job_logs, "log")
        if isinstance(act, a.WriteReport):
            self.reports[act.name] = act.markdown
            return a.ReportWritten(act.name)
        raise AssertionError(f"unhandled action {act!r}")

    def jobs_alive(self) -> list[str]:
        """The migration Jobs whose pod may still write: not ended, or deleted with their pods still ending."""
        running = [j for j, at in self.jobs.items() if self.job_outcome == "hang" or self.t - at < self.job_runs_for]
        return running + list(self.stopping)

    def _statefulset(self, act: a.Action) -> a.Result:
        """The executor and adapters/statefulsets.py over the simulated StatefulSet."""
        sts = self.sts
        assert sts is not None
        ours = sts.annotations.get("rollout") == "web"
        if isinstance(act, a.ReadTarget):
            current = sts.current_revision
            images = {"web": self._images_of(current)}
            self.target_images = dict(sts.images)
            return a.TargetState(images, all(p == sts.update_revision for p in sts.pods), current,
                                 replicas=sts.replicas, partition=0 if ours else sts.partition)
        if isinstance(act, a.EnsureCanary):
            if not ours or sts.images != act.images:
                sts.annotations = {"rollout": "web", "stable": sts.current_revision, "replicas": str(sts.replicas)}
                sts.write(act.images, sts.replicas)
                return a.CanaryState(False)
            self.canary = dict(act.images)
            self.db_state = self.migration or self.db_state
            return a.CanaryState(True, sts.update_revision)
        if isinstance(act, a.SetWeight):
            if self.fail_set_weight:
                self.fail_set_weight -= 1
                return a.Outcome(act, False, "statefulsets.apps is forbidden")
            if act.weight != self.weight:
                self.weight = act.weight
                if act.weight and (not self.weights_seen or self.weights_seen[-1] != act.weight):
                    self.weights_seen.append(act.weight)
            if act.weight == 0:
                self._revert()
            else:
                if not ours:
                    return a.Outcome(act, False, "the template is written first")
                replicas = int(sts.annotations["replicas"])
                sts.write(partition=replicas - max(1, -(-replicas * act.weight // 100)))
            return a.Outcome(act, True)
        assert isinstance(act, a.SetTargetImages)
        if act.reason == "promote":
            sts.write(act.images, 0)
        else:
            self._revert()
        self.target_images = dict(sts.images)
        return a.Outcome(act, True)

    def _images_of(self, revision: str) -> str:
        return "demo/web:" + ".".join(revision.removeprefix("web-"))

    def _revert(self) -> None:
        sts = self.sts
        assert sts is not None
        if sts.annotations.get("rollout") != "web":
            return
        stable = sts.annotations["stable"]
        if sts.update_revision != stable or sts.partition != 0:
            sts.write({"web": self._images_of(stable)}, 0)
        self.target_images = dict(sts.images)

    def write(self, status: SafeRolloutStatus) -> None:
        self.writes += 1
        self.status = status

    def tick(self) -> None:
        command, self.command = self.command, None

        def inputs(results: list[a.Result]) -> Inputs:
            target = self.view() if self.deployment is not None else None
            return Inputs(now=self.now, name="web", generation=1, command=command, results=results, target=target,
                          namespace="shop", templates=self.template_reads())

        self.ticks += 1
        self.wake_after = self.settings.poll_seconds  # a crash: the operator comes back and looks at once
        with contextlib.suppress(Crash):  # what was written before the crash survives, as with a killed operator
            self.wake_after = drive(self.spec, self.status, inputs, self.execute, self.write, self.settings).wake_after

    def run(self, seconds: float, until: Callable[[World], bool] | None = None, step: float | None = 1.0) -> World:
        """Tick every `step` seconds; with step=None, tick when the core asked to be woken (as the operator does)."""
        end = self.now + timedelta(seconds=seconds)
        while self.now < end:
            self.tick()
            if until is not None and until(self):
                break
            if step is None and self.wake_after is None:
                break  # asleep until the object changes
            self.now += timedelta(seconds=step if step is not None else max(self.wake_after or 0.0, 0.001))
        return self

    def template_reads(self) -> list[a.TemplateRead]:
        """What the handler reads for the rollout's templated metrics (core.analysis_templates.wanted)."""
        out = []
        for k in wanted(self.spec, "shop"):
            if k in self.template_errors:
                out.append(a.TemplateRead(k[0], k[1] or None, k[2], error=self.template_errors[k]))
            elif k in self.analysis_templates:
                body, version = self.analysis_templates[k]
                out.append(a.TemplateRead(k[0], k[1] or None, k[2], copy.deepcopy(body), version))
            else:
                out.append(a.TemplateRead(k[0], k[1] or None, k[2]))
        return out

    def phase(self) -> str | None:
        return self.status.phase.value if self.status.phase else None

    def done(self) -> bool:
        return self.status.phase is not None and self.status.phase.terminal

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]


class Crash(Exception):
    pass
