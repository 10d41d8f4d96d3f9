"""Analysis shared by every phase that judges a version: verdicts per metric, the counters behind them, the
breach and inconclusive responses, and when a stage's evidence is complete.

The arithmetic lives here, not in the adapters: a baseline is compared here, a judged metric is tested here
(core.judge), and a value that is not finite never reaches the status.
"""

from __future__ import annotations

import math

from saferollout.core import actions as a
from saferollout.core import transitions as go
from saferollout.core.clock import iso
from saferollout.core.durations import parse_duration
from saferollout.core.judge import judge
from saferollout.core.models import (
    PHASE_STEPS,
    TRAFFIC_CHECK,
    Baseline,
    BreachAction,
    DryRunStatus,
    IncidentStatus,
    InconclusiveAction,
    Metric,
    MetricStatus,
    Phase,
    Severity,
    Stage,
    Verdict,
)
from saferollout.core.run import Run, fmt

_ORDER = {BreachAction.rollback: 4, BreachAction.step_back: 3, BreachAction.pause: 2, BreachAction.notify: 1}
Bad = list[tuple[str, Verdict, str]]


def compare(baseline: Baseline, canary: float | None, stable: float | None) -> tuple[float | None, str | None]:
    """The canary against the stable version: their difference, or their ratio. A canary above a stable 0 has an
    unbounded ratio: that fails any maxRatio (the status shows no value and says why), it is never `Infinity`."""
    if canary is None or stable is None or not (math.isfinite(canary) and math.isfinite(stable)):
        return None, None
    if baseline.max_difference is not None:
        return canary - stable, None
    if stable == 0:
        return (1.0, None) if canary == 0 else (math.inf, f"canary {canary:.4g} against a stable 0: the ratio is "
                                                      "unbounded")
    return canary / stable, None


def target(run: Run) -> a.AnalysisTarget:
    if run.s.step in PHASE_STEPS[Phase.promoting]:  # promoted (or paused while watching it): the target itself
        return "stable"
    if run.blue_green:
        return "preview" if run.s.stage == 0 else "stable"  # after the switch the active Service serves green
    return "canary"


def metrics_for(run: Run, to: a.AnalysisTarget) -> list[Metric]:
    """Comparative metrics (baseline, judge) need a canary beside the stable version; elsewhere they sit out."""
    both = to in ("canary", "preview")
    return [m for m in run.spec.analysis.metrics if both or m.kind not in ("baseline", "judge")]


def metric_names(run: Run, to: a.AnalysisTarget | None = None, with_dry_run: bool = True) -> tuple[str, ...]:
    """The metrics to query; the pre-flight gate and the rollback's verification ask without the dryRun ones,
    which could say nothing there that counts."""
    return tuple(m.name for m in metrics_for(run, to or target(run)) if with_dry_run or not m.dry_run)


def dry(run: Run, name: str) -> bool:
    """A dryRun metric, by the spec as it is now."""
    return any(m.name == name and m.dry_run for m in run.spec.analysis.metrics)


def acts(run: Run, ms: MetricStatus) -> bool:
    """Whether a recorded verdict may act: dryRun verdicts only ever go to reporting (the status, the plugin, the
    report, the operator's metrics). A verdict recorded as dryRun never acts, even once the spec says otherwise:
    a metric made real starts its counters afresh (see _count), it does not act on what it saw as a dry run."""
    return not ms.dry_run and not dry(run, ms.name)


def query(run: Run, to: a.AnalysisTarget) -> a.QueryMetrics:
    """Samples from before the stage's weight was set belong to another weight: the query says since when."""
    names = metric_names(run, to) + ((TRAFFIC_CHECK,) if checks_split(run, to) else ())
    return a.QueryMetrics(to, "analysis", names, since=run.s.stage_started_at)


def checks_split(run: Run, to: a.AnalysisTarget) -> bool:
    """The traffic split is measured on a canary below 100% once the rate window holds only this stage's weight
    (a window that reaches back into the last stage mixes two weights), and only by weight alone: beside a match
    or a sticky cookie the canary's share depends on who carries them, not on the weight."""
    return (run.spec.analysis.traffic_check is not None and to == "canary" and 0 < run.s.weight < 100
            and not run.s.routing and run.stage_elapsed() >= run.settings.settle_seconds)


