"""The scenario format is read strictly: unknown keys anywhere the harness owns are errors that name them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.format import (
    Bounds,
    NotificationExpect,
    ScenarioError,
    TrafficRefs,
    fill_placeholders,
    image_repo,
    leaf_paths,
    load,
    merge_patch,
    named_field,
    parse,
    placeholders_in,
    substitute,
    tokens_in,
)

SCENARIOS = Path(__file__).resolve().parents[2].parent / "shared" / "scenarios"

ROLLOUT: dict[str, Any] = {
    "apiVersion": "saferollout.dev/v1alpha1", "kind": "SafeRollout",
    "metadata": {"name": "web", "namespace": "demo"},
    "spec": {
        "targetRef": {"kind": "Deployment", "name": "web"},
        "template": {"containers": [{"name": "web", "image": "demo/web:2.0"}]},
        "strategy": {"canary": {"stages": [{"weight": 5, "duration": "10s"}],
                                "traffic": {"gatewayAPI": {"httpRoute": "web", "stableService": "web",
                                                           "canaryService": "web-canary"}}}},
    },
}


def scenario(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "t", "rollout": ROLLOUT, "expect": {"phase": "Succeeded"}}
    base.update(extra)
    return base


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ScenarioError) as e:
        parse(data, Path("t.yaml"))
    return str(e.value)


@pytest.mark.parametrize(("data", "key", "where"), [
    (scenario(extra=1), "'extra'", "t.yaml"),
    (scenario(app={"stable": {"errorRat": 0.1}}), "'errorRat'", "t.yaml.app.stable"),
    (scenario(app={"beta": {}}), "'beta'", "t.yaml.app"),
    (scenario(app={"canary": {"latencyMs": {"p50": 1, "p95": 2, "p99": 3}}}), "'p99'", "t.yaml.app.canary.latencyMs"),
    (scenario(app={"canary": {"when": {"canaryWeightAtLeast": 25, "errorRate": 0.1, "x": 1}}}), "'x'",
     "t.yaml.app.canary.when"),
    (scenario(load={"rps": 1, "burst": 2}), "'burst'", "t.yaml.load"),
    (scenario(database={"seed": "", "seeds": ""}), "'seeds'", "t.yaml.database"),
    (scenario(faults=[{"at": {"afterSeconds": 1}, "do": "stopPrometheus", "signal": "KILL"}]), "'signal'",
     "t.yaml.faults[0]"),
    (scenario(faults=[{"at": {"stage": 1, "afterSecond": 1}, "do": "stopPrometheus"}]), "'afterSecond'",
     "t.yaml.faults[0].at"),
    (scenario(expect={"phase": "Succeeded", "maxWeigth": 5}), "'maxWeigth'", "t.yaml.expect"),
    (scenario(expect={"weightHeldSeconds": {"weight": 5, "atLeast": 1, "atMost": 2}}), "'atMost'",
     "t.yaml.expect.weightHeldSeconds"),
    ({"name": "t", "cases": [{"patch": {}, "because": "x"}], "expect": {"refusedAtApply": True}}, "'because'",
     "t.yaml.cases[0]"),
])
def test_unknown_key_is_an_error_naming_it(data: dict[str, Any], key: str, where: str) -> None:
    msg = error_of(data)
    assert "unknown key" in msg and key in msg and msg.startswith(where + ":")


@pytest.mark.parametrize(("data", "fragment"), [
    (scenario(expect={"phase": "Done"}), "'Done' is not one of"),
    (scenario(app={"canary": {"errorRate": 2}}), "above 1"),
    (scenario(app={"canary": {"latencyMs": {"p50": 100, "p95": 50}}}), "must not be below p50"),
    (scenario(faults=[{"at": {"afterFault": 0, "seconds": 1}, "do": "restartOperator"}]), "not an earlier fault"),
    (scenario(faults=[{"at": {"afterSeconds": 1}, "do": "explode"}]), "'explode' is not one of"),
    (scenario(faults=[{"at": {"afterSeconds": 1}, "do": "sql"}]), "missing key 'sql'"),
    (scenario(faults=[{"at": {"afterSeconds": 1}, "do": "stopDatabase"}]), "needs a database"),
    (scenario(expect={"snapshotTakenOnce": True}), "has no database"),
    (scenario(expect={"targetImages": {"api": "x:1"}}), "no container named api"),
    ({"name": "t", "expect": {}}, "missing key 'rollout'"),
    ({"name": "t", "rollout": ROLLOUT, "cases": [{"patch": {}}], "expect": {}}, "has no use"),
    (scenario(app={"canary": {"when": {"errorRate": 0.5}}}), "needs a trigger"),
    (scenario(expect={"refusedAtApply": True}), "only for files with 'cases'"),
    ({"name": "t", "cases": [{"patch": {}}], "expect": {"phase": "Failed"}}, "not checkable for a file with 'cases'"),
    ({"name": "t", "cases": [], "expect": {"refusedAtApply": True}}, "t.yaml.cases: empty"),
])
def test_bad_values_are_errors(data: dict[str, Any], fragment: str) -> None:
    assert fragment in error_of(data)


def test_the_shared_scenarios_load() -> None:
    files = sorted(SCENARIOS.glob("*.yaml"))
    if not files:
        pytest.fail(f"no shared scenarios at {SCENARIOS}: they must be beside the repo (../shared/scenarios)")
    for f in files:
        load(f)


def test_the_project_scenarios_and_the_demo_load() -> None:
    root = Path(__file__).resolve().parents[2]
    examples = sorted([*(root / "scenarios").glob("*.yaml"), *(root / "demo").glob("*.yaml")])
    assert examples
    for f in examples:
        load(f)


def test_when_rules_are_level_triggered() -> None:
    data = scenario(app={"canary": {"errorRate": 0.0, "latencyMs": {"p50": 20, "p95": 90},
                                    "when": {"canaryWeightAtLeast": 25, "latencyMs": {"p50": 900, "p95": 2600}}}})
    s = parse(data, Path("t.yaml"))
    assert s.canary.effective(5, 0).p95_ms == 90
    assert s.canary.effective(25, 0).p95_ms == 2600
    assert s.canary.effective(5, 100).p95_ms == 90  # back below the weight: the rule no longer holds


def test_when_list_and_after_seconds() -> None:
    data = scenario(app={"stable": {"when": [{"afterSeconds": 10, "errorRate": 0.5},
                                             {"afterSeconds": 20, "errorRate": 0.0}]}})
    s = parse(data, Path("t.yaml"))
    assert s.stable.effective(0, None).error_rate == 0.0
    assert s.stable.effective(0, 15).error_rate == 0.5
    assert s.stable.effective(0, 25).error_rate == 0.0


def test_max_weight_alone_is_an_upper_bound() -> None:
    s = parse(scenario(expect={"maxWeight": 25, "finalWeight": 0}), Path("t.yaml"))
    assert s.expect["maxWeight"] == Bounds(None, 25)
    assert s.expect["finalWeight"] == Bounds(0, 0)
    s = parse(scenario(expect={"maxWeight": {"equals": 25}}), Path("t.yaml"))
    assert not s.expect["maxWeight"].holds(5)


def test_target_images_default_to_repo_1_0() -> None:
    s = parse(scenario(), Path("t.yaml"))
    assert s.initial_target_images() == {"web": "demo/web:1.0"}
    s = parse(scenario(target={"images": {"web": "demo/web:1.5"}}), Path("t.yaml"))
    assert s.initial_target_images() == {"web": "demo/web:1.5"}
    assert image_repo("registry:5000/team/web:2.4.1") == "registry:5000/team/web"
    assert image_repo("web@sha256:abc") == "web"
    assert image_repo("registry:5000/web") == "registry:5000/web"


def test_resource_quota_is_a_resource_quotas_hard_limits() -> None:
    """Extension `resourceQuota`: how a scenario leaves no room for the canary's pods (progress-deadline)."""
    assert parse(scenario(), Path("t.yaml")).resource_quota == {}
    s = parse(scenario(resourceQuota={"pods": 1, "requests.cpu": "500m", "count/deployments.apps": "3"}), Path("t.yaml"))
    assert s.resource_quota == {"pods": "1", "requests.cpu": "500m", "count/deployments.apps": "3"}
    assert "resourceQuota" in error_of(scenario(resourceQuota={}))
    assert "resourceQuota.pods" in error_of(scenario(resourceQuota={"pods": -1}))
    assert "resourceQuota.pods" in error_of(scenario(resourceQuota={"pods": "lots"}))
    assert "resourceQuota" in error_of(scenario(resourceQuota={"Pods!": 1}))


