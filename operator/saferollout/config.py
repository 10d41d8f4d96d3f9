"""Operator settings: environment variables, set by the Helm chart's values."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from saferollout.core.durations import parse_duration
from saferollout.core.engine import DEFAULT_STAGES, Settings
from saferollout.core.models import Stage
from saferollout.core.queries import LabelNames


def _stages(text: str | None) -> tuple[Stage, ...]:
    """"5:2m,25:3m,50:3m,100:5m" -> stages; the format of SAFEROLLOUT_DEFAULT_STAGES."""
    if not text:
        return DEFAULT_STAGES
    out = []
    for part in text.split(","):
        weight, _, duration = part.strip().partition(":")
        out.append(Stage(weight=int(weight), duration=duration))
    return tuple(out)


@dataclass(frozen=True)
class OperatorConfig:
    prometheus_url: str = "http://prometheus-operated.monitoring:9090"
    prometheus_timeout: float = 5.0
    query_group_ttl: float = 1.0  # seconds a grouped built-in query serves every rollout; 0 = one query each
    rate_window: str = "1m"
    labels: LabelNames = field(default_factory=LabelNames)
    snapshot_dir: Path = Path("/var/lib/saferollout/snapshots")
    tick_seconds: float = 1.0  # how often a rollout waiting on the cluster looks again
    max_sleep: float = 60.0  # no rollout sleeps longer than this, whatever its next deadline: a resync
    workers: int = 16  # threads that run rollouts (their I/O waits on the API server and Prometheus)
    settings: Settings = field(default_factory=Settings)
    log_format: str = "text"
    metrics_port: int = 8080
    metrics_host: str = "0.0.0.0"
    # the admission webhook that holds a target Deployment's new pod template (spec.template omitted); 0: not served
    webhook_port: int = 0
    webhook_addr: str = "0.0.0.0"  # where it listens
    # the names the API server reaches it by (the self-signed certificate's SANs when no certificate is given)
    webhook_hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
    webhook_cert_file: str = ""  # PEM certificate and key (the chart mounts them); empty: a self-signed pair
    webhook_key_file: str = ""
    webhook_ca_file: str = ""  # where a generated certificate is written: the caBundle of a URL clientConfig
    # how often a rollout without spec.template looks at its target when nothing woke it (the webhook wakes it)
    source_poll_seconds: float = 30.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorConfig:
        e = dict(os.environ if env is None else env)
        d = LabelNames()
        return cls(
            prometheus_url=e.get("SAFEROLLOUT_PROMETHEUS_URL", cls.prometheus_url),
            prometheus_timeout=float(e.get("SAFEROLLOUT_PROMETHEUS_TIMEOUT", cls.prometheus_timeout)),
            rate_window=e.get("SAFEROLLOUT_RATE_WINDOW", cls.rate_window),
            query_group_ttl=float(e.get("SAFEROLLOUT_QUERY_GROUP_TTL", cls.query_group_ttl)),
            labels=LabelNames(
                requests=e.get("SAFEROLLOUT_REQUESTS_METRIC", d.requests),
                duration_bucket=e.get("SAFEROLLOUT_DURATION_BUCKET_METRIC", d.duration_bucket),
                service=e.get("SAFEROLLOUT_SERVICE_LABEL", d.service),
                namespace=e.get("SAFEROLLOUT_NAMESPACE_LABEL", d.namespace),
                code=e.get("SAFEROLLOUT_CODE_LABEL", d.code),
            ),
            snapshot_dir=Path(e.get("SAFEROLLOUT_SNAPSHOT_DIR", str(cls.snapshot_dir))),
            tick_seconds=float(e.get("SAFEROLLOUT_TICK_SECONDS", cls.tick_seconds)),
            max_sleep=float(e.get("SAFEROLLOUT_MAX_SLEEP_SECONDS", cls.max_sleep)),
            workers=int(e.get("SAFEROLLOUT_WORKERS", cls.workers)),
            settings=Settings(default_stages=_stages(e.get("SAFEROLLOUT_DEFAULT_STAGES")),
                              settle_seconds=parse_duration(e.get("SAFEROLLOUT_RATE_WINDOW", cls.rate_window)),
                              # rollouts wake at their deadline: only clock jitter to absorb
                              due_slack=0.01,
                              poll_seconds=float(e.get("SAFEROLLOUT_TICK_SECONDS", cls.tick_seconds)),
                              autoscaled_return_hold=parse_duration(e.get("SAFEROLLOUT_AUTOSCALED_RETURN_HOLD",
                                                                          "30s")),
                              webhooks=int(e.get("SAFEROLLOUT_WEBHOOK_PORT", cls.webhook_port)) > 0),
            log_format=e.get("SAFEROLLOUT_LOG_FORMAT", cls.log_format),
            metrics_port=int(e.get("SAFEROLLOUT_METRICS_PORT", cls.metrics_port)),
            metrics_host=e.get("SAFEROLLOUT_METRICS_HOST", cls.metrics_host),
            webhook_port=int(e.get("SAFEROLLOUT_WEBHOOK_PORT", cls.webhook_port)),
            webhook_addr=e.get("SAFEROLLOUT_WEBHOOK_ADDR", cls.webhook_addr),
            webhook_hosts=tuple(h.strip() for h in e["SAFEROLLOUT_WEBHOOK_HOSTS"].split(",") if h.strip())
            if e.get("SAFEROLLOUT_WEBHOOK_HOSTS") else cls.webhook_hosts,
            webhook_cert_file=e.get("SAFEROLLOUT_WEBHOOK_CERT_FILE", cls.webhook_cert_file),
            webhook_key_file=e.get("SAFEROLLOUT_WEBHOOK_KEY_FILE", cls.webhook_key_file),
            webhook_ca_file=e.get("SAFEROLLOUT_WEBHOOK_CA_FILE", cls.webhook_ca_file),
            source_poll_seconds=float(e.get("SAFEROLLOUT_SOURCE_POLL_SECONDS", cls.source_poll_seconds)),
        )
