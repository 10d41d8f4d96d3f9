"""The Argo CD health check (charts/saferollout/argocd/health.lua), run by a real Lua 5.1 interpreter (lupa).

Lua 5.1 because Argo CD runs health checks on gopher-lua, a Lua 5.1 implementation: a script that only works on
5.3 would pass here and fail in Argo CD otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from saferollout.core.models import Phase

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "saferollout"
SCRIPT = (CHART / "argocd" / "health.lua").read_text()

EXPECTED = {
    "Pending": "Progressing",
    "Preflight": "Progressing",
    "Progressing": "Progressing",
    "Promoting": "Progressing",
    "RollingBack": "Progressing",
    "Succeeded": "Healthy",
    "Paused": "Suspended",
    "RolledBack": "Degraded",
    "Failed": "Degraded",
    "Blocked": "Degraded",
}


def _runtime() -> Any:
    """A fresh Lua 5.1 state per check, as Argo CD gives each evaluation its own."""
    from lupa import lua51

    return lua51.LuaRuntime(unpack_returned_tuples=True)


def _to_lua(lua: Any, value: Any) -> Any:
    """Python JSON-like value -> Lua value; None fields are left out, as Argo CD turns JSON null into nil."""
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items() if v is not None})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """Runs the script the way Argo CD does: the resource as the global `obj`, the chunk returns `hs`."""
    lua = _runtime()
    lua.globals().obj = _to_lua(lua, obj)
    hs = lua.execute(SCRIPT)
    return str(hs["status"]), str(hs["message"])


def rollout(status: dict[str, Any] | None, generation: int = 3) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "saferollout.dev/v1alpha1",
        "kind": "SafeRollout",
        "metadata": {"name": "checkout", "namespace": "shop", "generation": generation},
        "spec": {"targetRef": {"kind": "Deployment", "name": "checkout"}},
    }
    if status is not None:
        obj["status"] = status
    return obj


def test_the_interpreter_is_lua_5_1() -> None:
    assert _runtime().lua_version == (5, 1)


@pytest.mark.parametrize(("phase", "expected"), sorted(EXPECTED.items()))
def test_every_phase_maps_to_its_health_and_carries_the_status_message(phase: str, expected: str) -> None:
    message = f"stage 2/4 at 25%: {phase.lower()} (p99 latency 180ms)"
    status = {"phase": phase, "message": message, "observedGeneration": 3, "stage": 2, "weight": 25,
              "stableImages": {"app": "shop/checkout:1.4"}, "pauseReason": None}
    assert health(rollout(status)) == (expected, message)


def test_the_mapping_covers_every_phase_the_operator_writes() -> None:
    """A new Phase in the models must get a health mapping, not fall through to Unknown."""
    assert {p.value for p in Phase} == set(EXPECTED)


def test_no_status_yet_is_progressing_waiting_for_the_operator() -> None:
    assert health(rollout(None)) == ("Progressing", "waiting for the operator")


def test_a_status_without_a_phase_is_also_waiting_for_the_operator() -> None:
    assert health(rollout({"message": None, "observedGeneration": None})) == ("Progressing", "waiting for the operator")


@pytest.mark.parametrize("phase", ["Succeeded", "Failed", "Paused"])
def test_a_status_of_an_older_generation_is_progressing(phase: str) -> None:
    """The spec changed after the verdict (new template): the old verdict says nothing about the new one."""
    status, message = health(rollout({"phase": phase, "message": "done", "observedGeneration": 2}, generation=3))
    assert status == "Progressing"
    assert "generation 3" in message and "generation 2" in message


def test_a_current_generation_uses_the_phase() -> None:
    assert health(rollout({"phase": "Succeeded", "message": "promoted", "observedGeneration": 4}, generation=4)) == (
        "Healthy", "promoted")


def test_no_observed_generation_uses_the_phase() -> None:
    assert health(rollout({"phase": "RolledBack", "message": "error rate 7% > 1%"})) == ("Degraded", "error rate 7% > 1%")


@pytest.mark.parametrize("message", [None, ""])
def test_without_a_message_the_phase_is_the_message(message: str | None) -> None:
    assert health(rollout({"phase": "Blocked", "message": message, "observedGeneration": 3})) == ("Degraded", "Blocked")


def test_an_unknown_phase_is_unknown() -> None:
    assert health(rollout({"phase": "Exploded", "observedGeneration": 3})) == ("Unknown", "unknown phase Exploded")


def test_an_object_without_metadata_does_not_break_the_script() -> None:
    assert health({"status": {"phase": "Progressing", "message": "stage 1/4"}}) == ("Progressing", "stage 1/4")


def test_the_values_copy_is_the_script() -> None:
    """values.yaml ships the script as argocd.healthCheck (helm show values); it must not drift from health.lua."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    hint = "copy charts/saferollout/argocd/health.lua into values.yaml argocd.healthCheck"
    assert values["argocd"]["healthCheck"] == SCRIPT, hint
