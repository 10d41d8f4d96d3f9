"""Prometheus as the metric provider: one instant query per metric, no data and errors are inconclusive."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import requests
from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from saferollout.core.models import Metric
from saferollout.core.queries import LabelNames, TemplateError, builtin_templates, render


@dataclass(frozen=True)
class Reading:
    value: float | None
    error: str | None = None


class PrometheusProvider:
    def __init__(self, url: str, timeout: float, labels: LabelNames, user_templates: Mapping[str, str] | None = None):
        self.url = url
        self.timeout = timeout
        self.templates = {**builtin_templates(labels), **(user_templates or {})}
        # no retries inside a query: the next analysis tick is the retry, and a dead Prometheus must cost
        # one timeout, not a backoff series that delays every other decision
        self._client = PrometheusConnect(url=url, disable_ssl=True, timeout=timeout, retry=Retry(total=0))
        self.queries = 0

    def query_text(self, metric: Metric, context: dict[str, str]) -> str:
        if metric.query is not None:
            return render(metric.query, context)
        assert metric.template is not None
        if metric.template not in self.templates:
            raise TemplateError(f"unknown template {metric.template!r}; known: {', '.join(sorted(self.templates))}")
        return render(self.templates[metric.template], context)

    def read(self, metric: Metric, context: dict[str, str]) -> Reading:
        try:
            text = self.query_text(metric, context)
        except TemplateError as e:
            return Reading(None, str(e))
        return self.instant(text)

    def samples(self, metric: Metric, context: dict[str, str], window: float, step: float) -> tuple[list[float], str | None]:
        """The metric's values over the last `window` seconds, one every `step`: the judge's samples."""
        try:
            text = self.query_text(metric, context)
        except TemplateError as e:
            return [], str(e)
        self.queries += 1
        end = datetime.now(UTC)
        try:
            result = self._client.custom_query_range(text, start_time=end - timedelta(seconds=window), end_time=end,
                                                     step=f"{step:g}s")
        except requests.RequestException:
            return [], f"Prometheus unreachable at {self.url}"
        except Exception as e:
            return [], f"query failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        if len(result) > 1:
            return [], f"query returned {len(result)} series; it must return one"
        values = [float(v) for _, v in (result[0]["values"] if result else [])]
        return [v for v in values if not (math.isnan(v) or math.isinf(v))], None

    def instant(self, text: str) -> Reading:
        self.queries += 1
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
