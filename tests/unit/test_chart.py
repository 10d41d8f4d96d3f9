"""The Helm chart (charts/saferollout): its CRD copy, `helm lint`, and the objects `helm template` renders.

Runs the helm built by `make tools` (the pinned version), never one from PATH. No cluster is needed.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.cluster import tools_dir

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "saferollout"
NAMESPACE = "saferollout-system"
FULLNAME = "sr-saferollout"

Obj = dict[str, Any]


def helm_bin() -> Path:
    """The built helm; a missing one fails the test (a skipped chart test would let a broken chart ship)."""
    path = tools_dir() / "helm"
    if not path.is_file():
        pytest.fail(f"helm is not built at {path}: run `make tools`")
    return path


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    """helm with its config and cache under .cache/, so no user setting or repository changes a render."""
    home = REPO / ".cache" / "helm"
    env = {**os.environ, "HELM_CONFIG_HOME": str(home / "config"), "HELM_CACHE_HOME": str(home / "cache"),
           "HELM_DATA_HOME": str(home / "data")}
    env.pop("KUBECONFIG", None)
    return subprocess.run([str(helm_bin()), *args], capture_output=True, text=True, env=env, check=False,
                          stdin=subprocess.DEVNULL, timeout=120)


@functools.cache
def _render(args: tuple[str, ...]) -> tuple[Obj, ...]:
    result = run_helm("template", "sr", str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode == 0, f"helm template {' '.join(args)} failed:\n{result.stderr}"
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def render(*args: str) -> list[Obj]:
    """The rendered objects; renders are cached, as several tests read the same one."""
    return list(_render(args))


def render_error(*args: str) -> str:
    result = run_helm("template", "sr", str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode != 0, f"helm template {' '.join(args)} should fail"
    return result.stderr


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[Obj], kind: str) -> Obj:
    found = of_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def container(objs: list[Obj]) -> Obj:
    containers = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: Obj = containers[0]
    return result


def env_of(objs: list[Obj]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container(objs)["env"]}


def rules_of(objs: list[Obj]) -> list[Obj]:
    return [r for o in objs if o["kind"] in ("Role", "ClusterRole") for r in o["rules"]]


def grants(rules: list[Obj]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) triples granted by the rules."""
    return {(g, res, v) for r in rules for g in r["apiGroups"] for res in r["resources"] for v in r["verbs"]}


DEFAULT = ()
NAMESPACED = ("--set", "rbac.scope=namespaced", "--set", "watchNamespaces={a,b}")
REPLICAS_2 = ("--set", "replicaCount=2")
SERVICE_MONITOR = ("--set", "metrics.serviceMonitor.enabled=true")
ALL_RENDERS = [DEFAULT, NAMESPACED, REPLICAS_2, SERVICE_MONITOR, NAMESPACED + REPLICAS_2]


# --- the CRD ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["saferollout.dev_saferollouts.yaml", "saferollout.dev_analysistemplates.yaml",
                                  "saferollout.dev_clusteranalysistemplates.yaml"])
def test_the_chart_crd_is_the_generated_one(name: str) -> None:
    source = REPO / "crds" / name
    copy = CHART / "crds" / source.name
    assert copy.is_file(), "run: bash scripts/sync-chart-crds.sh"
    assert copy.read_text() == source.read_text(), "the chart's CRD differs from crds/: run bash scripts/sync-chart-crds.sh"


