"""Prometheus as the metric provider: one instant query per metric, no data and errors are inconclusive."""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import requests
from prometheus_api_client import PrometheusConnect
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from saferollout.core.models import Metric
from saferollout.core.queries import (
    REQUESTS,
    LabelNames,
    TemplateError,
    alternation,
    builtin_templates,
    grouped_templates,
    render,
)


@dataclass(frozen=True)
class Reading:
    value: float | None
    error: str | None = None
    requests: float | None = None  # behind a rate: how many requests it was computed from


class PrometheusProvider:
    def __init__(self, url: str, timeout: float, labels: LabelNames, user_templates: Mapping[str, str] | None = None,
                 group_ttl: float = 0.0, pool_size: int = 16):
        self.url = url
        self.timeout = timeout
        self.labels = labels
        self.templates = {**builtin_templates(labels), **(user_templates or {})}
        self.grouped = GroupedQueries(self, grouped_templates(labels), group_ttl) if group_ttl > 0 else None
        self.on_query: Callable[[], None] | None = None
        # no retries inside a query: the next analysis tick is the retry, and a dead Prometheus must cost
        # one timeout, not a backoff series that delays every other decision
        self._client = PrometheusConnect(url=url, disable_ssl=True, timeout=timeout, retry=Retry(total=0))
        # one kept connection per thread that runs rollouts (the client mounts a pool of 10 of its own)
        self._client._session.mount(self._client.url, HTTPAdapter(max_retries=Retry(total=0), pool_maxsize=pool_size))
        self.queries = 0

    def count_query(self) -> None:
        self.queries += 1
        if self.on_query is not None:
            self.on_query()

    def query_text(self, metric: Metric, context: dict[str, str]) -> str:
        if metric.query is not None:
            return render(metric.query, context)
        assert metric.template is not None
        if metric.template not in self.templates:
            raise TemplateError(f"unknown template {metric.template!r}; known: {', '.join(sorted(self.templates))}")
        return render(self.templates[metric.template], context)

    def read(self, metric: Metric, context: dict[str, str]) -> Reading:
        reading = self._read(metric, context)
        if metric.query is None and metric.template == "error-rate" and reading.value is not None:
            count = self._read(Metric(name=REQUESTS, template=REQUESTS, min=0), context)
            return Reading(reading.value, reading.error, count.value)
        return reading

    def _read(self, metric: Metric, context: dict[str, str]) -> Reading:
        if self.grouped is not None and metric.query is None and metric.template in self.grouped.templates:
            return self.grouped.read(metric.template, context)
        try:
            text = self.query_text(metric, context)
        except TemplateError as e:
            return Reading(None, str(e))
        return self.instant(text)

    def samples(self, metric: Metric, context: dict[str, str], window: float, step: float,
                since: datetime | None = None) -> tuple[list[float], str | None]:
        """The judge's samples: the metric over the last `window` seconds, only from data newer than `since`.

        A sample over a `[10s]` range shares data with every sample less than 10 s away, and Mann-Whitney needs
        independent samples: the step is at least the query's longest range. A sample whose range reaches back
        before `since` (the stage's weight was set then) mixes two weights, so none starts before `since` + range.
        """
        try:
            text = self.query_text(metric, context)
        except TemplateError as e:
            return [], str(e)
        end = datetime.now(UTC)
        reach = longest_range(text)
        step = max(step, reach)
        start = end - timedelta(seconds=window)
        if since is not None:
            start = max(start, since + timedelta(seconds=reach))
        if start > end:
            return [], None
        self.count_query()
        try:
            result = self._client.custom_query_range(text, start_time=start, end_time=end, step=f"{step:g}s")
        except requests.RequestException:
            return [], f"Prometheus unreachable at {self.url}"
        except Exception as e:
            return [], f"query failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        if len(result) > 1:
            return [], f"query returned {len(result)} series; it must return one"
        values = [float(v) for _, v in (result[0]["values"] if result else [])]
        return [v for v in values if not (math.isnan(v) or math.isinf(v))], None

    def instant(self, text: str) -> Reading:
        self.count_query()
        try:
            result = self._client.custom_query(text, timeout=self.timeout)
        except requests.ConnectionError:
            return Reading(None, f"Prometheus unreachable at {self.url}")
        except requests.Timeout:
            return Reading(None, f"Prometheus did not answer within {self.timeout:g}s")
        except Exception as e:  # a bad query or a server error: inconclusive, and said
            return Reading(None, f"query failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
        if not result:
            return Reading(None, "no data")
        if isinstance(result[0], dict):  # instant vector
            if len(result) > 1:
                return Reading(None, f"query returned {len(result)} series; it must return one")
            raw = result[0].get("value", [None, None])[1]
        else:  # scalar: [timestamp, "value"]
            raw = result[1] if len(result) == 2 else None
        try:
            value = float(raw)
        except (TypeError, ValueError):
            return Reading(None, f"not a number: {raw!r}")
        if math.isnan(value) or math.isinf(value):
            return Reading(None, "NaN (no requests in the window)")
        return Reading(value)


Member = tuple[str, str]  # (service, namespace) of a rollout in a group


@dataclass
class _Fetched:
    at: float  # time.monotonic()
    members: set[Member]
    readings: dict[Member, Reading]
    handed: set[Member] = field(default_factory=set)  # who has these readings already: their next read refreshes


class GroupedQueries:
    """Many rollouts, one query: the built-in templates asked `by (service, namespace)` for every rollout that
    has asked lately, cached for `ttl` seconds and split per rollout.

    Without it the operator sends one query per metric per rollout per tick; with it, one per template and rate
    window per `ttl`, however many rollouts share them. A rollout is never handed a result it has already been
    handed: with an interval as short as the ttl, an analysis on time would otherwise judge the last tick's data
    again, a whole interval late to see a failure.
    """

    FORGET_AFTER = 300.0

    def __init__(self, provider: PrometheusProvider, templates: dict[str, str], ttl: float) -> None:
        self.provider = provider
        self.templates = templates
        self.ttl = ttl
        self._lock = threading.Lock()
        self._key_locks: dict[tuple[str, str], threading.Lock] = {}
        self._interest: dict[tuple[str, str], dict[Member, float]] = {}
        self._cache: dict[tuple[str, str], _Fetched] = {}

    def read(self, template: str, context: dict[str, str]) -> Reading:
        key = (template, context["window"])
        who = (context["service"], context["namespace"] if self.provider.labels.namespace else "")
        now = time.monotonic()
        with self._lock:
            wanted = self._interest.setdefault(key, {})
            wanted[who] = now
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # one refresh per key at a time; the others wait and read its result
            fetched = self._cache.get(key)
            if fetched is None or now - fetched.at > self.ttl or who not in fetched.members or who in fetched.handed:
                fetched = self._refresh(key)
            fetched.handed.add(who)
        return fetched.readings.get(who, Reading(None, "no data"))

    def _refresh(self, key: tuple[str, str]) -> _Fetched:
        template, window = key
        now = time.monotonic()
        with self._lock:
            wanted = self._interest[key]
            for who in [w for w, seen in wanted.items() if now - seen > self.FORGET_AFTER]:
                del wanted[who]
            members = set(wanted)
        labels = self.provider.labels
        text = render(self.templates[template], {
            "services": alternation(sorted({s for s, _ in members})),
            "namespaces": alternation(sorted({n for _, n in members})), "window": window})
        self.provider.count_query()
        readings: dict[Member, Reading] = {}
        try:
            result = self.provider._client.custom_query(text, timeout=self.provider.timeout)
        except requests.ConnectionError:
            readings = {m: Reading(None, f"Prometheus unreachable at {self.provider.url}") for m in members}
        except requests.Timeout:
            readings = {m: Reading(None, f"Prometheus did not answer within {self.provider.timeout:g}s") for m in members}
        except Exception as e:
            readings = {m: Reading(None, f"query failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
                        for m in members}
        else:
            for series in result:
                lab = series.get("metric", {})
                who = (lab.get(labels.service, ""), lab.get(labels.namespace, "") if labels.namespace else "")
                try:
                    value = float(series["value"][1])
                except (KeyError, TypeError, ValueError):
                    continue
                ok = not (math.isnan(value) or math.isinf(value))
                readings[who] = Reading(value) if ok else Reading(None, "NaN (no requests in the window)")
        entry = _Fetched(time.monotonic(), members, readings)
        self._cache[key] = entry
        return entry


_RANGE = re.compile(r"\[\s*((?:[0-9]+(?:ms|s|m|h|d|w|y))+)\s*(?::[^\]]*)?\]")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def longest_range(query: str) -> float:
    """The longest range selector (`[10s]`, `[1m:15s]`) in a rendered query, in seconds; 0 when it has none."""
    longest = 0.0
    for m in _RANGE.finditer(query):
        seconds = sum(float(n) * _UNIT[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", m.group(1)))
        longest = max(longest, seconds)
    return longest