def test_merge_patch_rfc7386() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]}
    patch = {"a": "z", "c": {"f": None}, "l": [3], "n": {"x": 1}}
    assert merge_patch(target, patch) == {"a": "z", "c": {"d": "e"}, "l": [3], "n": {"x": 1}}
    assert target == {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]}  # untouched
    # the RFC's own examples
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch(["a", "b"], {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "foo"}, "bar") == "bar"
    assert merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}


def test_leaf_paths_use_api_server_notation() -> None:
    patch = yaml.safe_load("{spec: {strategy: {canary: {stages: [{weight: 50}, {weight: 25}]}}, "
                           "template: {containers: []}}}")
    assert leaf_paths(patch) == ["spec.strategy.canary.stages[0].weight", "spec.strategy.canary.stages[1].weight",
                                 "spec.template.containers"]


@pytest.mark.parametrize(("message", "patch", "named"), [
    ('The SafeRollout "web" is invalid: spec.strategy.canary.stages[0].weight: Invalid value: 150',
     {"spec": {"strategy": {"canary": {"stages": [{"weight": 150}]}}}}, "spec.strategy.canary.stages[0].weight"),
    ('is invalid: spec.strategy.canary.traffic: Invalid value: "object": exactly one traffic router',
     {"spec": {"strategy": {"canary": {"traffic": {"nginx": {"ingress": "web"}}}}}}, "spec.strategy.canary.traffic"),
    ("is invalid: spec.template.containers: Invalid value: 0", {"spec": {"template": {"containers": []}}},
     "spec.template.containers"),
    ("is invalid: spec: Invalid value: something", {"spec": {"template": {"containers": []}}}, None),
    ("is invalid: spec.analysis.interval: bad", {"spec": {"template": {"containers": []}}}, None),
])
def test_named_field(message: str, patch: dict[str, Any], named: str | None) -> None:
    assert named_field(message, patch) == named


