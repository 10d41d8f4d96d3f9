"""A real Argo CD (built from Go modules) syncs a Git repository into the local cluster, heals drift, and reports
SafeRollout's health through the chart's own Lua.

No operator runs here: the SafeRollout's status is patched by the test, phase by phase, and what is checked is what
Argo CD makes of it. Prints: time to the first sync, commit-to-synced latency, self-heal latency, the sync operations
per commit, and Argo CD's health of the SafeRollout for each phase.

A missing or failed Argo CD build fails this test (cluster/argocd-up.sh builds it), it is never skipped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e import argocd as acd
from tests.e2e.cluster import REPO, kubectl, wait_established

pytestmark = pytest.mark.e2e

NS = "sr-argocd-smoke"
APP = "sr-argocd-smoke"
Json = dict[str, Any]


def deployment(image: str, version: str) -> Json:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web", "team": "shop"}, "annotations": {"shop/version": version}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "web", "image": image, "ports": [{"containerPort": 8080}]}]}},
        },
    }


def service() -> Json:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


def saferollout(image: str) -> Json:
    return {
        "apiVersion": "saferollout.dev/v1alpha1", "kind": "SafeRollout", "metadata": {"name": "web"},
        "spec": {
            "targetRef": {"kind": "Deployment", "name": "web"},
            "template": {"containers": [{"name": "web", "image": image}]},
            "strategy": {"canary": {
                "stages": [{"weight": 5, "duration": "10s"}, {"weight": 100, "duration": "10s"}],
                "traffic": {"gatewayAPI": {"httpRoute": "web", "stableService": "web", "canaryService": "web-canary"}}}},
            "analysis": {"interval": "2s", "metrics": [
                {"name": "error-rate", "template": "error-rate", "max": 0.01, "onBreach": "rollback", "severity": "critical"}]},
        },
    }


def files(version: str) -> dict[str, str | None]:
    return {
        "web.yaml": yaml.safe_dump_all([deployment("demo/web:1.0", version), service()], sort_keys=False),
        "saferollout.yaml": yaml.safe_dump(saferollout("demo/web:2.0"), sort_keys=False),
    }


def live(kind: str, name: str) -> Json:
    obj: Json = json.loads(kubectl("get", kind, name, "-n", NS, "-o", "json").stdout)
    return obj


def sr_health_is(expected: str, message: str | None = None) -> Callable[[Json], bool]:
    def check(app: Json) -> bool:
        entry = acd.resource(app, "SafeRollout", "web") or {}
        health = entry.get("health", {})
        return bool(health.get("status") == expected and (message is None or health.get("message") == message))
    return check


def sync_ops() -> int:
    return sum(acd.sync_operations(APP).values())


@pytest.fixture(scope="module")
def argocd() -> Path:
    state = acd.ensure_argocd()
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    wait_established("saferollouts.saferollout.dev")
    return state


@pytest.fixture
def app_cleanup(argocd: Path) -> Iterator[None]:
    acd.delete_application(APP)
    kubectl("delete", "namespace", NS, "--ignore-not-found", "--timeout=120s")
    yield
    acd.delete_application(APP)
    kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=false")


def test_argocd_syncs_heals_and_reports_saferollout_health(app_cleanup: None, tmp_path: Path) -> None:
    report: list[str] = []
    base = tmp_path / "git"
    repo = acd.GitRepo.create(base / "shop")
    sha = repo.commit("web 1.0, SafeRollout to 2.0", files("1"))

    with acd.git_daemon(base) as git_url:
        # 1. The first sync: automated, selfHeal, prune; the namespace is created by Argo CD.
        start = time.monotonic()
        acd.create_application(APP, git_url(repo), dest_namespace=NS, sync_options=["CreateNamespace=true"])
        app = acd.wait_synced(APP, sha, timeout=120)
        first = time.monotonic() - start
        report.append(f"first sync (Application created -> Synced at {sha[:8]}): {first:.1f} s")
        assert {(r["kind"], r["name"]) for r in app["status"]["resources"]} == {
            ("Deployment", "web"), ("Service", "web"), ("SafeRollout", "web")}, acd.describe(app)
        assert all(r["status"] == "Synced" for r in app["status"]["resources"]), acd.describe(app)
        assert live("deployment", "web")["spec"]["template"]["spec"]["containers"][0]["image"] == "demo/web:1.0"
        # no operator runs: the SafeRollout has no status, which the chart's Lua calls Progressing
        app = acd.wait_for_app(APP, lambda a: acd.resource_health(a, "SafeRollout", "web") == "Progressing"
                               and acd.resource_health(a, "Deployment", "web") == "Healthy", "health")
        sr_entry = acd.resource(app, "SafeRollout", "web") or {}
        assert sr_entry["health"].get("message") == "waiting for the operator", acd.describe(app)
        assert acd.app_health(app) == "Progressing", acd.describe(app)

        # 2. Commits: each one is synced by one sync operation, within about the controller's resync period.
        latencies: list[float] = []
        ops_per_commit: list[int] = []
        for version in ("2", "3", "4"):
            history_before, ops_before = len(acd.history(acd.get_application(APP))), sync_ops()
            sha = repo.commit(f"shop/version {version}", files(version))
            start = time.monotonic()
            app = acd.wait_synced(APP, sha, timeout=90)
            latencies.append(time.monotonic() - start)
            assert live("deployment", "web")["metadata"]["annotations"]["shop/version"] == version
            time.sleep(3)  # anything further (a second sync of the same commit) would show up now
            app = acd.get_application(APP)
            assert acd.is_synced(app, sha), acd.describe(app)
            ops_per_commit.append(sync_ops() - ops_before)
            assert len(acd.history(app)) - history_before == 1, acd.describe(app)
            assert acd.history(app)[-1]["revision"] == sha
        report.append("commit -> Synced (no webhook, no refresh annotation): "
                      + ", ".join(f"{s:.1f} s" for s in latencies))
        report.append(f"sync operations per commit (argocd_app_sync_total): {ops_per_commit}; status.history grew by 1 each")
        # One full sync per commit. Sometimes a second, partial one right after it: the refresh that follows a sync can
        # compare against the controller's cluster cache before the watch event of the write arrived, see the Deployment
        # still OutOfSync, and self-heal at once (the first self-heal attempt has no backoff). status.history does not
        # record such partial (self-heal) syncs; the controller's counter does.
        assert all(1 <= n <= 2 for n in ops_per_commit), ops_per_commit

        # 2b. A hard refresh, as a Git webhook would ask for: the commit is synced without waiting for the resync.
        sha = repo.commit("shop/version 5", files("5"))
        start = time.monotonic()
        acd.refresh(APP, hard=True)
        acd.wait_synced(APP, sha, timeout=90)
        report.append(f"commit + refresh=hard annotation -> Synced: {time.monotonic() - start:.1f} s")

        # 3. Self-heal: a field Git sets, deleted in the cluster, is put back by an automated sync.
        ops_before = sync_ops()
        kubectl("patch", "deployment", "web", "-n", NS, "--type", "json",
                "-p", json.dumps([{"op": "remove", "path": "/metadata/labels/team"}]))
        start = time.monotonic()
        deadline = start + 90
        while live("deployment", "web")["metadata"]["labels"].get("team") != "shop":
            assert time.monotonic() < deadline, acd.describe(acd.get_application(APP))
            time.sleep(0.25)
        healed = time.monotonic() - start
        history_before = len(acd.history(acd.get_application(APP)))
        app = acd.wait_synced(APP, sha)
        time.sleep(3)
        app = acd.get_application(APP)
        report.append(f"self-heal of a deleted label (kubectl patch -> label back): {healed:.1f} s, "
                      f"{sync_ops() - ops_before} sync operation(s), history +{len(acd.history(app)) - history_before}")
        assert 1 <= sync_ops() - ops_before <= 2
        op = app["status"]["operationState"]
        assert op["operation"]["initiatedBy"].get("automated") is True, op
        assert [r["name"] for r in op["operation"]["sync"].get("resources", [])] == ["web"], op  # partial: the drifted one

        # 4. Argo CD's own health of the SafeRollout, for each phase the operator could write.
        generation = live("saferollout", "web")["metadata"]["generation"]
        ops_before = sync_ops()
        for phase, expected in (("Progressing", "Progressing"), ("Paused", "Suspended"), ("RolledBack", "Degraded"),
                                ("Succeeded", "Healthy")):
            message = f"e2e: phase {phase}"
            status = {"phase": phase, "observedGeneration": generation, "message": message}
            kubectl("patch", "saferollout", "web", "-n", NS, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": status}))
            start = time.monotonic()
            app = acd.wait_for_app(APP, sr_health_is(expected, message), f"SafeRollout health {expected}")
            entry = acd.resource(app, "SafeRollout", "web") or {}
            report.append(f"SafeRollout phase {phase:<11} -> Argo CD health {entry['health']['status']:<11} "
                          f"(app {acd.app_health(app)}, sync {acd.sync_status(app)}, after {time.monotonic() - start:.1f} s)")
            assert acd.sync_status(app) == "Synced", acd.describe(app)  # status is not part of the diff
        # an older observedGeneration: the verdict on the new spec is not in, so Progressing again
        status = {"phase": "Succeeded", "observedGeneration": generation - 1}
        kubectl("patch", "saferollout", "web", "-n", NS, "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": status}))
        app = acd.wait_for_app(APP, sr_health_is("Progressing"), "Progressing for a stale observedGeneration")
        assert sync_ops() == ops_before, "a status change alone must not start a sync"
        report.append(f"operation history: {len(acd.history(app))} successful syncs, counter {acd.sync_operations(APP)}")

    print("\n" + "\n".join(report))
