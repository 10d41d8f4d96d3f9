"""Writes the SafeRollout CRD from the pydantic models, so the two can never drift.

pydantic emits JSON Schema with `$ref`/`$defs`, `anyOf: [T, null]`, `const` and `title`s; the API server wants a
structural schema: every node typed, references inlined, `nullable` instead of null unions, no
`additionalProperties` beside `properties`. `structural()` does that rewrite.

It writes three CRDs: SafeRollout, and the shared analysis templates (AnalysisTemplate, namespaced, and
ClusterAnalysisTemplate, cluster-scoped), which have one spec.

Usage: python -m saferollout.crdgen [--check] [PATH]   (PATH: the SafeRollout CRD only, elsewhere)
"""

from __future__ import annotations

import argparse
import copy
import difflib
import sys
from pathlib import Path
from typing import Any

import yaml

from saferollout.core.models import (
    GROUP,
    KIND,
    NAME_MAX,
    PLURAL,
    VERSION,
    AnalysisTemplateSpec,
    SafeRolloutSpec,
    SafeRolloutStatus,
)

CRDS = Path(__file__).resolve().parents[2] / "crds"
DEFAULT_PATH = CRDS / f"{GROUP}_{PLURAL}.yaml"
TEMPLATE_KINDS = {"AnalysisTemplate": "Namespaced", "ClusterAnalysisTemplate": "Cluster"}
_DROP = {"title", "$defs", "discriminator"}


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    defs = schema.get("$defs", {})

    def walk(node: dict[str, Any]) -> dict[str, Any]:
        node = copy.deepcopy(node)
        if "$ref" in node:
            target = defs[node.pop("$ref").split("/")[-1]]
            merged = {**copy.deepcopy(target), **node}  # local description/default win
            return walk(merged)
        nullable = False
        for key in ("anyOf", "oneOf"):
            if key in node:
                raw = node.pop(key)
                options = [o for o in raw if o.get("type") != "null"]
                nullable = len(options) < len(raw)
                if len(options) != 1:
                    raise ValueError(f"cannot make a structural schema of a union: {options}")
                inner = walk(options[0])
                node = {**inner, **{k: v for k, v in node.items() if k not in inner or k == "description"}}
        if "allOf" in node:
            parts = node.pop("allOf")
            for part in parts:
                node = {**walk(part), **node}
        if "const" in node:
            node["enum"] = [node.pop("const")]
        for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if isinstance(node.get(bound), int | float) and not isinstance(node.get(bound), bool):
                node[plain] = node.pop(bound)  # OpenAPI v3.0: a number in minimum, a flag in exclusiveMinimum
                node[bound] = True
        for key in _DROP:
            node.pop(key, None)
        if node.get("default", ...) is None:
            node.pop("default")
        if "enum" in node and "type" not in node:
            node["type"] = "string"
        if "properties" in node:
            node["type"] = "object"
            node.pop("additionalProperties", None)
            node["properties"] = {k: walk(v) for k, v in node["properties"].items()}
        elif isinstance(node.get("additionalProperties"), dict):
            node["additionalProperties"] = walk(node["additionalProperties"])
        elif node.get("additionalProperties") is False:
            node.pop("additionalProperties")
        if "items" in node:
            node["items"] = walk(node["items"])
        if node.get("type") == "integer" and "format" not in node:
            node["format"] = "int64"
        if nullable:
            node["nullable"] = True
        if "type" not in node:
            raise ValueError(f"schema node without a type: {node}")
        return node

    out = walk(schema)
    return _strip_nullable_required(out)


def _strip_nullable_required(node: dict[str, Any]) -> dict[str, Any]:
    """A field that may be null is never required; also drop empty `required` lists."""
    props = node.get("properties")
    if props:
        for v in props.values():
            _strip_nullable_required(v)
        req = [r for r in node.get("required", []) if not props.get(r, {}).get("nullable")]
        if req:
            node["required"] = req
        else:
            node.pop("required", None)
    if "items" in node:
        _strip_nullable_required(node["items"])
    return node


def _without_defaults(node: dict[str, Any]) -> dict[str, Any]:
    """Status is written by the operator alone; defaults there would only hide what it wrote."""
    node.pop("default", None)
    for v in node.get("properties", {}).values():
        _without_defaults(v)
    if "items" in node:
        _without_defaults(node["items"])
    return node


def crd() -> dict[str, Any]:
    spec = structural(SafeRolloutSpec.model_json_schema(by_alias=True))
    spec["description"] = "What to roll out, how, and what proves it healthy."
    status = _without_defaults(structural(SafeRolloutStatus.model_json_schema(by_alias=True)))
    status["description"] = "Written by the operator; all it needs to resume after a restart."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["sr"],
                "categories": ["all"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Stage", "type": "integer", "jsonPath": ".status.stage"},
                        {"name": "Weight", "type": "integer", "jsonPath": ".status.weight"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            # the rollout's name is a label value on what it creates: 63 characters at most
                            "x-kubernetes-validations": [{
                                "rule": f"self.metadata.name.size() <= {NAME_MAX}",
                                "message": f"metadata.name: at most {NAME_MAX} characters (it becomes a label value)",
                            }],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


TEMPLATE_DESCRIPTION = (
    "One metric's definition, shared: its query (with args) or a built-in one, and optionally its threshold and "
    "response, which win over a rollout metric's own. A rollout names it in a metric's templateRef; an "
    "AnalysisTemplate only from its own namespace, a ClusterAnalysisTemplate from any. A rollout reads it when it "
    "starts and keeps that version (status.analysisTemplates): an edit applies to the next rollout.")


def template_crd(kind: str) -> dict[str, Any]:
    """An analysis template's CRD: the same generated spec for the namespaced and the cluster-scoped kind."""
    spec = structural(AnalysisTemplateSpec.model_json_schema(by_alias=True))
    spec["description"] = TEMPLATE_DESCRIPTION
    plural = kind.lower() + "s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower()},
            "scope": TEMPLATE_KINDS[kind],
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "additionalPrinterColumns": [
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
                "schema": {"openAPIV3Schema": {
                    "type": "object", "required": ["spec"],
                    "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                   "metadata": {"type": "object"}, "spec": spec}}},
            }],
        },
    }


HEADER = "# Generated by `python -m saferollout.crdgen` from operator/saferollout/core/models/. Do not edit.\n"


def render() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=120)


def render_template(kind: str) -> str:
    return HEADER + yaml.safe_dump(template_crd(kind), sort_keys=False, width=120)


def files() -> dict[Path, str]:
    """Every generated CRD by its path under crds/."""
    out = {DEFAULT_PATH: render()}
    for kind in TEMPLATE_KINDS:
        out[CRDS / f"{GROUP}_{kind.lower()}s.yaml"] = render_template(kind)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if the file differs from the models")
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    args = parser.parse_args(argv)
    todo = files() if args.path == DEFAULT_PATH else {args.path: render()}
    if args.check:
        stale = 0
        for path, text in todo.items():
            current = path.read_text() if path.exists() else ""
            if current != text:
                sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), text.splitlines(True),
                                                           str(path), "generated"))
                print(f"\n{path} is out of date: run `make crds`", file=sys.stderr)
                stale += 1
        return 1 if stale else 0
    for path, text in todo.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
