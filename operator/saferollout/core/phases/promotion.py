"""Promoting: the target gets the new template, the route returns to it, the canary goes, and the target is
watched for the last stage's duration; a breach then rolls back like any other."""

from __future__ import annotations

from datetime import timedelta

from saferollout.core import actions as a
from saferollout.core import analysis, deadline
from saferollout.core import transitions as go
from saferollout.core.clock import iso, parse_time
from saferollout.core.durations import format_duration, parse_duration
from saferollout.core.models import Phase, Step
from saferollout.core.run import Run, images


def step(run: Run) -> None:
    match run.s.step:
        case Step.promote_target:
            # a canary carried part of the load beside the target: an autoscaled target keeps both's replicas (not
            # after a last stage of weight 0: a match or a mirror's copies, the target carried everything already)
            keep = run.spec.strategy.canary is not None and not run.spec.partition and run.s.weight > 0
            if run.spec.target_template:  # the target holds the new template already: unpause it, in one write
                run.act(a.ReleaseTarget(run.s.template_hash or "", "promote", keep_capacity=keep))
            else:
                run.act(a.SetTargetImages(dict(run.s.canary_images or {}), "promote", keep_capacity=keep))
        case Step.wait_target:
            if a.ReadTarget not in run.polled:
                run.act(a.ReadTarget())
        case Step.route_to_target:
            if run.spec.partition:  # a StatefulSet's pods are the target: there is no route to take back
                run.s.weight, run.s.routing, run.s.step = 0, None, Step.remove_canary
                run.act(a.DeleteCanary())
            elif run.s.returning_to:
                _return_step(run)
            else:
                run.act(a.SetWeight(0))
        case Step.remove_canary:
            left = run.canary_kept_for(run.s.stage_resumed_at)  # from the weight-0 write (apply, below)
            if left > 0:  # a time, not a countdown: the status is not rewritten every second meanwhile
                at = (parse_time(run.s.stage_resumed_at or iso(run.now)) +
                      timedelta(seconds=parse_duration(run.spec.strategy.canary.scale_down_delay
                                                       if run.spec.strategy.canary else "0s")))
                run.s.message = (f"promoted; the traffic is on the target, the canary goes at {at:%H:%M:%S}Z "
                                 "(scaleDownDelay: the data plane lets go of it first)")
            else:
                run.act(a.DeleteCanary())
        case Step.watch:
            _watch(run)


def _lower(run: Run) -> int:
    """The next weight down the stages' ladder from the canary's current one (0 below the lowest)."""
    return max((st.weight for st in run.stages if 0 < st.weight < run.s.weight), default=0)


def _return_step(run: Run) -> None:
    """An autoscaled target takes the canary's load back by the stages' weights in reverse, each held for an HPA
    sync and a fresh metrics sample, so its HPA scales it from the load it carries (an HPA sees the raise alone
    as idle pods, and may undo it before a one-step switch)."""
    hold = run.settings.autoscaled_return_hold
    elapsed = run.stage_elapsed()
    if run.s.stage_resumed_at and elapsed < hold:
        run.wake_in(hold - elapsed)
        run.s.message = (f"returning the load to the autoscaled target ({run.s.returning_to}): canary at "
                         f"{run.s.weight}%, {_lower(run)}% in {format_duration(hold - elapsed)}")
        return
    run.act(a.SetWeight(_lower(run)))  # the last step is 0


def _watch(run: Run) -> None:
    if analysis.breaches(run):
        return
    watch = run.stages[-1]
    elapsed = run.stage_elapsed()
    if elapsed < watch.seconds and run.s.stage_resumed_at:
        run.wake_in(watch.seconds - elapsed)
    if elapsed >= watch.seconds and run.s.stage_checks > 0 and analysis.all_pass(run, analysis.metrics_for(run, "stable")):
        go.finish(run, Phase.succeeded, "RolloutSucceeded",
                  f"{images(run.s.canary_images)} promoted and healthy for {watch.duration}")
        return
    if run.analysis_due():
        run.act(analysis.query(run, "stable"))
        return  # as in a stage: the message moves on with the results
    left = max(0.0, watch.seconds - elapsed)
    run.s.message = f"promoted; watching the target for {format_duration(left)}"