def split(run: Run, pair: tuple[float | None, float | None] | None) -> tuple[Verdict, str, float | None, str]:
    """The canary's measured share of requests against the weight asked of the router."""
    check = run.spec.analysis.traffic_check
    assert check is not None
    weight = run.s.weight
    low, high = weight * (1 - check.tolerance), weight * (1 + check.tolerance)
    threshold = f"{low:.3g}%..{min(100.0, high):.3g}% of requests (weight {weight}%)"
    canary, stable = pair or (None, None)
    if canary is None or stable is None or not (math.isfinite(canary) and math.isfinite(stable)):
        return Verdict.inconclusive, threshold, None, "no request count for the canary or the stable Service"
    total = canary + stable
    if total < check.min_requests:
        return Verdict.inconclusive, threshold, None, f"{total:.0f} requests in the window; the split is measured " \
            f"from {check.min_requests}"
    share = 100 * canary / total
    router = run.spec.strategy.canary.traffic.router() if run.spec.strategy.canary else "the router"
    if low <= share <= high:
        return Verdict.passed, threshold, share, f"the canary served {share:.3g}% of {total:.0f} requests"
    return Verdict.inconclusive, threshold, share, f"router {router} was asked for {weight}% to the canary; the " \
        f"canary served {share:.3g}% of {total:.0f} requests: the data plane did not apply the weight"


def failure_limit(run: Run, metric: Metric) -> int:
    return metric.failure_limit or run.spec.analysis.failure_limit


def record(run: Run, r: a.MetricValues) -> None:
    """An analysis of the canary (or, after promotion, of the target): verdicts and counters into status."""
    verdicts(run, r, record=True)
    run.ran(r.asked_at)
    run.s.analysis.runs += 1
    run.s.stage_checks += 1
    run.analysed_now = True


def _requests(r: a.MetricValues, name: str) -> float | None:
    """How many requests a rate stands on; a count that is not a number is no count."""
    n = r.samples.get(name)
    return n if n is not None and math.isfinite(n) else None


def _verdict(run: Run, r: a.MetricValues, name: str, value: float | None
             ) -> tuple[Verdict, str, float | None, str | None]:
    """(verdict, threshold, value shown, note) of one metric's reading."""
    if name == TRAFFIC_CHECK and run.spec.analysis.traffic_check is not None:
        return split(run, r.pairs.get(name))
    metric = run.metric(name) if name in {m.name for m in run.spec.analysis.metrics} else None
    if metric is not None and metric.judge is not None and r.purpose != "preflight":
        canary, stable = r.series.get(name, ([], []))
        j = metric.judge
        judged = judge(canary, stable, j.min_samples, j.confidence, j.direction)
        return Verdict(judged.verdict), metric.threshold, judged.p_value, judged.message
    if metric is not None and metric.judge is not None:
        return Verdict.passed, metric.threshold, value, None  # nothing to compare the stable version with
    if metric is not None and metric.baseline is not None and name in r.pairs:
        value, note = compare(metric.baseline, *r.pairs[name])
        return metric.verdict(value), metric.threshold, value, note
    if metric is not None:
        return metric.verdict(value, _requests(r, name)), metric.threshold, value, None
    # rollback.verify.maxErrorRate: the built-in error-rate with that maximum
    check = Metric(name=name, template="error-rate", max=run.spec.rollback.verify.max_error_rate)
    return check.verdict(value, _requests(r, name)), check.threshold, value, None


def verdicts(run: Run, r: a.MetricValues, record: bool) -> Bad:
    """Verdict per metric; with record, update the consecutive counters in status. Returns the non-passes."""
    bad: Bad = []
    previous = {m.name: m for m in run.s.analysis.metrics}
    out: list[MetricStatus] = []
    for name, raw in r.values.items():
        is_dry = dry(run, name)
        try:
            verdict, threshold, value, note = _verdict(run, r, name, raw)
        except Exception as e:  # a dry run never acts, not even by failing: only its own reading is lost
            if not is_dry:
                raise
            verdict, threshold, value, note = Verdict.inconclusive, "-", None, f"internal error: {type(e).__name__}"
        message = r.errors.get(name) or note or ("no data" if verdict == Verdict.inconclusive else None)
        if verdict != Verdict.passed and not is_dry:  # a dryRun verdict is never a reason for anything
            bad.append((name, verdict, message or f"{fmt(value)} not {threshold}"))
        ms = MetricStatus(name=name, value=value if value is not None and math.isfinite(value) else None,
                          threshold=threshold, verdict=verdict, samples=round(_requests(r, name) or 0),
                          message=message, dry_run=is_dry)
        _count(run, ms, previous.get(name) if r.purpose == "analysis" else None)
        out.append(ms)
        if r.purpose == "analysis" and is_dry:
            if record:
                try:
                    _tally(run, ms)
                except Exception as e:  # the same: a dry run's bookkeeping failing is said, never acted on
                    run.event("DryRunError", f"dry-run metric {name}: internal error {type(e).__name__}: "
                              f"{str(e)[:200]}; it is not counted this time", warning=True)
        elif r.purpose == "analysis":
            _warn(run, name, ms, message)
    if record:
        run.s.analysis.metrics = out
    return bad


