"""The harness's `objects` extension and the applyObject / patchObject / deleteObject faults (read strictly)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.format import FAULT_ACTIONS, ScenarioError, parse
from tests.unit.test_harness_format import scenario

TEMPLATE: dict[str, Any] = {"apiVersion": "saferollout.dev/v1alpha1", "kind": "ClusterAnalysisTemplate",
                            "metadata": {"name": "policy"}, "spec": {"template": "error-rate", "max": 0.01}}


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ScenarioError) as e:
        parse(data, Path("t.yaml"))
    return str(e.value)


def test_objects_and_object_faults_are_read_and_listed_for_the_clean_up() -> None:
    local = {"apiVersion": "saferollout.dev/v1alpha1", "kind": "AnalysisTemplate", "metadata": {"name": "lat"},
             "spec": {"template": "p95-latency"}}
    s = parse(scenario(objects=[TEMPLATE], faults=[
        {"at": {"phase": "Blocked"}, "do": "applyObject", "object": local},
        {"at": {"afterFault": 0, "seconds": 1}, "do": "patchObject", "kind": "ClusterAnalysisTemplate",
         "name": "policy", "patch": {"spec": {"max": 0.5}}},
        {"at": {"afterFault": 1}, "do": "deleteObject", "kind": "ClusterAnalysisTemplate", "name": "policy"},
    ]), Path("t.yaml"))
    assert s.objects == (TEMPLATE,)
    assert [o["kind"] for o in s.made_objects] == ["ClusterAnalysisTemplate", "AnalysisTemplate"]
    assert [f.describe() for f in s.faults] == [
        "fault 0 applyObject AnalysisTemplate lat",
        "fault 1 patchObject ClusterAnalysisTemplate policy {'spec': {'max': 0.5}}",
        "fault 2 deleteObject ClusterAnalysisTemplate policy"]
    assert {"applyObject", "patchObject", "deleteObject"} <= set(FAULT_ACTIONS)


@pytest.mark.parametrize(("data", "words"), [
    (scenario(objects=[{**TEMPLATE, "metadata": {"name": "p", "namespace": "other"}}]),
     "objects go in the scenario's namespace"),
    (scenario(objects=[{"apiVersion": "v1", "metadata": {"name": "p"}}]), "missing key 'kind'"),
    (scenario(objects=[{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}]), "missing key 'metadata.name'"),
    (scenario(faults=[{"at": {"afterSeconds": 1}, "do": "patchObject", "kind": "X", "patch": {}}]), "'name'"),
    (scenario(faults=[{"at": {"afterSeconds": 1}, "do": "deleteObject", "kind": "X", "name": "y", "patch": {}}]),
     "'patch'"),
])
def test_bad_objects_are_errors(data: dict[str, Any], words: str) -> None:
    assert words in error_of(data)
