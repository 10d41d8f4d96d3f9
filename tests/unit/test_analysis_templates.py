"""Shared analysis templates (AnalysisTemplate, ClusterAnalysisTemplate) in the simulated world: resolution with args,
Blocked on a missing one, pinned at the start whatever happens to the object, and the tenant boundary."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from harness.format import merge_patch
from saferollout.adapters import metrics as adapter_metrics
from saferollout.adapters.prometheus import PrometheusProvider, Reading
from saferollout.core import actions as a
from saferollout.core import analysis_templates as at
from saferollout.core.models import (
    CONTEXT_PLACEHOLDERS,
    AnalysisTemplateSpec,
    Metric,
    SafeRolloutSpec,
    SafeRolloutStatus,
    TemplateRef,
)
from saferollout.core.queries import LabelNames, TemplateError, render
from saferollout.crdgen import template_crd
from tests.unit.world import World, make_spec

CLUSTER = ("ClusterAnalysisTemplate", "", "error-policy")
LOCAL = ("AnalysisTemplate", "shop", "latency")
ERRORS: dict[str, Any] = {
    "args": [{"name": "codes", "default": "5.."}, {"name": "route"}],
    "query": 'sum(rate(http_requests_total{service="{{ service }}",code=~"{{ codes }}",route="{{ route }}"}'
             "[{{ window }}])) / sum(rate(http_requests_total{service=\"{{ service }}\"}[{{ window }}]))",
    "max": 0.01, "severity": "critical", "onBreach": "rollback",
}
LATENCY: dict[str, Any] = {"template": "p95-latency", "onBreach": "stepBack"}  # no threshold: each team gives its own


def ref_metric(name: str = "errors", kind: str = "ClusterAnalysisTemplate", template: str = "error-policy",
               args: list[dict[str, str]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "templateRef": {"kind": kind, "name": template,
                                          "args": args if args is not None else [{"name": "route", "value": "/"}]},
            **extra}


def world(metrics: list[dict[str, Any]], templates: dict[tuple[str, str, str], dict[str, Any]] | None = None,
          value: float = 0.001) -> World:
    w = World(make_spec(**{"analysis.metrics": metrics}), metrics=lambda n, t, wt, s: value)
    for k, body in (templates if templates is not None else {CLUSTER: ERRORS}).items():
        w.analysis_templates[k] = (copy.deepcopy(body), "100")
    return w


# --------------------------------------------------------------------------------------------- resolution


def test_a_cluster_template_with_args_is_the_metric_it_defines() -> None:
    w = world([ref_metric(args=[{"name": "route", "value": '/api"} or vector(1) #'}])]).run(120, World.done)
    assert w.phase() == "Succeeded", w.status.message
    query = w.queried[0]["errors"]
    assert query is not None
    # the default filled in; the hostile value escaped inside its string; the operator's placeholders kept for later
    assert 'code=~"5.."' in query
    assert 'route="/api\\"} or vector(1) #"' in query
    assert "{{ service }}" in query and "{{ window }}" in query
    assert all(q == w.queried[0] for q in w.queried)
    pin = w.status.analysis_templates[0]
    assert (pin.kind, pin.namespace, pin.name, pin.resource_version) == ("ClusterAnalysisTemplate", None,
                                                                         "error-policy", "100")
    assert pin.hash == at.spec_hash(ERRORS)
    assert "AnalysisTemplatePinned" in w.reasons()
    assert [m.threshold for m in w.status.analysis.metrics] == ["<= 0.01"]


def test_the_templates_fields_win_and_the_metric_fills_in_what_it_leaves_out() -> None:
    templates = {CLUSTER: ERRORS, LOCAL: LATENCY}
    w = world([ref_metric(max=0.5, severity="low"),
               ref_metric("p95", "AnalysisTemplate", "latency", args=[], max=2.0)], templates).run(3)
    errors, p95 = (at.fill(m, AnalysisTemplateSpec.model_validate(t), "t") for m, t in
                   zip(w.spec.analysis.metrics, (ERRORS, LATENCY), strict=True))
    assert (errors.max, errors.severity.value, errors.on_breach.value) == (0.01, "critical", "rollback")
    assert (p95.template, p95.max, p95.on_breach.value, p95.severity.value) == ("p95-latency", 2.0, "stepBack", "high")
    pinned = [e.message for e in w.events if e.reason == "AnalysisTemplatePinned"]
    assert len(pinned) == 2 and "its max win over the metric's own" in pinned[0]


def test_dry_run_is_the_rollouts_own() -> None:
    w = world([ref_metric(dryRun=True), {"name": "error-rate", "template": "error-rate", "max": 0.01}])
    w.metrics = lambda n, t, wt, s: 0.5 if t == "canary" else 0.001
    w.run(60, World.done)
    assert w.phase() == "RolledBack"  # by the real metric; the templated one is a dry run, recorded as one
    assert any(t.name == "errors" and t.failures for t in w.status.analysis.dry_run)


# ------------------------------------------------------------------------------------------------- Blocked


def test_a_missing_cluster_template_blocks_naming_it_and_moves_nothing() -> None:
    w = world([ref_metric()], templates={}).run(30)
    assert w.phase() == "Blocked"
    assert w.status.message == "metric errors: ClusterAnalysisTemplate error-policy not found"
    assert [c.reason for c in w.status.conditions if c.type == "Progressing"] == ["TemplateNotFound"]
    assert w.weights_seen == [] and w.canary is None
    assert w.reasons().count("PreflightFailed") == 1  # said once, not at every look
    assert w.wake_after == at.RECHECK  # it looks again by itself
    # the platform team creates it: the rollout starts by itself and goes through
    w.analysis_templates[CLUSTER] = (copy.deepcopy(ERRORS), "7")
    w.run(200, World.done, step=None)
    assert w.phase() == "Succeeded", w.status.message
    assert w.status.attempt == 2 and w.status.analysis_templates[0].resource_version == "7"


def test_a_missing_namespaced_template_is_named_with_its_namespace() -> None:
    w = world([ref_metric("p95", "AnalysisTemplate", "latency", args=[], max=2.0)], templates={}).run(5)
    assert w.phase() == "Blocked"
    assert w.status.message == "metric p95: AnalysisTemplate shop/latency not found"


def test_an_analysis_template_of_another_namespace_is_not_usable() -> None:
    """Hostile tenants: the reference has no namespace; an AnalysisTemplate is looked up in the rollout's own."""
    w = world([ref_metric("p95", "AnalysisTemplate", "latency", args=[], max=2.0)],
              templates={("AnalysisTemplate", "payments", "latency"): LATENCY}).run(5)
    assert w.phase() == "Blocked" and "AnalysisTemplate shop/latency not found" in (w.status.message or "")
    assert at.key(TemplateRef(kind="AnalysisTemplate", name="x"), "shop") == ("AnalysisTemplate", "shop", "x")
    assert at.key(TemplateRef(kind="ClusterAnalysisTemplate", name="x"), "shop") == ("ClusterAnalysisTemplate", "", "x")
    with pytest.raises(ValidationError):  # and there is no field to name one
        TemplateRef.model_validate({"name": "x", "namespace": "payments"})