def _count(run: Run, ms: MetricStatus, prev: MetricStatus | None) -> None:
    if prev is not None and prev.dry_run == ms.dry_run:  # a metric whose dryRun changed starts afresh
        ms.consecutive_failures = prev.consecutive_failures
        ms.consecutive_inconclusive = prev.consecutive_inconclusive
        ms.failing_since = prev.failing_since
    if ms.verdict == Verdict.fail:
        ms.consecutive_failures += 1
        ms.consecutive_inconclusive = 0
        ms.failing_since = ms.failing_since or iso(run.now)
    elif ms.verdict == Verdict.inconclusive:
        ms.consecutive_inconclusive += 1
    else:
        ms.consecutive_failures = ms.consecutive_inconclusive = 0
        ms.failing_since = None


def _warn(run: Run, name: str, ms: MetricStatus, message: str | None) -> None:
    """warnAfter: an early word before the breach action."""
    metric = run.metric(name) if name in {m.name for m in run.spec.analysis.metrics} else None
    if metric is None or not metric.warn_after or ms.verdict != Verdict.fail or \
            ms.consecutive_failures != metric.warn_after:
        return
    text = f"{name} failed {ms.consecutive_failures} checks in a row ({message or fmt(ms.value)}); " \
           f"the breach action follows at {failure_limit(run, metric)}"
    run.event("AnalysisDegraded", text, warning=True)
    run.notify(Severity.medium if metric.severity.rank > 2 else Severity.low, f"{name} degraded",
               f"{run.inp.name}: {text}")


def _tally(run: Run, ms: MetricStatus) -> None:
    """A dryRun metric's verdict over the rollout, and an Event (never a warning, never a notification) when it
    would have breached: what it would have done, and that it was not done."""
    metric = run.metric(ms.name)
    tally = next((t for t in run.s.analysis.dry_run if t.name == ms.name), None)
    if tally is None:
        tally = DryRunStatus(name=ms.name)
        run.s.analysis.dry_run.append(tally)
    tally.checks += 1
    tally.on_breach = metric.on_breach.value
    tally.last_verdict, tally.last_value, tally.last_message = ms.verdict, ms.value, ms.message
    if ms.verdict == Verdict.passed:
        tally.passes += 1
    elif ms.verdict == Verdict.inconclusive:
        tally.inconclusive += 1
        return
    else:
        tally.failures += 1
        tally.first_failed_at = tally.first_failed_at or iso(run.now)
    limit = failure_limit(run, metric)
    if ms.verdict != Verdict.fail or ms.consecutive_failures != limit:
        return
    tally.would_breach += 1
    if tally.first_breach_at is None:
        tally.first_breach_at, tally.first_breach_stage, tally.first_breach_weight = iso(run.now), run.s.stage, \
            run.s.weight
    shown = fmt(ms.value) if ms.value is not None else ms.message or "no data"
    run.event("DryRunBreach", f"dry-run metric {ms.name} = {shown}, threshold {ms.threshold}, failed {limit}x: "
              f"its onBreach ({metric.on_breach.value}) was not taken")


def breaches(run: Run) -> bool:
    """Apply the strongest breach action due, or the inconclusive one; True when the phase or stage changed.
    dryRun metrics take no part: neither their failures nor their missing data."""
    names = metric_names(run)
    breached = [(run.metric(ms.name), ms) for ms in run.s.analysis.metrics if ms.name in names and acts(run, ms)
                and ms.consecutive_failures >= failure_limit(run, run.metric(ms.name))]
    if breached:
        metric, ms = max(breached, key=lambda x: (_ORDER[x[0].on_breach], x[0].severity.rank))
        return _respond(run, metric, ms)
    limit = run.spec.analysis.inconclusive_limit
    stuck = [ms for ms in run.s.analysis.metrics if ms.consecutive_inconclusive >= limit and acts(run, ms)]
    if stuck and run.s.phase != Phase.paused:
        _inconclusive(run, stuck, limit)
        return True
    return False


def _incident(run: Run, reason: str, ms: MetricStatus, metric: Metric | None = None) -> IncidentStatus:
    return IncidentStatus(
        reason=reason, metric=ms.name, value=ms.value if metric else None, threshold=ms.threshold if metric else None,
        weight_at_breach=run.s.weight, stage_at_breach=run.s.stage, first_failed_at=ms.failing_since if metric else None,
        detected_at=run.s.analysis.last_run, decided_at=iso(run.now),
        metrics=[m.model_copy() for m in run.s.analysis.metrics])


