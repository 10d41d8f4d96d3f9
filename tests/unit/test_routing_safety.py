"""What a match or mirror stage leaves on the router is taken off as surely as a weight is: by a new release, a
block, an invalid spec, a deletion; and an edit cannot raise the canary's share past its evidence."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from saferollout import backtest as bt
from saferollout import handlers
from saferollout.adapters import events, kube
from saferollout.adapters.kube import RolloutRef
from saferollout.core.engine import Settings
from saferollout.core.models import SafeRolloutSpec
from tests.unit.test_analysis_templates import CLUSTER, ERRORS, ref_metric
from tests.unit.world import World, make_spec

MATCH = {"headers": [{"name": "X-Canary", "value": "always"}]}
MATCH_STAGES = [{"match": MATCH, "duration": "60s"}, {"weight": 100, "duration": "10s"}]


def at_match(**over: Any) -> World:
    w = World(make_spec(**{"strategy.canary.stages": MATCH_STAGES, **over})).run(8)
    assert w.status.routing == "match x-canary=always" and w.status.weight == 0 and w.routing is not None
    return w


def test_a_new_release_takes_the_old_match_off_before_its_canary_is_made() -> None:
    w = at_match()
    w.log.clear()
    data = w.spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    data["template"]["containers"][0]["image"] = "demo/web:3.0"
    w.spec = SafeRolloutSpec.model_validate(data)
    w.run(3)
    acts = [line.split(None, 1)[1] for line in w.log]
    first_weight = next(i for i, x in enumerate(acts) if x.startswith("SetWeight("))
    assert acts[first_weight] == "SetWeight(weight=0)"
    assert not any(x.startswith("EnsureCanary") for x in acts[:first_weight])
    assert w.status.attempt == 2
    assert w.routings_seen[-3:] == ["match x-canary=always", None, "match x-canary=always"]  # off, then its own


def test_a_block_with_an_old_match_still_on_the_router_is_a_rollback_instead() -> None:
    w = World(make_spec(**{"strategy.canary.stages": MATCH_STAGES,
                           "analysis.metrics": [ref_metric(name="error-rate")]}))
    w.analysis_templates[CLUSTER] = (copy.deepcopy(ERRORS), "1")
    w.run(8)
    assert w.status.routing is not None
    del w.analysis_templates[CLUSTER]  # gone, and a new release names it: the gate would block
    data = w.spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    data["template"]["containers"][0]["image"] = "demo/web:3.0"
    w.spec = SafeRolloutSpec.model_validate(data)
    w.run(30, until=World.done)
    assert w.routing is None and w.status.routing is None and w.weight == 0
    assert w.phase() == "Blocked"


def test_an_edit_from_a_match_stage_to_a_weight_waits_for_passing_evidence() -> None:
    w = World(make_spec(**{"strategy.canary.stages": MATCH_STAGES}), metrics=lambda n, t, wt, s: None).run(8)
    assert w.status.routing is not None and w.weight == 0
    edited = copy.deepcopy(MATCH_STAGES)
    edited[0] = {"weight": 90, "duration": "60s"}
    w.spec = make_spec(**{"strategy.canary.stages": edited})
    w.run(6)
    assert w.weight == 0, "no metric has passed: the canary may not get 90%"


def test_the_split_check_sits_out_a_stage_with_a_match() -> None:
    stages = [{"weight": 5, "match": MATCH, "duration": "10s"}, {"weight": 100, "duration": "10s"}]
    w = World(make_spec(**{"strategy.canary.stages": stages, "analysis.trafficCheck": {"tolerance": 0.5}}),
              settings=Settings(settle_seconds=2), served=lambda weight: (120.0, 280.0))  # 30%: the header's users
    w.run(60, until=World.done)
    assert w.phase() == "Succeeded"


def test_an_invalid_spec_at_a_match_stage_sends_the_matched_requests_back(monkeypatch: pytest.MonkeyPatch) -> None:
    reverted: list[int] = []
    written: list[dict[str, Any]] = []
    def revert(ref: RolloutRef, spec: dict[str, Any]) -> bool:
        reverted.append(0)
        return True

    monkeypatch.setattr(handlers, "_revert_traffic", revert)
    monkeypatch.setattr(kube, "write_status", lambda ref, status: written.append(status))
    monkeypatch.setattr(events, "emit", lambda *args: None)
    ref = RolloutRef("default", "web", "uid-9")
    status = {"phase": "Progressing", "weight": 0, "routing": "match x-canary=always", "observedGeneration": 1}
    try:
        SafeRolloutSpec.model_validate({"targetRef": {"name": "web"}})
    except ValidationError as e:
        handlers._invalid(ref, {"targetRef": {"name": "web"}}, status, 2, e)
    assert reverted == [0]
    assert written[-1]["routing"] is None and written[-1]["phase"] == "Blocked"
    assert "all traffic is back on the stable version" in written[-1]["message"]


def test_a_pinned_template_this_operator_cannot_read_is_invalid_not_a_crash() -> None:
    w = World(make_spec(**{"analysis.metrics": [ref_metric(name="error-rate")]}))
    w.analysis_templates[CLUSTER] = (copy.deepcopy(ERRORS), "1")
    w.run(4)
    assert w.status.analysis_templates
    w.status.analysis_templates[0].spec = {**w.status.analysis_templates[0].spec, "fromANewerVersion": True}
    w.run(30, until=World.done)
    assert "InternalError" not in w.reasons()


def test_a_backtest_leaves_the_migration_out_and_says_so() -> None:
    db = {"postgres": {"secretRef": {"name": "db", "key": "dsn"}}, "snapshotBeforeRollout": True,
          "restoreOnRollback": True}
    spec = make_spec(**{"database": db,
                        "migration": {"jobTemplate": {"spec": {"template": {"spec": {
                            "restartPolicy": "Never", "containers": [{"name": "m", "image": "psql"}]}}}}}})
    replayed, notes = bt.replayable(spec)
    assert replayed.migration is None
    assert any("spec.migration left out" in n for n in notes)


@pytest.mark.parametrize("value", ["x)|(.*", "(?=admin)", "(a)\\1"])
def test_a_header_expression_must_stand_on_its_own(value: str) -> None:
    with pytest.raises(ValidationError, match="header X-Canary"):
        make_spec(**{"strategy.canary.stages": [
            {"match": {"headers": [{"name": "X-Canary", "value": value, "type": "RegularExpression"}]},
             "duration": "10s"}, {"weight": 100, "duration": "10s"}]})


