"""PromQL templates and the safe filling of their placeholders.

A value put into a query can never change its meaning: inside a string literal it is escaped, and anywhere else
only a duration or a Kubernetes name is accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from saferollout.core.durations import DURATION_PATTERN

_PLACEHOLDER = re.compile(r"\{\{\s*([a-zA-Z][a-zA-Z0-9_]*)\s*\}\}")
_PRE_ESCAPED = {"services", "namespaces"}  # built by `alternation` from validated names


@dataclass(frozen=True)
class LabelNames:
    """Names of the series and labels the built-in templates read (Helm values)."""

    requests: str = "http_requests_total"
    duration_bucket: str = "http_request_duration_seconds_bucket"
    service: str = "service"
    namespace: str = "namespace"
    code: str = "code"


def builtin_templates(labels: LabelNames) -> dict[str, str]:
    ns = f',{labels.namespace}="{{{{ namespace }}}}"' if labels.namespace else ""
    sel = f'{labels.service}="{{{{ service }}}}"{ns}'
    return {
        # `or vector(0)`: no 5xx series at all means no errors, not no data; no requests at all stays no data.
        "error-rate": (
            f'(sum(rate({labels.requests}{{{sel},{labels.code}=~"5.."}}[{{{{ window }}}}])) or vector(0))'
            f" / sum(rate({labels.requests}{{{sel}}}[{{{{ window }}}}]))"
        ),
        "p95-latency": (
            f"histogram_quantile(0.95, sum by (le) (rate({labels.duration_bucket}{{{sel}}}[{{{{ window }}}}])))"
        ),
        # how many requests the error-rate stands on (see Metric.verdict)
        REQUESTS: f"sum(increase({labels.requests}{{{sel}}}[{{{{ window }}}}]))",
    }


REQUESTS = "request-count"  # also usable as a template of its own


def grouped_templates(labels: LabelNames) -> dict[str, str]:
    """The built-in templates for many rollouts at once: one series per (service, namespace), split afterwards.

    `{{ services }}` and `{{ namespaces }}` are anchored regex alternations of escaped names (see `alternation`).
    """
    by = ", ".join(x for x in (labels.service, labels.namespace) if x)
    ns = f',{labels.namespace}=~"{{{{ namespaces }}}}"' if labels.namespace else ""
    sel = f'{labels.service}=~"{{{{ services }}}}"{ns}'
    total = f"sum by ({by}) (rate({labels.requests}{{{sel}}}[{{{{ window }}}}]))"
    return {
        "error-rate": (
            f'(sum by ({by}) (rate({labels.requests}{{{sel},{labels.code}=~"5.."}}[{{{{ window }}}}])) or 0 * {total})'
            f" / {total}"
        ),
        "p95-latency": (
            f"histogram_quantile(0.95, sum by (le, {by}) (rate({labels.duration_bucket}{{{sel}}}[{{{{ window }}}}])))"
        ),
        REQUESTS: f"sum by ({by}) (increase({labels.requests}{{{sel}}}[{{{{ window }}}}]))",
    }


def alternation(names: list[str]) -> str:
    """A regex that matches exactly these Kubernetes names (which only hold [a-z0-9.-]); dots escaped."""
    for n in names:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", n):
            raise TemplateError(f"not a Kubernetes name: {n!r}")
    return "|".join(sorted({n.replace(".", "\\\\.") for n in names}))


class TemplateError(ValueError):
    pass


def escape_string(value: str) -> str:
    """Escape for a PromQL double-quoted string (and regex-match) literal."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(query: str, values: dict[str, str], keep: frozenset[str] | tuple[str, ...] = ()) -> str:
    """Fill {{ name }} placeholders; unknown names are an error, never left in the query.

    `keep`: placeholders left as they are, for a second pass (a shared template's args are filled when the rollout
    starts, the version's service and namespace when it is queried). A value that holds `{{` or `}}` is refused
    then, so that nothing filled in the first pass becomes a placeholder of the second.
    """

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key in keep and key not in values:
            return m.group(0)
        if keep and ("{{" in values.get(key, "") or "}}" in values.get(key, "")):
            raise TemplateError(f"value of {{{{ {key} }}}} may not hold {{{{ or }}}}")
        if key not in values:
            raise TemplateError(f"unknown placeholder {{{{ {key} }}}}; known: {', '.join(sorted(values))}")
        value = values[key]
        before = query[: m.start()]
        in_string = before.count('"') - before.count('\\"') * 1
        if in_string % 2 == 1:
            return value if key in _PRE_ESCAPED else escape_string(value)
        if re.fullmatch(DURATION_PATTERN, value) or re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", value):
            return value
        raise TemplateError(f"value of {{{{ {key} }}}} may only be used inside a quoted string: {value!r}")

    return _PLACEHOLDER.sub(sub, query)
