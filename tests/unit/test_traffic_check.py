"""The traffic split check: a data plane that does not apply the weight written is caught, never promoted."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from saferollout.core.clock import parse_time
from saferollout.core.engine import Settings
from saferollout.core.models import TRAFFIC_CHECK, SafeRolloutSpec
from tests.unit.world import T0, World, make_spec

CHECK = {"analysis.trafficCheck": {"tolerance": 0.5, "minRequests": 50}}


def run(world: World) -> World:
    return world.run(300, until=World.done, step=None)


def test_a_router_that_applies_the_weight_passes_every_check_and_promotes() -> None:
    w = run(World(make_spec(**CHECK), settings=Settings(settle_seconds=4)))
    assert w.phase() == "Succeeded"
    assert w.weights_seen == [5, 25, 50, 100]


def test_a_router_that_ignores_the_weight_is_inconclusive_and_never_promoted() -> None:
    w = World(make_spec(**CHECK, **{"analysis.onInconclusive": "rollback"}), settings=Settings(settle_seconds=4),
              served=lambda weight: (0.0, 400.0))  # everything still goes to stable
    run(w)
    assert w.phase() == "RolledBack" and w.weights_seen == [5]
    incident = w.status.incident
    assert incident is not None and incident.reason == "AnalysisInconclusive" and incident.metric == TRAFFIC_CHECK
    shown = next(m for m in incident.metrics if m.name == TRAFFIC_CHECK)
    assert shown.value == 0.0 and shown.message is not None
    assert "router gatewayAPI was asked for 5%" in shown.message and "served 0% of 400 requests" in shown.message
    entry = w.status.history[-1]
    assert entry.action == "rollback" and entry.metric == TRAFFIC_CHECK
    # the weight was set at 0 s; settle (4 s), then inconclusiveLimit (3) checks 2 s apart
    decided = (parse_time(entry.at) - T0).total_seconds()
    assert decided <= 4 + 3 * 2 + 1


def test_the_check_waits_for_the_rate_window_and_holds_the_stage_while_it_mismatches() -> None:
    w = World(make_spec(**CHECK), settings=Settings(settle_seconds=6), served=lambda weight: (1.0 * weight, 400.0))
    w.run(5, step=None)
    assert all(m.name != TRAFFIC_CHECK for m in w.status.analysis.metrics)  # still inside the first rate window
    w.run(20, step=None)
    assert (w.phase(), w.status.pause_reason, w.status.stage) == ("Paused", "inconclusive", 1)
    assert w.weights_seen == [5]  # held at the first stage: the stage never passed
    assert "served 1.23% of 405 requests" in (w.status.message or "")


def test_too_few_requests_say_nothing_about_the_split() -> None:
    w = World(make_spec(**CHECK), settings=Settings(settle_seconds=0), served=lambda weight: (1.0, 9.0))
    w.run(4, step=None)
    shown = next(m for m in w.status.analysis.metrics if m.name == TRAFFIC_CHECK)
    assert shown.verdict.value == "inconclusive" and shown.message is not None and "from 50" in shown.message


def test_the_check_is_off_by_default_and_its_name_is_reserved() -> None:
    w = World(make_spec(), served=lambda weight: (0.0, 400.0))
    assert run(w).phase() == "Succeeded"  # no check asked for: the split is not looked at
    with pytest.raises(ValidationError, match="may not be named traffic-split"):
        make_spec(**CHECK, **{"analysis.metrics": [{"name": TRAFFIC_CHECK, "template": "error-rate", "max": 0.01}]})
    with pytest.raises(ValidationError):
        SafeRolloutSpec.model_validate({**make_spec().model_dump(by_alias=True, exclude_none=True),
                                        "analysis": {"trafficCheck": {"tolerance": 0}}})