def test_faults_read_their_anchor_and_signal() -> None:
    s = parse(scenario(faults=[
        {"at": {"stage": 3, "afterSeconds": 4}, "do": "killOperator", "signal": "SIGKILL"},
        {"at": {"afterFault": 0, "seconds": 5}, "do": "restartOperator"},
        {"at": {"phase": "RollingBack"}, "do": "killOperator", "signal": 9},
        {"at": {"afterSeconds": 2}, "do": "killOperator"},
    ]), Path("t.yaml"))
    a, b, c, d = s.faults
    assert (a.at.anchor, a.at.stage, a.at.seconds, a.signal) == ("stage", 3, 4.0, "KILL")
    assert (b.at.anchor, b.at.fault, b.at.seconds) == ("fault", 0, 5.0)
    assert (c.at.anchor, c.at.phase, c.signal) == ("phase", "RollingBack", "KILL")
    assert (d.at.anchor, d.signal) == ("apply", "TERM")


def with_strategy(strategy: dict[str, Any], **extra: Any) -> dict[str, Any]:
    rollout = merge_patch(ROLLOUT, {"spec": {"strategy": None}})
    rollout["spec"]["strategy"] = strategy
    return scenario(rollout=rollout, **extra)


BLUE_GREEN = {"blueGreen": {"activeService": "web", "previewService": "web-preview"}}


@pytest.mark.parametrize(("traffic", "want"), [
    ({"gatewayAPI": {"httpRoute": "r", "stableService": "s", "canaryService": "c"}},
     TrafficRefs("gatewayAPI", "s", "c", "r")),
    ({"istio": {"virtualService": "vs", "route": "primary"}}, TrafficRefs("istio", "web", "web-canary", "vs", "primary")),
    ({"istio": {"virtualService": "vs", "stableService": "s", "canaryService": "c"}}, TrafficRefs("istio", "s", "c", "vs")),
    ({"nginx": {"ingress": "ing"}}, TrafficRefs("nginx", "web", "web-canary", "ing")),
    ({"replicas": {}}, TrafficRefs("replicas", "web", "web-canary")),
])
def test_every_router_is_followed(traffic: dict[str, Any], want: TrafficRefs) -> None:
    s = parse(with_strategy({"canary": {"stages": [{"weight": 5, "duration": "10s"}], "traffic": traffic}}),
              Path("t.yaml"))
    assert s.traffic == want