def test_an_unreadable_template_blocks_as_unreadable_and_starts_once_it_is_read() -> None:
    w = world([ref_metric()])
    w.template_errors[CLUSTER] = "403 forbidden"
    w.run(5)
    assert w.phase() == "Blocked" and "could not be read: 403 forbidden" in (w.status.message or "")
    del w.template_errors[CLUSTER]
    w.run(150, World.done, step=None)
    assert w.phase() == "Succeeded"


@pytest.mark.parametrize(("args", "words"), [
    ([], "arg 'route' of ClusterAnalysisTemplate error-policy is required: give it in templateRef.args"),
    ([{"name": "route", "value": "/"}, {"name": "typo", "value": "x"}], "has no arg 'typo' (its args: codes, route)"),
    ([{"name": "route", "value": "/"}, {"name": "codes", "value": "5"}], None),
])
def test_args_are_checked(args: list[dict[str, str]], words: str | None) -> None:
    w = world([ref_metric(args=args)]).run(5)
    if words is None:
        assert w.phase() != "Blocked"
        return
    assert w.phase() == "Blocked" and words in (w.status.message or "")
    assert [c.reason for c in w.status.conditions if c.type == "Progressing"] == ["TemplateInvalid"]


def test_an_arg_outside_a_string_may_only_be_a_name_or_duration() -> None:
    body = {"args": [{"name": "q"}], "query": "histogram_quantile({{ q }}, x)", "max": 1}
    ok = world([ref_metric(args=[{"name": "q", "value": "0.95"}])], {CLUSTER: body}).run(3)
    assert ok.phase() != "Blocked" and "histogram_quantile(0.95, x)" in (ok.queried[0]["errors"] or "")
    bad = world([ref_metric(args=[{"name": "q", "value": "1) or up"}])], {CLUSTER: body}).run(3)
    assert bad.phase() == "Blocked" and "may only be used inside a quoted string" in (bad.status.message or "")


def test_a_template_without_a_threshold_anywhere_is_a_clear_error() -> None:
    w = world([ref_metric("p95", "AnalysisTemplate", "latency", args=[])], {LOCAL: LATENCY}).run(3)
    assert w.phase() == "Blocked"
    assert w.status.message == ("metric p95: neither AnalysisTemplate shop/latency nor the metric gives a threshold "
                                "(max, min, baseline or judge)")


