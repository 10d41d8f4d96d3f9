"""Shared analysis templates in a decision: a metric's templateRef becomes the metric it stands for.

The handler reads the templates the metrics name (`wanted`) and passes them in (`Inputs.templates`); here they are
checked, pinned and filled in, without I/O:

- **Pinned at the start.** The first decision of a rollout that finds a template copies its spec into
  `status.analysisTemplates` (with its resourceVersion and a hash). From then on the rollout uses that copy, so a
  platform team's edit, or a deletion, cannot change the rules of a rollout half-way, nor differ between an
  operator that restarted and one that did not. An edit is said once in an Event; the next rollout uses it.
- **Missing before traffic moves:** the rollout is Blocked, the message naming kind, namespace and name. It looks
  again every RECHECK seconds and starts by itself once every template is there. A reference added mid-rollout that
  does not resolve makes that metric inconclusive (never a pass), as a query that cannot be sent does.
- **Args** are filled into the query by `queries.render` (escaped inside a string, only a name or duration
  outside it); the operator's own placeholders (`service`, `namespace`, ...) are left for the query time and
  cannot be args, so no rollout can point a shared query at another namespace's series.
- **Precedence:** what the template sets (threshold, severity, onBreach, failureLimit, warnAfter) wins; what it
  leaves out the rollout's metric gives. `dryRun` is always the rollout's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from pydantic import ValidationError

from saferollout.core import actions as a
from saferollout.core import analysis
from saferollout.core import transitions as go
from saferollout.core.clock import iso
from saferollout.core.models import (
    CONTEXT_PLACEHOLDERS,
    AnalysisTemplateSpec,
    Metric,
    Phase,
    PinnedTemplate,
    SafeRolloutSpec,
    TemplateRef,
)
from saferollout.core.queries import render
from saferollout.core.run import Run

Key = tuple[str, str, str]  # (kind, namespace or "", name)
NOT_FOUND, UNREADABLE, INVALID = "TemplateNotFound", "TemplateUnreadable", "TemplateInvalid"
REASONS = (NOT_FOUND, UNREADABLE, INVALID)
RECHECK = 10.0  # seconds: a rollout Blocked on a template looks for it again this often
_WINS = ("max", "min", "baseline", "judge", "failure_limit", "warn_after")  # the template's value wins when set


def key(ref: TemplateRef, namespace: str | None) -> Key:
    """An AnalysisTemplate is looked up in the rollout's own namespace only: the reference cannot name another."""
    return ref.kind, (namespace or "") if ref.kind == "AnalysisTemplate" else "", ref.name


def describe(k: Key) -> str:
    kind, ns, name = k
    return f"{kind} {ns}/{name}" if ns else f"{kind} {name}"


def wanted(spec: SafeRolloutSpec, namespace: str) -> list[Key]:
    """What the handler must read for this rollout, each template once."""
    out: list[Key] = []
    for m in spec.analysis.metrics:
        if m.template_ref is not None and key(m.template_ref, namespace) not in out:
            out.append(key(m.template_ref, namespace))
    return out


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _first_error(e: ValueError) -> str:
    if isinstance(e, ValidationError):
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        return f"{where}: {err['msg']}" if where else str(err["msg"])
    return str(e)


def fill(metric: Metric, template: AnalysisTemplateSpec, what: str) -> Metric:
    """The metric a reference stands for; ValueError (TemplateError is one) says why there is none."""
    assert metric.template_ref is not None
    given = {x.name: x.value for x in metric.template_ref.args}
    declared = {x.name: x for x in template.args}
    extra = sorted(set(given) - set(declared))
    if extra:
        raise ValueError(f"{what} has no arg {extra[0]!r} (its args: {', '.join(declared) or 'none'})")
    missing = [n for n, x in declared.items() if n not in given and x.default is None]
    if missing:
        raise ValueError(f"arg {missing[0]!r} of {what} is required: give it in templateRef.args")
    values = {n: given[n] if n in given else str(x.default) for n, x in declared.items()}
    query = render(template.query, values, keep=CONTEXT_PLACEHOLDERS) if template.query is not None else None
    fields: dict[str, Any] = {f: getattr(template, f) if getattr(template, f) is not None else getattr(metric, f)
                              for f in _WINS}
    try:
        return Metric(name=metric.name, query=query, template=template.template, dry_run=metric.dry_run,
                      severity=template.severity or metric.severity, on_breach=template.on_breach or metric.on_breach,
                      **fields)
    except ValueError as e:
        if "needs a threshold" in str(e):
            raise ValueError(f"neither {what} nor the metric gives a threshold (max, min, baseline or judge)") \
                from None
        raise ValueError(f"{what}: {_first_error(e)}") from None


def overridden(metric: Metric, template: AnalysisTemplateSpec) -> list[str]:
    """The metric's own fields that the template's win over (said when the template is pinned)."""
    return [f for f in _WINS if getattr(metric, f) is not None and getattr(template, f) is not None
            and getattr(metric, f) != getattr(template, f)]


