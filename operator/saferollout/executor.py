"""Carries out the core's actions with the adapters and turns every outcome, failures included, into a result."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests

from saferollout import observability
from saferollout.adapters import events, kube, notify, workloads
from saferollout.adapters.kube import RolloutRef
from saferollout.adapters.prometheus import PrometheusProvider
from saferollout.adapters.routers import router_for
from saferollout.adapters.snapshots import SnapshotProvider
from saferollout.adapters.snapshots.postgres import PostgresSnapshots
from saferollout.config import OperatorConfig
from saferollout.core import actions as a
from saferollout.core.durations import parse_duration
from saferollout.core.engine import iso, parse_time
from saferollout.core.models import Metric, SafeRolloutSpec, SafeRolloutStatus
from saferollout.redact import redact, register

log = logging.getLogger("saferollout.executor")
VERIFY_ERROR_RATE = "verify-error-rate"
_providers: dict[str, PrometheusProvider] = {}


def prometheus(cfg: OperatorConfig, spec: SafeRolloutSpec) -> PrometheusProvider:
    url = (spec.analysis.prometheus.address if spec.analysis.prometheus else None) or cfg.prometheus_url
    if url not in _providers:
        _providers[url] = PrometheusProvider(url, cfg.prometheus_timeout, cfg.labels, group_ttl=cfg.query_group_ttl,
                                             pool_size=cfg.workers)
        _providers[url].on_query = observability.PROM_QUERIES.inc
    return _providers[url]


def probe(metric: Metric, ctx: dict[str, str]) -> tuple[float, str | None]:
    """1.0 for a 2xx answer within the timeout, else 0.0: an unreachable canary is unhealthy, not 'no data'."""
    assert metric.http_get is not None
    url = render_url(metric.http_get.url, ctx)
    try:
        r = requests.get(url, timeout=parse_duration(metric.http_get.timeout))
    except requests.RequestException as e:
        return 0.0, f"{url}: {type(e).__name__}"
    return (1.0, None) if 200 <= r.status_code < 300 else (0.0, f"{url}: HTTP {r.status_code}")


def render_url(template: str, ctx: dict[str, str]) -> str:
    for key, value in ctx.items():
        template = template.replace("{{ " + key + " }}", value).replace("{{" + key + "}}", value)
    return template


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
            db = self.spec.database
            if db is None:
                raise ValueError("spec.database is not set")
            if db.volume_snapshot is not None:
                from saferollout.adapters.snapshots.volume import VolumeSnapshotProvider

                self._snapshots = VolumeSnapshotProvider(self.ref.namespace, self.ref.name, db.volume_snapshot,
                                                         target=self.spec.target_ref.name)
                return self._snapshots
            if db.postgres is None:
                raise ValueError("spec.database.postgres is not set")
            dsn = secret_value(self.ref.namespace, db.postgres.secret_ref.name, db.postgres.secret_ref.key)
            store = self.cfg.snapshot_dir / self.ref.namespace / self.ref.name
            self._snapshots = PostgresSnapshots(dsn, store)
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
        ref, spec = self.ref, self.spec
        if isinstance(act, a.Event):
            events.emit(ref, act.reason, act.message, act.type)
            return None
        if isinstance(act, a.Notify):
            notify.send(spec.notifications, f"{ref.namespace}/{ref.name}", act.severity, act.title, act.text,
                        act.report)
            return None
        if isinstance(act, a.ReadTarget):
            images, ok, revision = workloads.read_target(ref, spec)
            return a.TargetState(images, ok, revision)
        if isinstance(act, a.SetWeight):
            router_for(spec).set_weight(ref, spec, act.weight)
            log.info("canary weight set to %d%%", act.weight)
            return a.Outcome(act, True)
        if isinstance(act, a.EnsureCanary):
            replicas = None
            if spec.strategy.canary and spec.strategy.canary.traffic.replicas is not None:
                from saferollout.adapters.routers.replicas import initial_canary_replicas

                replicas = initial_canary_replicas(ref, spec, act.replicas_weight)
            return a.CanaryState(workloads.ensure_canary(ref, spec, act.images, replicas))
        if isinstance(act, a.DeleteCanary):
            workloads.delete_canary(ref, spec)
            if spec.strategy.canary and spec.strategy.canary.traffic.nginx is not None:
                from saferollout.adapters.routers import nginx

                nginx.cleanup(ref, spec)
            return a.Outcome(act, True)
        if isinstance(act, a.SetTargetImages):
            workloads.set_target_images(ref, spec, act.images)
            return a.Outcome(act, True)
        if isinstance(act, a.QueryMetrics):
            return self.query(act)
        if isinstance(act, a.CheckDatabase):
            self.snapshots().reachable(act.timeout)
            return a.Outcome(act, True)
        if isinstance(act, a.TakeSnapshot):
            info = self.snapshots().take(act.snapshot_id)
            return a.SnapshotResult(act.snapshot_id, True, size_bytes=info.size_bytes, sha256=info.sha256,
                                    location=info.location, tables=info.tables, taken_at=info.taken_at)
        if isinstance(act, a.VerifySnapshot):
            return a.SnapshotResult(act.snapshot_id, True, self.snapshots().verify(act.snapshot_id))
        if isinstance(act, a.RestoreDatabase):
            current = self.status().restore
            out = self.snapshots().restore(act.snapshot_id, current.pre_restore_dump if current else None)
            return a.RestoreResult(act.snapshot_id, out.ok, redact(out.message), out.pre_restore_dump, out.ok)
        if isinstance(act, a.CheckRestored):
            ok = self.snapshots().equals(act.snapshot_id)
            return a.RestoreResult(act.snapshot_id, ok, "database equals the snapshot" if ok else
                                   "database differs from the snapshot", verified=ok)
        if isinstance(act, a.PruneSnapshots):
            gone = self.snapshots().prune(act.keep, act.current)
            return a.Outcome(act, True, f"pruned {len(gone)}")
        if isinstance(act, a.WriteReport):
            return a.ReportWritten(self.write_report(act))
        raise NotImplementedError(f"no adapter for {type(act).__name__}")

    def context(self, target: str) -> dict[str, str]:
        spec = self.spec
        stable, canary = workloads.service_names(spec)
        service = canary if target in ("canary", "preview") else stable
        return {"service": service, "canaryService": service, "stableService": stable, "namespace": self.ref.namespace,
                "window": self.cfg.rate_window, "interval": spec.analysis.interval, "name": self.ref.name,
                "target": spec.target_ref.name}

    def query(self, act: a.QueryMetrics) -> a.MetricValues:
        asked_at = datetime.now(UTC)
        prom = prometheus(self.cfg, self.spec)
        ctx = self.context(act.target)
        values: dict[str, float | None] = {}
        errors: dict[str, str] = {}
        series: dict[str, tuple[list[float], list[float]]] = {}
        samples: dict[str, float] = {}
        if act.max_error_rate is not None:
            metrics = [Metric(name=VERIFY_ERROR_RATE, template="error-rate", max=act.max_error_rate)]
        else:
            metrics = [m for m in self.spec.analysis.metrics if m.name in act.metrics]
        pairs: dict[str, tuple[float | None, float | None]] = {}
        for m in metrics:
            try:
                if m.kind == "http":
                    values[m.name], err = probe(m, ctx)
                elif m.kind == "baseline":
                    values[m.name], err = self.baseline(prom, m, ctx, pairs)
                elif m.kind == "judge":
                    values[m.name], err = self.samples(prom, m, ctx, series, act.since)
                else:
                    reading = prom.read(m, ctx)
                    values[m.name], err = reading.value, reading.error
                    if reading.requests is not None:
                        samples[m.name] = reading.requests
            except Exception as e:  # one metric's failure is that metric's "no data", never the others'
                values[m.name], err = None, f"{type(e).__name__}: {str(e)[:200]}"
            if err:
                errors[m.name] = redact(err)
        return a.MetricValues(act.target, act.purpose, values, errors, samples, series, pairs, iso(asked_at))

    @staticmethod
    def stable_context(ctx: dict[str, str]) -> dict[str, str]:
        return {**ctx, "service": ctx["stableService"], "canaryService": ctx["stableService"]}

    def samples(self, prom: PrometheusProvider, m: Metric, ctx: dict[str, str],
                series: dict[str, tuple[list[float], list[float]]], since: str | None) -> tuple[None, str | None]:
        """Judge: both sides' samples over the window, for the core's test."""
        assert m.judge is not None
        window, step = parse_duration(m.judge.window), parse_duration(m.judge.step)
        start = parse_time(since) if since else None
        canary, err1 = prom.samples(m, ctx, window, step, start)
        stable, err2 = prom.samples(m, self.stable_context(ctx), window, step, start)
        series[m.name] = (canary, stable)
        return None, err1 or err2

    def baseline(self, prom: PrometheusProvider, m: Metric, ctx: dict[str, str],
                 pairs: dict[str, tuple[float | None, float | None]]) -> tuple[None, str | None]:
        """Baseline: canary and stable now; the core compares them."""
        c, s = prom.read(m, ctx), prom.read(m, self.stable_context(ctx))
        pairs[m.name] = (c.value, s.value)
        return None, c.error or s.error

    def write_report(self, act: a.WriteReport) -> str:
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
        return act.name
