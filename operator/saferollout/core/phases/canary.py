"""Progressing, canary strategy: the stages in order, each held at its weight until its evidence is complete."""

from __future__ import annotations

from saferollout.core import actions as a
from saferollout.core import stages
from saferollout.core import transitions as go
from saferollout.core.run import Run


def step(run: Run) -> None:
    if run.spec.paused:
        go.pause(run, "user", "RolloutPaused", "spec.paused is true")
        return
    if not stages.hold(run, stages.current(run)):
        return
    if (run.s.stage or 1) < len(run.stages):
        run.s.stage = (run.s.stage or 1) + 1
        run.s.analysis.metrics = [m.model_copy(update={"consecutive_failures": 0}) for m in run.s.analysis.metrics]
    else:
        go.promote(run)


def apply(run: Run, r: a.Result) -> None:
    stages.apply(run, r)