def test_blue_green_and_its_preview_load() -> None:
    s = parse(with_strategy(BLUE_GREEN, load={"rps": 10, "previewRps": 5}), Path("t.yaml"))
    assert s.traffic == TrafficRefs("blueGreen", "web", "web-preview")
    assert (s.rps, s.preview_rps) == (10, 5)
    assert "only a blueGreen rollout" in error_of(scenario(load={"previewRps": 5}))
    assert "must differ" in error_of(with_strategy({"blueGreen": {"activeService": "a", "previewService": "a"}}))
    assert "exactly one of canary or blueGreen" in error_of(with_strategy({}))
    assert "one router" in error_of(with_strategy({"canary": {"traffic": {}}}))


def test_a_data_plane_that_does_not_apply_the_weights() -> None:
    assert parse(scenario(load={"rps": 10}), Path("t.yaml")).canary_share is None
    assert parse(scenario(load={"rps": 10, "canaryShare": 50}), Path("t.yaml")).canary_share == 50
    assert "100" in error_of(scenario(load={"rps": 10, "canaryShare": 101}))


def test_behaviour_extensions_health_and_memory() -> None:
    s = parse(scenario(app={"canary": {"memoryMB": 130, "when": [{"canaryWeightAtLeast": 50, "healthy": False},
                                                                   {"afterSeconds": 30, "memoryMB": 200}]}}),
              Path("t.yaml"))
    assert s.canary.base.healthy and s.canary.base.memory_mb == 130
    assert not s.canary.effective(50, 0).healthy
    assert s.canary.effective(10, 40).memory_mb == 200 and s.canary.effective(10, 40).healthy
    assert s.canary.effective(10, 0).wire() == {"errorRate": 0.0, "latencyMs": {"p50": 20.0, "p95": 80.0},
                                                "healthy": True, "memoryMB": 130.0}
    assert "expected true or false" in error_of(scenario(app={"canary": {"healthy": "no"}}))
    assert "'memoryMb'" in error_of(scenario(app={"canary": {"when": {"afterSeconds": 1, "memoryMb": 1}}}))


def test_tokens_are_known_and_filled() -> None:
    rollout = merge_patch(ROLLOUT, {"spec": {"notifications": [{"webhook": {"url": "@webhookUrl@/a"}}],
                                             "analysis": {"metrics": [{"name": "h", "httpGet": {
                                                 "url": "@canaryUrl@/healthz"}}]}}})
    s = parse(scenario(rollout=rollout), Path("t.yaml"))
    assert s.tokens == {"webhookUrl", "canaryUrl"}
    filled = substitute(s.rollout, {"webhookUrl": "http://127.0.0.1:1", "canaryUrl": "http://127.0.0.1:2"})
    assert filled["spec"]["notifications"][0]["webhook"]["url"] == "http://127.0.0.1:1/a"
    assert filled["spec"]["analysis"]["metrics"][0]["httpGet"]["url"] == "http://127.0.0.1:2/healthz"
    assert tokens_in(filled) == set()
    with pytest.raises(ScenarioError, match="no value for the token @canaryUrl@"):
        substitute(s.rollout, {"webhookUrl": "x"})
    bad = merge_patch(ROLLOUT, {"metadata": {"annotations": {"a": "@canaryURL@"}}})
    assert "unknown token @canaryURL@" in error_of(scenario(rollout=bad))


def test_new_expect_keys_are_read_strictly() -> None:
    s = parse(scenario(expect={
        "serviceSelector": {"name": "web", "equals": {"app": "web"}},
        "targetUnchanged": True,
        "eventsInOrder": ["A", "B"],
        "incidentReportContains": ["memory"],
    }), Path("t.yaml"))
    assert s.expect["serviceSelector"] == [("web", {"app": "web"})]
    assert s.expect["eventsInOrder"] == ["A", "B"]
    many = parse(scenario(expect={"serviceSelector": [{"name": "a", "equals": {}}, {"name": "b", "equals": {"x": "y"}}]}),
                 Path("t.yaml"))
    assert many.expect["serviceSelector"] == [("a", {}), ("b", {"x": "y"})]
    assert "'selector'" in error_of(scenario(expect={"serviceSelector": {"name": "web", "selector": {}}}))
    assert "missing key 'equals'" in error_of(scenario(expect={"serviceSelector": {"name": "web"}}))
    hooked = merge_patch(ROLLOUT, {"spec": {"notifications": [{"webhook": {"url": "@webhookUrl@/g"}}]}})
    n = parse(scenario(rollout=hooked, expect={"notifications": {"received": {"atLeast": 2}, "severities": ["critical"],
                                                                 "formats": ["slack"], "reportRefPresent": True}}),
              Path("t.yaml"))
    assert n.expect["notifications"] == NotificationExpect(Bounds(2, None), ("critical",), ("slack",), True)
    assert "'recieved'" in error_of(scenario(rollout=hooked, expect={"notifications": {"recieved": 1}}))
    assert "'urgent' is not one of" in error_of(scenario(rollout=hooked,
                                                         expect={"notifications": {"severities": ["urgent"]}}))
    assert "starts with @webhookUrl@" in error_of(scenario(expect={"notifications": {"received": 1}}))


