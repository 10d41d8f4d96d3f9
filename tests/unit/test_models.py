"""The pydantic models refuse what the CRD's CEL rules refuse, and the committed CRD is what they generate."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from harness.format import merge_patch
from saferollout import crdgen
from saferollout.core.models import SafeRolloutSpec

SCENARIOS = Path(__file__).resolve().parents[3] / "shared" / "scenarios"


def base_spec() -> dict[str, Any]:
    doc = yaml.safe_load((SCENARIOS / "error-rate-breach.yaml").read_text())
    spec: dict[str, Any] = doc["rollout"]["spec"]
    return spec


def test_committed_crd_equals_the_generated_one() -> None:
    assert crdgen.DEFAULT_PATH.read_text() == crdgen.render(), "run `make crds`"


def test_every_committed_crd_equals_the_generated_one() -> None:
    """SafeRollout and the two analysis-template kinds: `make crds` writes them all, and nothing else is there."""
    generated = crdgen.files()
    assert len(generated) == 3
    for path, text in generated.items():
        assert path.read_text() == text, f"{path.name} is out of date: run `make crds`"
    assert {p.name for p in crdgen.CRDS.glob("*.yaml")} == {p.name for p in generated}


def test_every_shared_scenario_rollout_is_valid() -> None:
    files = sorted(SCENARIOS.glob("*.yaml"))
    assert files, f"no scenarios in {SCENARIOS}"
    for f in files:
        doc = yaml.safe_load(f.read_text())
        if "rollout" in doc:
            SafeRolloutSpec.model_validate(doc["rollout"]["spec"])


@pytest.mark.parametrize("case", yaml.safe_load((SCENARIOS / "bad-manifests.yaml").read_text())["cases"],
                         ids=lambda c: c["why"])
def test_bad_manifests_are_refused_by_pydantic_too(case: dict[str, Any]) -> None:
    spec = merge_patch(base_spec(), case["patch"]["spec"])
    with pytest.raises(ValidationError):
        SafeRolloutSpec.model_validate(spec)


def test_crd_is_structural() -> None:
    schema = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    def walk(node: dict[str, Any], path: str) -> None:
        assert "type" in node, path
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "const", "title", "$defs"):
            assert banned not in node, f"{banned} at {path}"
        for flag in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(flag, True) is True, f"{flag} must be a boolean beside minimum/maximum at {path}"
        if "properties" in node:
            assert "additionalProperties" not in node, path
            for k, v in node["properties"].items():
                walk(v, f"{path}.{k}")
        if "items" in node:
            walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}{{}}")
    walk(schema, "")
    rules = yaml.safe_dump(schema, width=1 << 20)
    for text in ("exactly one traffic router", "exactly one strategy", "exactly one of query, template, templateRef or httpGet",
                 "stage weights must rise"):
        assert text in rules


def test_printer_columns() -> None:
    cols = [c["name"] for c in crdgen.crd()["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert cols == ["Phase", "Stage", "Weight", "Age"]


def test_defaults_and_unknown_fields() -> None:
    spec = SafeRolloutSpec.model_validate(base_spec())
    assert spec.analysis.on_inconclusive.value == "pause"
    assert spec.rollback.verify.duration == "2m"
    bad = copy.deepcopy(base_spec())
    bad["analysis"]["unknownKnob"] = 1
    with pytest.raises(ValidationError, match="unknownKnob"):
        SafeRolloutSpec.model_validate(bad)


def test_database_rules() -> None:
    spec = base_spec()
    with pytest.raises(ValidationError, match="snapshotBeforeRollout"):
        SafeRolloutSpec.model_validate({**spec, "database": {"postgres": {"secretRef": {"name": "d", "key": "k"}},
                                                             "restoreOnRollback": True}})
    with pytest.raises(ValidationError, match="databaseReachable needs"):
        SafeRolloutSpec.model_validate({**spec, "preflight": {"databaseReachable": True}})
