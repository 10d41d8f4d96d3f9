"""What a real Argo CD (automated sync, selfHeal, prune) does with the writes a rollout operator makes that Git does
not make: does it show the Application OutOfSync, and does self-heal undo the write?

Each case is an Application of its own (its own directory in one Git repository, its own namespace), in two modes:
Argo CD's default (client-side apply, the three-way diff against the last-applied annotation) and the server-side one
(sync option ServerSideApply=true, compare option ServerSideDiff=true). The writes are made as the operator makes them
(kubectl patch with field manager saferollout, or kubectl scale), all at once; then every Application is watched for
at least WATCH seconds and two reconciliations. A table of the outcome is printed; the assertions pin the outcome,
so a change of Argo CD's behaviour fails here. No operator runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e import argocd as acd
from tests.e2e.cluster import REPO, kubectl, wait_established

pytestmark = pytest.mark.e2e

Json = dict[str, Any]
PREFIX = "sr-drift"
WATCH = 20.0  # seconds each "kept" case is watched after the write (self-heal's first retry comes after ~2 s)
MODES = {"default": {}, "ssa": {"annotations": {"argocd.argoproj.io/compare-options": "ServerSideDiff=true"},
                                "sync_options": ["ServerSideApply=true"]}}


def deployment(*, replicas: int | None = 1, image: str = "demo/web:1.0") -> Json:
    spec: Json = {
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}},
                     "spec": {"containers": [{"name": "web", "image": image, "env": [{"name": "MODE", "value": "git"}]}]}},
    }
    if replicas is not None:
        spec = {"replicas": replicas, **spec}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": spec}


def service(name: str = "web") -> Json:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


def httproute(backends: list[Json]) -> Json:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "web"},
            "spec": {"rules": [{"backendRefs": backends}]}}


def saferollout() -> Json:
    return {
        "apiVersion": "saferollout.dev/v1alpha1", "kind": "SafeRollout", "metadata": {"name": "web"},
        "spec": {
            "targetRef": {"kind": "Deployment", "name": "web"},
            "template": {"containers": [{"name": "web", "image": "demo/web:2.0"}]},
            "strategy": {"canary": {
                "stages": [{"weight": 5, "duration": "10s"}, {"weight": 100, "duration": "10s"}],
                "traffic": {"gatewayAPI": {"httpRoute": "web", "stableService": "web", "canaryService": "web-canary"}}}},
            "analysis": {"interval": "2s", "metrics": [
                {"name": "error-rate", "template": "error-rate", "max": 0.01, "onBreach": "rollback", "severity": "critical"}]},
        },
    }


def patch(ns: str, kind: str, body: Json, kind_of_patch: str = "merge") -> dict[str, Json]:
    """Patches kind/web as the operator does; returns the object as the write left it, by "Kind/name"."""
    obj = json.loads(kubectl("patch", kind, "web", "-n", ns, "--field-manager", "saferollout", f"--type={kind_of_patch}",
                             "-p", json.dumps(body), "-o", "json").stdout)
    return {f"{obj['kind']}/web": obj}


def scale(ns: str) -> dict[str, Json]:
    return patch(ns, "deployment", {"spec": {"replicas": 3}})


def set_image(ns: str) -> dict[str, Json]:
    return patch(ns, "deployment", {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "demo/web:2.0"}]}}}},
          "strategic")


def weights(route: Json) -> list[tuple[str, int | None]]:
    return [(b["name"], b.get("weight")) for b in route["spec"]["rules"][0]["backendRefs"]]


def create_canary(ns: str) -> dict[str, Json]:
    """The operator's canary: a Deployment and a Service owned by the SafeRollout, not in Git."""
    sr = json.loads(kubectl("get", "saferollout", "web", "-n", ns, "-o", "json").stdout)
    owner = {"apiVersion": "saferollout.dev/v1alpha1", "kind": "SafeRollout", "name": "web", "uid": sr["metadata"]["uid"],
             "controller": True, "blockOwnerDeletion": True}
    canary = deployment()
    canary["metadata"] = {"name": "web-canary", "labels": {"saferollout.dev/canary-of": "web"}, "ownerReferences": [owner]}
    canary["spec"]["selector"] = {"matchLabels": {"saferollout.dev/canary-of": "web"}}
    canary["spec"]["template"]["metadata"]["labels"] = {"saferollout.dev/canary-of": "web"}
    svc = service("web-canary")
    svc["metadata"]["ownerReferences"] = [owner]
    made = [json.loads(kubectl("create", "-n", ns, "--field-manager", "saferollout", "-f", "-", "-o", "json",
                               input=json.dumps(o)).stdout) for o in (canary, svc)]
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in made}


