"""The pure parts of the adapters: HTTPRoute rule rewriting, redaction, notification bodies, settings."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from saferollout.adapters.notify import body_for
from saferollout.adapters.routers.gateway import weighted_rules
from saferollout.config import OperatorConfig
from saferollout.redact import RedactingFilter, redact, register


def test_weighted_rules_sets_both_weights_and_keeps_other_rules() -> None:
    rules: list[dict[str, Any]] = [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
         "backendRefs": [{"name": "web", "port": 80, "weight": 100}]},
        {"backendRefs": [{"name": "other", "port": 81}]},
    ]
    out = weighted_rules(rules, "web", "web-canary", 25)
    assert out[0]["backendRefs"] == [{"name": "web", "port": 80, "weight": 75},
                                     {"name": "web-canary", "port": 80, "weight": 25}]
    assert out[0]["matches"] == rules[0]["matches"] and out[1] == rules[1]
    back = weighted_rules(out, "web", "web-canary", 0)
    assert back[0]["backendRefs"][0]["weight"] == 100 and back[0]["backendRefs"][1]["weight"] == 0


def test_weighted_rules_refuses_a_route_without_the_stable_service() -> None:
    with pytest.raises(LookupError, match="stable Service"):
        weighted_rules([{"backendRefs": [{"name": "x"}]}], "web", "web-canary", 5)


def test_redaction_of_urls_keywords_and_registered_secrets() -> None:
    register("s3cr3t-pw")
    assert redact("postgresql://app:hunter2@db:5432/app") == "postgresql://app:***@db:5432/app"
    assert redact("host=db password=hunter2 user=x") == "host=db password=*** user=x"
    assert redact("failed for s3cr3t-pw") == "failed for ***"
    record = logging.LogRecord("x", logging.INFO, "f", 1, "dsn %s", ("postgresql://a:b@c/d",), None)
    RedactingFilter().filter(record)
    assert record.getMessage() == "dsn postgresql://a:***@c/d"


def test_notification_bodies() -> None:
    generic = body_for("generic", "demo/web", "critical", "rolled back", "error-rate 0.08", "web-incident-1")
    assert generic == {"rollout": "demo/web", "severity": "critical", "title": "rolled back",
                       "text": "error-rate 0.08", "reportRef": "web-incident-1"}
    slack = body_for("slack", "demo/web", "critical", "rolled back", "error-rate 0.08", None)
    assert slack["text"] == "rolled back: error-rate 0.08" and ":rotating_light:" in str(slack["blocks"])


def test_settings_from_env() -> None:
    cfg = OperatorConfig.from_env({"SAFEROLLOUT_DEFAULT_STAGES": "10:1m,100:2m", "SAFEROLLOUT_SERVICE_LABEL": "svc",
                                   "SAFEROLLOUT_RATE_WINDOW": "30s"})
    assert [(s.weight, s.duration) for s in cfg.settings.default_stages] == [(10, "1m"), (100, "2m")]
    assert cfg.labels.service == "svc" and cfg.rate_window == "30s"


def test_log_lines_name_the_rollout_in_text_and_json() -> None:
    import json

    from saferollout.__main__ import JsonFormatter, TextFormatter
    from saferollout.redact import naming

    with naming("demo", "web"):
        record = logging.LogRecord("saferollout.x", logging.INFO, "f", 1, "weight %d%%", (25,), None)
        RedactingFilter().filter(record)
    assert "[demo/web] saferollout.x: weight 25%" in TextFormatter().format(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["namespace"] == "demo" and line["name"] == "web" and line["message"] == "weight 25%"


def test_no_handler_puts_a_finalizer_on_rollouts() -> None:
    import kopf

    import saferollout.handlers  # noqa: F401  (registers the handlers)

    registry = kopf.get_default_registry()
    spawning = registry._spawning.get_all_handlers()
    assert spawning and not [h for h in spawning if h.requires_finalizer]
    assert not [h for h in registry._changing.get_all_handlers() if h.requires_finalizer]


def test_idle_polls_back_off_and_any_progress_resets_them() -> None:
    from saferollout.handlers import MAX_POLL, backoff

    idle, sleeps = 0, []
    for _ in range(6):  # the canary is still rolling out: nothing written, the core asks for a 1 s poll
        after, idle = backoff(1.0, False, idle, 1.0)
        sleeps.append(after)
    assert sleeps == [1.0, 2.0, 4.0, MAX_POLL, MAX_POLL, MAX_POLL]
    assert backoff(1.0, True, idle, 1.0) == (1.0, 0)  # the status moved: poll at the core's pace again
    assert backoff(7.5, False, 3, 1.0) == (7.5, 0)  # waiting on the clock is not polling
    assert backoff(None, False, 3, 1.0) == (None, 0)  # asleep until the object changes


def test_quiet_gc_freezes_what_is_loaded_and_spaces_full_collections() -> None:
    import gc

    from saferollout.handlers import quiet_gc

    before = gc.get_threshold()
    try:
        quiet_gc()
        assert gc.get_freeze_count() > 1000  # the imported modules, classes and functions
        assert gc.get_threshold() == (before[0], before[1], 1000)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_a_passing_analysis_leaves_its_write_to_the_daemon_and_intent_is_written_before_any_act(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The write of a decision with nothing after it goes to the status pool (the rollouts' pool stays free for
    analyses when the API server is slow); a write followed by an act is still made first, by the same thread."""
    from datetime import UTC, datetime, timedelta

    from saferollout import handlers
    from saferollout.adapters import kube
    from saferollout.adapters.kube import RolloutRef
    from saferollout.core import actions as a
    from saferollout.core.models import Phase
    from tests.unit.world import World, make_spec

    spec = make_spec(**{"strategy.canary.stages": [{"weight": 5, "duration": "30m"}]})
    world = World(spec, now=datetime.now(UTC) - timedelta(seconds=60)).run(50, until=lambda w: w.status.stage_checks > 0)
    assert world.phase() == "Progressing"
    world.now = datetime.now(UTC)  # the world answers queries on the operator's clock
    trail: list[str] = []
    monkeypatch.setattr(kube, "write_status", lambda ref, status: trail.append(f"write {status['phase']}"))

    def execute(act: a.Action) -> a.Result | None:
        trail.append(f"act {type(act).__name__}")
        return world.execute(act)

    monkeypatch.setattr(handlers, "Executor", lambda *_: execute)
    ref = RolloutRef("default", "web", "uid-1")
    handlers._written.pop(ref.uid, None)
    as_dict = spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    status = handlers._status_dict(world.status)

    done = handlers.reconcile(ref, as_dict, status, {"generation": 1})  # the next analysis is due: query, judge
    assert trail == ["act QueryMetrics"] and done.last_write is not None and done.wrote
    done.last_write()
    assert trail == ["act QueryMetrics", "write Progressing"]
    assert handlers._written[ref.uid].analysis.runs == world.status.analysis.runs + 1

    trail.clear()
    done = handlers.reconcile(ref, as_dict, status, {"generation": 1, "annotations": {
        handlers.COMMAND_ANNOTATION: "abort"}})
    assert trail[:2] == ["write RollingBack", "act SetWeight"]  # the intent is on record before traffic moves
    assert handlers._written[ref.uid].phase in (Phase.rolling_back, Phase.rolled_back)
    handlers._written.pop(ref.uid, None)
