"""The routing stages of docs/routing.md on a real Gateway API data plane: Traefik (harness.traefik), v3.6.12.

The HTTPRoute is written by the operator's own code path: `core.stages.routing` makes the `Routing` of a stage as
the docs spell it, and `GatewayAPIRouter.set_routing` writes it (one patch, checked afterwards for pruned fields).
Then real requests go through Traefik to the backends of `test_traefik.open_world` (a world of this module's own).

Proven (figures printed after the module):

- a header match at weight 0 sends every request with the header to the canary and every other to stable; a
  cookie match likewise, with the cookie among others and not with a look-alike; a match with a weight sends the
  matching requests to the canary and splits the others by the weight;
- a sticky stage's cookie rule sends every request carrying the release's cookie to the canary, one of an earlier
  release is split by the weight (splits within `SPLIT_SLACK` of the weight: Traefik's weighted round robin is
  deterministic, and 100 requests at 25% give 25 exactly);
- the rollback write (weight 0, no routing) puts the route back as it was: nothing by header, cookie or sticky
  cookie reaches the canary afterwards.

What Traefik v3.6.12 does not do, asserted as it is (a Traefik that does it fails these, and docs/routing.md must
then change with them):

- `RequestMirror`: its Gateway provider has no such filter ("unsupported filter RequestMirror" in its log, and
  `HTTPRouteRequestMirror` not in the GatewayClass's supportedFeatures). The rule carrying it is served by a
  service of Traefik's own that answers 500: under a mirror stage no request reaches stable or canary, while the
  HTTPRoute's status stays Accepted and ResolvedRefs. The percent is never looked at, so there are no copies
  whose share could be compared with it.
- filters on a backendRef: ignored (v3.6 reads `rules[].filters` only), so the sticky cookie is never set and a
  sticky stage is a plain weight stage for clients.

So the operator refuses both stages on Traefik before writing anything (its GatewayClass lists its
supportedFeatures without them; `refused`): the route is unchanged and stable serves every request. What Traefik
does with them is shown by writing the same rules without that check (`write_unguarded`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client

from harness import traefik as tr
from saferollout.adapters import kube
from saferollout.adapters.kube import RolloutRef
from saferollout.adapters.routers.gateway import CANARY_RULE, GatewayAPIRouter, routed_rules
from saferollout.core import stages
from saferollout.core.models import SafeRolloutStatus, Stage
from saferollout.core.run import Inputs, Run, Settings
from tests.e2e.test_traefik import (
    GW_GROUP,
    GW_VERSION,
    PROPAGATION_LIMIT,
    ROUTE,
    SPLIT_REQUESTS,
    SPLIT_SLACK,
    Delay,
    World,
    delay_lines,
    open_world,
    print_uncaptured,
    settle,
)
from tests.unit.world import make_spec

pytestmark = pytest.mark.e2e

SPEC = make_spec()  # gatewayAPI: httpRoute web, stableService web, canaryService web-canary (test_traefik's)
RUN = Run(SPEC, SafeRolloutStatus(template_hash="7f3c9a1b2d4e5f6071"), Inputs(now=datetime(2026, 1, 1, tzinfo=UTC)),
          Settings())
STICKY_COOKIE = stages.sticky_cookie(RUN)  # saferollout-web=<the release's hash>

# the stages as docs/routing.md writes them
HEADER = {"duration": "5m", "match": {"headers": [{"name": "X-Canary", "value": "always"}]}}
COOKIE = {"duration": "5m", "match": {"cookies": [{"name": "beta", "value": "1"}]}}
TEAM = {"weight": 20, "duration": "5m",
        "match": {"headers": [{"name": "X-Team", "value": "qa-.*", "type": "RegularExpression"}]}}
STICKY = {"weight": 25, "duration": "5m", "sticky": True}
ALL_OF_IT = {"weight": 25, "duration": "5m", "sticky": True,
             "match": {"headers": [{"name": "X-Canary", "value": "always"}], "cookies": [{"name": "beta", "value": "1"}]}}

UNSUPPORTED = 'error="unsupported filter RequestMirror"'  # Traefik's log line for a rule it cannot load
FIGURES: list[Delay] = []
COUNTS: list[str] = []


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """test_traefik's world, with the operator's adapters writing through its client."""
    with open_world(tmp_path_factory) as w:
        before, kube._api = kube._api, w.api
        try:
            yield w
        finally:
            kube._api = before


@pytest.fixture(scope="module", autouse=True)
def figures(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    lines = delay_lines(FIGURES, ("rollback",))
    print_uncaptured(request, [*lines, "", "Traefik, routing stages: requests and where they went", *COUNTS])


def write(world: World, stage: dict[str, Any] | None) -> float:
    """The stage's weight and routing as the operator writes them (None: the rollback write); when it succeeded."""
    world.quiet()
    model = Stage.model_validate(stage) if stage is not None else None
    routing = stages.routing(RUN, model) if model is not None else None
    GatewayAPIRouter().set_routing(RolloutRef(world.ns, "web", "e2e"), SPEC, model.weight if model else 0, routing)
    world.last_change = time.monotonic()
    return world.last_change