def apply(run: Run, r: a.Result) -> None:
    act = r.action if isinstance(r, a.Outcome) and r.ok else None
    if isinstance(r, a.Outcome) and isinstance(act, a.SetTargetImages | a.ReleaseTarget) and act.keep_capacity \
            and r.message and run.s.step == Step.promote_target:  # it raised an autoscaled target: by how much
        run.event("TargetScaled", r.message)
    if isinstance(act, a.SetTargetImages) and act.reason == "promote" and run.s.step == Step.promote_target:
        run.s.step = Step.wait_target
    elif isinstance(act, a.ReleaseTarget) and act.reason == "promote" and run.s.step == Step.promote_target:
        if run.s.source is not None:  # the promoted template is the approved one now
            run.s.source.stable_template_hash = act.stable_hash
            run.s.source.stable_images = dict(run.s.canary_images or {})
        run.event("TargetReleased", f"Deployment {run.spec.target_ref.name} unpaused: pod template {act.stable_hash} "
                  "rolls out to the stable pods")
        run.s.step = Step.wait_target
    elif isinstance(r, a.TargetState) and run.s.step == Step.wait_target:
        view_ok = r.view is None or (not r.view.paused and r.view.template_hash == run.s.template_hash)
        if view_ok and r.available and all(r.images.get(k) == v for k, v in (run.s.canary_images or {}).items()):
            deadline.done(run, deadline.TARGET)
            run.s.step = Step.route_to_target
            if r.autoscaler and run.spec.strategy.canary is not None and run.s.weight > 0:
                run.s.returning_to = r.autoscaler
                run.s.stage_resumed_at = None  # the first step goes at once: the raise is in place already
                run.event("ReturningLoad", f"the canary's {run.s.weight}% goes back to the target by the stages' "
                          f"weights in reverse, each held {format_duration(run.settings.autoscaled_return_hold)}, "
                          f"so HorizontalPodAutoscaler {r.autoscaler} scales it from the load it carries")
        else:
            run.polled.add(a.ReadTarget)
            deadline.waiting(run, deadline.TARGET, f"Deployment {run.spec.target_ref.name} to run the promoted version")
    elif isinstance(act, a.SetWeight) and act.weight > 0 and run.s.step == Step.route_to_target:
        run.s.stage_resumed_at = iso(run.now)  # one step of an autoscaled target's return: held from now
        run.s.stage_elapsed_seconds = 0
    elif isinstance(act, a.SetWeight) and act.weight == 0 and run.s.step == Step.route_to_target:
        run.s.returning_to = None
        run.s.step = Step.remove_canary
        run.s.stage_resumed_at = iso(run.now)  # scaleDownDelay counts from here (the watch restarts the clock)
        run.s.stage_elapsed_seconds = 0
    elif isinstance(act, a.DeleteCanary) and run.s.step == Step.remove_canary:
        _promoted(run)
    elif isinstance(r, a.MetricValues) and r.purpose == "analysis":
        analysis.record(run, r)


def _promoted(run: Run) -> None:
    run.s.promoted_at = iso(run.now)
    if run.blue_green:  # its watch was the post-switch stage: the old version is gone, and that is the end
        run.event("Promoted", f"the target runs {images(run.s.canary_images)}; the old version is gone")
        go.finish(run, Phase.succeeded, "RolloutSucceeded",
                  f"{images(run.s.canary_images)} promoted after post-promotion analysis")
        return
    run.s.step = Step.watch
    run.reset_analysis()
    run.s.stage_resumed_at = iso(run.now)
    run.s.stage_elapsed_seconds = 0
    run.event("Promoted", f"the target runs {images(run.s.canary_images)}; canary removed")
