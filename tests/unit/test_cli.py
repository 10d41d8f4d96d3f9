"""The kubectl plugin's rendering and its refusals, on status objects like the operator writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from saferollout.cli import USAGE, bar, command_patch, main, progress, render_history, render_status

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def obj(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "namespace": "demo", "creationTimestamp": "2026-01-01T11:58:00Z"},
        "spec": {"template": {"containers": [{"name": "web", "image": "demo/web:2.0"}]},
                 "strategy": {"canary": {"stages": [{"weight": 5, "duration": "10s"}, {"weight": 25, "duration": "10s"},
                                                    {"weight": 50, "duration": "10s"}, {"weight": 100, "duration": "10s"}]}}},
        "status": status,
    }


def test_status_shows_stages_weight_metrics_and_progress() -> None:
    o = obj(phase="Progressing", stage=2, weight=25, stageElapsedSeconds=5, stableImages={"web": "demo/web:1.0"},
            message="stage 2/4 at 25%: 5s of analysis left",
            analysis={"lastRun": "2026-01-01T11:59:58Z", "metrics": [
                {"name": "error-rate", "value": 0.0021, "threshold": "<= 0.01", "verdict": "pass",
                 "consecutiveFailures": 0}]})
    text = render_status(o, NOW)
    assert "Phase:     Progressing" in text and "Weight:    25% to the canary" in text
    assert "  1.   5%    10s  done" in text and "  2.  25%    10s  <- now" in text
    assert "error-rate" in text and "0.0021" in text and "<= 0.01" in text and "pass" in text
    assert progress(o) == 15 / 40
    assert bar(0.375) == "[" + "#" * 11 + "-" * 19 + "]  38%"


def test_status_of_a_rollout_not_seen_yet() -> None:
    assert "not seen by the operator yet" in render_status(obj(), NOW)
    assert progress(obj()) == 0.0


def test_succeeded_is_complete() -> None:
    assert progress(obj(phase="Succeeded", stage=4)) == 1.0
    assert "  4. 100%    10s  done" in render_status(obj(phase="Succeeded", stage=4), NOW)


def test_history() -> None:
    at = (NOW - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    o = obj(phase="RolledBack", attempt=1, history=[
        {"action": "stepBack", "at": at, "stage": 2, "weight": 25, "metric": "p95-latency", "message": "2.6 > 2"},
        {"action": "rollback", "at": at, "stage": 1, "weight": 5, "metric": "p95-latency", "message": "2.4 > 2"}],
        incident={"reportRef": "web-incident-1"})
    text = render_history(o)
    assert text.index("stepBack") < text.index("rollback") and "web-incident-1" in text


def test_command_patch_is_unique_per_call() -> None:
    a, b = command_patch("abort"), command_patch("abort")
    assert a["metadata"]["annotations"]["saferollout.dev/command"].startswith("abort/")
    assert a != b


def test_bad_usage_exits_2() -> None:
    assert main(["frobnicate"]) == USAGE


def test_status_of_a_rollout_without_template_names_the_pod_template_and_revision() -> None:
    o = {"metadata": {"name": "web", "namespace": "shop"},
         "spec": {"targetRef": {"name": "web"}, "strategy": {"canary": {"traffic": {"gatewayAPI": {
             "httpRoute": "web", "stableService": "web", "canaryService": "web-canary"}}}}},
         "status": {"phase": "RolledBack", "templateHash": "31c134e73967f318", "canaryImages": {"web": "web:2.0"},
                    "source": {"stableTemplateHash": "c3f049494cb3dd6c", "generation": 3, "revision": "9f2c1e",
                               "targetWrites": 0, "refused": {"templateHash": "31c134e73967f318", "generation": 3,
                                                              "revision": "9f2c1e"}}}}
    text = render_status(o, NOW)
    assert "web=web:2.0 (pod template 31c134e73967f318, generation 3, revision 9f2c1e)" in text
    assert "stable template c3f049494cb3dd6c; 0 write(s)" in text
    assert "Refused:   pod template 31c134e73967f318 (generation 3, revision 9f2c1e)" in text


def test_status_shows_the_progress_deadline_while_waiting_and_once_exceeded() -> None:
    waiting = obj(phase="Preflight", message="waiting for the canary workload to become available",
                  progressDeadline={"key": "canary", "waitingFor": "the canary workload to become available",
                                    "since": "2026-01-01T11:59:48Z", "deadlineAt": "2026-01-01T12:00:08Z"})
    waiting["spec"]["progressDeadlineSeconds"] = 20
    text = render_status(waiting, NOW)
    assert ("Deadline:  waiting 12s for the canary workload to become available; 8s left of progressDeadlineSeconds "
            "20 (then rollback)") in text
    said = "progress deadline exceeded: waited 20s for the canary workload to become available"
    done = obj(phase="RolledBack", incident={"reason": "ProgressDeadlineExceeded", "reportRef": "web-incident-1"},
               progressDeadline={"key": "canary", "waitingFor": "the canary workload to become available",
                                 "since": "2026-01-01T11:59:00Z", "exceededAt": "2026-01-01T11:59:20Z",
                                 "message": said, "action": "rollback"},
               conditions=[{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}])
    text = render_status(done, NOW)
    assert f"Deadline:  {said}; then rollback" in text
    assert "Incident:  ProgressDeadlineExceeded; report web-incident-1" in text
    assert "Progressing=False (ProgressDeadlineExceeded)" in text


def test_status_shows_the_migration_job_and_its_log() -> None:
    o = obj(phase="RolledBack", stage=None)
    o["spec"]["migration"] = {"jobTemplate": {"spec": {}}, "timeout": "2m"}
    o["status"]["migration"] = {"job": "web-migrate-1", "state": "Failed", "durationSeconds": 4.25,
                                "message": "BackoffLimitExceeded", "logsSource": "terminationMessage",
                                "logs": "BEGIN\nALTER TABLE\nERROR:  relation \"orders\" already exists"}
    text = render_status(o, NOW)
    assert "Migration: Job web-migrate-1 Failed in 4.2s: BackoffLimitExceeded" in text
    assert "terminationMessage, last 3 of 3 lines" in text and 'ERROR:  relation "orders" already exists' in text
    del o["status"]["migration"]
    assert "Migration: Job not created yet (timeout 2m)" in render_status(o, NOW)


def test_status_shows_each_stages_kind_header_match_mirror_or_weight() -> None:
    o = obj(phase="Progressing", stage=1, weight=0, routing="match x-canary=always")
    o["spec"]["strategy"]["canary"]["stages"] = [
        {"weight": 0, "duration": "30s", "match": {"headers": [{"name": "X-Canary", "value": "always"}],
                                                   "cookies": [{"name": "beta", "value": "1"}]}},
        {"weight": 0, "mirror": 20, "duration": "30s"},
        {"weight": 10, "sticky": True, "duration": "1m"},
        {"weight": 100, "duration": "1m"}]
    text = render_status(o, NOW)
    assert "Weight:    0% to the canary; also match x-canary=always" in text
    assert "  1. header match X-Canary, cookie beta    30s  <- now" in text
    assert "  2. mirror 20% (shadow)    30s" in text
    assert "  3.  10% sticky     1m" in text and "  4. 100%     1m" in text
