"""Metric providers: one per kind of metric (Metric.kind), each measures one metric for one analysis.

A provider only reads; what the numbers mean is the core's: a baseline's canary/stable pair is compared by the
core (core.analysis.compare), a judged metric's samples are tested there (core.judge), every verdict is made there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import requests

from saferollout.adapters.prometheus import PrometheusProvider, Reading
from saferollout.adapters.workloads import service_names
from saferollout.core import actions as a
from saferollout.core.clock import iso, parse_time
from saferollout.core.durations import parse_duration
from saferollout.core.models import TRAFFIC_CHECK, Metric, SafeRolloutSpec
from saferollout.core.queries import REQUESTS
from saferollout.redact import redact

VERIFY_ERROR_RATE = "verify-error-rate"


@dataclass(frozen=True)
class Measurement:
    value: float | None = None
    error: str | None = None  # why there is no value, or why the value is what it is (never a secret: it is redacted)
    requests: float | None = None  # behind a rate: how many requests it was computed from
    series: tuple[list[float], list[float]] | None = field(default=None, hash=False)  # judge: (canary, stable) samples
    pair: tuple[float | None, float | None] | None = None  # baseline: (canary, stable) now


class MetricProvider(Protocol):
    def measure(self, metric: Metric, context: dict[str, str], since: str | None) -> Measurement:
        """`context` fills the query's placeholders for the version analysed; `since`: no data older than this."""


def stable_context(context: dict[str, str]) -> dict[str, str]:
    """The same placeholders for the stable version."""
    return {**context, "service": context["stableService"], "canaryService": context["stableService"]}


@dataclass(frozen=True)
class PrometheusValue:
    """A PromQL query or template: its one value now."""

    prom: PrometheusProvider

    def measure(self, metric: Metric, context: dict[str, str], since: str | None) -> Measurement:
        reading = self.prom.read(metric, context)
        return Measurement(reading.value, reading.error, reading.requests)


def render_url(template: str, context: dict[str, str]) -> str:
    for key, value in context.items():
        template = template.replace("{{ " + key + " }}", value).replace("{{" + key + "}}", value)
    return template


@dataclass(frozen=True)
class HttpProbe:
    """1.0 for a 2xx answer within the timeout, else 0.0: an unreachable canary is unhealthy, not 'no data'."""

    get: Callable[..., requests.Response] = requests.get

    def measure(self, metric: Metric, context: dict[str, str], since: str | None) -> Measurement:
        assert metric.http_get is not None
        url = render_url(metric.http_get.url, context)
        try:
            r = self.get(url, timeout=parse_duration(metric.http_get.timeout))
        except requests.RequestException as e:
            return Measurement(0.0, f"{url}: {type(e).__name__}")
        return Measurement(1.0) if 200 <= r.status_code < 300 else Measurement(0.0, f"{url}: HTTP {r.status_code}")


@dataclass(frozen=True)
class BaselinePair:
    """Baseline: the canary's and the stable version's value now; the core compares them."""

    prom: PrometheusProvider

    def measure(self, metric: Metric, context: dict[str, str], since: str | None) -> Measurement:
        canary, stable = self.prom.read(metric, context), self.prom.read(metric, stable_context(context))
        return Measurement(error=canary.error or stable.error, pair=(canary.value, stable.value))


@dataclass(frozen=True)
class JudgeSamples:
    """Judge: both sides' samples over the window, newer than `since`; the core tests them."""

    prom: PrometheusProvider

    def measure(self, metric: Metric, context: dict[str, str], since: str | None) -> Measurement:
        assert metric.judge is not None
        window, step = parse_duration(metric.judge.window), parse_duration(metric.judge.step)
        start = parse_time(since) if since else None
        canary, err1 = self.prom.samples(metric, context, window, step, start)
        stable, err2 = self.prom.samples(metric, stable_context(context), window, step, start)
        return Measurement(error=err1 or err2, series=(canary, stable))


# The providers by Metric.kind (a unit test checks that every kind has one).
PROVIDERS: dict[str, Callable[[PrometheusProvider], MetricProvider]] = {
    "value": PrometheusValue,
    "http": lambda _prom: HttpProbe(),
    "baseline": BaselinePair,
    "judge": JudgeSamples,
}


def provider_for(metric: Metric, prom: PrometheusProvider) -> MetricProvider:
    return PROVIDERS[metric.kind](prom)


def context(spec: SafeRolloutSpec, namespace: str, name: str, target: str, rate_window: str) -> dict[str, str]:
    """The placeholders of a query for the version analysed (`canary`/`preview`: the new one)."""
    stable, canary = service_names(spec)
    service = canary if target in ("canary", "preview") else stable
    return {"service": service, "canaryService": service, "stableService": stable, "namespace": namespace,
            "window": rate_window, "interval": spec.analysis.interval, "name": name, "target": spec.target_ref.name}


def measure_all(prom: PrometheusProvider, spec: SafeRolloutSpec, act: a.QueryMetrics, ctx: dict[str, str],
                asked_at: datetime) -> a.MetricValues:
    """Every metric the core asked for, each by its provider: the operator and the back-test measure alike."""
    values: dict[str, float | None] = {}
    errors: dict[str, str] = {}
    samples: dict[str, float] = {}
    series: dict[str, tuple[list[float], list[float]]] = {}
    pairs: dict[str, tuple[float | None, float | None]] = {}
    if act.max_error_rate is not None:
        wanted = [Metric(name=VERIFY_ERROR_RATE, template="error-rate", max=act.max_error_rate)]
    else:
        # shared analysis templates resolved by the core; a reference it could not resolve is never measured
        wanted = [m for m in act.definitions or spec.analysis.metrics if m.name in act.metrics and not m.template_ref]
    for m in wanted:
        try:
            got = provider_for(m, prom).measure(m, ctx, act.since)
        except Exception as e:  # one metric's failure is that metric's "no data", never the others'
            got = Measurement(error=f"{type(e).__name__}: {str(e)[:200]}")
        values[m.name] = got.value
        if got.requests is not None:
            samples[m.name] = got.requests
        if got.series is not None:
            series[m.name] = got.series
        if got.pair is not None:
            pairs[m.name] = got.pair
        if got.error:
            errors[m.name] = redact(got.error)
    if TRAFFIC_CHECK in act.metrics:  # both Services' request counts; the core compares the share with the weight
        counter = Metric(name=REQUESTS, template=REQUESTS, min=0)
        # the built-in error-rate read the canary's count just now, in this context: not asked for twice
        counted = next((samples[m.name] for m in wanted if m.query is None and m.template == "error-rate"
                        and m.name in samples), None)
        canary = Reading(counted) if counted is not None else prom.read(counter, ctx)
        stable = prom.read(counter, stable_context(ctx))
        values[TRAFFIC_CHECK], pairs[TRAFFIC_CHECK] = None, (canary.value, stable.value)
        if canary.error or stable.error:
            errors[TRAFFIC_CHECK] = redact(f"request count: {canary.error or stable.error}")
    return a.MetricValues(act.target, act.purpose, values, errors, samples, series, pairs, iso(asked_at))