def test_an_invalid_template_object_is_blocked_not_a_crash() -> None:
    w = world([ref_metric()], {CLUSTER: {"query": "up", "template": "error-rate", "bogus": 1}}).run(3)
    assert w.phase() == "Blocked" and "ClusterAnalysisTemplate error-policy is invalid" in (w.status.message or "")
    assert "InternalError" not in w.reasons()


def test_a_blocked_rollout_with_traffic_from_an_earlier_attempt_takes_it_back_first() -> None:
    w = world([ref_metric()]).run(25)  # at stage 2 or later
    assert w.weight > 0
    w.spec = make_spec(**{"analysis.metrics": [ref_metric()], "template": {"containers": [
        {"name": "web", "image": "demo/web:3.0"}]}})
    del w.analysis_templates[CLUSTER]  # and the template went away: the new version cannot start
    w.run(10)
    assert w.phase() == "Blocked" and w.weight == 0 and w.canary is None


# ------------------------------------------------------------------------------------------------- pinned


def test_an_edit_mid_rollout_applies_to_the_next_rollout() -> None:
    """The canary errs at 5% from stage 2; loosening the template to 10% then does not save it: pinned at 1%."""
    w = World(make_spec(**{"analysis.metrics": [ref_metric()]}),
              metrics=lambda n, t, wt, s: 0.05 if wt >= 25 else 0.001)
    w.analysis_templates[CLUSTER] = (copy.deepcopy(ERRORS), "100")
    w.run(12)
    assert w.status.stage == 2
    w.analysis_templates[CLUSTER] = ({**ERRORS, "max": 0.1}, "101")
    w.run(60, World.done)
    assert w.phase() == "RolledBack"
    assert w.reasons().count("AnalysisTemplateChanged") == 1
    said = next(e.message for e in w.events if e.reason == "AnalysisTemplateChanged")
    assert "resourceVersion 100 -> 101" in said and "the next rollout uses the new one" in said
    assert w.status.analysis_templates[0].resource_version == "100"
    # the next rollout pins the new version, and the same canary passes it
    w.spec = make_spec(**{"analysis.metrics": [ref_metric()], "template": {"containers": [
        {"name": "web", "image": "demo/web:3.0"}]}})
    w.run(120, World.done)
    assert w.phase() == "Succeeded"
    assert w.status.analysis_templates[0].resource_version == "101"


def test_the_incident_report_names_the_pinned_versions() -> None:
    w = World(make_spec(**{"analysis.metrics": [ref_metric()]}),
              metrics=lambda n, t, wt, s: 0.05 if wt >= 25 and t == "canary" else 0.001)
    w.analysis_templates[CLUSTER] = (copy.deepcopy(ERRORS), "100")
    w.run(12)
    w.analysis_templates[CLUSTER] = ({**ERRORS, "max": 0.1}, "101")
    w.run(60, World.done)
    report = next(iter(w.reports.values()))
    assert "## Analysis templates" in report
    assert f"| ClusterAnalysisTemplate error-policy | 100 | {at.spec_hash(ERRORS)} | yes |" in report


def test_a_template_deleted_mid_rollout_keeps_the_pinned_copy() -> None:
    w = world([ref_metric()]).run(12)
    del w.analysis_templates[CLUSTER]
    w.run(120, World.done)
    assert w.phase() == "Succeeded"
    assert w.reasons().count("AnalysisTemplateDeleted") == 1


def test_the_pin_survives_a_restart() -> None:
    """All in status: a fresh operator (a new world with the stored status) uses the pinned copy, not the object."""
    w = World(make_spec(**{"analysis.metrics": [ref_metric()]}),
              metrics=lambda n, t, wt, s: 0.05 if wt >= 25 else 0.001)
    w.analysis_templates[CLUSTER] = (copy.deepcopy(ERRORS), "100")
    w.run(8)
    stored = SafeRolloutStatus.model_validate(w.status.model_dump(by_alias=True, mode="json"))
    again = World(w.spec, metrics=w.metrics, status=stored, now=w.now, weight=w.weight, canary=w.canary)
    again.analysis_templates[CLUSTER] = ({**ERRORS, "max": 0.5}, "102")
    again.run(60, World.done)
    assert again.phase() == "RolledBack"


def test_a_reference_added_mid_rollout_that_does_not_resolve_is_inconclusive() -> None:
    w = world([ref_metric()]).run(12)
    assert w.phase() == "Progressing"
    w.spec = make_spec(**{"analysis.metrics": [ref_metric(), ref_metric("p95", "AnalysisTemplate", "nope",
                                                                        args=[], max=2.0)]})
    w.run(20)
    assert w.phase() == "Paused" and w.status.pause_reason == "inconclusive"
    ms = next(m for m in w.status.analysis.metrics if m.name == "p95")
    assert ms.verdict.value == "inconclusive" and ms.message == "metric p95: AnalysisTemplate shop/nope not found"