def test_path_absent_takes_files_under_tmp_only() -> None:
    one = parse(scenario(expect={"pathAbsent": "/tmp/saferollout-owned-x"}), Path("t.yaml"))
    assert one.expect["pathAbsent"] == ("/tmp/saferollout-owned-x",)
    two = parse(scenario(expect={"pathAbsent": ["/tmp/a", "/tmp/b/c"]}), Path("t.yaml"))
    assert two.expect["pathAbsent"] == ("/tmp/a", "/tmp/b/c")
    for bad in ("relative/x", "/etc/passwd", "/tmp/", "/tmp", "/tmp/../etc/passwd", "/tmp//x", "/tmp/a/./b"):
        msg = error_of(scenario(expect={"pathAbsent": bad}))
        assert msg.startswith("t.yaml.expect.pathAbsent:") and "under /tmp/" in msg, bad
    assert error_of(scenario(expect={"pathAbsent": ["/tmp/a", "/var/b"]})).startswith("t.yaml.expect.pathAbsent[1]:")
    assert "at least one path" in error_of(scenario(expect={"pathAbsent": []}))
    assert "expected a string" in error_of(scenario(expect={"pathAbsent": 3}))


WITH_SECRET = merge_patch(ROLLOUT, {"spec": {"database": {"postgres": {"secretRef": {"name": "db", "key": "dsn"}}}}})


def test_secret_value_fills_its_placeholders_as_is() -> None:
    s = parse(scenario(rollout=WITH_SECRET, database={"password": "pa@ss",
                                                      "secretValue": "postgresql://{user}:{password}@{host}:{port}/{dbname}"}),
              Path("t.yaml"))
    assert s.database is not None and s.database.password == "pa@ss"
    facts = {"password": "pa@ss", "dsn": "postgresql://app:pa%40ss@127.0.0.1:5/app", "user": "app",
             "host": "127.0.0.1", "port": "5", "dbname": "app"}
    assert s.database.render_secret(facts) == "postgresql://app:pa@ss@127.0.0.1:5/app"  # the '@' stays bare
    words = parse(scenario(rollout=WITH_SECRET, database={"secretValue": "{password} not-a-dsn {dsn}"}), Path("t.yaml"))
    assert words.database is not None
    assert words.database.render_secret(facts) == "pa@ss not-a-dsn postgresql://app:pa%40ss@127.0.0.1:5/app"
    assert words.expect == {"phase": "Succeeded"}
    plain = parse(scenario(rollout=WITH_SECRET, database={"seed": "SELECT 1"}), Path("t.yaml"))
    assert plain.database is not None and plain.database.render_secret(facts) is None  # the harness's own DSN
    assert placeholders_in("{a}{password} {{x}} {1}") == ["a", "password", "x"]
    assert fill_placeholders("no braces {} here", facts) == "no braces {} here"
    with pytest.raises(ScenarioError, match=r"no value for the placeholder \{port\}"):
        fill_placeholders("{port}", {"password": "x"})


def test_secret_value_is_checked_at_load() -> None:
    msg = error_of(scenario(rollout=WITH_SECRET, database={"secretValue": "{passwd}"}))
    assert msg.startswith("t.yaml.database.secretValue:") and "unknown placeholder {passwd}" in msg
    assert "{password}" in msg  # the known ones are listed
    assert "'secretvalue'" in error_of(scenario(rollout=WITH_SECRET, database={"secretvalue": "x"}))
    assert "expected a string" in error_of(scenario(rollout=WITH_SECRET, database={"secretValue": 5}))
    no_ref = error_of(scenario(database={"secretValue": "{password}"}))
    assert no_ref.startswith("t.yaml.database.secretValue:") and "secretRef" in no_ref


