"""Carries out the core's actions with the adapters and turns every outcome, failures included, into a result."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, assert_never

from saferollout import observability
from saferollout.adapters import autoscaling, events, kube, migrations, notify, routers, statefulsets, workloads
from saferollout.adapters.kube import RolloutRef
from saferollout.adapters.metrics import context, measure_all
from saferollout.adapters.prometheus import PrometheusProvider
from saferollout.adapters.routers import router_for
from saferollout.adapters.snapshots import provider_for as snapshot_provider
from saferollout.adapters.snapshotting import SnapshotProvider
from saferollout.config import OperatorConfig
from saferollout.core import actions as a
from saferollout.core.models import SafeRolloutSpec, SafeRolloutStatus
from saferollout.redact import redact, register

log = logging.getLogger("saferollout.executor")
_providers: dict[str, PrometheusProvider] = {}


def prometheus(cfg: OperatorConfig, spec: SafeRolloutSpec) -> PrometheusProvider:
    url = (spec.analysis.prometheus.address if spec.analysis.prometheus else None) or cfg.prometheus_url
    if url not in _providers:
        _providers[url] = PrometheusProvider(url, cfg.prometheus_timeout, cfg.labels, group_ttl=cfg.query_group_ttl,
                                             pool_size=cfg.workers)
        _providers[url].on_query = observability.PROM_QUERIES.inc
    return _providers[url]


def secret_value(namespace: str, name: str, key: str) -> str:
    secret = kube.core().read_namespaced_secret(name, namespace)
    data = (secret.data or {}).get(key)
    if data is None:
        raise kube.Refused(f"Secret {name} has no key {key!r}")
    value = base64.b64decode(data).decode(errors="replace")
    register(value)  # before anything parses it: a parser's error may quote it
    return value


@dataclass
class Executor:
    ref: RolloutRef
    spec: SafeRolloutSpec
    cfg: OperatorConfig
    status: Callable[[], SafeRolloutStatus]
    timings: dict[str, float] = field(default_factory=dict)
    _snapshots: SnapshotProvider | None = None

    def snapshots(self) -> SnapshotProvider:
        if self._snapshots is None:
            self._snapshots = snapshot_provider(self.ref, self.spec, self.cfg.snapshot_dir, secret_value)
        return self._snapshots

    def __call__(self, act: a.Action) -> a.Result | None:
        started = time.monotonic()
        try:
            return self.run(act)
        except Exception as e:  # every failure is a result the core decides on, never a crash
            message = redact(kube.error_text(e))
            log.warning("%s failed: %s", type(act).__name__, message)
            if isinstance(act, a.TakeSnapshot | a.VerifySnapshot):
                return a.SnapshotResult(act.snapshot_id, False, message)
            if isinstance(act, a.RestoreDatabase | a.CheckRestored):
                return a.RestoreResult(act.snapshot_id, False, message)
            if isinstance(act, a.Event | a.Notify):
                return None
            return a.Outcome(act, False, message, refused=kube.refused(e))
        finally:
            self.timings[type(act).__name__] = time.monotonic() - started

    def run(self, act: a.Action) -> a.Result | None:
        """The handler of the action's type: one for each member of core.actions.Action. mypy proves the match
        complete (a type without a case reaches `assert_never`), and tests/unit/test_adapters_registry.py sends
        every type through it."""
        match act:
            case a.ReadTarget():
                return self.read_target(act)
            case a.CheckDatabase():
                return self.check_database(act)
            case a.QueryMetrics():
                return self.query_metrics(act)
            case a.TakeSnapshot():
                return self.take_snapshot(act)
            case a.VerifySnapshot():
                return self.verify_snapshot(act)
            case a.RestoreDatabase():
                return self.restore_database(act)
            case a.CheckRestored():
                return self.check_restored(act)
            case a.PruneSnapshots():
                return self.prune_snapshots(act)
            case a.RunMigration():
                return self.run_migration(act)
            case a.CheckMigration():
                return self.check_migration(act)
            case a.EnsureCanary():
                return self.ensure_canary(act)
            case a.DeleteCanary():
                return self.delete_canary(act)
            case a.SetWeight():
                return self.set_weight(act)
            case a.SetTargetImages():
                return self.set_target_images(act)
            case a.LabelTarget():
                return self.label_target(act)
            case a.HoldTarget():
                return self.hold_target(act)
            case a.ReleaseTarget():
                return self.release_target(act)
            case a.WriteReport():
                return self.write_report(act)
            case a.Event():
                self.event(act)
                return None
            case a.Notify():
                self.notify(act)
                return None
            case _:
                assert_never(act)

    # ------------------------------------------------------------------------------- one handler per action type

    def read_target(self, act: a.ReadTarget) -> a.TargetState:
        if self.spec.target_template:
            dep = workloads.raw_deployment(self.ref.namespace, self.spec.target_ref.name)
            view = workloads.view_of(dep, workloads.config_version(self.ref, self.spec, dep))
            revision = ((dep.get("metadata") or {}).get("annotations") or {}).get("deployment.kubernetes.io/revision")
            return a.TargetState(dict(view.images), view.available and not view.paused, revision, view,
                                 autoscaler=autoscaling.target_autoscaler(self.ref.namespace, self.spec.target_ref.name))
        if self.spec.partition:
            images, ok, revision, replicas, partition = statefulsets.read_target(self.ref, self.spec)
            return a.TargetState(images, ok, revision, replicas=replicas, partition=partition)
        images, ok, revision = workloads.read_target(self.ref, self.spec)
        return a.TargetState(images, ok, revision,
                             autoscaler=autoscaling.target_autoscaler(self.ref.namespace, self.spec.target_ref.name))

    def check_database(self, act: a.CheckDatabase) -> a.Outcome:
        self.snapshots().reachable(act.timeout)
        return a.Outcome(act, True)

    def query_metrics(self, act: a.QueryMetrics) -> a.MetricValues:
        asked_at = datetime.now(UTC)
        return measure_all(prometheus(self.cfg, self.spec), self.spec, act, self.context(act.target), asked_at)

    def take_snapshot(self, act: a.TakeSnapshot) -> a.SnapshotResult:
        info = self.snapshots().take(act.snapshot_id)
        return a.SnapshotResult(act.snapshot_id, True, size_bytes=info.size_bytes, sha256=info.sha256,
                                location=info.location, tables=info.tables, taken_at=info.taken_at)

    def verify_snapshot(self, act: a.VerifySnapshot) -> a.SnapshotResult:
        return a.SnapshotResult(act.snapshot_id, True, self.snapshots().verify(act.snapshot_id))

    def restore_database(self, act: a.RestoreDatabase) -> a.RestoreResult:
        current = self.status().restore
        out = self.snapshots().restore(act.snapshot_id, current.pre_restore_dump if current else None)
        return a.RestoreResult(act.snapshot_id, out.ok, redact(out.message), out.pre_restore_dump, out.ok)

    def check_restored(self, act: a.CheckRestored) -> a.RestoreResult:
        ok = self.snapshots().equals(act.snapshot_id)
        return a.RestoreResult(act.snapshot_id, ok, "database equals the snapshot" if ok else
                               "database differs from the snapshot", verified=ok)

    def prune_snapshots(self, act: a.PruneSnapshots) -> a.Outcome:
        gone = self.snapshots().prune(act.keep, act.current)
        return a.Outcome(act, True, f"pruned {len(gone)}")

    def run_migration(self, act: a.RunMigration) -> a.MigrationState:
        if self.spec.migration is None:
            raise kube.Refused("spec.migration was removed")
        got = migrations.create(self.ref, self.spec.migration, act.job, act.attempt, self.spec.target_ref)
        log.info("migration Job %s created", act.job)
        return a.MigrationState(act.job, got.state, got.message, created_at=got.created_at)

    def check_migration(self, act: a.CheckMigration) -> a.MigrationState:
        got = migrations.read(self.ref, act.job, act.stop, self.mask_migration_secrets)
        return a.MigrationState(act.job, got.state, got.message, got.logs, got.logs_source, got.created_at)

    def mask_migration_secrets(self, refs: list[migrations.SecretRef]) -> None:
        """The values of the Secrets the Job's pod can see are masked in its log: those its own pod template names
        (`refs`) and those the spec names now (read by name, best effort; key None: every key of the Secret)."""
        wanted = dict.fromkeys([*refs, *(migrations.secret_refs(self.spec.migration) if self.spec.migration else [])])
        for name, key in wanted:
            try:
                if key is not None:
                    secret_value(self.ref.namespace, name, key)
                    continue
                secret = kube.core().read_namespaced_secret(name, self.ref.namespace)
                for data in (secret.data or {}).values():
                    register(base64.b64decode(data).decode(errors="replace"))
            except Exception as e:  # a Secret we cannot read cannot be masked: say so, go on
                log.warning("could not read Secret %s to mask it in the migration's log: %s", name,
                            redact(kube.error_text(e)))

    def ensure_canary(self, act: a.EnsureCanary) -> a.CanaryState:
        plan = router_for(self.spec).prepare(self.ref, self.spec, act.first_weight)
        if self.spec.partition:  # no canary workload: the StatefulSet's own template, with partition = replicas
            ready, revision = statefulsets.ensure_canary(self.ref, self.spec, act.images)
            return a.CanaryState(ready, revision)
        if act.template_hash is None:
            return a.CanaryState(workloads.ensure_canary(self.ref, self.spec, act.images, plan))
        return a.CanaryState(workloads.ensure_canary(self.ref, self.spec, act.images, plan,
                                                     template_hash=act.template_hash))

    def delete_canary(self, act: a.DeleteCanary) -> a.Outcome:
        if not self.spec.partition:  # a StatefulSet has no canary workload beside it
            workloads.delete_canary(self.ref, self.spec)
        router_for(self.spec).clean_up(self.ref, self.spec)
        return a.Outcome(act, True)

    def set_weight(self, act: a.SetWeight) -> a.Outcome:
        routers.set_weight(self.ref, self.spec, act.weight, act.routing)
        if act.routing is None:
            log.info("canary weight set to %d%%", act.weight)
        else:
            log.info("canary weight set to %d%%, routing %s", act.weight, act.routing.key)
        return a.Outcome(act, True)

    def set_target_images(self, act: a.SetTargetImages) -> a.Outcome:
        if self.spec.partition and act.reason == "promote":
            statefulsets.promote(self.ref, self.spec, act.images)
        elif self.spec.partition:
            statefulsets.revert(self.ref, self.spec)
        else:
            raised = workloads.set_target_images(self.ref, self.spec, act.images, act.keep_capacity)
            if raised:
                log.info("%s", raised)
            return a.Outcome(act, True, raised)
        return a.Outcome(act, True)

    def label_target(self, act: a.LabelTarget) -> a.Outcome:
        workloads.label_target(self.ref, self.spec)
        observability.TARGET_WRITES.labels("label").inc()
        log.info("target %s labelled for the admission webhook", self.spec.target_ref.name)
        return a.Outcome(act, True)

    def hold_target(self, act: a.HoldTarget) -> a.Outcome:
        workloads.hold_target(self.ref, self.spec, act.stable_hash, act.held_hash)
        observability.TARGET_WRITES.labels("hold").inc()
        log.warning("target %s paused on pod template %s (the webhook had not held it)", self.spec.target_ref.name,
                    act.held_hash)
        return a.Outcome(act, True)

    def release_target(self, act: a.ReleaseTarget) -> a.Outcome:
        raised = workloads.release_target(self.ref, self.spec, act.stable_hash, act.keep_capacity,
                                          track=act.reason == "track")
        observability.TARGET_WRITES.labels(f"release-{act.reason}").inc()
        log.info("target %s unpaused (%s): pod template %s is the stable version%s", self.spec.target_ref.name,
                 act.reason, act.stable_hash, f"; {raised}" if raised else "")
        return a.Outcome(act, True, raised)

    def write_report(self, act: a.WriteReport) -> a.ReportWritten:
        body: dict[str, Any] = {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": act.name, "namespace": self.ref.namespace,
                         "labels": {"saferollout.dev/rollout": self.ref.name, "saferollout.dev/kind": "incident-report"},
                         "ownerReferences": [self.ref.owner()]},
            "data": {"report.md": redact(act.markdown),
                     "writtenAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")},
        }
        core = kube.core()
        try:
            core.create_namespaced_config_map(self.ref.namespace, body)
        except Exception as e:
            if getattr(e, "status", None) != 409:
                raise
            core.replace_namespaced_config_map(act.name, self.ref.namespace, body)
        return a.ReportWritten(act.name)

    def event(self, act: a.Event) -> None:
        events.emit(self.ref, act.reason, act.message, act.type)

    def notify(self, act: a.Notify) -> None:
        notify.send(self.spec.notifications, f"{self.ref.namespace}/{self.ref.name}", act.severity, act.title, act.text,
                    act.report)

    # ---------------------------------------------------------------------------------------------------- helpers

    def context(self, target: str) -> dict[str, str]:
        return context(self.spec, self.ref.namespace, self.ref.name, target, self.cfg.rate_window)
