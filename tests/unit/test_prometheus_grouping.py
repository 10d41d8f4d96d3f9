"""Grouped queries: one query for many rollouts, split per (service, namespace). A fake client stands in for
Prometheus here (a unit test of one adapter); the e2e scenarios use the real one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from saferollout.adapters.prometheus import PrometheusProvider, QueryFailed, longest_range
from saferollout.core.models import Judge, Metric
from saferollout.core.queries import LabelNames


class FakeClient:
    def __init__(self, result: list[dict[str, Any]] | Exception) -> None:
        self.result = result
        self.queries: list[str] = []

    def query(self, text: str) -> list[dict[str, Any]]:
        self.queries.append(text)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def provider(result: list[dict[str, Any]] | Exception, ttl: float = 60.0) -> tuple[PrometheusProvider, FakeClient]:
    p = PrometheusProvider("http://127.0.0.1:9", 1.0, LabelNames(), group_ttl=ttl)
    fake = FakeClient(result)
    p.api = fake  # type: ignore[assignment]
    return p, fake


METRIC = Metric(name="error-rate", template="error-rate", max=0.01)


def ctx(service: str, ns: str = "demo") -> dict[str, str]:
    return {"service": service, "namespace": ns, "window": "1m", "canaryService": service}


def test_many_rollouts_share_one_query_and_get_their_own_value() -> None:
    series = [{"metric": {"service": f"app{i}-canary", "namespace": "demo"}, "value": [0, str(i / 1000)]}
              for i in range(50)]
    p, fake = provider(series)
    for i in range(50):  # everyone registers interest; the cache is refreshed when a newcomer is not in it
        p.read(METRIC, ctx(f"app{i}-canary"))
    before = len(fake.queries)
    values = [p.read(METRIC, ctx(f"app{i}-canary")).value for i in range(50)]
    assert values == [i / 1000 for i in range(50)]
    # the second round of 50 reads cost one refresh (errors and requests: two queries), for app49, which had
    # already been handed the newest result
    assert len(fake.queries) == before + 2
    assert 'service=~"app0-canary|app1-canary|' in fake.queries[-1] and "sum by (service, namespace)" in fake.queries[-1]


def test_a_rollout_is_never_handed_the_same_result_twice() -> None:
    series = [{"metric": {"service": s, "namespace": "demo"}, "value": [0, "0"]} for s in ("a", "b")]
    p, fake = provider(series)  # a ttl of 60 s: only the rule below makes a query
    p95 = Metric(name="p95", template="p95-latency", max=0.5)  # one query per refresh (error-rate makes two)
    p.read(p95, ctx("a"))
    p.read(p95, ctx("b"))  # b is new to the group: a refresh with both
    p.read(p95, ctx("a"))  # a has not seen that one yet: shared
    assert len(fake.queries) == 2
    p.read(p95, ctx("a"))  # a's next analysis must not judge the data it judged last time
    assert len(fake.queries) == 3
    p.read(p95, ctx("b"))
    assert len(fake.queries) == 3


def test_missing_series_is_no_data_and_nan_is_inconclusive() -> None:
    p, _ = provider([{"metric": {"service": "a", "namespace": "demo"}, "value": [0, "NaN"]}])
    assert p.read(METRIC, ctx("a")).value is None
    assert p.read(METRIC, ctx("b")).error == "no data"


def test_prometheus_down_is_reported_to_every_member() -> None:
    p, _ = provider(QueryFailed("Prometheus unreachable at http://127.0.0.1:9"))
    r = p.read(METRIC, ctx("a"))
    assert r.value is None and r.error is not None and "unreachable" in r.error


def test_user_queries_are_not_grouped() -> None:
    p, fake = provider([{"metric": {}, "value": [0, "0.5"]}])
    m = Metric(name="x", query='sum(up{job="{{ service }}"})', max=1)
    assert p.read(m, ctx("a")).value == 0.5
    assert fake.queries == ['sum(up{job="a"})']


class RangeClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, datetime, datetime, str]] = []

    def query_range(self, text: str, start: datetime, end: datetime, step: str) -> list[dict[str, Any]]:
        self.calls.append((text, start, end, step))
        return [{"metric": {}, "values": [[0, "0.1"], [1, "NaN"], [2, "0.2"]]}]


JUDGED = Metric(name="p95", query='histogram_quantile(0.95, sum by (le) (rate(x{service="{{ service }}"}[10s])))',
                judge=Judge(window="60s", step="1s"))


def test_longest_range_reads_ranges_and_subqueries() -> None:
    assert longest_range("rate(x[10s]) / rate(y[1m])") == 60
    assert longest_range("max_over_time(rate(x[30s])[5m:15s])") == 300
    assert longest_range("up") == 0


def test_judge_samples_share_no_data_and_none_reaches_before_the_stage() -> None:
    p = PrometheusProvider("http://127.0.0.1:9", 1.0, LabelNames())
    fake = RangeClient()
    p.api = fake  # type: ignore[assignment]
    values, err = p.samples(JUDGED, ctx("web-canary"), 60, 1)
    assert (values, err) == ([0.1, 0.2], None)
    _, start, end, step = fake.calls[-1]
    assert step == "10s" and (end - start).total_seconds() == 60  # a 1 s step over [10s] ranges would overlap
    since = datetime.now(UTC) - timedelta(seconds=25)
    p.samples(JUDGED, ctx("web-canary"), 60, 1, since)
    _, start, _, _ = fake.calls[-1]
    assert start == since + timedelta(seconds=10)  # the first sample's range starts when the weight was set
    calls = len(fake.calls)
    assert p.samples(JUDGED, ctx("web-canary"), 60, 1, datetime.now(UTC) - timedelta(seconds=2)) == ([], None)
    assert len(fake.calls) == calls  # nothing to ask yet: no query
