"""Weight bookkeeping: what `weightsSeen`, `weightHeldSeconds` and `neverAdvancedWhile` are computed from."""

from __future__ import annotations

from harness.expect import Advance, Observed, check_all
from harness.format import Bounds
from harness.router import backend_weights, canary_share
from harness.timeline import longest_hold, merged_intervals, weights_seen


def test_weights_seen_drops_zero_and_collapses_repeats() -> None:
    changes = [(0.0, 0), (1.0, 5), (2.0, 25), (3.0, 50), (4.0, 100), (5.0, 0)]
    assert weights_seen(changes) == [5, 25, 50, 100]
    assert weights_seen([(0.0, 0), (1.0, 5), (2.0, 25), (3.0, 5), (4.0, 25), (5.0, 0)]) == [5, 25, 5, 25]
    assert weights_seen([(0.0, 0), (1.0, 5), (2.0, 0), (3.0, 5)]) == [5]
    assert weights_seen([]) == []


def test_longest_hold() -> None:
    changes = [(0.0, 0), (1.0, 5), (4.0, 25), (5.0, 5), (12.0, 0)]
    assert longest_hold(changes, 5, end=20.0) == 7.0
    assert longest_hold(changes, 0, end=20.0) == 8.0  # the last one lasts until the end
    assert longest_hold(changes, 50, end=20.0) == 0.0


def test_merged_intervals() -> None:
    assert merged_intervals([1.0, 10.0], [5.0], end=20.0) == [(1.0, 5.0), (10.0, 20.0)]
    assert merged_intervals([], [], end=1.0) == []


def test_canary_share_and_backend_weights() -> None:
    route = {"spec": {"rules": [{"backendRefs": [{"name": "web", "weight": 75}, {"name": "web-canary", "weight": 25},
                                                 {"name": "other"}]}]}}
    w = backend_weights(route)
    assert w == {"web": 75, "web-canary": 25, "other": 0}
    assert canary_share(w, "web", "web-canary") == 25
    assert canary_share({"web": 1, "web-canary": 1}, "web", "web-canary") == 50
    assert canary_share({"web": 100}, "web", "web-canary") == 0
    assert canary_share({}, "web", "web-canary") == 0
    assert backend_weights({"spec": {}}) == {}


def test_never_advanced_while_prometheus_down() -> None:
    obs = Observed(end=100.0, outages={"prometheus": ([10.0], [30.0])})
    obs.advances = [Advance(5.0, 5.25, "stage 1 -> 2"), Advance(9.9, 10.15, "stage 2 -> 3 (straddles the stop)"),
                    Advance(35.0, 35.25, "stage 3 -> 4")]
    [c] = check_all({"neverAdvancedWhile": "prometheusDown"}, obs, "demo", "web")
    assert c.passed, c.detail
    obs.advances.append(Advance(20.0, 20.25, "stage 3 -> 4"))
    [c] = check_all({"neverAdvancedWhile": "prometheusDown"}, obs, "demo", "web")
    assert not c.passed and "stage 3 -> 4" in c.detail
    [c] = check_all({"neverAdvancedWhile": "prometheusDown"}, Observed(end=1.0), "demo", "web")
    assert not c.passed  # an outage that never happened tests nothing


def test_weight_checks() -> None:
    obs = Observed(end=50.0, router_changes=[(0.0, 0), (1.0, 5), (10.0, 25), (20.0, 0)])
    checks = check_all({"maxWeight": Bounds(None, 25), "finalWeight": Bounds(0, 0), "weightsSeen": [5, 25],
                        "weightHeldSeconds": (5, 8.0)}, obs, "demo", "web")
    assert all(c.passed for c in checks), [c.line() for c in checks]
    [c] = check_all({"maxWeight": Bounds(None, 5)}, obs, "demo", "web")
    assert not c.passed


def test_secret_absent() -> None:
    obs = Observed(password="pw-s3cret", operator_log="connecting to postgresql://app:***@127.0.0.1/app",
                   rollout={"status": {"message": "ok"}})
    [c] = check_all({"secretAbsentFrom": ["operatorLogs", "events", "status", "incidentReport"]}, obs, "demo", "web")
    assert c.passed, c.detail
    obs.events = [{"reason": "Snapshot", "message": "dsn postgresql://app:pw-s3cret@host/app"}]
    [c] = check_all({"secretAbsentFrom": ["operatorLogs", "events"]}, obs, "demo", "web")
    assert not c.passed and "events" in c.detail