@dataclass
class Case:
    name: str
    manifests: list[Json]
    mutate: Callable[[str], dict[str, Json]]  # the operator's write; returns the objects as it left them
    probe: Callable[[dict[str, Json]], object]  # the written field, from the live objects by "kind/name"
    written: object  # the probe's value right after the write
    note: str
    reverted: bool  # what Argo CD does, the same in both modes: OutOfSync and a self-heal sync undoes the write


def dep(objs: dict[str, Json]) -> Json:
    return objs.get("Deployment/web", {})


BASE = [deployment(), service()]
CASES = [
    Case("paused", BASE, lambda ns: patch(ns, "deployment", {"spec": {"paused": True}}),
         lambda o: dep(o)["spec"].get("paused", False), True, "Deployment spec.paused (not in Git)", reverted=False),
    Case("replicas-in-git", [deployment(replicas=2), service()],
         scale,
         lambda o: dep(o)["spec"]["replicas"], 3, "spec.replicas, Git says 2", reverted=True),
    Case("replicas-not-in-git", [deployment(replicas=None), service()],
         scale,
         lambda o: dep(o)["spec"]["replicas"], 3, "spec.replicas, Git omits it", reverted=False),
    Case("image", BASE, set_image,
         lambda o: dep(o)["spec"]["template"]["spec"]["containers"][0]["image"], "demo/web:2.0", "container image, Git says 1.0",
         reverted=True),
    Case("env-added", BASE,
         lambda ns: patch(ns, "deployment", {"spec": {"template": {"spec": {"containers": [
             {"name": "web", "env": [{"name": "EXTRA", "value": "operator"}]}]}}}}, "strategic"),
         lambda o: "EXTRA" in {e["name"] for e in dep(o)["spec"]["template"]["spec"]["containers"][0].get("env", [])}, True,
         "an env var added to a container (not in Git)", reverted=False),
    Case("env-changed", BASE,
         lambda ns: patch(ns, "deployment", {"spec": {"template": {"spec": {"containers": [
             {"name": "web", "env": [{"name": "MODE", "value": "operator"}]}]}}}}, "strategic"),
         lambda o: {e["name"]: e.get("value") for e in dep(o)["spec"]["template"]["spec"]["containers"][0]["env"]}["MODE"],
         "operator", "an env var's value Git sets", reverted=True),
    Case("annotation", BASE, lambda ns: patch(ns, "deployment", {"metadata": {"annotations": {"saferollout.dev/stable": "1.0"}}}),
         lambda o: dep(o)["metadata"].get("annotations", {}).get("saferollout.dev/stable"), "1.0",
         "Deployment metadata annotation (not in Git)", reverted=False),
    Case("template-annotation", BASE,
         lambda ns: patch(ns, "deployment", {"spec": {"template": {"metadata": {"annotations": {"saferollout.dev/rev": "x"}}}}}),
         lambda o: (dep(o)["spec"]["template"]["metadata"].get("annotations") or {}).get("saferollout.dev/rev"), "x",
         "pod template annotation (not in Git)", reverted=False),
    Case("route-weights", [*BASE, httproute([{"name": "web", "port": 80, "weight": 100},
                                             {"name": "web-canary", "port": 80, "weight": 0}])],
         lambda ns: patch(ns, "httproute", {"spec": {"rules": [{"backendRefs": [
             {"name": "web", "port": 80, "weight": 95}, {"name": "web-canary", "port": 80, "weight": 5}]}]}}),
         lambda o: weights(o["HTTPRoute/web"]), [("web", 95), ("web-canary", 5)],
         "HTTPRoute backendRefs weights, Git has both backends at 100/0", reverted=True),
    Case("route-one-backend", [*BASE, httproute([{"name": "web", "port": 80}])],
         lambda ns: patch(ns, "httproute", {"spec": {"rules": [{"backendRefs": [
             {"name": "web", "port": 80, "weight": 95}, {"name": "web-canary", "port": 80, "weight": 5}]}]}}),
         lambda o: weights(o["HTTPRoute/web"]), [("web", 95), ("web-canary", 5)],
         "HTTPRoute backendRefs, Git has one backend without a weight", reverted=True),
    Case("canary-objects", [*BASE, saferollout()], create_canary,
         lambda o: "Deployment/web-canary" in o, True, "a canary Deployment and Service owned by the SafeRollout",
         reverted=False),
    Case("sr-kopf-marks", [*BASE, saferollout()],
         lambda ns: patch(ns, "saferollout", {"metadata": {
             "finalizers": ["kopf.zalando.org/KopfFinalizerMarker"],
             "annotations": {"kopf.zalando.org/last-handled-configuration": '{"spec": {}}'}}}),
         lambda o: "kopf.zalando.org/last-handled-configuration" in o["SafeRollout/web"]["metadata"].get("annotations", {}),
         True, "kopf's finalizer and annotation on the SafeRollout", reverted=False),
]


