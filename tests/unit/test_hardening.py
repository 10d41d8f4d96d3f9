"""Hostile and unlucky input (issue: no shell from a schema name, no secret through an error, no rollout wedged at
its weight). Each finding has its regression test here; the database ones run on a real PostgreSQL in
tests/e2e/test_postgres_snapshots.py, and the four scenarios in scenarios/ run them end to end."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import ValidationError

from saferollout.adapters.prometheus import MAX_ANSWER_BYTES, PrometheusProvider
from saferollout.core import actions as a
from saferollout.core.engine import Inputs, decide
from saferollout.core.models import Metric, SafeRolloutStatus
from saferollout.core.queries import LabelNames
from saferollout.redact import RedactingFilter, forget, naming, redact, register
from tests.unit.world import BASE, T0, World, make_spec, spec_from


def strict_json(status: SafeRolloutStatus) -> str:
    return json.dumps(status.model_dump(by_alias=True, exclude_none=True, mode="json"), allow_nan=False)


# ------------------------------------------------------------------------------------- 3: a baseline against 0


def test_a_ratio_against_a_stable_zero_fails_and_the_status_stays_strict_json() -> None:
    metrics = [{"name": "errors", "query": 'sum(rate(x{service="{{ service }}"}[1m]))', "baseline": {"maxRatio": 2},
                "onBreach": "rollback"}]
    spec = make_spec(**{"analysis.metrics": metrics})
    status = SafeRolloutStatus()
    w = World(spec)
    # drive to the first stage with a healthy world, then answer one analysis with canary 0.25 vs stable 0
    w.run(8)
    status = w.status
    query = a.QueryMetrics("canary", "analysis", ("errors",))
    seen = []
    for i in range(3):
        values = a.MetricValues("canary", "analysis", {"errors": None}, pairs={"errors": (0.25, 0.0)},
                                asked_at=None)
        d = decide(spec, status, Inputs(now=w.now + timedelta(seconds=2 * (i + 1)), results=[a.Outcome(query, True),
                                                                                          values]))
        strict_json(d.status)
        status = d.status
        seen.append(d)
    ms = next(m for m in seen[0].status.analysis.metrics if m.name == "errors")
    assert ms.verdict == "fail" and ms.value is None and "unbounded" in (ms.message or "")
    assert seen[-1].status.phase == "RollingBack" and a.SetWeight(0) in seen[-1].actions


# ------------------------------------------------------------------------ 4: a query that raises is inconclusive


def test_a_failed_query_counts_as_inconclusive_and_pauses() -> None:
    w = World(make_spec())
    w.run(8)
    status = w.status
    query = a.QueryMetrics("canary", "analysis", ("error-rate",))
    for i in range(3):
        d = decide(w.spec, status, Inputs(now=w.now + timedelta(seconds=2 * (i + 1)),
                                          results=[a.Outcome(query, False, "TemplateError: boom")]))
        status = d.status
    assert status.phase == "Paused" and status.pause_reason == "inconclusive"
    assert "query failed" in (status.analysis.metrics[0].message or "")


# ---------------------------------------------------------------------------- 5: the core never raises, anywhere


def test_stages_shortened_mid_rollout_continue_at_the_new_last_stage() -> None:
    w = World(make_spec())
    w.run(25)  # stage 3 of 4 (50%)
    assert w.status.stage == 3 and w.weight == 50
    w.spec = make_spec(**{"strategy.canary.stages": [{"weight": 5, "duration": "10s"}, {"weight": 25, "duration": "10s"}]})
    w.run(120, until=World.done)
    assert w.phase() == "Succeeded" and "StagesChanged" in w.reasons()
    assert w.weights_seen[-1] == 25  # down to the new last stage, never up


def test_an_error_inside_the_core_rolls_back_instead_of_wedging() -> None:
    w = World(make_spec())
    w.run(8)
    assert w.weight == 5
    broken = w.status.model_copy(deep=True)
    broken.stage_started_at = "not a time"  # nothing the core wrote, but an edited or damaged status can say it
    broken.stage_resumed_at = "not a time"
    d = decide(w.spec, broken, Inputs(now=w.now))
    assert d.status.phase == "RollingBack" and d.actions[0] == a.SetWeight(0)
    degraded = next(c for c in d.status.conditions if c.type == "Degraded")
    assert degraded.reason == "InternalError" and "ValueError" in degraded.message
    strict_json(d.status)


def test_a_refused_canary_blocks_before_any_traffic() -> None:
    w = World(make_spec())
    status = SafeRolloutStatus()
    now = T0
    results: list[a.Result] = []
    for _ in range(10):
        d = decide(w.spec, status, Inputs(now=now, results=results))
        status, results = d.status, []
        for act in d.actions:
            if isinstance(act, a.EnsureCanary):
                results.append(a.Outcome(act, False, "Service web-canary is not ours", refused=True))
            elif isinstance(act, a.ReadTarget):
                results.append(a.TargetState({"web": "demo/web:1.0"}, True, "1"))
        if status.phase == "Blocked":
            break
    assert status.phase == "Blocked" and status.weight == 0 and "not ours" in (status.message or "")


# -------------------------------------------------------------------- 6: the schema refuses what cannot be run


@pytest.mark.parametrize(("path", "value", "field"), [
    ("analysis.interval", "0s", "analysis.interval"),
    ("analysis.interval", "9" * 400 + "s", "analysis.interval"),
    ("strategy.canary.stages", [{"weight": 5, "duration": "100000h"}], "duration"),
    ("analysis.metrics", [{"name": "h", "httpGet": {"timeout": "0s"}}], "timeout"),
    ("analysis.metrics", [{"name": "j", "query": "q", "judge": {"window": "24h", "step": "1s"}}], "window"),
    ("analysis.prometheus", {"address": "gopher://x"}, "address"),
    ("targetRef.name", "w" * 57, "targetRef.name"),
    ("notifications", [{"webhook": {"url": "https://x", "timeout": "1h"}}], "timeout"),
])
def test_the_schema_refuses_what_the_operator_cannot_run(path: str, value: Any, field: str) -> None:
    with pytest.raises(ValidationError) as e:
        make_spec(**{path: value})
    assert field in str(e.value)


def test_the_crd_carries_the_same_bounds_as_cel() -> None:
    from saferollout.crdgen import crd

    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    interval = schema["properties"]["spec"]["properties"]["analysis"]["properties"]["interval"]
    assert interval["maxLength"] == 32
    assert interval["x-kubernetes-validations"][0]["rule"] == \
        "duration(self) >= duration('1s') && duration(self) <= duration('1h')"
    assert "self.metadata.name.size() <= 63" in json.dumps(schema["x-kubernetes-validations"])


# ---------------------------------------------------------------------------- 2: secrets, per rollout, always


def test_masking_is_per_rollout_and_covers_short_passwords_and_bare_at_signs() -> None:
    with naming("tenant-a", "web"):
        register("Tr0ub4dor&3")
        register("pw")
        assert redact("auth failed for Tr0ub4dor&3") == "auth failed for ***"
        assert redact("pw: 'pw', not pwd") == "***: '***', not pwd"
    with naming("tenant-b", "web"):  # b may not learn a's password by seeing it masked in its own text
        assert redact("my guess is Tr0ub4dor&3") == "my guess is Tr0ub4dor&3"
    assert redact("postgresql://app:p@ss@w0rd@db:5432/app failed") == "postgresql://app:***@db:5432/app failed"
    assert "Tr0ub4dor&3" not in redact("Tr0ub4dor&3", everyone=True)  # operator logs: every secret
    forget(("tenant-a", "web"))
    with naming("tenant-a", "web"):
        assert redact("Tr0ub4dor&3") == "Tr0ub4dor&3"


def test_tracebacks_in_logs_are_masked() -> None:
    with naming("ns", "r"):
        register("hunter2-secret")
    try:
        raise ValueError("could not parse 'hunter2-secret'")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, "f", 1, "failed", None, sys.exc_info())
    RedactingFilter().filter(record)
    assert record.exc_info is None and record.exc_text and "hunter2-secret" not in record.exc_text
    assert "ValueError" in record.exc_text


def test_a_secret_that_is_not_a_dsn_is_never_quoted() -> None:
    from pathlib import Path

    from saferollout.adapters.snapshots.postgres import NotADsn, PostgresSnapshots

    with naming("ns", "dsn"), pytest.raises(NotADsn) as e:
        PostgresSnapshots("s3cret-value-not-a-dsn", Path("/nonexistent"))
    assert "s3cret" not in str(e.value) and e.value.__cause__ is None and e.value.__suppress_context__


# ------------------------------------------------------------- 6: Prometheus answers read with a bound, no body


class _Answer(BaseHTTPRequestHandler):
    body = b""
    code = 200

    def do_GET(self) -> None:
        self.send_response(self.code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Answer]]]:
    handler = type("Answer", (_Answer,), {})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()


METRIC = Metric(name="q", query="up", max=1)


def test_an_arbitrary_endpoint_is_not_copied_into_status(server: tuple[str, type[_Answer]]) -> None:
    url, handler = server
    handler.body, handler.code = b"<html>internal admin page: token=abc123</html>", 200
    r = PrometheusProvider(url, 2.0, LabelNames()).read(METRIC, {})
    assert r.value is None and r.error == "not a Prometheus answer (HTTP 200)"


def test_an_oversized_answer_is_inconclusive(server: tuple[str, type[_Answer]]) -> None:
    url, handler = server
    one = {"metric": {"x": "y" * 100}, "value": [0, "1"]}
    handler.body = json.dumps({"status": "success", "data": {"resultType": "vector",
                                                              "result": [one] * (MAX_ANSWER_BYTES // 100)}}).encode()
    r = PrometheusProvider(url, 5.0, LabelNames()).read(METRIC, {})
    assert r.value is None and r.error is not None and "more series than one rollout can use" in r.error


def test_prometheus_errors_keep_their_own_words(server: tuple[str, type[_Answer]]) -> None:
    url, handler = server
    handler.code = 400
    handler.body = b'{"status":"error","errorType":"bad_data","error":"parse error at char 3"}'
    r = PrometheusProvider(url, 2.0, LabelNames()).read(METRIC, {})
    assert r.error == "query failed (HTTP 400, bad_data): parse error at char 3"


def test_grouped_queries_without_a_namespace_label(server: tuple[str, type[_Answer]]) -> None:
    url, handler = server
    handler.body = b'{"status":"success","data":{"resultType":"vector","result":' \
                   b'[{"metric":{"service":"web-canary"},"value":[0,"0.5"]}]}}'
    p = PrometheusProvider(url, 2.0, LabelNames(namespace=""), group_ttl=1.0)
    m = Metric(name="p95", template="p95-latency", max=1)
    r = p.read(m, {"service": "web-canary", "namespace": "demo", "window": "1m"})
    assert (r.value, r.error) == (0.5, None)


def test_a_spec_from_the_readme_still_validates() -> None:
    assert spec_from(BASE).analysis.interval == "2s"


def test_an_edit_raising_the_current_weight_waits_for_passing_verdicts() -> None:
    """Found by the property tests: stages edited from [5, ...] to [6] while the canary was failing sent it 6%."""
    failing = {"on": True}

    def fn(name: str, target: str, weight: int, t: float) -> float | None:
        return 0.5 if failing["on"] else 0.001

    w = World(make_spec(**{"analysis.failureLimit": 5}), metrics=fn)
    w.run(5)
    assert w.weight == 5 and w.status.analysis.metrics[0].verdict == "fail"
    w.spec = make_spec(**{"analysis.failureLimit": 5, "strategy.canary.stages": [{"weight": 6, "duration": "10s"}]})
    w.run(2)
    assert w.weight == 5 and "holding 5% until every metric passes" in (w.status.message or "")
    failing["on"] = False
    w.run(4)
    assert w.weight == 6


def test_a_request_count_too_small_to_square_is_no_evidence() -> None:
    from saferollout.core.stats import wilson_lower

    assert wilson_lower(0.5, 1e-300) == 0.0 and wilson_lower(0.5, float("nan")) == 0.0


def test_a_url_dsn_with_a_bare_at_is_refused_and_its_pieces_masked() -> None:
    """libpq ends the password at the first '@' and quotes the rest as a host name in its error."""
    from pathlib import Path

    from saferollout.adapters.snapshots.postgres import NotADsn, PostgresSnapshots

    with naming("ns", "bare-at"):
        with pytest.raises(NotADsn, match="bare '@'"):
            PostgresSnapshots("postgresql://app:first-half@second-half@127.0.0.1:5432/app", Path("/nonexistent"))
        assert redact("failed to resolve host 'second-half@127.0.0.1'") == "failed to resolve host '***@127.0.0.1'"
        assert "first-half" not in redact("first-half")


def test_a_pause_while_watching_the_promoted_target_resumes_the_watch() -> None:
    """Found by the property tests: a breach with onBreach pause (or no data) during the watch after promotion
    paused the rollout, and resume sent it back to Progressing, whose stage weight pointed at the removed canary."""
    metric = {"name": "error-rate", "template": "error-rate", "max": 0.01, "failureLimit": 1, "onBreach": "pause"}
    blip = {"on": False}

    def fn(name: str, target: str, weight: int, t: float) -> float | None:
        return 0.5 if blip["on"] else 0.001

    w = World(make_spec(**{"analysis.metrics": [metric], "analysis.interval": "1s"}), metrics=fn)
    w.run(120, until=lambda x: x.status.step == "Watch")
    blip["on"] = True
    w.run(3)
    assert w.phase() == "Paused" and w.status.step == "Watch" and w.weight == 0
    seen = list(w.weights_seen)
    blip["on"] = False
    w.command = "resume/1"
    w.run(60, until=World.done)
    assert w.phase() == "Succeeded" and w.canary is None
    assert w.weights_seen == seen and w.weight == 0  # no weight written to the removed canary after the resume
