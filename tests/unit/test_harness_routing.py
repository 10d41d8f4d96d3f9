"""The harness's data plane reads what the operator's routers write for a stage's match, mirror and sticky cookie:
the writer's output (saferollout.adapters.routers) fed to the reader (harness.router.rule_plan, traffic.istio_plan)."""

from __future__ import annotations

from typing import Any

from harness.router import Plan, rule_plan, satisfies
from harness.traffic import istio_plan
from saferollout.adapters.routers.gateway import routed_rules
from saferollout.adapters.routers.istio import routed_http
from saferollout.core.actions import HeaderCondition, Routing
from saferollout.core.stages import cookie_regex

RULES = [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
          "backendRefs": [{"name": "web", "port": 80, "weight": 100}, {"name": "web-canary", "port": 80, "weight": 0}]}]
HTTP = [{"name": "primary", "route": [{"destination": {"host": "web", "port": {"number": 80}}, "weight": 100}]}]
MATCH = Routing(match=(HeaderCondition("x-canary", "always"), HeaderCondition("cookie", cookie_regex("beta", "1"), True)))


def route(rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"spec": {"rules": rules}}


def test_satisfies_needs_every_header_exact_or_whole_regex() -> None:
    conds = MATCH.match
    plan_conds = tuple((c.name, c.value, c.regex) for c in conds)
    assert satisfies({"X-Canary": "always", "Cookie": "a=b; beta=1"}, plan_conds)
    assert not satisfies({"X-Canary": "always", "Cookie": "beta=10"}, plan_conds)
    assert not satisfies({"Cookie": "beta=1"}, plan_conds)


def test_gateway_match_rule_is_read_as_a_match_and_the_weights_from_the_stable_rule() -> None:
    plan = rule_plan(route(routed_rules(RULES, "web", "web-canary", 10, MATCH)))
    assert plan.weights == {"web": 90, "web-canary": 10}
    assert plan.matches == (("web-canary", tuple((c.name, c.value, c.regex) for c in MATCH.match)),)
    assert plan.label == "match" and plan.mirror is None


def test_gateway_mirror_and_back_to_stable() -> None:
    mirrored = routed_rules(RULES, "web", "web-canary", 0, Routing(mirror=25))
    assert rule_plan(route(mirrored)) == Plan({"web": 100, "web-canary": 0}, (), ("web-canary", 25))
    assert rule_plan(route(routed_rules(mirrored, "web", "web-canary", 0, None))) == Plan({"web": 100, "web-canary": 0})


def test_istio_match_route_and_mirror_are_read() -> None:
    http = routed_http(HTTP, None, "ns", "web", "web-canary", 0, MATCH)
    plan = istio_plan({"spec": {"http": http}}, None, "ns", "web", "web-canary")
    assert plan.weights == {"web": 100, "web-canary": 0} and plan.label == "match"
    assert plan.matches[0][0] == "web-canary"
    http = routed_http(http, None, "ns", "web", "web-canary", 0, Routing(mirror=30))
    plan = istio_plan({"spec": {"http": http}}, None, "ns", "web", "web-canary")
    assert plan.matches == () and plan.mirror == ("web-canary", 30)


STICKY = Routing(sticky="saferollout-web=abc123")


def test_gateway_sticky_stage_sets_the_cookie_its_rule_matches() -> None:
    plan = rule_plan(route(routed_rules(RULES, "web", "web-canary", 25, STICKY)))
    assert plan.weights == {"web": 75, "web-canary": 25} and plan.label == "sticky"
    assert plan.cookies == (("web-canary", "saferollout-web=abc123"),)
    assert plan.matches[0][0] == "web-canary"
    assert satisfies({"Cookie": "theme=dark; saferollout-web=abc123"}, plan.matches[0][1])
    assert not satisfies({"Cookie": "saferollout-web=abc1234"}, plan.matches[0][1])
    back = rule_plan(route(routed_rules(routed_rules(RULES, "web", "web-canary", 25, STICKY), "web", "web-canary",
                                        0, None)))
    assert back == Plan({"web": 100, "web-canary": 0})


def test_istio_sticky_stage_sets_the_cookie_its_route_matches() -> None:
    http = routed_http(HTTP, None, "ns", "web", "web-canary", 25, STICKY)
    plan = istio_plan({"spec": {"http": http}}, None, "ns", "web", "web-canary")
    assert plan.label == "sticky" and plan.cookies == (("web-canary", "saferollout-web=abc123"),)
    assert satisfies({"Cookie": "saferollout-web=abc123"}, plan.matches[0][1])
    http = routed_http(http, None, "ns", "web", "web-canary", 0, None)
    assert istio_plan({"spec": {"http": http}}, None, "ns", "web", "web-canary").cookies == ()
