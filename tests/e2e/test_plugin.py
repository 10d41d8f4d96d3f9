"""kubectl-saferollout against the real API server: what it prints, what it writes, the exit codes scripts use.

The status is written through the status subresource as the operator would, so the plugin is checked on its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.cluster import ensure_cluster, kubectl

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
NS = "plugin-e2e"
ROLLOUT = yaml.safe_load((Path(REPO.parent / "shared" / "scenarios" / "healthy-promotes.yaml")).read_text())["rollout"]


def plugin(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'operator'}{os.pathsep}{REPO}"}
    return subprocess.run([sys.executable, "-m", "saferollout.cli", "-n", NS, *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def set_status(status: dict[str, object]) -> None:
    kubectl("patch", "saferollout", "web", "-n", NS, "--subresource=status", "--type=merge", "-p",
            json.dumps({"status": status}))


@pytest.fixture(scope="module", autouse=True)
def rollout() -> Iterator[None]:
    os.environ["KUBECONFIG"] = str(ensure_cluster())
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kubectl("create", "namespace", NS, check=False)
    obj = {**ROLLOUT, "metadata": {"name": "web", "namespace": NS}}
    kubectl("apply", "-f", "-", input=yaml.safe_dump(obj))
    yield
    kubectl("delete", "namespace", NS, "--wait=false", check=False)


def test_status_of_a_running_rollout_and_get() -> None:
    set_status({"phase": "Progressing", "stage": 2, "weight": 25, "stageElapsedSeconds": 4,
                "stableImages": {"web": "demo/web:1.0"}, "message": "stage 2/4 at 25%: 6s of analysis left",
                "analysis": {"lastRun": "2026-11-24T04:00:00Z", "runs": 7, "metrics": [
                    {"name": "error-rate", "value": 0.0012, "threshold": "<= 0.01", "verdict": "pass",
                     "consecutiveFailures": 0},
                    {"name": "p95-latency", "value": 0.091, "threshold": "<= 2", "verdict": "pass",
                     "consecutiveFailures": 0}]}})
    out = plugin("status", "web")
    print(out.stdout)
    assert out.returncode == 0, out.stderr
    assert "Phase:     Progressing" in out.stdout and "2.  25%    10s  <- now" in out.stdout
    assert "error-rate" in out.stdout and "0.0012" in out.stdout and "<= 0.01" in out.stdout
    listing = plugin("get")
    assert listing.returncode == 0 and "web" in listing.stdout and "Progressing" in listing.stdout
    as_json = json.loads(plugin("-o", "json", "get").stdout)
    assert as_json[0]["name"] == "web" and as_json[0]["weight"] == 25


def test_commands_write_what_the_operator_reads() -> None:
    set_status({"phase": "Progressing", "stage": 1, "weight": 5})
    assert plugin("abort", "web").returncode == 0
    ann = kubectl("get", "saferollout", "web", "-n", NS, "-o", "jsonpath={.metadata.annotations}").stdout
    assert "saferollout.dev/command" in ann and "abort/" in ann
    assert plugin("pause", "web").returncode == 0
    assert kubectl("get", "saferollout", "web", "-n", NS, "-o", "jsonpath={.spec.paused}").stdout == "true"
    assert plugin("resume", "web").returncode == 0
    assert kubectl("get", "saferollout", "web", "-n", NS, "-o", "jsonpath={.spec.paused}").stdout == "false"


def test_exit_codes() -> None:
    set_status({"phase": "Succeeded", "stage": 4, "weight": 0})
    refused = plugin("abort", "web")
    assert refused.returncode == 3 and "not possible in phase Succeeded" in refused.stderr
    assert plugin("status", "web", "--watch", "--timeout", "5s").returncode == 0  # already Succeeded
    set_status({"phase": "RolledBack", "stage": 1, "weight": 0})
    assert plugin("status", "web", "--watch", "--timeout", "5s").returncode == 3
    set_status({"phase": "Progressing", "stage": 1, "weight": 5})
    assert plugin("status", "web", "--watch", "--timeout", "2s", "--interval", "0.5").returncode == 5
    missing = plugin("status", "nope")
    assert missing.returncode == 4 and "not found" in missing.stderr
    assert plugin("bogus").returncode == 2
