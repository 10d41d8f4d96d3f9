"""Placeholders are filled safely: a label value can never change what a query means."""

from __future__ import annotations

import pytest

from saferollout.core.queries import LabelNames, TemplateError, builtin_templates, escape_string, render

CTX = {"service": "web-canary", "namespace": "demo", "window": "1m"}


def test_builtin_error_rate_counts_missing_5xx_as_zero_and_no_traffic_as_no_data() -> None:
    q = render(builtin_templates(LabelNames())["error-rate"], CTX)
    assert q == ('(sum(rate(http_requests_total{service="web-canary",namespace="demo",code=~"5.."}[1m])) '
                 'or vector(0)) / sum(rate(http_requests_total{service="web-canary",namespace="demo"}[1m]))')


def test_label_names_are_settings() -> None:
    labels = LabelNames(requests="reqs", service="svc", namespace="", code="status")
    q = render(builtin_templates(labels)["error-rate"], CTX)
    assert 'reqs{svc="web-canary",status=~"5.."}' in q and "namespace" not in q


def test_p95() -> None:
    q = render(builtin_templates(LabelNames())["p95-latency"], CTX)
    assert q.startswith("histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{")


def test_injection_inside_a_string_is_escaped() -> None:
    q = render('up{job="{{ service }}"}', {"service": 'x"} or vector(1) or up{a="'})
    assert q == 'up{job="x\\"} or vector(1) or up{a=\\""}'


def test_injection_outside_a_string_is_refused() -> None:
    with pytest.raises(TemplateError, match="inside a quoted string"):
        render("rate(x[{{ window }}])", {"window": "1m]) or vector(1"})


def test_unknown_placeholder_is_an_error() -> None:
    with pytest.raises(TemplateError, match="unknown placeholder"):
        render("{{ nope }}", CTX)


def test_escape() -> None:
    assert escape_string('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