def resolve(run: Run) -> None:
    """run.spec with every templated metric resolved (or, unresolved, left as written and named in run.unresolved,
    with a reason in run.template_problems); pins new templates and says what changed while the rollout runs."""
    declared = run.declared
    if not any(m.template_ref is not None for m in declared.analysis.metrics):
        return
    active = run.s.phase is not None and not run.s.phase.terminal
    reads = {(r.kind, r.namespace or "", r.name): r for r in run.inp.templates}
    pins = {(p.kind, p.namespace or "", p.name): p for p in run.s.analysis_templates}
    fresh: set[Key] = set()
    out: list[Metric] = []
    run.unresolved, run.template_problems = {}, []
    for m in declared.analysis.metrics:
        if m.template_ref is None:
            out.append(m)
            continue
        k = key(m.template_ref, run.inp.namespace)
        what = describe(k)
        pin = pins.get(k)
        if pin is None:
            pin, reason, why = _read(reads.get(k), k, what, run)
            if pin is not None and active:
                run.s.analysis_templates.append(pin)
                pins[k] = pin
                fresh.add(k)
        else:
            _notice(run, pin, reads.get(k), what)
        if pin is not None:
            try:  # valid when pinned; an operator of another version may read it otherwise: invalid, not a crash
                template = AnalysisTemplateSpec.model_validate(pin.spec)
                out.append(fill(m, template, what))
            except ValueError as e:
                reason, why, pin = INVALID, f"{e}", None
            else:
                if k in fresh:
                    wins = overridden(m, template)
                    run.event("AnalysisTemplatePinned", f"metric {m.name}: {what} (resourceVersion "
                              f"{pin.resource_version}, hash {pin.hash}) is used until this rollout ends" +
                              (f"; its {', '.join(wins)} win over the metric's own" if wins else ""))
        if pin is None:
            run.unresolved[m.name] = f"metric {m.name}: {why}"
            run.template_problems.append((reason, run.unresolved[m.name]))
            out.append(m)
    run.spec = declared.model_copy(update={"analysis": declared.analysis.model_copy(update={"metrics": out})})


def _read(read: a.TemplateRead | None, k: Key, what: str, run: Run) -> tuple[PinnedTemplate | None, str, str]:
    """A pin of the template as read now, or (None, reason, why not)."""
    if read is None or (read.spec is None and read.error is None):
        return None, NOT_FOUND, f"{what} not found"
    if read.spec is None:
        return None, UNREADABLE, f"{what} could not be read: {read.error}"
    try:
        AnalysisTemplateSpec.model_validate(read.spec)
    except ValueError as e:
        return None, INVALID, f"{what} is invalid: {_first_error(e)}"
    return PinnedTemplate(kind=k[0], namespace=k[1] or None, name=k[2], resource_version=read.resource_version,
                          hash=spec_hash(read.spec), pinned_at=iso(run.now), spec=read.spec), "", ""


def _notice(run: Run, pin: PinnedTemplate, read: a.TemplateRead | None, what: str) -> None:
    """An edit or a deletion while the rollout runs: said once, and otherwise nothing: the pin stays."""
    if read is None or read.error is not None or run.s.phase is None or run.s.phase.terminal:
        return
    if read.spec is None:
        if pin.seen != "deleted":
            pin.seen = "deleted"
            run.event("AnalysisTemplateDeleted", f"{what} was deleted; this rollout keeps the copy it started with "
                      f"(resourceVersion {pin.resource_version})", warning=True)
        return
    h = spec_hash(read.spec)
    if h == pin.hash:
        pin.seen = None
    elif pin.seen != h:
        pin.seen = h
        run.event("AnalysisTemplateChanged", f"{what} changed (resourceVersion {pin.resource_version} -> "
                  f"{read.resource_version}); this rollout keeps the version it started with (hash {pin.hash}); "
                  "the next rollout uses the new one")


def gate(run: Run, version: str) -> None:
    """Blocked on a template before any traffic moved, with all it names; started again once they are all there."""
    phase = run.s.phase
    if run.template_problems and phase in (Phase.pending, Phase.preflight):
        if run.s.weight == 0 and not run.s.routing and not run.s.canary_ready:  # else Pending first undoes
            reason = run.template_problems[0][0]
            go.block(run, reason, "; ".join(text for _, text in run.template_problems))
            run.recheck = RECHECK
    elif phase == Phase.blocked and _blocked_on_template(run):
        if run.template_problems:
            run.recheck = RECHECK
        else:
            go.start(run, version, "the analysis templates its metrics name are there now")
            resolve(run)


def _blocked_on_template(run: Run) -> bool:
    return any(c.type == "Progressing" and c.reason in REASONS for c in run.s.conditions)


def complete(run: Run, r: a.Result) -> a.Result:
    """An analysis without the metrics whose template does not resolve: they are inconclusive, and say why."""
    if not isinstance(r, a.MetricValues) or not run.unresolved or r.purpose != "analysis":
        return r
    names = analysis.metric_names(run, r.target)
    missing = {n: run.unresolved[n] for n in names if n in run.unresolved and n not in r.values}
    if not missing:
        return r
    return dataclasses.replace(r, values={**r.values, **dict.fromkeys(missing)}, errors={**r.errors, **missing})


def attach(run: Run, act: a.Action) -> a.Action:
    """A query carries the metrics as resolved: the executor measures what the core judges."""
    if not isinstance(act, a.QueryMetrics) or not any(m.template_ref for m in run.declared.analysis.metrics):
        return act
    return dataclasses.replace(act, definitions=tuple(m for m in run.spec.analysis.metrics if m.template_ref is None))