def test_without_templated_metrics_nothing_changes() -> None:
    w = World(make_spec()).run(60, World.done)
    assert w.phase() == "Succeeded" and w.queried == [] and w.status.analysis_templates == []


# -------------------------------------------------------------------------------------- models and the CRDs


BAD_MANIFESTS = Path(__file__).resolve().parents[2] / "scenarios" / "shared-template-bad-manifests.yaml"


@pytest.mark.parametrize("case", yaml.safe_load(BAD_MANIFESTS.read_text())["cases"], ids=lambda c: c["why"])
def test_the_bad_manifests_scenario_is_refused_by_pydantic_too(case: dict[str, Any]) -> None:
    spec = merge_patch(make_spec().wire(), case["patch"]["spec"])
    with pytest.raises(ValidationError):
        SafeRolloutSpec.model_validate(spec)


@pytest.mark.parametrize("bad", [
    {"name": "x", "query": "up", "templateRef": {"name": "t"}},
    {"name": "x", "templateRef": {"name": "t", "args": [{"name": "a", "value": "1"}, {"name": "a", "value": "2"}]}},
    {"name": "x", "templateRef": {"name": "t", "args": [{"name": "a", "value": "{{ namespace }}"}]}},
    {"name": "x", "templateRef": {"name": "t", "kind": "Template"}},
])
def test_bad_references_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Metric.model_validate(bad)


@pytest.mark.parametrize(("bad", "words"), [
    ({"query": "up", "template": "error-rate"}, "exactly one of query or template"),
    ({"args": [{"name": "namespace"}], "query": "up"}, "may not be named like a placeholder the operator fills"),
    ({"query": 'x{a="{{ team }}"}'}, "placeholder {{ team }} is neither an arg nor one the operator fills"),
    ({"args": [{"name": "a"}, {"name": "a"}], "query": "up"}, "each name once"),
])
def test_bad_templates_are_refused_with_the_crds_words(bad: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words.replace("{", r"\{").replace("}", r"\}").replace("(", r"\(")):
        AnalysisTemplateSpec.model_validate(bad)


def test_the_template_crds_are_namespaced_and_cluster_scoped_with_their_cel_rules() -> None:
    ns, cluster = template_crd("AnalysisTemplate"), template_crd("ClusterAnalysisTemplate")
    assert (ns["spec"]["scope"], cluster["spec"]["scope"]) == ("Namespaced", "Cluster")
    assert ns["metadata"]["name"] == "analysistemplates.saferollout.dev"
    spec = cluster["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec == ns["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    messages = {r["message"] for r in spec["x-kubernetes-validations"]}
    assert "a template needs exactly one of query or template" in messages


def test_the_operators_placeholders_are_the_ones_the_executor_fills() -> None:
    spec = make_spec()
    assert set(adapter_metrics.context(spec, "shop", "web", "canary", "10s")) == set(CONTEXT_PLACEHOLDERS)


def test_render_keeps_what_it_is_told_to_and_refuses_braces_then() -> None:
    assert render('a{b="{{ x }}"}[{{ window }}]', {"x": 'q"'}, keep=("window",)) == 'a{b="q\\""}[{{ window }}]'
    with pytest.raises(TemplateError):
        render('a{b="{{ x }}"}', {"x": "{{ namespace }}"}, keep=("namespace",))
    with pytest.raises(TemplateError):
        render("{{ y }}", {}, keep=("window",))


def test_the_executor_measures_the_resolved_definition() -> None:
    """measure_all queries what the core resolved, never the templateRef as written."""
    sent: list[str] = []
    prom = PrometheusProvider("http://prometheus.invalid", 1.0, LabelNames())

    def instant(text: str) -> Reading:
        sent.append(text)
        return Reading(0.002)

    prom.instant = instant  # type: ignore[method-assign]
    spec = make_spec(**{"analysis.metrics": [ref_metric()]})
    resolved = at.fill(spec.analysis.metrics[0], AnalysisTemplateSpec.model_validate(ERRORS), "t")
    ctx = adapter_metrics.context(spec, "shop", "web", "canary", "10s")
    act = a.QueryMetrics("canary", "analysis", ("errors",), definitions=(resolved,))
    out = adapter_metrics.measure_all(prom, spec, act, ctx, datetime.now(UTC))
    assert out.values == {"errors": 0.002}
    assert sent == ['sum(rate(http_requests_total{service="web-canary",code=~"5..",route="/"}[10s])) / '
                    'sum(rate(http_requests_total{service="web-canary"}[10s]))']
    # a reference the core could not resolve is never sent
    sent.clear()
    out = adapter_metrics.measure_all(prom, spec, a.QueryMetrics("canary", "analysis", ("errors",)), ctx,
                                      datetime.now(UTC))
    assert sent == [] and out.values == {}
