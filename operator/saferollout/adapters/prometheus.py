"""Prometheus as the metric provider: one instant query per metric, no data and errors are inconclusive.

The HTTP API is read here directly, not through a client library: an answer is read up to a size limit (a query
that returns more series than one rollout can use is inconclusive, not an out-of-memory), and a failure is
described by its status and Prometheus' own error fields only, never by the body: `prometheus.address` is the
user's, and whatever it points at must not be readable through the rollout's status.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
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

MAX_ANSWER_BYTES = 4 << 20
# Prometheus' errorType values: an answer of this shape is Prometheus' own, and its error text may be shown
ERROR_TYPES = {"bad_data", "timeout", "canceled", "execution", "internal", "unavailable", "not_found", "none"}


class QueryFailed(Exception):
    """Why a query has no answer, in words safe for the status."""


class PrometheusApi:
    """GET /api/v1/query and /query_range with a bounded answer."""

    def __init__(self, url: str, timeout: float, pool_size: int) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        # no retries inside a query: the next analysis tick is the retry, and a dead Prometheus must cost
        # one timeout, not a backoff series that delays every other decision; one kept connection per thread
        adapter = HTTPAdapter(max_retries=Retry(total=0), pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def query(self, text: str) -> list[Any]:
        return self._get("query", {"query": text, "timeout": f"{self.timeout:g}s"})

    def query_range(self, text: str, start: datetime, end: datetime, step: str) -> list[Any]:
        return self._get("query_range", {"query": text, "start": start.timestamp(), "end": end.timestamp(),
                                         "step": step, "timeout": f"{self.timeout:g}s"})

    def _get(self, path: str, params: dict[str, Any]) -> list[Any]:
        deadline = time.monotonic() + 2 * self.timeout
        body = bytearray()
        try:
            with self.session.get(f"{self.url}/api/v1/{path}", params=params, timeout=self.timeout, stream=True,
                                  allow_redirects=False) as r:
                for chunk in r.iter_content(64 << 10):
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        raise QueryFailed(f"the answer is over {MAX_ANSWER_BYTES >> 20} MiB: the query returns more "
                                          "series than one rollout can use")
                    if time.monotonic() > deadline:
                        raise QueryFailed(f"Prometheus did not answer within {self.timeout:g}s")
                code = r.status_code
        except requests.ConnectionError:
            raise QueryFailed(f"Prometheus unreachable at {self.url}") from None
        except requests.Timeout:
            raise QueryFailed(f"Prometheus did not answer within {self.timeout:g}s") from None
        except requests.RequestException as e:
            raise QueryFailed(f"Prometheus request failed: {type(e).__name__}") from None
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or doc.get("status") not in ("success", "error"):
            raise QueryFailed(f"not a Prometheus answer (HTTP {code})")
        if doc["status"] == "error":
            kind = doc.get("errorType")
            detail = f": {str(doc.get('error', ''))[:200]}" if kind in ERROR_TYPES else ""
            raise QueryFailed(f"query failed (HTTP {code}, {kind if kind in ERROR_TYPES else 'error'}){detail}")
        result = (doc.get("data") or {}).get("result")
        if isinstance(result, list):
            return result
        raise QueryFailed(f"not a Prometheus answer (HTTP {code})")


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
        self.api: PrometheusApi = PrometheusApi(url, timeout, pool_size)
        self.queries = 0
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # a back-test replays history on its own

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
        end = self.clock()
        reach = longest_range(text)
        step = max(step, reach)
        start = end - timedelta(seconds=window)
        if since is not None:
            start = max(start, since + timedelta(seconds=reach))
        if start > end:
            return [], None
        self.count_query()
        try:
            result = self.api.query_range(text, start, end, f"{step:g}s")
        except QueryFailed as e:
            return [], str(e)
        if len(result) > 1:
            return [], f"query returned {len(result)} series; it must return one"
        try:
            values = [float(v) for _, v in (result[0]["values"] if result else [])]
        except (KeyError, TypeError, ValueError):
            return [], "not a Prometheus range answer"
        return [v for v in values if math.isfinite(v)], None

    def instant(self, text: str) -> Reading:
        self.count_query()
        try:
            result = self.api.query(text)
        except QueryFailed as e:  # a bad query, a server error, Prometheus down: inconclusive, and said
            return Reading(None, str(e))
        if not result:
            return Reading(None, "no data")
        try:
            if isinstance(result[0], dict):  # instant vector
                if len(result) > 1:
                    return Reading(None, f"query returned {len(result)} series; it must return one")
                raw = result[0].get("value", [None, None])[1]
            else:  # scalar: [timestamp, "value"]
                raw = result[1] if len(result) == 2 else None
            value = float(raw)
        except (IndexError, TypeError, ValueError, AttributeError):
            return Reading(None, "not a number")
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
        values = {"services": alternation(sorted({s for s, _ in members})), "window": window}
        if labels.namespace:  # an empty namespace label drops the matcher: there is no namespace to list
            values["namespaces"] = alternation(sorted({n for _, n in members}))
        readings: dict[Member, Reading] = {}
        try:
            text = render(self.templates[template], values)
            self.provider.count_query()
            result = self.provider.api.query(text)
        except (QueryFailed, TemplateError) as e:
            readings = dict.fromkeys(members, Reading(None, str(e)))
        else:
            for series in result:
                if not isinstance(series, dict):
                    continue
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