def _respond(run: Run, metric: Metric, ms: MetricStatus) -> bool:
    action = metric.on_breach
    if action != BreachAction.notify:
        run.s.incident = _incident(run, "AnalysisFailed", ms, metric)
    shown = fmt(ms.value) if ms.value is not None else ms.message or "no data"
    text = f"{metric.name} = {shown}, threshold {ms.threshold}, failed {ms.consecutive_failures}x"
    run.event("AnalysisFailed", text, warning=True)
    # promoted, there is no earlier stage; a StatefulSet keeps the new revision on pods below a raised partition, so
    # a step back would move no pod: both roll back
    if (run.s.phase == Phase.promoting or run.spec.partition) and action == BreachAction.step_back:
        action = BreachAction.rollback
    if action == BreachAction.notify:
        run.history("notify", metric.name, text)
        run.notify(metric.severity, f"{metric.name} breached", f"{run.inp.name}: {text}")
        for m in run.s.analysis.metrics:
            if m.name == metric.name:
                m.consecutive_failures = 0
        return False
    if action == BreachAction.pause:
        run.history("pause", metric.name, text)
        run.notify(metric.severity, f"{metric.name} breached: paused", f"{run.inp.name}: {text}")
        go.pause(run, "breach", "AnalysisFailed", f"paused for a person: {text}")
        return True
    if action == BreachAction.step_back and not run.s.stepped_back and (run.s.stage or 1) > 1:
        run.history("stepBack", metric.name, text)
        run.s.stepped_back = True
        run.s.stage = (run.s.stage or 2) - 1
        run.reset_analysis()
        run.event("StepBack", f"{text}; back to stage {run.s.stage}", warning=True)
        run.notify(metric.severity, f"{metric.name} breached: stepped back", f"{run.inp.name}: {text}")
        return True
    if forward_only(run, metric.name, text):
        return True
    run.history("rollback", metric.name, text)
    go.rollback(run, "AnalysisFailed", text, metric.severity)
    return True


def forward_only(run: Run, metric: str | None, text: str) -> bool:
    """A forwardOnly database (its migrations cannot be undone) is never restored, and the old version may not
    run on what the new one migrated: a breach that would roll back pauses at the weight and pages a person
    instead (abort rolls the workload back and leaves the database; promote, or a fix, goes forward)."""
    db = run.spec.database
    if db is None or not db.forward_only:
        return False
    said = f"{text}; the database is forwardOnly: not rolled back, paused for a person (abort rolls the workload " \
           "back and leaves the database as it is; promote goes forward)"
    run.history("pause", metric, said)
    run.event("ForwardOnlyPaused", said, warning=True)
    run.notify(Severity.critical, "breach on a forwardOnly database: paused, a person must decide",
               f"{run.inp.name}: {said}")
    go.pause(run, "breach", "ForwardOnlyBreach", f"paused for a person: {said}")
    return True


def _inconclusive(run: Run, stuck: list[MetricStatus], limit: int) -> None:
    names = ", ".join(ms.name for ms in stuck)
    text = f"no conclusive data for {names} in {limit} checks ({stuck[0].message or 'no data'})"
    if run.spec.analysis.on_inconclusive == InconclusiveAction.rollback:
        if forward_only(run, stuck[0].name, text):
            return
        run.history("rollback", stuck[0].name, text)
        run.s.incident = _incident(run, "AnalysisInconclusive", stuck[0])
        go.rollback(run, "AnalysisInconclusive", text, Severity.high)
        return
    run.event("AnalysisInconclusive", text, warning=True)
    run.notify(Severity.medium, "analysis inconclusive: paused", f"{run.inp.name}: {text}")
    go.pause(run, "inconclusive", "AnalysisInconclusive", text)


def stage_done(run: Run, stage: Stage) -> bool:
    """The stage's time is up, it was analysed at least once, and every metric's latest verdict passes."""
    needed = stage.seconds
    bg = run.spec.strategy.blue_green
    if bg is not None and run.s.stage == 1:
        needed = max(needed, parse_duration(bg.scale_down_delay))
    elapsed = run.stage_elapsed()
    if elapsed < needed and run.s.stage_resumed_at:
        run.wake_in(needed - elapsed)
    if elapsed < needed or run.s.stage_checks < 1:
        return False
    return all_pass(run, metrics_for(run, target(run)))


def all_pass(run: Run, metrics: list[Metric]) -> bool:
    """Never advance on what we could not see; a failure of a notify-only metric does not hold the rollout, and a
    dryRun metric has no say (a verdict recorded as dryRun is no verdict of a metric that acts now)."""
    latest = {m.name: m.verdict for m in run.s.analysis.metrics if not m.dry_run}
    if latest.get(TRAFFIC_CHECK, Verdict.passed) != Verdict.passed:  # a split not applied holds the stage
        return False
    return all(latest.get(m.name) == Verdict.passed or
               (latest.get(m.name) == Verdict.fail and m.on_breach == BreachAction.notify)
               for m in metrics if not m.dry_run)
