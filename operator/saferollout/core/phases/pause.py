"""Paused: held by a person (spec.paused, a breach whose action is pause, blue-green awaiting approval) or by
inconclusive analysis, which resumes by itself once the data is conclusive again. The stage's clock stands."""

from __future__ import annotations

from saferollout.core import actions as a
from saferollout.core import analysis, stages
from saferollout.core import transitions as go
from saferollout.core.models import Verdict
from saferollout.core.run import Run


def step(run: Run) -> None:
    why = run.s.pause_reason
    if why == "user":
        if not run.spec.paused:
            go.resume(run, "spec.paused is false again")
        return
    if why == "approval":
        return  # the promote command switches
    if run.spec.paused:
        run.s.pause_reason = "user"
        return
    if why == "inconclusive":
        latest = run.s.analysis.metrics
        if run.analysed_now and latest and all(m.verdict != Verdict.inconclusive for m in latest
                                               if analysis.acts(run, m)):  # a dryRun metric's no data holds nothing
            go.resume(run, "analysis is conclusive again")
            return
        if analysis.breaches(run):
            return
        if run.analysis_due():
            run.act(analysis.query(run, analysis.target(run)))


def apply(run: Run, r: a.Result) -> None:
    stages.apply(run, r)  # a weight asked for before the pause, analyses that go on while inconclusive