def app_name(case: Case, mode: str) -> str:
    return f"{PREFIX}-{mode}-{case.name}"


def live_objects() -> dict[str, dict[str, Json]]:
    """Every case's objects, by namespace and "Kind/name", in one call."""
    kinds = "deployments.apps,services,httproutes.gateway.networking.k8s.io,saferollouts.saferollout.dev"
    objects: dict[str, dict[str, Json]] = {}
    for o in json.loads(kubectl("get", kinds, "-A", "-o", "json").stdout)["items"]:
        if o["metadata"]["namespace"].startswith(PREFIX):
            objects.setdefault(o["metadata"]["namespace"], {})[f"{o['kind']}/{o['metadata']['name']}"] = o
    return objects


def all_apps() -> dict[str, Json]:
    items = json.loads(kubectl("get", "applications.argoproj.io", "-n", acd.NAMESPACE, "-o", "json").stdout)["items"]
    return {a["metadata"]["name"]: a for a in items if a["metadata"]["name"].startswith(PREFIX)}


def stamp(text: str | None) -> float:
    """An RFC 3339 time stamp of the API (second precision) as epoch seconds; 0 when there is none."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else 0.0


def reconciled_at(app: Json) -> float:
    return stamp(app.get("status", {}).get("reconciledAt"))


def cleanup() -> None:
    # kopf's finalizer would hold the SafeRollouts (no operator runs to remove it), and with them the cascade delete
    for ns in json.loads(kubectl("get", "namespaces", "-o", "json").stdout)["items"]:
        name = ns["metadata"]["name"]
        if name.startswith(PREFIX):
            for sr in kubectl("get", "saferollouts.saferollout.dev", "-n", name, "-o", "name", check=False).stdout.split():
                kubectl("patch", sr, "-n", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
    for app in all_apps():
        kubectl("delete", "applications.argoproj.io", app, "-n", acd.NAMESPACE, "--wait=false")
    for app in all_apps():
        acd.delete_application(app)
    names = [n["metadata"]["name"] for n in json.loads(kubectl("get", "namespaces", "-o", "json").stdout)["items"]]
    for name in names:
        if name.startswith(PREFIX):
            kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="module")
def argocd() -> Iterator[Path]:
    state = acd.ensure_argocd()
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    wait_established("saferollouts.saferollout.dev")
    cleanup()
    yield state
    cleanup()


def sync_ops(name: str) -> int:
    return sum(acd.sync_operations(name).values())


def test_what_argocd_does_with_the_operators_writes(argocd: Path, tmp_path: Path) -> None:
    repo = acd.GitRepo.create(tmp_path / "drift")
    sha = repo.commit("all cases", {f"{c.name}/all.yaml": yaml.safe_dump_all(c.manifests, sort_keys=False) for c in CASES})
    for mode, options in MODES.items():
        for case in CASES:
            acd.create_application(app_name(case, mode), repo.url, dest_namespace=app_name(case, mode), path=case.name,
                                   sync_options=["CreateNamespace=true", *options.get("sync_options", [])],
                                   annotations=options.get("annotations"))
    names = [app_name(c, m) for m in MODES for c in CASES]
    for name in names:
        acd.wait_for_app(name, lambda a: acd.is_synced(a, sha) and acd.resource_health(a, "Deployment", "web") == "Healthy",
                         "Synced and the Deployment Healthy", timeout=180)
    time.sleep(3)  # the first sync's follow-up (see test_argocd_smoke) is over before anything is counted
    ops_before = {name: sync_ops(name) for name in names}

    written_at: dict[str, float] = {}
    for mode in MODES:
        for case in CASES:  # the write took: the probe sees it in what the write returned (else the case tests nothing)
            name = app_name(case, mode)
            written_at[name] = time.time()
            assert case.probe(case.mutate(name)) == case.written, (mode, case.name)

    reverted: dict[str, float | None] = dict.fromkeys(names, None)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        apps, objects = all_apps(), live_objects()
        for mode in MODES:
            for case in CASES:
                name = app_name(case, mode)
                if reverted[name] is None and case.probe(objects.get(name, {})) != case.written:
                    reverted[name] = time.time() - written_at[name]
        if all(reverted[n] is not None
               or (time.time() - written_at[n] > WATCH and reconciled_at(apps[n]) > written_at[n] + 2) for n in names):
            break
        time.sleep(0.5)

    apps = all_apps()
    rows, wrong = [], []
    for mode in MODES:
        for case in CASES:
            name = app_name(case, mode)
            app = apps[name]
            ops = sync_ops(name) - ops_before[name]
            out_of_sync = acd.went_out_of_sync(name, written_at[name])
            # when the self-heal sync finished, by Argo CD's own clock (second precision): the polling here is slower
            finished = stamp(app.get("status", {}).get("operationState", {}).get("finishedAt"))
            revert = f"reverted, healed {finished - written_at[name]:.0f} s" if reverted[name] is not None else "kept"
            rows.append(f"{mode:<8} {case.name:<20} OutOfSync: {'yes' if out_of_sync else 'no':<3}  {revert:<18} "
                        f"sync ops: {ops}  now {acd.sync_status(app)}/{acd.app_health(app)}, "
                        f"Deployment {acd.resource_health(app, 'Deployment', 'web')}  ({case.note})")
            if (reverted[name] is not None, out_of_sync, ops > 0) != (case.reverted, case.reverted, case.reverted) \
                    or not acd.is_synced(app):
                wrong.append(rows[-1])
    print("\nArgo CD and the operator's writes (automated sync, selfHeal, prune):\n" + "\n".join(rows))
    assert not wrong, "Argo CD did not do what this test pins:\n" + "\n".join(wrong)
    for mode in MODES:  # a paused Deployment is Suspended to Argo CD, and so is the Application
        app = apps[app_name(CASES[0], mode)]
        assert (acd.resource_health(app, "Deployment", "web"), acd.app_health(app)) == ("Suspended", "Suspended")

    # The paused-target model: the release commit changes the pod template while the operator holds the Deployment
    # paused. Argo CD syncs it (Synced, nothing rolls out), then the operator's resume rolls it out, and Argo CD never
    # syncs again for it.
    paused = [app_name(CASES[0], mode) for mode in MODES]
    ops_before = {name: sync_ops(name) for name in paused}
    sha2 = repo.commit("paused: web 2.0", {"paused/all.yaml": yaml.safe_dump_all([deployment(image="demo/web:2.0"), service()],
                                                                                   sort_keys=False)})
    start = time.monotonic()
    timeline: list[str] = []
    for name in paused:
        app = acd.wait_synced(name, sha2)
        timeline.append(f"{name}: release commit Synced after {time.monotonic() - start:.1f} s, "
                        f"{acd.sync_status(app)}/{acd.app_health(app)}")
        live = objects_of(name)
        assert live["Deployment/web"]["spec"].get("paused") is True
        assert live["Deployment/web"]["spec"]["template"]["spec"]["containers"][0]["image"] == "demo/web:2.0"
        assert images_of_replicasets(name) == {"demo/web:1.0"}, "a paused Deployment must not roll out"
        patch(name, "deployment", {"spec": {"paused": False}})  # the operator's promotion: resume
    for name in paused:
        app = acd.wait_for_app(name, lambda a: acd.is_synced(a, sha2) and acd.app_health(a) == "Healthy",
                               "Synced/Healthy after the resume", timeout=120)
        timeline.append(f"{name}: resumed -> {acd.sync_status(app)}/{acd.app_health(app)} after "
                        f"{time.monotonic() - start:.1f} s; sync ops for release + resume: {sync_ops(name) - ops_before[name]}")
        assert "demo/web:2.0" in images_of_replicasets(name)
        assert sync_ops(name) - ops_before[name] in (1, 2), "one sync for the release commit (and at most its follow-up)"
    print("\n".join(timeline))


def objects_of(ns: str) -> dict[str, Json]:
    return live_objects().get(ns, {})


def images_of_replicasets(ns: str) -> set[str]:
    """The images of Deployment web's ReplicaSets: a new one appears only when the Deployment rolls out."""
    items = json.loads(kubectl("get", "replicasets", "-n", ns, "-o", "json").stdout)["items"]
    return {rs["spec"]["template"]["spec"]["containers"][0]["image"] for rs in items
            if any(o.get("kind") == "Deployment" and o.get("name") == "web" for o in rs["metadata"].get("ownerReferences", []))}
