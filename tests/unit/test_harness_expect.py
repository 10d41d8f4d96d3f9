"""The expectations, checked against hand-made observations (no cluster), and the one definition of each key."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from harness.expect import CHECKERS, CaseOutcome, Observed, check_all, checks, events_in_order, secret_needles
from harness.format import Bounds, Expect, NotificationExpect
from harness.scenario import clear_paths, describe_path
from harness.webhook import Received


def event(reason: str, stamp: str, rv: int) -> dict[str, Any]:
    return {"reason": reason, "firstTimestamp": stamp, "metadata": {"resourceVersion": str(rv)},
            "involvedObject": {"kind": "SafeRollout", "name": "web"}}


def test_events_in_order_uses_time_then_resource_version() -> None:
    events = [event("RollbackStarted", "2026-01-01T00:00:05Z", 90), event("AnalysisFailed", "2026-01-01T00:00:05Z", 89),
              event("AnalysisDegraded", "2026-01-01T00:00:03Z", 95), event("RolledBack", "2026-01-01T00:00:09Z", 99)]
    assert events_in_order(["AnalysisDegraded", "AnalysisFailed", "RollbackStarted", "RolledBack"], events).passed
    late = events_in_order(["RollbackStarted", "AnalysisFailed"], events)
    assert not late.passed and "only before 'RollbackStarted'" in late.detail
    assert "came never" in events_in_order(["Promoted"], events).detail
    assert events_in_order([], events).passed


def generic(severity: str, report: str | None = None, at: float = 0.0, path: str = "/g") -> Received:
    body = {"rollout": "ns/web", "severity": severity, "title": "t", "text": "x", "reportRef": report}
    return Received(at, path, body, json.dumps(body))


def slack(icon: str, report: str | None = None, at: float = 0.0, path: str = "/s") -> Received:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": f"{icon} *t*\nx"}}]
    if report:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"Incident report: `{report}`"}})
    body = {"text": "t: x", "blocks": blocks}
    return Received(at, path, body, json.dumps(body))


def test_received_reads_format_severity_and_report() -> None:
    assert (generic("high").format, generic("high").severity) == ("generic", "high")
    assert (slack(":rotating_light:").format, slack(":rotating_light:").severity) == ("slack", "critical")
    assert slack(":warning:").severity == "high" and slack(":information_source:").severity == "medium"
    assert generic("critical", "web-incident-1").names_report("web-incident-1")
    assert generic("critical", "ns/web-incident-1").names_report("web-incident-1")
    assert not generic("critical").names_report("web-incident-1")
    assert slack(":rotating_light:", "web-incident-1").names_report("web-incident-1")
    assert Received(0, "/", None, "not json").format == "unknown"


HOOKS = [{"url": "http://127.0.0.1:9/g", "minSeverity": "high", "format": "generic"},
         {"url": "http://127.0.0.1:9/s", "minSeverity": "critical", "format": "slack"}]
WANT = {"notifications": NotificationExpect(Bounds(3, None), ("critical",), ("generic", "slack"), True)}


def observed(*got: Received) -> Observed:
    return Observed(notifications=list(got), webhooks=HOOKS, report_name="web-incident-1",
                    rollout={"status": {"incident": {"reportRef": "web-incident-1"}}})


def test_notifications_pass_when_each_target_got_only_its_share() -> None:
    obs = observed(generic("high", at=1), generic("critical", at=2), slack(":rotating_light:", at=2),
                   generic("critical", "web-incident-1", at=3), slack(":rotating_light:", "web-incident-1", at=3))
    checks = check_all(WANT, obs, "ns", "web")
    assert all(c.passed for c in checks), [c.line() for c in checks if not c.passed]
    assert len(checks) == 7  # received, severities, formats, and two per target


def test_notifications_below_min_severity_or_wrong_format_fail() -> None:
    obs = observed(generic("medium", at=1), slack(":warning:", at=2), generic("critical", at=2, path="/s"),
                   generic("critical", "web-incident-1", at=3), slack(":rotating_light:", at=3))
    failed = {c.name: c.detail for c in check_all(WANT, obs, "ns", "web") if not c.passed}
    assert "below high" in failed["notifications to /g (generic, minSeverity high)"]
    slack_problems = failed["notifications to /s (slack, minSeverity critical)"]
    assert "1 not slack" in slack_problems and "below critical" in slack_problems
    assert "does not name" in failed["notifications to /s (slack, minSeverity critical): the last one names the report"]


def test_nothing_received_fails_every_notification_check() -> None:
    checks = check_all(WANT, observed(), "ns", "web")
    assert [c.name for c in checks if not c.passed] == ["notifications received", "notifications severities",
                                                        "notifications formats", "notifications reportRefPresent"]


def test_selector_target_report_and_secret_checks() -> None:
    obs = Observed(selectors={"web": {"app": "web"}, "gone": None}, target_changes=[],
                   report={"data": {"report.md": "`memory` = 9e+07 (threshold canary - stable <= 5e+07)"}},
                   report_name="web-incident-1", password="pa$$word",
                   notifications=[generic("critical")], events=[], operator_log="")
    expect: dict[str, Any] = {
        "serviceSelector": [("web", {"app": "web"}), ("gone", {"app": "web"})],
        "targetUnchanged": True,
        "incidentReportContains": ["`memory`", "canary - stable"],
        "secretAbsentFrom": ["notifications", "events"],
    }
    result = {c.name: c.passed for c in check_all(expect, obs, "ns", "web")}
    assert result == {"serviceSelector web": True, "serviceSelector gone": False, "targetUnchanged": True,
                      "incidentReportContains": True, "secretAbsentFrom": True}
    obs.target_changes = ["generation 1 -> 2"]
    obs.notifications = [generic("critical", report="pa%24%24word")]  # URL-encoded counts too
    result = {c.name: c.passed for c in check_all(expect, obs, "ns", "web")}
    assert not result["targetUnchanged"] and not result["secretAbsentFrom"]
    missing = check_all({"incidentReportContains": ["latency"]}, obs, "ns", "web")[0]
    assert not missing.passed and "lacks ['latency']" in missing.detail


def test_path_absent_passes_only_when_nothing_is_there() -> None:
    want = {"pathAbsent": ("/tmp/owned-a", "/tmp/owned-b", "/tmp/owned-c")}
    obs = Observed(paths_present={"/tmp/owned-a": None, "/tmp/owned-b": "a file of 0 bytes, written 31.2s after the apply"})
    checks = {c.name: c for c in check_all(want, obs, "ns", "web")}
    assert checks["pathAbsent /tmp/owned-a"].passed and "nothing there" in checks["pathAbsent /tmp/owned-a"].detail
    assert not checks["pathAbsent /tmp/owned-b"].passed
    assert "a file of 0 bytes, written 31.2s" in checks["pathAbsent /tmp/owned-b"].detail
    assert not checks["pathAbsent /tmp/owned-c"].passed  # never looked at is no proof of absence


def test_clear_paths_removes_stale_files_and_refuses_directories(tmp_path: Path) -> None:
    stale, link, missing = tmp_path / "stale", tmp_path / "link", tmp_path / "missing"
    stale.write_text("from an earlier run")
    link.symlink_to(tmp_path / "nowhere")  # a dangling symlink is something at the path too
    assert clear_paths([str(stale), str(link), str(missing)]) == [str(stale), str(link)]
    assert not stale.exists() and not link.is_symlink()
    assert describe_path(stale, time.monotonic()) is None
    stale.write_text("new")
    found = describe_path(stale, time.monotonic() - 10)
    assert found is not None and found.startswith("a file of 3 bytes, written ") and "after the apply" in found
    assert describe_path(link.parent, 0.0) is not None and "a directory" in str(describe_path(link.parent, 0.0))
    with pytest.raises(RuntimeError, match="is a directory"):
        clear_paths([str(tmp_path)])
    assert tmp_path.is_dir()


def test_secret_needles_include_the_pieces_a_dsn_parser_splits_off() -> None:
    assert secret_needles("pw-0123abcd") == {"pw-0123abcd"}
    assert secret_needles("N0tify$ecret/pw") == {"N0tify$ecret/pw", "N0tify%24ecret%2Fpw", "N0tify$ecret",
                                                 "N0tify%24ecret"}  # "pw" is too short to tell anything
    assert secret_needles("K3y-Part-One@K3y-Part-Two") >= {"K3y-Part-One", "K3y-Part-Two", "K3y-Part-One%40K3y-Part-Two"}
    assert secret_needles("ab@cd:ef") == {"ab@cd:ef", "ab%40cd%3Aef"}


def test_secret_absent_fails_on_a_piece_without_quoting_it() -> None:
    password = "K3y-Part-One@K3y-Part-Two"
    leak = 'could not translate host name "K3y-Part-Two@127.0.0.1" to address'
    obs = Observed(password=password, operator_log=leak, events=[{"message": "all masked: ***"}])
    want = {"secretAbsentFrom": ["events", "operatorLogs", "status"]}
    check = check_all(want, obs, "ns", "web")[0]
    assert not check.passed and "operatorLogs (a 12-character piece of it)" in check.detail
    assert "events" not in check.detail and "K3y" not in check.detail
    obs.operator_log = "password=***"
    check = check_all(want, obs, "ns", "web")[0]
    assert check.passed and "nor its pieces" in check.detail
    obs.events = [{"message": f"missing '=' after {password!r}"}]
    check = check_all(want, obs, "ns", "web")[0]
    assert not check.passed and check.detail == "the database password appears in: events"


DOCS = Path(__file__).resolve().parents[2] / "docs" / "harness.md"


def documented_expect_keys() -> list[str]:
    """The key each top-level bullet of docs/harness.md's **`expect`** section starts with."""
    section = DOCS.read_text().split("**`expect`**\n", 1)[1].split("\n**", 1)[0]
    return re.findall(r"^- (?:\*\(ext\)\* )?`([A-Za-z]+)", section, re.MULTILINE)