def test_the_sync_script_check_mode_agrees() -> None:
    result = subprocess.run(["bash", str(REPO / "scripts" / "sync-chart-crds.sh"), "--check"], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr


def test_the_chart_ships_the_kopf_peering_crds() -> None:
    docs = [d for f in sorted((CHART / "crds").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    scopes = {d["metadata"]["name"]: d["spec"]["scope"] for d in docs}
    assert scopes["clusterkopfpeerings.kopf.dev"] == "Cluster"
    assert scopes["kopfpeerings.kopf.dev"] == "Namespaced"


# --- lint -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [DEFAULT, NAMESPACED + REPLICAS_2], ids=["default", "namespaced-2-replicas"])
def test_helm_lint(args: tuple[str, ...]) -> None:
    result = run_helm("lint", "--strict", str(CHART), *args)
    assert result.returncode == 0, result.stdout + result.stderr


# --- default values --------------------------------------------------------------------------------------------


def test_default_render_has_the_operator_objects() -> None:
    objs = render()
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "NetworkPolicy", "Service", "ServiceAccount"]
    binding = one(objs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    assert binding["roleRef"]["name"] == one(objs, "ClusterRole")["metadata"]["name"]
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == one(objs, "ServiceAccount")["metadata"]["name"]


@pytest.mark.parametrize("args", ALL_RENDERS)
def test_restricted_security_context(args: tuple[str, ...]) -> None:
    objs = render(*args)
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    c = container(objs)
    sc = c["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in sc
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["tmp"] == "/tmp" and "emptyDir" in volumes["tmp"]
    assert mounts["snapshots"] == env_of(objs)["SAFEROLLOUT_SNAPSHOT_DIR"]


def test_image_and_probes() -> None:
    objs = render("--set", "image.repository=example/saferollout", "--set", "image.pullPolicy=Always")
    c = container(objs)
    assert c["image"] == "example/saferollout:0.1.0"  # the tag defaults to appVersion
    assert c["imagePullPolicy"] == "Always"
    assert container(render("--set", "image.tag=1.2.3"))["image"] == "saferollout/operator:1.2.3"
    assert container(render("--set", "image.digest="))["image"] == "saferollout/operator:0.1.0"  # empty: no digest
    port = c["ports"][0]
    assert port == {"name": "metrics", "containerPort": 8080, "protocol": "TCP"}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["resources"]["requests"] and c["resources"]["limits"]


DIGEST = "sha256:" + "0123456789abcdef" * 4


def test_image_by_digest_ignores_the_tag() -> None:
    objs = render("--set", "image.repository=example/saferollout", "--set", "image.tag=1.2.3", "--set", f"image.digest={DIGEST}")
    assert container(objs)["image"] == f"example/saferollout@{DIGEST}"
    assert container(render("--set", f"image.digest={DIGEST}"))["image"] == f"saferollout/operator@{DIGEST}"


@pytest.mark.parametrize("digest", ["latest", "sha256:abc", DIGEST.upper().replace("SHA256", "sha256"), "sha512:" + "0" * 64,
                                    f"{DIGEST}x", f"example/saferollout@{DIGEST}"])
def test_the_schema_rejects_a_malformed_digest(digest: str) -> None:
    assert "'/image/digest'" in render_error("--set", f"image.digest={digest}")


def test_every_setting_is_an_env_var() -> None:
    assert env_of(render()) == {
        "SAFEROLLOUT_PROMETHEUS_URL": "http://prometheus-operated.monitoring:9090",
        "SAFEROLLOUT_PROMETHEUS_TIMEOUT": "5",
        "SAFEROLLOUT_QUERY_GROUP_TTL": "1",
        "SAFEROLLOUT_RATE_WINDOW": "1m",
        "SAFEROLLOUT_AUTOSCALED_RETURN_HOLD": "30s",
        "SAFEROLLOUT_TICK_SECONDS": "1",
        "SAFEROLLOUT_MAX_SLEEP_SECONDS": "60",
        "SAFEROLLOUT_WORKERS": "16",
        "SAFEROLLOUT_REQUESTS_METRIC": "http_requests_total",
        "SAFEROLLOUT_DURATION_BUCKET_METRIC": "http_request_duration_seconds_bucket",
        "SAFEROLLOUT_SERVICE_LABEL": "service",
        "SAFEROLLOUT_NAMESPACE_LABEL": "namespace",
        "SAFEROLLOUT_CODE_LABEL": "code",
        "SAFEROLLOUT_DEFAULT_STAGES": "5:2m,25:3m,50:3m,100:5m",
        "SAFEROLLOUT_LOG_FORMAT": "text",
        "SAFEROLLOUT_SNAPSHOT_DIR": "/var/lib/saferollout/snapshots",
        "SAFEROLLOUT_METRICS_PORT": "8080",
    }


def test_the_env_vars_are_the_ones_the_operator_reads() -> None:
    """Each env var the chart sets is read by OperatorConfig.from_env (a renamed setting fails here)."""
    source = (REPO / "operator" / "saferollout" / "config.py").read_text()
    read = set(re.findall(r'"(SAFEROLLOUT_[A-Z_]+)"', source))
    assert set(env_of(render())) <= read, set(env_of(render())) - read


def test_the_default_env_parses_into_the_operator_config() -> None:
    from saferollout.config import OperatorConfig

    cfg = OperatorConfig.from_env(env_of(render()))
    assert [(s.weight, s.duration) for s in cfg.settings.default_stages] == [(5, "2m"), (25, "3m"), (50, "3m"), (100, "5m")]
    assert cfg.metrics_port == 8080 and cfg.prometheus_timeout == 5.0 and cfg.log_format == "text"
    assert cfg.query_group_ttl == 1.0


def test_values_map_to_the_env_vars() -> None:
    objs = render("--set", "prometheus.address=http://prom.mon:9090", "--set", "prometheus.timeout=2.5",
                  "--set", "prometheus.groupTtlSeconds=0",
                  "--set", "analysis.rateWindow=2m", "--set", "analysis.tickSeconds=0.5", "--set", "logFormat=json",
                  "--set", "metricLabels.requests=istio_requests_total", "--set", "metricLabels.code=response_code",
                  "--set", "metricLabels.namespace=", "--set", "metrics.port=9090",
                  "--set-json", 'defaultStages=[{"weight":10,"duration":"90s"},{"weight":100,"duration":"10m"}]')
    env = env_of(objs)
    assert env["SAFEROLLOUT_PROMETHEUS_URL"] == "http://prom.mon:9090"
    assert env["SAFEROLLOUT_PROMETHEUS_TIMEOUT"] == "2.5"
    assert env["SAFEROLLOUT_QUERY_GROUP_TTL"] == "0"
    assert env["SAFEROLLOUT_RATE_WINDOW"] == "2m"
    assert env["SAFEROLLOUT_TICK_SECONDS"] == "0.5"
    assert env["SAFEROLLOUT_LOG_FORMAT"] == "json"
    assert env["SAFEROLLOUT_REQUESTS_METRIC"] == "istio_requests_total"
    assert env["SAFEROLLOUT_CODE_LABEL"] == "response_code"
    assert env["SAFEROLLOUT_NAMESPACE_LABEL"] == ""
    assert env["SAFEROLLOUT_DEFAULT_STAGES"] == "10:90s,100:10m"
    assert env["SAFEROLLOUT_METRICS_PORT"] == "9090"
    assert container(objs)["ports"][0]["containerPort"] == 9090
    assert one(objs, "Service")["spec"]["ports"][0]["port"] == 9090


def test_one_replica_is_standalone() -> None:
    objs = render()
    deployment = one(objs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # never two standalone operators at once
    assert "args" not in container(objs)
    assert not of_kind(objs, "PodDisruptionBudget")
    assert not of_kind(objs, "ClusterKopfPeering")


# --- RBAC ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", ALL_RENDERS)
def test_rbac_has_no_wildcards(args: tuple[str, ...]) -> None:
    rules = rules_of(render(*args))
    assert rules
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], rule
            assert not any("*" in item for item in rule[key]), rule
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule


@pytest.mark.parametrize("args", ALL_RENDERS)
def test_rbac_never_grants_escalation_or_secret_listing(args: tuple[str, ...]) -> None:
    granted = grants(rules_of(render(*args)))
    # read by name, and trackConfig's copies created (the garbage collector removes them): never listed or deleted
    assert {(g, r, v) for g, r, v in granted if r == "secrets"} == {("", "secrets", "get"), ("", "secrets", "create")}
    assert not {v for _, _, v in granted} & {"escalate", "bind", "impersonate", "deletecollection"}
    assert {(g, r, v) for g, r, v in granted if r.startswith("pods")} == {("", "pods", "list"), ("", "pods/log", "get")}
    assert not {r for _, r, _ in granted} & {"pods/exec", "roles", "clusterroles", "rolebindings", "clusterrolebindings",
                                             "serviceaccounts/token", "nodes"}


# Every verb the chart grants, per (apiGroup, resource), and who calls it: a verb added to the chart fails
# test_rbac_grants_exactly_these_verbs until it is added here, with its user. docs/install.md shows the same table.
NAMESPACED_VERBS: dict[tuple[str, str], set[str]] = {
    ("saferollout.dev", "saferollouts"): {"list", "watch", "patch"},  # kopf: watch, annotation storage, finalizers
    ("saferollout.dev", "saferollouts/status"): {"patch"},  # kube.write_status
    ("saferollout.dev", "analysistemplates"): {"get"},  # adapters/analysis_templates.py, the rollout's namespace
    ("", "events"): {"create", "list"},  # events.emit; volume verify reads the scratch claim's warnings
    ("apps", "deployments"): {"get", "create", "patch", "delete"},  # target and <target>-canary (workloads, replicas)
    ("apps", "statefulsets"): {"get", "patch"},  # a StatefulSet target: template and partition (statefulsets.py)
    ("apps", "controllerrevisions"): {"get"},  # its stable revision's template, written back by a rollback
    ("", "services"): {"get", "create", "patch"},  # canary Service, blue-green switch
    ("autoscaling", "horizontalpodautoscalers"): {"get", "list", "create", "patch", "delete"},  # adapters/autoscaling.py
    ("", "secrets"): {"get", "create"},  # executor.secret_value: the snapshot DSN; adapters/configs.py
    ("", "configmaps"): {"get", "list", "create", "update", "delete"},  # executor.write_report; adapters/configs.py
    ("", "persistentvolumeclaims"): {"get", "list", "create", "delete"},  # snapshots/volume.py
    ("snapshot.storage.k8s.io", "volumesnapshots"): {"get", "list", "create", "delete"},  # snapshots/volume.py
    ("gateway.networking.k8s.io", "httproutes"): {"get", "patch"},  # routers/gateway.py
    ("networking.istio.io", "virtualservices"): {"get", "patch"},  # routers/istio.py
    ("networking.k8s.io", "ingresses"): {"get", "create", "patch", "delete"},  # routers/nginx.py
    ("batch", "jobs"): {"get", "create", "delete"},  # adapters/migrations.py: spec.migration's Job
    ("", "pods"): {"list"},  # adapters/migrations.py: the Job's pods, by its controller-uid label
    ("", "pods/log"): {"get"},  # adapters/migrations.py: the Job's log, for the incident report
}
CLUSTER_SCOPED_VERBS: dict[tuple[str, str], set[str]] = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},  # kopf's resource observer
    ("storage.k8s.io", "storageclasses"): {"get"},  # VolumeSnapshotProvider.reachable
    ("saferollout.dev", "clusteranalysistemplates"): {"get"},  # adapters/analysis_templates.py
    ("gateway.networking.k8s.io", "gatewayclasses"): {"get"},  # adapters/routers/gateway.py: supportedFeatures
    ("gateway.networking.k8s.io", "gateways"): {"get"},  # ... of the route's Gateways, in any namespace
}
NAMESPACES_VERBS = {("", "namespaces"): {"list", "watch"}}  # kopf's namespace observer, only with --namespace


def peering_verbs(resource: str) -> dict[tuple[str, str], set[str]]:
    return {("kopf.dev", resource): {"list", "watch", "patch"}}  # kopf: watch the peers, patch keep-alives


def verbs_per_resource(rules: list[Obj]) -> dict[tuple[str, str], set[str]]:
    """{(apiGroup, resource): verbs}; each pair in one rule only, so each has one comment saying who uses it."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert (group, resource) not in out, f"{group}/{resource} is in two rules"
                assert len(set(rule["verbs"])) == len(rule["verbs"]), rule
                out[group, resource] = set(rule["verbs"])
    return out


def role_named(objs: list[Obj], kind: str, name: str) -> Obj:
    return next(o for o in of_kind(objs, kind) if o["metadata"]["name"] == name)


CLUSTER_WATCHING = ("--set", "watchNamespaces={a,b}")  # rbac.scope=cluster, but kopf told which namespaces


@pytest.mark.parametrize(("args", "cluster_role", "role"), [
    (DEFAULT, NAMESPACED_VERBS | CLUSTER_SCOPED_VERBS, None),
    (CLUSTER_WATCHING, NAMESPACED_VERBS | CLUSTER_SCOPED_VERBS | NAMESPACES_VERBS, None),
    (REPLICAS_2, NAMESPACED_VERBS | CLUSTER_SCOPED_VERBS | peering_verbs("clusterkopfpeerings"), None),
    (CLUSTER_WATCHING + REPLICAS_2, NAMESPACED_VERBS | CLUSTER_SCOPED_VERBS | NAMESPACES_VERBS | peering_verbs("kopfpeerings"),
     None),
    (NAMESPACED, CLUSTER_SCOPED_VERBS | NAMESPACES_VERBS, NAMESPACED_VERBS),
    (NAMESPACED + REPLICAS_2, CLUSTER_SCOPED_VERBS | NAMESPACES_VERBS, NAMESPACED_VERBS | peering_verbs("kopfpeerings")),
], ids=["cluster", "cluster-watching-namespaces", "cluster-2-replicas", "cluster-watching-2-replicas", "namespaced",
        "namespaced-2-replicas"])
def test_rbac_grants_exactly_these_verbs(args: tuple[str, ...], cluster_role: dict[tuple[str, str], set[str]],
                                         role: dict[tuple[str, str], set[str]] | None) -> None:
    objs = render(*args)
    assert len(of_kind(objs, "ClusterRole")) == 1
    assert verbs_per_resource(one(objs, "ClusterRole")["rules"]) == cluster_role
    if role is None:
        assert not of_kind(objs, "Role")
        return
    roles = of_kind(objs, "Role")
    assert len(roles) == 2
    for r in roles:
        assert verbs_per_resource(r["rules"]) == role, r["metadata"]["namespace"]


# The typed client calls of the operator, as `<verb>_[namespaced_]<resource>`: the RBAC verb and resource they need.
_CLIENT_VERBS = {"read": "get", "list": "list", "create": "create", "patch": "patch", "replace": "update",
                 "delete": "delete"}
_CLIENT_RESOURCES = {"deployment": ("apps", "deployments"), "stateful_set": ("apps", "statefulsets"),
                     "controller_revision": ("apps", "controllerrevisions"), "service": ("", "services"),
                     "secret": ("", "secrets"),
                     "config_map": ("", "configmaps"), "event": ("", "events"),
                     "persistent_volume_claim": ("", "persistentvolumeclaims"),
                     "ingress": ("networking.k8s.io", "ingresses"), "storage_class": ("storage.k8s.io", "storageclasses"),
                     "job": ("batch", "jobs"), "pod": ("", "pods"), "pod_log": ("", "pods/log"),
                     "horizontal_pod_autoscaler": ("autoscaling", "horizontalpodautoscalers")}


def test_every_typed_api_call_of_the_operator_is_granted() -> None:
    """The other direction: a new `kube.core().list_namespaced_...` in the operator, not granted, fails here, not in
    a cluster. Custom objects (group and plural in variables) are covered by the table above. The CLI runs as its
    user, so it is left out."""
    package = REPO / "operator" / "saferollout"
    granted = verbs_per_resource(one(render(), "ClusterRole")["rules"])
    needed: set[tuple[str, str, str]] = set()
    for path in package.rglob("*.py"):
        if path.name == "cli.py":
            continue
        for verb, namespaced, name in re.findall(r"\b(read|list|create|patch|replace|delete)_(namespaced_)?([a-z_]+)\b",
                                                 path.read_text()):
            if name.endswith(("custom_object", "custom_object_status")):
                continue
            if name not in _CLIENT_RESOURCES:
                assert not namespaced, f"{path.name}: {verb}_namespaced_{name}: add it to _CLIENT_RESOURCES and the RBAC"
                continue  # not an API call (read_text, delete_canary, ...)
            group, resource = _CLIENT_RESOURCES[name]
            needed.add((group, resource, _CLIENT_VERBS[verb]))
    assert {("", "configmaps", "update"), ("apps", "deployments", "delete"), ("", "events", "list")} <= needed  # the scan works
    missing = {(g, r, v) for g, r, v in needed if v not in granted.get((g, r), set())}
    assert not missing, f"the operator calls these, the chart does not grant them: {sorted(missing)}"


def test_the_rbac_docs_list_the_granted_verbs() -> None:
    doc = (REPO / "docs" / "install.md").read_text()
    section = doc.split("## RBAC", 1)[1].split("\n## ", 1)[0]
    documented: dict[tuple[str, str], set[str]] = {}
    for group, resources, verbs in re.findall(r"^\| `([^`]*)` \| (`[^|]+`) \| ([a-z, ]+) \|", section, re.MULTILINE):
        for resource in re.findall(r"`([^`]+)`", resources):
            documented[group.strip('"'), resource] = {v.strip() for v in verbs.split(",")}
    expected = (NAMESPACED_VERBS | CLUSTER_SCOPED_VERBS | NAMESPACES_VERBS | peering_verbs("clusterkopfpeerings")
                | peering_verbs("kopfpeerings"))
    assert documented == expected


def test_namespaced_scope_makes_a_role_per_namespace() -> None:
    objs = render(*NAMESPACED)
    roles = of_kind(objs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["a", "b"]
    bindings = of_kind(objs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["a", "b"]
    for b in bindings:
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
        assert b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": FULLNAME}
    # the same namespaced grants as the cluster mode, minus the cluster-scoped CRD read
    cluster_grants = grants(rules_of(render()))
    cluster_scoped = {"customresourcedefinitions", "namespaces", "storageclasses", "clusteranalysistemplates",
                      "gatewayclasses", "gateways"}
    for role in roles:
        assert grants(role["rules"]) == {g for g in cluster_grants if g[1] not in cluster_scoped}
    # cluster-wide: only what kopf needs to start (CRDs, namespace names) and the volume snapshot gate's StorageClass
    cluster_role = one(objs, "ClusterRole")
    assert cluster_role["rules"] == [{"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
                                      "verbs": ["list", "watch"]},
                                     {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
                                     {"apiGroups": ["saferollout.dev"], "resources": ["clusteranalysistemplates"],
                                      "verbs": ["get"]},
                                     {"apiGroups": ["gateway.networking.k8s.io"],
                                      "resources": ["gateways", "gatewayclasses"], "verbs": ["get"]},
                                     {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": ["get"]}]
    assert one(objs, "ClusterRoleBinding")["roleRef"]["name"] == cluster_role["metadata"]["name"]


def test_namespaced_scope_passes_the_namespaces_to_the_operator() -> None:
    assert container(render(*NAMESPACED))["args"] == ["--namespace", "a", "--namespace", "b"]


def test_namespaced_scope_without_namespaces_fails_with_a_hint() -> None:
    assert "rbac.scope=namespaced needs watchNamespaces" in render_error("--set", "rbac.scope=namespaced")


def test_rbac_create_false_renders_no_rbac() -> None:
    objs = render("--set", "rbac.create=false")
    assert not [o for o in objs if o["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")]


# --- replicas and peering -----------------------------------------------------------------------------------------


def test_two_replicas_turn_on_peering_and_a_pdb() -> None:
    objs = render(*REPLICAS_2)
    deployment = one(objs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert container(objs)["args"] == ["--peering", "saferollout"]
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert one(objs, "ClusterKopfPeering")["metadata"]["name"] == "saferollout"
    assert ("kopf.dev", "clusterkopfpeerings", "patch") in grants(rules_of(objs))
    assert "podAntiAffinity" in deployment["spec"]["template"]["spec"]["affinity"]


def test_two_replicas_in_namespaced_mode_peer_in_each_namespace() -> None:
    objs = render(*NAMESPACED, *REPLICAS_2)
    assert container(objs)["args"] == ["--namespace", "a", "--namespace", "b", "--peering", "saferollout"]
    peerings = of_kind(objs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["a", "b"]
    assert not of_kind(objs, "ClusterKopfPeering")
    for role in of_kind(objs, "Role"):
        assert {("kopf.dev", "kopfpeerings", v) for v in ("list", "watch", "patch")} <= grants(role["rules"])
    assert one(objs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1


# --- network policy -----------------------------------------------------------------------------------------------


def test_network_policy_by_default_admits_only_the_metrics_port() -> None:
    objs = render()
    policy = one(objs, "NetworkPolicy")
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["metadata"]["namespace"] == NAMESPACE
    assert policy["spec"]["podSelector"] == {"matchLabels": one(objs, "Deployment")["spec"]["selector"]["matchLabels"]}
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress not restricted
    assert "egress" not in policy["spec"]
    # one rule without `from`: the metrics port from anywhere, every other port closed
    assert policy["spec"]["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}]}]
    assert container(objs)["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]


def test_network_policy_follows_the_metrics_port() -> None:
    policy = one(render("--set", "metrics.port=9090"), "NetworkPolicy")
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": 9090, "protocol": "TCP"}]


def test_network_policy_metrics_from_the_given_peers() -> None:
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
              "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}},
             {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]
    policy = one(render("--set-json", f"networkPolicy.metricsFrom={json.dumps(peers)}"), "NetworkPolicy")
    assert policy["spec"]["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}], "from": peers}]
    assert policy["spec"]["policyTypes"] == ["Ingress"]


def test_network_policy_restricts_egress_when_rules_are_given() -> None:
    rules = [{"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
              "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
             {"to": [{"ipBlock": {"cidr": "172.18.0.2/32"}}], "ports": [{"port": 6443, "protocol": "TCP"}]},
             {"ports": [{"port": 5432, "endPort": 5433, "protocol": "TCP"}, {"port": "http"}]}]
    policy = one(render("--set-json", f"networkPolicy.egress={json.dumps(rules)}"), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["egress"] == rules
    assert policy["spec"]["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}]}]  # ingress unchanged


def test_network_policy_disabled() -> None:
    assert not of_kind(render("--set", "networkPolicy.enabled=false"), "NetworkPolicy")
    # the other values are not read then, even when set
    objs = render("--set", "networkPolicy.enabled=false", "--set-json", 'networkPolicy.egress=[{"ports":[{"port":53}]}]')
    assert not of_kind(objs, "NetworkPolicy")


@pytest.mark.parametrize("args", [
    ("--set", "networkPolicy.ingress=x"),
    ("--set-json", 'networkPolicy.metricsFrom=[{"podSelectr":{}}]'),  # misspelt: would otherwise admit everyone
    ("--set-json", 'networkPolicy.metricsFrom=[{}]'),
    ("--set-json", 'networkPolicy.metricsFrom=[{"podSelector":{"matchExpressions":[{"key":"a","operator":"Is"}]}}]'),
    ("--set-json", 'networkPolicy.metricsFrom=[{"ipBlock":{"except":["10.0.0.0/8"]}}]'),
    ("--set-json", 'networkPolicy.egress=[{"too":[]}]'),
    ("--set-json", 'networkPolicy.egress=[{"ports":[{"port":53,"protocol":"ICMP"}]}]'),
    ("--set-json", 'networkPolicy.egress=[{"ports":[{"port":70000}]}]'),
], ids=["unknown-key", "misspelt-peer-key", "empty-peer", "bad-operator", "ipblock-without-cidr", "misspelt-egress-key",
        "bad-protocol", "bad-port"])
def test_the_schema_rejects_malformed_network_policy_values(args: tuple[str, ...]) -> None:
    assert "'/networkPolicy" in render_error(*args)


# --- metrics ----------------------------------------------------------------------------------------------------------


def test_service_monitor_scrapes_the_metrics_service() -> None:
    assert not of_kind(render(), "ServiceMonitor")
    objs = render(*SERVICE_MONITOR, "--set", "metrics.serviceMonitor.labels.release=kube-prometheus-stack")
    monitor = one(objs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = one(objs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [p["name"] for p in service["spec"]["ports"]] == ["metrics"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert service["spec"]["selector"] == one(objs, "Deployment")["spec"]["selector"]["matchLabels"]


# --- snapshots ---------------------------------------------------------------------------------------------------------


def test_snapshot_emptydir_has_a_size_limit() -> None:
    volumes = {v["name"]: v for v in one(render(), "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["snapshots"] == {"name": "snapshots", "emptyDir": {"sizeLimit": "2Gi"}}
    volumes = {v["name"]: v for v in one(render("--set", "snapshots.sizeLimit=500Mi"), "Deployment")["spec"]["template"]
               ["spec"]["volumes"]}
    assert volumes["snapshots"] == {"name": "snapshots", "emptyDir": {"sizeLimit": "500Mi"}}


@pytest.mark.parametrize("limit", ["lots", "2 Gi", "2GB", ""])
def test_the_schema_rejects_a_malformed_size_limit(limit: str) -> None:
    assert "'/snapshots/sizeLimit'" in render_error("--set", f"snapshots.sizeLimit={limit}")


def test_snapshot_persistence_uses_a_claim() -> None:
    assert not of_kind(render(), "PersistentVolumeClaim")
    objs = render("--set", "snapshots.persistence.enabled=true", "--set", "snapshots.persistence.size=20Gi",
                  "--set", "snapshots.persistence.storageClass=fast", "--set", "snapshots.dir=/data/snapshots")
    claim = one(objs, "PersistentVolumeClaim")
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    volumes = {v["name"]: v for v in one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    # the claim's size is the limit: no emptyDir, so no sizeLimit
    assert volumes["snapshots"] == {"name": "snapshots", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}}
    assert env_of(objs)["SAFEROLLOUT_SNAPSHOT_DIR"] == "/data/snapshots"
    mounts = {m["name"]: m["mountPath"] for m in container(objs)["volumeMounts"]}
    assert mounts["snapshots"] == "/data/snapshots"
    no_class = one(render("--set", "snapshots.persistence.enabled=true", "--set", "snapshots.persistence.storageClass=-"),
                   "PersistentVolumeClaim")
    assert no_class["spec"]["storageClassName"] == ""


# --- Argo CD and Grafana --------------------------------------------------------------------------------------------


def test_argocd_snippet_only_when_enabled() -> None:
    assert not [o for o in render() if o["kind"] == "ConfigMap"]
    objs = render("--set", "argocd.enabled=true", "--set", "argocd.namespace=argocd")
    snippet = one(objs, "ConfigMap")
    assert snippet["metadata"]["namespace"] == "argocd"
    assert snippet["data"] == {
        "resource.customizations.health.saferollout.dev_SafeRollout": (CHART / "argocd" / "health.lua").read_text()}


def test_grafana_dashboard_configmap() -> None:
    objs = render("--set", "grafana.dashboard.enabled=true", "--set", "grafana.dashboard.namespace=monitoring")
    cm = one(objs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert json.loads(cm["data"]["saferollout.json"]) == json.loads((CHART / "dashboards" / "saferollout.json").read_text())


# The metrics the dashboard is about (docs/dashboard.md); the operator may export more.
DASHBOARD_METRICS = {"saferollout_rollouts", "saferollout_analysis_results", "saferollout_rollbacks",
                     "saferollout_time_to_detect_seconds", "saferollout_time_to_revert_seconds",
                     "saferollout_reconcile_errors", "saferollout_reconcile_duration_seconds",
                     "saferollout_analysis_value", "saferollout_analysis_verdict", "saferollout_prevented_incidents",
                     "saferollout_aborts"}


def _exprs(panel: Obj) -> list[str]:
    return [t["expr"] for t in panel.get("targets", [])]


def _operator_series() -> set[str]:
    """The series the operator exports, read from its metric registry, so a renamed metric breaks this test."""
    from prometheus_client import REGISTRY

    import saferollout.observability  # noqa: F401  (registers the metrics)

    series: set[str] = set()
    for family in REGISTRY.collect():
        if family.name.startswith("saferollout_"):
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
            series |= {family.name + s for s in suffixes}
    return series


def test_dashboard_queries_read_only_the_operator_metrics() -> None:
    dashboard = json.loads((CHART / "dashboards" / "saferollout.json").read_text())
    assert dashboard["schemaVersion"] == 39
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    known = _operator_series()
    used: set[str] = set()
    for panel in panels:
        for expr in _exprs(panel):
            names = set(re.findall(r"\bsaferollout_[a-z_]+", expr))
            assert names <= known, f"{panel['title']}: unknown series {names - known}"
            used |= names
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    assert shown >= DASHBOARD_METRICS, f"no panel for {DASHBOARD_METRICS - shown}"


def test_every_dashboard_panel_is_documented() -> None:
    doc = (REPO / "docs" / "dashboard.md").read_text()
    for panel in json.loads((CHART / "dashboards" / "saferollout.json").read_text())["panels"]:
        assert panel["title"] in doc, f"panel {panel['title']!r} is not described in docs/dashboard.md"
        for expr in _exprs(panel):
            assert " ".join(expr.split()) in " ".join(doc.split()), f"query of {panel['title']!r} is not in docs/dashboard.md"


# --- values, schema, docs -------------------------------------------------------------------------------------------


def test_the_schema_rejects_unknown_and_invalid_values() -> None:
    assert "additional properties 'replicas' not allowed" in render_error("--set", "replicas=2")
    assert "additional properties 'adress' not allowed" in render_error("--set", "prometheus.adress=http://x")
    render_error("--set", "rbac.scope=everywhere")
    render_error("--set", "logFormat=xml")
    render_error("--set-json", 'defaultStages=[{"weight":0,"duration":"1m"}]')
    render_error("--set-json", 'defaultStages=[{"weight":5,"duration":"soon"}]')
    render_error("--set", "prometheus.timeout=soon")
    render_error("--set-json", "prometheus.timeout=-1")
    render_error("--set", "watchNamespaces={a,a}")


def test_the_schema_is_strict_in_the_main_objects() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) == set(schema["properties"]), "values.yaml and values.schema.json list different keys"
    for key, value in values.items():
        if isinstance(value, dict) and key not in ("podAnnotations", "podLabels", "nodeSelector", "affinity"):
            assert schema["properties"][key].get("additionalProperties") is False, key


def test_every_top_level_value_is_documented() -> None:
    doc = (REPO / "docs" / "install.md").read_text()
    for key in yaml.safe_load((CHART / "values.yaml").read_text()):
        assert re.search(rf"`{re.escape(key)}[.`\[=]", doc), f"values key {key!r} is not described in docs/install.md"


def test_the_harness_install_renders_a_restricted_pod_on_the_real_node_with_its_store_on_a_bound_claim() -> None:
    """harness.incluster's values (the scenarios' operator): the chart must render what the harness relies on."""
    from harness.incluster import FULLNAME, STORE_MOUNT, ClusterOperator
    op = ClusterOperator(REPO, lambda *a, **k: subprocess.CompletedProcess(a, 0, "", ""), helm_bin(), Path("kc"),
                         "10.240.0.1", "localhost/saferollout/operator:0.1.0", 9090, 5432, Path("/tmp/store"), "10s")
    objs = render(*op.values())
    pvc = one(objs, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == f"{FULLNAME}-snapshots" and pvc["spec"]["storageClassName"] == ""
    assert "helm.sh/resource-policy" not in (pvc["metadata"].get("annotations") or {})
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"saferollout.dev/node": "real"}
    (c,) = pod["containers"]
    assert c["image"] == "localhost/saferollout/operator:0.1.0" and c["imagePullPolicy"] == "Never"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["SAFEROLLOUT_RATE_WINDOW"] == "10s" and env["SAFEROLLOUT_SNAPSHOT_DIR"] == STORE_MOUNT
    assert env["SAFEROLLOUT_PROMETHEUS_URL"].startswith("http://10.240.0.1:")
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
