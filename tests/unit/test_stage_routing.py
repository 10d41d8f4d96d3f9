"""Stages that route by header or cookie (A/B), mirror (shadow) or keep a user on the canary (sticky): the model's
rules, the core's decisions in the simulated world, and the CEL rules in the generated CRD."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from saferollout import crdgen
from saferollout.core import actions as a
from tests.unit.test_engine import canary_error
from tests.unit.world import World, make_spec

MATCH = {"headers": [{"name": "X-Canary", "value": "always"}]}
GW = {"gatewayAPI": {"httpRoute": "web", "stableService": "web", "canaryService": "web-canary"}}


def spec(stages: list[dict[str, Any]], traffic: dict[str, Any] | None = None) -> Any:
    over: dict[str, Any] = {"strategy.canary.stages": stages}
    if traffic is not None:
        over["strategy.canary.traffic"] = traffic
    return make_spec(**over)


def set_weights(w: World) -> list[str]:
    return [line.split(None, 1)[1] for line in w.log if "SetWeight(" in line]


# ------------------------------------------------------------------------------------------------------ model


@pytest.mark.parametrize(("stages", "message"), [
    ([{"duration": "10s"}], "a stage needs a weight above 0, a match or a mirror"),
    ([{"weight": 5, "mirror": 20, "duration": "10s"}], "a mirror stage copies requests and routes none"),
    ([{"match": MATCH, "mirror": 20, "duration": "10s"}], "a mirror stage copies requests and routes none"),
    ([{"match": MATCH, "sticky": True, "duration": "10s"}], "sticky keeps on the canary"),
    ([{"weight": 5, "duration": "10s"}, {"match": MATCH, "duration": "10s"}], "stage weights must rise strictly"),
    ([{"weight": 5, "match": MATCH, "duration": "10s"}, {"weight": 5, "duration": "10s"}], "must rise strictly"),
    ([{"mirror": 0, "duration": "10s"}], "greater than or equal to 1"),
    ([{"mirror": 101, "duration": "10s"}], "less than or equal to 100"),
    ([{"match": {}, "duration": "10s"}], "a match needs at least one header or cookie"),
    ([{"match": {"headers": [{"name": "Cookie", "value": "a=b"}]}, "duration": "10s"}], "match a cookie with cookies"),
    ([{"match": {"headers": [{"name": "x-a", "value": "1"}, {"name": "X-A", "value": "2"}]}, "duration": "10s"}],
     "header names must differ"),
    ([{"match": {"cookies": [{"name": "a", "value": "b;c"}]}, "duration": "10s"}], "String should match pattern"),
])
def test_bad_stages_are_refused_with_the_reason(stages: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(stages)


@pytest.mark.parametrize("traffic", [{"nginx": {"ingress": "web"}}, {"replicas": {}}])
def test_match_mirror_and_sticky_need_a_router_that_has_them(traffic: dict[str, Any]) -> None:
    for stage in ({"match": MATCH, "duration": "10s"}, {"mirror": 10, "duration": "10s"},
                  {"weight": 5, "sticky": True, "duration": "10s"}):
        with pytest.raises(ValidationError, match="need the gatewayAPI or istio router"):
            spec([stage, {"weight": 50, "duration": "10s"}], traffic)


def test_stages_of_weight_zero_come_first_and_may_follow_each_other() -> None:
    s = spec([{"match": MATCH, "duration": "10s"}, {"mirror": 20, "duration": "10s"},
              {"weight": 5, "match": MATCH, "sticky": True, "duration": "10s"}, {"weight": 100, "duration": "10s"}])
    assert s.strategy.canary is not None and s.strategy.canary.stages is not None
    assert [x.kind for x in s.strategy.canary.stages] == ["match", "mirror 20%", "match + weight 5% (sticky)",
                                                          "weight 100%"]


def test_the_crd_carries_the_cel_rules() -> None:
    text = str(crdgen.crd())
    for message in ("a stage needs a weight above 0, a match or a mirror", "a mirror stage copies requests",
                    "sticky keeps on the canary", "need the gatewayAPI or istio router", "match a cookie with cookies",
                    "a match needs at least one header or cookie"):
        assert message in text


# ------------------------------------------------------------------------------------------------------ core


def test_header_only_stage_routes_the_match_then_the_weights_follow() -> None:
    w = World(spec([{"match": MATCH, "duration": "10s"}, {"weight": 50, "duration": "10s"},
                    {"weight": 100, "duration": "10s"}])).run(120, until=World.done)
    assert w.phase() == "Succeeded"
    assert set_weights(w)[0] == ("SetWeight(weight=0, routing=Routing(match=(HeaderCondition(name='x-canary', "
                                 "value='always', regex=False),), mirror=0, sticky=None))")
    assert w.routings_seen[:2] == ["match x-canary=always", None]
    assert w.weights_seen == [50, 100]
    assert w.status.routing is None and w.status.weight == 0
    assert w.reasons().count("StageAdvanced") == 3  # the header-only stage starts its clock like a weight


def test_failing_canary_under_a_header_only_stage_rolls_back_and_drops_the_match_first() -> None:
    w = World(spec([{"match": MATCH, "duration": "30s"}, {"weight": 50, "duration": "10s"}]),
              metrics=canary_error(0.5)).run(120, until=World.done)
    assert w.phase() == "RolledBack" and w.status.stage == 1
    assert w.weights_seen == []  # never a weight: only the matching requests ever reached the canary
    decision = next(i for i, line in enumerate(w.log) if "AnalysisFailed" in line)
    following = [line for line in w.log[decision:] if "Event" not in line and "Notify" not in line]
    assert following[0].endswith("SetWeight(weight=0)"), following  # no match, no mirror: all on stable
    assert w.routing is None and w.status.routing is None


def test_mirror_stage_is_analysed_and_a_failing_canary_rolls_back() -> None:
    w = World(spec([{"mirror": 20, "duration": "30s"}, {"weight": 50, "duration": "10s"}]),
              metrics=canary_error(0.5)).run(120, until=World.done)
    assert w.phase() == "RolledBack" and w.weights_seen == []
    assert w.routings_seen == ["mirror 20%", None]
    assert any("QueryMetrics(target='canary'" in line for line in w.log)
    assert w.status.routing is None


def test_a_match_stage_then_a_mirror_stage_both_reach_the_router() -> None:
    w = World(spec([{"match": {"cookies": [{"name": "beta", "value": "yes"}]}, "duration": "10s"},
                    {"mirror": 50, "duration": "10s"}, {"weight": 100, "duration": "10s"}])).run(120, until=World.done)
    assert w.phase() == "Succeeded"
    assert w.routings_seen[:3] == ["match cookie~^(.*;[ ]*)?beta=yes(;.*)?$", "mirror 50%", None]


def test_sticky_cookie_names_the_target_and_this_release() -> None:
    w = World(spec([{"weight": 20, "sticky": True, "duration": "10s"}, {"weight": 100, "duration": "10s"}]))
    w.run(120, until=World.done)
    assert w.phase() == "Succeeded"
    sticky = next(k for k in w.routings_seen if k)
    assert sticky.startswith("sticky saferollout-web=") and len(sticky) > len("sticky saferollout-web=")
    assert w.weights_seen == [20, 100]


def test_regular_expression_headers_are_anchored_to_the_whole_value() -> None:
    w = World(spec([{"match": {"headers": [{"name": "User-Agent", "value": ".*Beta.*", "type": "RegularExpression"}]},
                     "duration": "10s"}, {"weight": 100, "duration": "10s"}]))
    w.run(5)
    first = next(x for x in w.routings_seen if x)
    assert first == "match user-agent~^(?:.*Beta.*)$"


def test_a_new_template_during_a_header_stage_takes_the_match_away_first() -> None:
    w = World(spec([{"match": MATCH, "duration": "60s"}, {"weight": 100, "duration": "10s"}])).run(8)
    assert w.status.routing == "match x-canary=always" and w.status.weight == 0
    assert isinstance(w.routing, a.Routing)