def test_every_expect_field_has_exactly_one_checker() -> None:
    assert set(CHECKERS) == set(Expect.model_fields)
    assert len(Expect.keys()) == len(Expect.model_fields) == 31  # one key per field, no two fields alike
    with pytest.raises(ValueError, match="has a checker already"):
        checks("phase")(CHECKERS["phase"])
    with pytest.raises(ValueError, match=r"not a field of harness\.format\.Expect"):
        checks("weights_sen")
    assert set(CHECKERS) == set(Expect.model_fields)  # the refused registrations left nothing behind


def test_the_docs_list_exactly_the_expect_keys() -> None:
    documented = documented_expect_keys()
    assert sorted(documented) == sorted(set(documented)), "a key documented twice"
    assert set(documented) == set(Expect.keys()), (set(documented) ^ set(Expect.keys()))


def test_check_all_refuses_a_key_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="unknown expect key 'maxWeigth'"):
        check_all({"maxWeigth": Bounds(None, 5)}, Observed(), "ns", "web")


def test_bad_manifest_cases_are_checked_per_case() -> None:
    patch = {"spec": {"strategy": {"canary": {"stages": [{"weight": 150}]}}}}
    named = "spec.strategy.canary.stages[0].weight: Invalid value: 150"
    obs = Observed(finished_in=12.0, cases=[
        CaseOutcome(0, "weight over 100", patch, 1, f'The SafeRollout "web" is invalid: {named}', False),
        CaseOutcome(1, "accepted", patch, 0, "saferollout.saferollout.dev/web created", True),
        CaseOutcome(2, "vague", patch, 1, "error: something went wrong", False),
    ])
    checks_ = check_all({"refusedAtApply": True, "messageNamesField": True, "withinSeconds": 10.0}, obs, "ns", "web")
    result = {c.name: (c.passed, c.detail) for c in checks_}
    assert result["refusedAtApply case 0 (weight over 100)"] == (True, "refused, nothing created")
    assert result["refusedAtApply case 1 (accepted)"] == (False, "created")
    assert result["messageNamesField case 0 (weight over 100)"] == (True, "names spec.strategy.canary.stages[0].weight")
    assert not result["messageNamesField case 1 (accepted)"][0]  # an accepted apply names nothing
    assert not result["messageNamesField case 2 (vague)"][0]
    assert result["withinSeconds"] == (False, "finished in 12.0s, limit 10s")
    assert [c.name.split()[0] for c in checks_] == ["refusedAtApply"] * 3 + ["messageNamesField"] * 3 + ["withinSeconds"]


def test_stateful_set_expectations() -> None:
    from harness.expect import CHECKERS, Observed, Seen
    from harness.format import StatefulSetExpect

    obs = Observed(partitions_seen=[0, 4, 4, 3, 2, 0], initial_revision="db-1",
                   statefulset={"spec": {"replicas": 4, "updateStrategy": {"rollingUpdate": {"partition": 0}}},
                                "status": {"currentRevision": "db-1", "updateRevision": "db-1", "updatedReplicas": 4}})
    want = StatefulSetExpect.model_validate({"partitionsSeen": [0, 4, 3, 2, 0], "finalPartition": 0,
                                             "podsOn": "initial"})
    assert all(c.passed for c in CHECKERS["stateful_set"](want, Seen(obs, "ns", "db")))
    new = CHECKERS["stateful_set"](StatefulSetExpect.model_validate({"podsOn": "new"}), Seen(obs, "ns", "db"))
    assert not new[0].passed
