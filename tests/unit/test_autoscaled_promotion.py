"""An autoscaled target at promotion: the core asks for its capacity to be kept in the promotion's one write (only
where a canary carried load beside it), says what the adapter raised, and routes back only once it is available;
`autoscaling.promotion_replicas` is the arithmetic, tested on its own with the API reads stubbed."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest

from saferollout.adapters import autoscaling, kube
from saferollout.core import actions as a
from tests.unit.test_engine import _bg_spec
from tests.unit.test_target_template import V2, gitops_world
from tests.unit.world import World, make_spec

RAISED = "Deployment web raised from 1 to 4 replicas before the switch"


def _promotions(w: World) -> list[a.SetTargetImages | a.ReleaseTarget]:
    return [act for act in w.actions if isinstance(act, a.SetTargetImages | a.ReleaseTarget) and act.reason == "promote"]


def test_a_canary_promotion_keeps_capacity_and_says_what_was_raised() -> None:
    w = World(make_spec(), raised=RAISED).run(300, until=World.done)
    assert w.phase() == "Succeeded"
    assert [p.keep_capacity for p in _promotions(w)] == [True]
    reasons = w.reasons()
    assert reasons.index("Promoting") < reasons.index("TargetScaled") < reasons.index("Promoted")
    assert next(e.message for e in w.events if e.reason == "TargetScaled") == RAISED


def test_nothing_raised_means_no_event() -> None:
    w = World(make_spec()).run(300, until=World.done)
    assert w.phase() == "Succeeded" and "TargetScaled" not in w.reasons()


def test_a_last_stage_without_weight_adds_nothing() -> None:
    # a mirror's copies (or a match's few requests) sized the canary's HPA: the target carried all of the load
    spec = make_spec(**{"strategy.canary.stages": [{"mirror": 50, "duration": "10s"}]})
    w = World(spec, raised=RAISED).run(300, until=World.done)
    assert w.phase() == "Succeeded"
    assert [p.keep_capacity for p in _promotions(w)] == [False]


def test_blue_green_promotion_does_not_add_the_preview_to_the_target() -> None:
    # the active version carried all of the load until the switch: its HPA sized it for that already
    w = World(_bg_spec(), raised=RAISED).run(300, until=World.done)
    assert w.phase() == "Succeeded"
    assert [p.keep_capacity for p in _promotions(w)] == [False]
    assert "TargetScaled" not in w.reasons()


def test_the_webhook_models_unpause_keeps_capacity_in_the_same_write() -> None:
    w = gitops_world(labelled=True, raised=RAISED)
    w.commit(V2)
    w.run(300, until=World.done)
    assert w.phase() == "Succeeded", w.status.message
    assert [p.keep_capacity for p in _promotions(w)] == [True]
    assert w.target_writes["operator"] == 1  # still one write: the replicas ride on the unpause
    assert "TargetScaled" in w.reasons()


def _weight_times(w: World) -> list[tuple[float, int]]:
    return [(float(line.split()[0]), int(line.split("weight=")[1].split(")")[0].split(",")[0]))
            for line in w.log if "SetWeight(" in line]


def test_an_autoscaled_target_takes_the_load_back_by_the_stages_in_reverse() -> None:
    w = World(make_spec(), autoscaler="web", raised=RAISED).run(400, until=World.done)
    assert w.phase() == "Succeeded", w.status.message
    assert w.weights_seen == [5, 25, 50, 100, 50, 25, 5] and w.weight == 0  # (0 is not listed)
    back = _weight_times(w)[-4:]
    assert [wt for _, wt in back] == [50, 25, 5, 0]
    gaps = [b[0] - a[0] for a, b in pairwise(back)]
    assert all(29 <= g <= 32 for g in gaps), gaps  # each step held for an HPA sync and a fresh sample (30 s)
    reasons = w.reasons()
    assert reasons.index("TargetScaled") < reasons.index("ReturningLoad") < reasons.index("Promoted")
    assert w.status.returning_to is None  # done


def test_the_return_resumes_where_it_was_after_a_restart() -> None:
    w = World(make_spec(), autoscaler="web").run(400, until=lambda x: x.weights_seen[-2:] == [100, 50])
    assert w.status.returning_to == "web"
    restarted = World(make_spec(), autoscaler="web", status=w.status.model_copy(deep=True), now=w.now,
                      weight=w.weight, target_images=dict(w.target_images), canary=w.canary)
    restarted.run(400, until=World.done)
    assert restarted.phase() == "Succeeded"
    assert restarted.weights_seen == [25, 5] and restarted.weight == 0  # on from 50: none repeated or skipped


def test_not_autoscaled_means_one_switch() -> None:
    w = World(make_spec()).run(300, until=World.done)
    assert w.weights_seen == [5, 25, 50, 100] and [wt for _, wt in _weight_times(w)][-2:] == [100, 0]
    assert "ReturningLoad" not in w.reasons()


# ------------------------------------------------------------------------------------- the adapter's arithmetic


def _hpa(max_replicas: int) -> dict[str, Any]:
    return {"metadata": {"name": "web"}, "spec": {"maxReplicas": max_replicas, "minReplicas": 1}}


def _canary(spec_n: int, status_n: int) -> dict[str, Any]:
    return {"spec": {"replicas": spec_n}, "status": {"replicas": status_n}}


TARGET = {"metadata": {"name": "web"}, "spec": {"replicas": 1}}


@pytest.mark.parametrize(("hpa", "canary", "want"), [
    (_hpa(6), _canary(3, 3), 4),  # both versions' replicas
    (_hpa(3), _canary(3, 3), 3),  # never above the HPA's max
    (_hpa(6), _canary(2, 3), 4),  # the canary's pods still running count (its HPA just scaled it down)
    (_hpa(1), _canary(3, 3), None),  # the target is at max already
    (None, _canary(3, 3), None),  # not autoscaled: left alone
    (_hpa(6), None, None),  # no canary (gone already): nothing to add
])
def test_promotion_replicas(monkeypatch: pytest.MonkeyPatch, hpa: dict[str, Any] | None,
                            canary: dict[str, Any] | None, want: int | None) -> None:
    monkeypatch.setattr(autoscaling, "target_hpa", lambda ns, name: hpa)
    monkeypatch.setattr(kube, "apps", lambda: type("Apps", (), {"read_namespaced_deployment": None})())
    monkeypatch.setattr(kube, "read_or_none", lambda read, *args: canary)
    replicas, why = autoscaling.promotion_replicas("demo", TARGET, "web-canary")
    assert replicas == want
    assert (why != "") == (want is not None)
    if want is not None:
        assert f"from 1 to {want} replicas" in why and "HorizontalPodAutoscaler web" in why