@pytest.mark.parametrize(("data", "message"), [
    # no coercion: a string is no number, a float no integer, a bool no number; an explicit null is no value
    (scenario(app={"canary": {"errorRate": "0.1"}}), "t.yaml.app.canary.errorRate: expected a number, got '0.1'"),
    (scenario(app={"canary": {"errorRate": True}}), "t.yaml.app.canary.errorRate: expected a number, got True"),
    (scenario(expect={"weightsSeen": [5, 25.0]}), "t.yaml.expect.weightsSeen[1]: expected an integer, got 25.0"),
    (scenario(expect={"phase": None}), "t.yaml.expect.phase: expected a value, got None"),
    (scenario(faults={}), "t.yaml.faults: expected a list, got dict"),
    # the path leaves out the union members pydantic names (the fault's `do`, the `at` anchor, one-or-list)
    (scenario(faults=[{"at": {"stage": 0}, "do": "killOperator"}]), "t.yaml.faults[0].at.stage: 0 is below 1"),
    (scenario(faults=[{"at": {"afterSeconds": 1}, "do": "killOperator", "signal": "FOO"}]),
     "t.yaml.faults[0].signal: 'FOO' is not one of TERM, KILL, INT, HUP, QUIT, STOP, CONT, USR1, USR2"),
    (scenario(faults=[{"at": {"afterSeconds": 1}}]), "t.yaml.faults[0]: missing key 'do'"),
    (scenario(faults=[{"at": {}, "do": "stopPrometheus"}]), "t.yaml.faults[0].at: needs stage, afterFault, phase or "
                                                             "afterSeconds"),
    (scenario(faults=[{"at": {"stage": 1, "seconds": 2}, "do": "stopPrometheus"}]),
     "t.yaml.faults[0].at: 'seconds' goes with 'afterFault'; use 'afterSeconds' here"),
    (scenario(faults=[{"at": {"afterFault": 0, "stage": 1}, "do": "stopPrometheus"}]),
     "t.yaml.faults[0].at: unknown key 'stage' (known keys: afterFault, seconds)"),
    (scenario(app={"stable": {"when": [{"afterSeconds": 1, "errorRate": 0.1}, {"afterSeconds": -1, "healthy": False}]}}),
     "t.yaml.app.stable.when[1].afterSeconds: -1 is below 0"),
    (scenario(expect={"maxWeight": {"atleast": 5}}), "t.yaml.expect.maxWeight: unknown key 'atleast' (known keys: "
                                                       "atLeast, atMost, equals)"),
    (scenario(expect={"maxWeight": "25"}), "t.yaml.expect.maxWeight: expected a number, got '25'"),
    (scenario(expect={"targetImages": {"web": 2}}), "t.yaml.expect.targetImages.web: expected a string, got 2"),
    (with_strategy({"canary": {"traffic": {"istio": {"route": "r"}}}}),
     "t.yaml.rollout.spec.strategy.canary.traffic.istio: missing key 'virtualService'"),
])
def test_messages_name_the_place_in_the_file(data: dict[str, Any], message: str) -> None:
    assert error_of(data) == message


def test_an_unknown_key_is_reported_before_what_it_leaves_missing() -> None:
    assert error_of(scenario(expect={"weightHeldSeconds": {"weight": 5, "atleast": 1}})) == (
        "t.yaml.expect.weightHeldSeconds: unknown key 'atleast' (known keys: weight, atLeast)")


def test_expect_keeps_the_file_order_and_the_rollout_is_kept_as_written() -> None:
    rollout = merge_patch(ROLLOUT, {"spec": {"analysis": {"interval": "5s", "anything": [1, {"x": None}]}}})
    s = parse(scenario(rollout=rollout, expect={"weightsSeen": [5], "phase": "RolledBack", "maxWeight": {"atLeast": 5},
                                                "conditionSeen": {"type": "Ready", "reason": "Done"}}), Path("t.yaml"))
    assert list(s.expect) == ["weightsSeen", "phase", "maxWeight", "conditionSeen"]
    assert s.expect == {"weightsSeen": [5], "phase": "RolledBack", "maxWeight": Bounds(5, None),
                        "conditionSeen": {"type": "Ready", "reason": "Done"}}
    assert s.rollout == rollout and s.rollout is not rollout  # a copy, every key the harness does not read kept
