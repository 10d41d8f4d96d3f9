"""A stage held at its weight: the weight applied, the window settled, the analysis run, the evidence complete.

Canary stages and blue-green's post-switch stage are the same loop; the strategies decide what follows it.
"""

from __future__ import annotations

from datetime import timedelta

from saferollout.core import actions as a
from saferollout.core import analysis
from saferollout.core.clock import iso, parse_time
from saferollout.core.durations import format_duration
from saferollout.core.models import Phase, Stage
from saferollout.core.run import Run


def current(run: Run) -> Stage:
    return run.stages[(run.s.stage or 1) - 1]


def cookie_regex(name: str, value: str) -> str:
    """A `Cookie` header that holds name=value among its cookies, as a whole-value RE2 (Go, Envoy and Python agree:
    anchored, and the names and values the model allows have nothing to escape but the dot)."""
    return "^(.*;[ ]*)?{}={}(;.*)?$".format(name.replace(".", "\\."), value.replace(".", "\\."))


def match_sets(routing: a.Routing | None) -> list[tuple[a.HeaderCondition, ...]]:
    """The header conditions that send a request to the canary, one set per way in: the stage's match, and the
    sticky cookie; every router writes one match per set."""
    sets: list[tuple[a.HeaderCondition, ...]] = []
    if routing and routing.match:
        sets.append(routing.match)
    if routing and routing.sticky:
        name, _, value = routing.sticky.partition("=")
        sets.append((a.HeaderCondition("cookie", cookie_regex(name, value), True),))
    return sets


def sticky_cookie(run: Run) -> str:
    """`name=value` of the sticky cookie: one name per target, one value per release (its template hash), so a
    user who saw an earlier canary is not taken for one of this release's."""
    value = "".join(c for c in (run.s.template_hash or "canary") if c.isalnum())[:16] or "canary"
    return f"saferollout-{run.spec.target_ref.name}={value}"


def routing(run: Run, stage: Stage) -> a.Routing | None:
    """The stage's match, mirror and sticky cookie as the router is asked for them; None: by weight alone."""
    match: list[a.HeaderCondition] = []
    if stage.match:
        match += [a.HeaderCondition(h.name.lower(), f"^(?:{h.value})$", True) if h.type == "RegularExpression"
                  else a.HeaderCondition(h.name.lower(), h.value) for h in stage.match.headers or ()]
        match += [a.HeaderCondition("cookie", cookie_regex(c.name, c.value), True) for c in stage.match.cookies or ()]
    sticky = sticky_cookie(run) if stage.sticky else None
    if not match and stage.mirror is None and sticky is None:
        return None
    return a.Routing(tuple(match), stage.mirror or 0, sticky)


def hold(run: Run, stage: Stage) -> bool:
    """One turn of the stage; True when it is done (time up, analysed, every verdict passing)."""
    label = f"stage {run.s.stage}/{len(run.stages)}"
    held = _raise_held(run, stage)
    want = routing(run, stage)
    if (run.s.weight != stage.weight or run.s.routing != (want.key if want else None)) and not held:
        if a.SetWeight not in run.polled:
            run.act(a.SetWeight(stage.weight, want))
        run.s.message = f"{label}: moving the canary to {stage.kind}"
        return False
    if run.s.settle_until and run.now < parse_time(run.s.settle_until):
        run.wake_in((parse_time(run.s.settle_until) - run.now).total_seconds())
        run.s.message = (f"{label} at {stage.weight}%: waiting for the metrics' window to hold only data at "
                         f"{stage.weight}%")
        return False
    if analysis.breaches(run):
        return False
    if not held and analysis.stage_done(run, stage):
        return True
    if run.analysis_due():
        run.act(analysis.query(run, analysis.target(run)))
        return False  # the message moves on with the results, in their write: a query needs no write of its own
    if held:
        run.s.message = f"{label}: holding {run.s.weight}% until every metric passes, then {stage.weight}%"
        return False
    left = max(0.0, stage.seconds - run.stage_elapsed())
    at = f"at {stage.weight}%" if want is None else f"({stage.kind})"
    run.s.message = f"{label} {at}: " + (
        f"{format_duration(left)} of analysis left" if left > 0 else "stage time is up; waiting for every metric to pass")
    return False


def _raise_held(run: Run, stage: Stage) -> bool:
    """More traffic to a canary needs passing evidence. An advance comes with it (the last stage was done); an
    edit of `stages` that raises the current stage's weight may not: it waits until every metric passes."""
    exposed = run.s.weight > 0 or bool(run.s.routing)  # a match or mirror stage has users on the canary at weight 0
    return stage.weight > run.s.weight and exposed and \
        not analysis.all_pass(run, analysis.metrics_for(run, analysis.target(run)))


def apply(run: Run, r: a.Result) -> None:
    """A weight applied starts the stage's clock; an analysis is recorded."""
    if isinstance(r, a.Outcome) and r.ok and isinstance(r.action, a.SetWeight) and (
            r.action.weight > 0 or r.action.routing is not None):
        _weight_applied(run, r.action.weight)
    elif isinstance(r, a.MetricValues) and r.purpose == "analysis":
        analysis.record(run, r)


def _weight_applied(run: Run, weight: int) -> None:
    if run.s.phase not in (Phase.progressing, Phase.paused):
        return
    previous = run.s.weight
    run.start_stage_clock()
    # a full rate window of data at the new weight, whose first scrape may come up to an interval late
    # (slow requests started at the old weight also finish, and are counted, after the change)
    settle = run.settings.settle_seconds + run.interval if weight < previous and run.settings.settle_seconds > 0 else 0.0
    run.s.settle_until = iso(run.now + timedelta(seconds=settle)) if settle > 0 else None
    # at an equal weight (stages of weight 0: a match, then a mirror) only a step back goes back
    advanced = weight > previous or (weight == previous and not run.s.stepped_back)
    run.event("StageAdvanced" if advanced else "StageSteppedBack",
              f"stage {run.s.stage}/{len(run.stages)}: canary {current(run).kind}")
