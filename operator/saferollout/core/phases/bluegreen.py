"""Progressing, blue-green strategy: the new version analysed on the preview Service (stage 0), then the active
Service switched to it in one write (stage 1, weight 100) and watched before the old version goes."""

from __future__ import annotations

from saferollout.core import actions as a
from saferollout.core import analysis, stages
from saferollout.core import transitions as go
from saferollout.core.durations import format_duration, parse_duration
from saferollout.core.models import Phase, Stage
from saferollout.core.run import Run, images


def step(run: Run) -> None:
    if run.spec.paused:
        go.pause(run, "user", "RolloutPaused", "spec.paused is true")
        return
    if run.s.stage == 0:
        _preview(run)
    elif stages.hold(run, stages.current(run)):
        go.promote(run)


def _preview(run: Run) -> None:
    bg = run.spec.strategy.blue_green
    assert bg is not None
    if run.s.stage_started_at is None:
        run.start_stage_clock()
        run.event("PreviewReady", f"{images(run.s.canary_images)} answers on {bg.preview_service}")
    if analysis.breaches(run):
        return
    if analysis.stage_done(run, Stage(weight=100, duration=bg.preview_duration)):
        if bg.auto_promote:
            switch(run, "pre-promotion analysis passed")
        else:
            go.pause(run, "approval", "AwaitingPromotion",
                     f"pre-promotion analysis passed; `promote` switches {bg.active_service}")
        return
    if run.analysis_due():
        run.act(analysis.query(run, "preview"))
        return  # as in a canary stage: the message moves on with the results
    left = max(0.0, parse_duration(bg.preview_duration) - run.stage_elapsed())
    run.s.message = f"preview on {bg.preview_service}: {format_duration(left)} of analysis left"


def switch(run: Run, why: str) -> None:
    """To stage 1: the active Service selects the new version (the engine dispatches here again to do it)."""
    assert run.spec.strategy.blue_green is not None
    run.s.stage, run.s.phase, run.s.pause_reason = 1, Phase.progressing, None
    run.reset_analysis()
    run.event("Switching", f"{why}; {run.spec.strategy.blue_green.active_service} switches to the new version")


def apply(run: Run, r: a.Result) -> None:
    stages.apply(run, r)
