"""PromQL templates and the safe filling of their placeholders.

A value put into a query can never change its meaning: inside a string literal it is escaped, and anywhere else
only a duration or a Kubernetes name is accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from saferollout.core.durations import DURATION_PATTERN

_PLACEHOLDER = re.compile(r"\{\{\s*([a-zA-Z][a-zA-Z0-9_]*)\s*\}\}")


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
    }


class TemplateError(ValueError):
    pass


def escape_string(value: str) -> str:
    """Escape for a PromQL double-quoted string (and regex-match) literal."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(query: str, values: dict[str, str]) -> str:
    """Fill {{ name }} placeholders; unknown names are an error, never left in the query."""

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            raise TemplateError(f"unknown placeholder {{{{ {key} }}}}; known: {', '.join(sorted(values))}")
        value = values[key]
        before = query[: m.start()]
        in_string = before.count('"') - before.count('\\"') * 1
        if in_string % 2 == 1:
            return escape_string(value)
        if re.fullmatch(DURATION_PATTERN, value) or re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", value):
            return value
        raise TemplateError(f"value of {{{{ {key} }}}} may only be used inside a quoted string: {value!r}")

    return _PLACEHOLDER.sub(sub, query)