def write_unguarded(world: World, stage: dict[str, Any]) -> float:
    """The rules the router would write for the stage, written without its GatewayClass check: what a data plane
    that cannot carry the stage does with it, which is why the operator refuses such a stage on Traefik."""
    world.quiet()
    model = Stage.model_validate(stage)
    api = client.CustomObjectsApi(world.api)
    current = route(world)
    rules = routed_rules(current["spec"]["rules"], "web", "web-canary", model.weight, stages.routing(RUN, model))
    api.patch_namespaced_custom_object(GW_GROUP, GW_VERSION, world.ns, "httproutes", ROUTE, {
        "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]}, "spec": {"rules": rules}})
    world.last_change = time.monotonic()
    return world.last_change


def refused(world: World, stage: dict[str, Any], feature: str) -> None:
    """The operator's write of the stage is refused, naming the feature Traefik's GatewayClass does not list, and
    leaves the route as it was: every request still served by stable."""
    before = route(world)["spec"]["rules"]
    with pytest.raises(kube.Refused, match=f"GatewayClass {tr.GATEWAY_CLASS} .* does not list {feature}"):
        write(world, stage)
    assert route(world)["spec"]["rules"] == before
    assert split(world, f"refused {feature}: answers", None) == only("stable-a")


def split(world: World, what: str, headers: dict[str, str] | None = None, n: int = SPLIT_REQUESTS) -> Counter[str]:
    got = world.split(n, headers)
    COUNTS.append(f"  {what:<64} {dict(got)}")
    return got


def route(world: World) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi(world.api).get_namespaced_custom_object(
        GW_GROUP, GW_VERSION, world.ns, "httproutes", ROUTE)
    return obj


def route_conditions(world: World) -> dict[str, str]:
    """The route's status conditions, once Traefik has written them for its current generation."""
    deadline = time.monotonic() + PROPAGATION_LIMIT
    while True:
        obj = route(world)
        conds = [c for p in (obj.get("status") or {}).get("parents") or [] for c in p["conditions"]]
        if conds and all(c.get("observedGeneration") == obj["metadata"]["generation"] for c in conds):
            return {c["type"]: c["status"] for c in conds}
        assert time.monotonic() < deadline, f"no status for generation {obj['metadata']['generation']}: {obj.get('status')}"
        time.sleep(0.1)


def supported_features(world: World) -> set[str]:
    """What Traefik says of itself in the GatewayClass's status (Gateway API v1.4)."""
    gc = client.CustomObjectsApi(world.api).get_cluster_custom_object(GW_GROUP, GW_VERSION, "gatewayclasses",
                                                                      tr.GATEWAY_CLASS)
    return {f["name"] for f in gc["status"]["supportedFeatures"]}


def rolled_back(world: World, what: str, canary_headers: dict[str, str]) -> None:
    """The rollback write, timed to the first request that once went to the canary reaching stable for good."""
    t0 = write(world, None)
    settle(world, t0, lambda a: a == "stable-a", f"rollback from {what}", headers=canary_headers, record=FIGURES)


def only(version: str, n: int = SPLIT_REQUESTS) -> Counter[str]:
    return Counter({version: n})


def near(got: Counter[str], canary_percent: int, n: int = SPLIT_REQUESTS) -> bool:
    """Traefik's weighted round robin is deterministic: the canary's share is its weight, give or take SPLIT_SLACK."""
    return sum(got.values()) == n and set(got) <= {"stable-a", "canary"} and \
        abs(got["canary"] - canary_percent * n // 100) <= SPLIT_SLACK


# ----------------------------------------------------------------------------------------------------- tests


def test_header_match_sends_only_its_requests_to_the_canary(world: World) -> None:
    """Weight 0 and X-Canary: always: with the header (any case) all canary, with another value or none all stable."""
    t0 = write(world, HEADER)
    settle(world, t0, lambda a: a == "canary", "header match X-Canary: requests with it -> canary",
           headers={"X-Canary": "always"}, record=FIGURES)
    assert split(world, "header X-Canary: always", {"X-Canary": "always"}) == only("canary")
    assert split(world, "header x-canary: always", {"x-canary": "always"}) == only("canary")
    assert split(world, "header X-Canary: never", {"X-Canary": "never"}) == only("stable-a")
    assert split(world, "no header", None) == only("stable-a")
    rolled_back(world, "a header match", {"X-Canary": "always"})
    assert split(world, "after rollback: header X-Canary: always", {"X-Canary": "always"}) == only("stable-a")


def test_cookie_match_sends_only_its_requests_to_the_canary(world: World) -> None:
    """Weight 0 and the cookie beta=1, alone or among others: all canary; beta=10, xbeta=1 or none: all stable."""
    t0 = write(world, COOKIE)
    settle(world, t0, lambda a: a == "canary", "cookie match beta=1: requests with it -> canary",
           headers={"Cookie": "beta=1"}, record=FIGURES)
    for cookie in ("beta=1", "a=b; beta=1", "beta=1; c=d", "a=b;beta=1;c=d"):
        assert split(world, f"Cookie: {cookie}", {"Cookie": cookie}) == only("canary"), cookie
    for cookie in ("beta=10", "xbeta=1", "beta=0; c=1"):
        assert split(world, f"Cookie: {cookie}", {"Cookie": cookie}) == only("stable-a"), cookie
    assert split(world, "no cookie", None) == only("stable-a")
    assert split(world, "header X-Canary: always (the last stage's)", {"X-Canary": "always"}) == only("stable-a")
    rolled_back(world, "a cookie match", {"Cookie": "beta=1"})
    assert split(world, "after rollback: Cookie: beta=1", {"Cookie": "beta=1"}) == only("stable-a")


def test_match_with_a_weight(world: World) -> None:
    """Weight 20 and X-Team ~ qa-.*: every qa- request on the canary, the others split 80/20."""
    t0 = write(world, TEAM)
    settle(world, t0, lambda a: a == "canary", "match X-Team ~ qa-.* and weight 20: qa- requests -> canary",
           headers={"X-Team": "qa-blue"}, record=FIGURES)
    assert split(world, "header X-Team: qa-blue", {"X-Team": "qa-blue"}) == only("canary")
    assert near(split(world, "header X-Team: dev-qa-blue (weight 20)", {"X-Team": "dev-qa-blue"}), 20)
    assert near(split(world, "no header (weight 20)", None), 20)
    rolled_back(world, "a match with weight 20", {"X-Team": "qa-blue"})
    assert split(world, "after rollback: no header", None) == only("stable-a")


@pytest.mark.parametrize("percent", [50, 100])
def test_mirror_stage_is_answered_500_by_traefik(world: World, percent: int) -> None:
    """Traefik v3.6.12 has no RequestMirror: every request of the rule is a 500 of its own, none reaches a backend.

    The HTTPRoute keeps the filter and its percent (the operator's check after the write passes) and its status
    says nothing wrong: the operator cannot see this from the API server.
    """
    refused(world, {"duration": "5m", "mirror": percent}, "HTTPRouteRequestMirror")
    refusals = world.traefik.log.read_text().count(UNSUPPORTED)
    t0 = write_unguarded(world, {"duration": "5m", "mirror": percent})
    stored = route(world)
    mirrors = [(m["backendRef"]["name"], m["backendRef"]["port"], m.get("percent")) for r in stored["spec"]["rules"]
               for f in r.get("filters") or [] if f["type"] == "RequestMirror" for m in [f["requestMirror"]]]
    assert mirrors == [("web-canary", 80, percent)], mirrors
    settle(world, t0, lambda a: a == "HTTP 500", f"mirror {percent}%: every answer a 500 of Traefik's own",
           record=FIGURES)
    stable_before, canary_before = world.received("stable-a"), world.received("canary")
    assert split(world, f"mirror {percent}%: answers", None) == only("HTTP 500")
    stable_got, canary_got = world.received("stable-a") - stable_before, world.received("canary") - canary_before
    COUNTS.append(f"  {f'mirror {percent}%: received by stable / by canary':<64} {stable_got} / {canary_got}")
    assert (stable_got, canary_got) == (0, 0)

    routers = world.traefik.routers()
    assert len(routers) == 1 and routers[0]["service"].endswith("-err-wrr"), routers
    err = next(s for s in world.traefik.services() if s["name"] == f"{routers[0]['service']}@kubernetesgateway")
    assert [s["name"] for s in err["weighted"]["services"]] == ["invalid-httproute-filter"], err
    assert world.traefik.log.read_text().count(UNSUPPORTED) > refusals
    conditions = route_conditions(world)
    assert conditions == {"Accepted": "True", "ResolvedRefs": "True"}, conditions
    features = supported_features(world)
    assert "HTTPRoute" in features and not features & {"HTTPRouteRequestMirror", "HTTPRouteRequestMultipleMirrors",
                                                        "HTTPRouteRequestPercentageMirror"}, sorted(features)

    t0 = write(world, None)
    settle(world, t0, lambda a: a == "stable-a", f"rollback from mirror {percent}%: the 500s stop", record=FIGURES)
    stable_before, canary_before = world.received("stable-a"), world.received("canary")
    assert split(world, f"after rollback from mirror {percent}%", None) == only("stable-a")
    assert (world.received("stable-a") - stable_before, world.received("canary") - canary_before) == (100, 0)


def test_sticky_stage(world: World) -> None:
    """Weight 25, sticky: the operator refuses it on Traefik; written anyway, the release's cookie takes every
    request to the canary, but Traefik never sets it."""
    refused(world, STICKY, "HTTPRouteBackendRequestHeaderModification")
    t0 = write_unguarded(world, STICKY)
    settle(world, t0, lambda a: a == "canary", "sticky, weight 25: requests with the cookie -> canary",
           headers={"Cookie": STICKY_COOKIE}, record=FIGURES)
    answers = [world.fetch() for _ in range(SPLIT_REQUESTS)]
    got = Counter(a.version for a in answers)
    set_cookie = Counter(a.version for a in answers if a.headers.get_all("Set-Cookie"))
    COUNTS.append(f"  {'sticky, no cookie: answers / of them with Set-Cookie':<64} {dict(got)} / {dict(set_cookie)}")
    assert near(got, 25), got
    # the backendRef's ResponseHeaderModifier is not applied by Traefik v3.6: no cookie, no middleware for it
    assert not set_cookie, set_cookie
    assert not world.traefik.middlewares(), world.traefik.middlewares()
    assert "HTTPRouteBackendRequestHeaderModification" not in supported_features(world)
    canary_ref = next(r for rule in route(world)["spec"]["rules"] if rule.get("name") != CANARY_RULE
                      for r in rule["backendRefs"] if r["name"] == "web-canary")
    assert canary_ref["filters"][0]["type"] == "ResponseHeaderModifier", canary_ref  # kept by the API server

    assert split(world, f"Cookie: {STICKY_COOKIE}", {"Cookie": STICKY_COOKIE}, 50) == only("canary", 50)
    among = f"beta=0; {STICKY_COOKIE}; x=y"
    assert split(world, f"Cookie: {among}", {"Cookie": among}, 50) == only("canary", 50)
    earlier = "saferollout-web=0123456789abcdef"  # an earlier release's: the weight decides
    assert near(split(world, f"Cookie: {earlier} (weight 25)", {"Cookie": earlier}), 25)
    rolled_back(world, "sticky", {"Cookie": STICKY_COOKIE})
    assert split(world, f"after rollback: Cookie: {STICKY_COOKIE}", {"Cookie": STICKY_COOKIE}) == only("stable-a")


def test_rollback_removes_all_of_it(world: World) -> None:
    """Match (header and cookie), weight 25 and sticky in one stage, then the rollback write: the route as it was."""
    original = route(world)["spec"]["rules"]
    assert original == routed_rules(original, "web", "web-canary", 0, None)  # the tests before left nothing behind
    t0 = write_unguarded(world, ALL_OF_IT)  # sticky: the operator would refuse it on Traefik (test_sticky_stage)
    both = {"X-Canary": "always", "Cookie": "beta=1"}
    settle(world, t0, lambda a: a == "canary", "match header and cookie, weight 25, sticky: -> canary",
           headers=both, record=FIGURES)
    assert split(world, "header and cookie", both) == only("canary")
    assert near(split(world, "header only (weight 25)", {"X-Canary": "always"}), 25)
    assert split(world, "the sticky cookie", {"Cookie": STICKY_COOKIE}) == only("canary")
    assert len(world.traefik.routers()) == 3  # the own rule's two matches and the stable rule

    rolled_back(world, "match, weight 25 and sticky", both)
    for what, headers in (("header and cookie", both), ("the sticky cookie", {"Cookie": STICKY_COOKIE}),
                          ("no header", {})):
        assert split(world, f"after rollback: {what}", headers) == only("stable-a"), what
    assert route(world)["spec"]["rules"] == original
    assert len(world.traefik.routers()) == 1
