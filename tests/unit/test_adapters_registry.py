"""The adapters' registries and interfaces: every router the manifest can name has an adapter with a whole
lifecycle, every kind of metric a provider, every action type a handler in the executor, and the executor calls a
router's lifecycle where the action says. Fakes stand in only for single adapters (one router, one Prometheus, one
of the workloads module's calls); nothing here talks to a cluster."""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from kubernetes.client.rest import ApiException
from pydantic import ValidationError

from saferollout import executor as ex
from saferollout.adapters import autoscaling, events, kube, metrics, statefulsets, workloads
from saferollout.adapters.kube import RolloutRef
from saferollout.adapters.prometheus import PrometheusProvider, Reading
from saferollout.adapters.routers import BLUE_GREEN, ROUTERS, nginx, replicas, router_for, router_name
from saferollout.adapters.workloads import CanaryPlan
from saferollout.config import OperatorConfig
from saferollout.core import actions as a
from saferollout.core import models
from saferollout.core.models import Metric, SafeRolloutSpec, SafeRolloutStatus, Traffic
from saferollout.redact import register
from tests.unit.world import make_spec

REF = RolloutRef("demo", "web", "uid-1")

# one valid setting per traffic router, by its name in the manifest
TRAFFIC: dict[str, dict[str, Any]] = {
    "gatewayAPI": {"httpRoute": "web", "stableService": "web", "canaryService": "web-canary"},
    "istio": {"virtualService": "web"},
    "nginx": {"ingress": "web"},
    "replicas": {},
    "partition": {},
}
BLUE_GREEN_SPEC = {"blueGreen": {"activeService": "web", "previewService": "web-preview"}}


def spec_for(router: str) -> SafeRolloutSpec:
    if router == BLUE_GREEN:
        return make_spec(strategy=BLUE_GREEN_SPEC)
    if router == "partition":  # a StatefulSet's router, and only a StatefulSet's
        return make_spec(**{"strategy.canary.traffic": {router: TRAFFIC[router]}, "targetRef.kind": "StatefulSet"})
    return make_spec(**{"strategy.canary.traffic": {router: TRAFFIC[router]}})


# ------------------------------------------------------------------------------------------------------ routers


def test_every_traffic_field_has_a_router_and_the_names_are_the_fields() -> None:
    assert tuple(f.alias or name for name, f in Traffic.model_fields.items()) == models.ROUTERS
    assert set(ROUTERS) == {*models.ROUTERS, BLUE_GREEN}
    assert set(TRAFFIC) == set(models.ROUTERS)  # this test knows every router too


@pytest.mark.parametrize("name", [*models.ROUTERS, BLUE_GREEN])
def test_router_for_picks_the_router_the_spec_names(name: str) -> None:
    spec = spec_for(name)
    assert router_name(spec) == name
    assert type(router_for(spec)) is ROUTERS[name]


def test_the_crd_rule_and_the_validator_follow_the_fields() -> None:
    (rule,) = typing.cast(list[dict[str, str]], Traffic.model_json_schema()["x-kubernetes-validations"])
    assert re.fullmatch(r"\[(has\(self\.\w+\), )*has\(self\.\w+\)\]\.filter\(x, x\)\.size\(\) == 1", rule["rule"])
    assert re.findall(r"has\(self\.(\w+)\)", rule["rule"]) == list(models.ROUTERS)
    names = ", ".join(models.ROUTERS[:-1]) + " or " + models.ROUTERS[-1]
    assert rule["message"] == f"exactly one traffic router must be set: {names}"
    for bad in ({}, {"nginx": TRAFFIC["nginx"], "replicas": {}}):
        with pytest.raises(ValidationError, match=re.escape(rule["message"])):
            Traffic.model_validate(bad)
    for name, settings in TRAFFIC.items():
        traffic = Traffic.model_validate({name: settings})
        assert traffic.router() == name and traffic.chosen() == (name, getattr(traffic, name_of(name)))
    assert Traffic.model_validate({"nginx": TRAFFIC["nginx"]}).services("web") == ("web", "web-canary")
    assert Traffic.model_validate({"gatewayAPI": {**TRAFFIC["gatewayAPI"], "stableService": "s"}}).services("web") \
        == ("s", "web-canary")


def name_of(alias: str) -> str:
    return next(n for n, f in Traffic.model_fields.items() if (f.alias or n) == alias)


@pytest.fixture
def no_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any Kubernetes call fails the test."""
    def refuse() -> None:
        raise AssertionError("no API call expected")

    for fn in ("api", "core", "apps", "custom"):
        monkeypatch.setattr(kube, fn, refuse)


@pytest.mark.parametrize("name", ["gatewayAPI", "istio", "nginx", BLUE_GREEN])
def test_routers_without_a_prepare_step_make_the_canary_as_it_is(name: str, no_api: None) -> None:
    spec = spec_for(name)
    assert router_for(spec).prepare(REF, spec, 5) == CanaryPlan(replicas=None, behind_stable=False)


@pytest.mark.parametrize("name", ["gatewayAPI", "istio", "replicas", BLUE_GREEN])
def test_routers_that_create_nothing_clean_up_nothing(name: str, no_api: None) -> None:
    spec = spec_for(name)
    router_for(spec).clean_up(REF, spec)  # no API call


def deployment(name: str, replicas: int, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "annotations": annotations or {}}, "spec": {"replicas": replicas}}


def test_the_replica_router_starts_the_canary_at_the_first_weights_share(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = spec_for("replicas")
    deployments: dict[str, dict[str, Any]] = {"web": deployment("web", 10)}
    monkeypatch.setattr(replicas, "_deployment", lambda ns, name: deployments.get(name))
    hpas: list[dict[str, Any]] = []
    monkeypatch.setattr(autoscaling, "target_hpa", lambda ns, name: hpas[0] if hpas else None)
    router = router_for(spec)
    assert router.prepare(REF, spec, 5) == CanaryPlan(replicas=1, behind_stable=True)
    assert router.prepare(REF, spec, 50) == CanaryPlan(replicas=5, behind_stable=True)
    # after a restart the recorded total counts, not the (already shrunk) target
    deployments.update(web=deployment("web", 7), **{"web-canary": deployment("web-canary", 3, {replicas.TOTAL: "10"})})
    assert router.prepare(REF, spec, 50) == CanaryPlan(replicas=5, behind_stable=True)
    deployments.pop("web")
    with pytest.raises(LookupError, match="Deployment 'web' not found"):
        router.prepare(REF, spec, 5)
    hpas.append({"metadata": {"name": "web-hpa"}})  # an autoscaled target: this router would fight its HPA
    with pytest.raises(kube.Refused, match="HorizontalPodAutoscaler web-hpa scales the target web"):
        router.prepare(REF, spec, 5)


def test_the_canary_hpa_is_the_targets_aimed_at_the_canary() -> None:
    target: dict[str, Any] = {"metadata": {"name": "web-hpa"}, "spec": {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "minReplicas": 2,
        "maxReplicas": 10, "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": 70}}}]}}
    body = autoscaling.canary_hpa(target, "web-canary", REF)
    assert body["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web-canary"}
    assert {k: v for k, v in body["spec"].items() if k != "scaleTargetRef"} == \
        {k: v for k, v in target["spec"].items() if k != "scaleTargetRef"}
    assert body["metadata"]["ownerReferences"] == [REF.owner()] and body["metadata"]["name"] == "web-canary"
    assert target["spec"]["scaleTargetRef"]["name"] == "web"  # the target's own HPA is not touched


class FakeNetworking:
    def __init__(self, fail: int | None = None) -> None:
        self.deleted: list[tuple[str, str, Any]] = []
        self.fail = fail

    def delete_namespaced_ingress(self, name: str, namespace: str, body: Any) -> None:
        self.deleted.append((name, namespace, body))
        if self.fail is not None:
            raise ApiException(status=self.fail)


def canary_ingress(rollout: str) -> dict[str, Any]:
    return {"metadata": {"name": "web-canary", "uid": "ing-1", "labels": {nginx.ROLLOUT: rollout}}}


def test_the_nginx_router_cleans_up_its_canary_ingress_and_only_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = spec_for("nginx")
    router = router_for(spec)
    ingresses: dict[str, dict[str, Any]] = {"web-canary": canary_ingress("web")}
    monkeypatch.setattr(nginx, "_read", lambda ns, name: ingresses.get(name))
    net = FakeNetworking()
    monkeypatch.setattr(nginx, "_networking", lambda: net)
    router.clean_up(REF, spec)
    ((name, namespace, body),) = net.deleted
    assert (name, namespace, body.preconditions.uid) == ("web-canary", "demo", "ing-1")  # only that very object

    net.deleted.clear()
    ingresses["web-canary"] = canary_ingress("someone-else")
    router.clean_up(REF, spec)
    ingresses.clear()
    router.clean_up(REF, spec)
    assert net.deleted == []  # not ours, and gone: nothing deleted

    ingresses["web-canary"] = canary_ingress("web")
    for status in (404, 409):  # gone meanwhile, or replaced by one that is not ours
        monkeypatch.setattr(nginx, "_networking", lambda status=status: FakeNetworking(status))
        router.clean_up(REF, spec)
    monkeypatch.setattr(nginx, "_networking", lambda: FakeNetworking(500))
    with pytest.raises(ApiException):
        router.clean_up(REF, spec)


# ------------------------------------------------------------------------------------------------------ metrics


def metric_kinds() -> tuple[str, ...]:
    kind = typing.cast(property, Metric.__dict__["kind"])
    assert kind.fget is not None
    return typing.get_args(typing.get_type_hints(kind.fget)["return"])


METRICS: dict[str, Metric] = {kind: Metric.model_validate(m) for kind, m in {
    "value": {"name": "error-rate", "template": "error-rate", "max": 0.01},
    "http": {"name": "health", "httpGet": {"url": "http://{{ service }}.{{namespace}}/healthz", "timeout": "1s"}},
    "baseline": {"name": "latency", "query": "q", "baseline": {"maxRatio": 1.5}},
    "judge": {"name": "judged", "query": "q", "judge": {"window": "1m", "step": "10s"}},
}.items()}
PROVIDER_CLASSES = {"value": metrics.PrometheusValue, "http": metrics.HttpProbe, "baseline": metrics.BaselinePair,
                    "judge": metrics.JudgeSamples}


class FakePrometheus:
    """One Prometheus: a value and samples per Service; records what it was asked."""

    def __init__(self) -> None:
        self.readings = {"web-canary": Reading(0.5, requests=200.0), "web": Reading(0.2, "stale")}
        self.series = {"web-canary": [1.0, 2.0], "web": [3.0]}
        self.asked: list[tuple[str, str, Any]] = []

    def read(self, metric: Metric, context: dict[str, str]) -> Reading:
        self.asked.append((metric.name, context["service"], None))
        if metric.name == "boom":
            raise RuntimeError(f"connection to {context['secret']} refused")
        return self.readings[context["service"]]

    def samples(self, metric: Metric, context: dict[str, str], window: float, step: float,
                since: datetime | None = None) -> tuple[list[float], str | None]:
        self.asked.append((metric.name, context["service"], (window, step, since)))
        return self.series[context["service"]], None


def fake_prometheus() -> tuple[PrometheusProvider, FakePrometheus]:
    fake = FakePrometheus()
    return typing.cast(PrometheusProvider, fake), fake


CTX = {"service": "web-canary", "canaryService": "web-canary", "stableService": "web", "namespace": "demo"}


def test_every_metric_kind_has_a_provider() -> None:
    assert set(metrics.PROVIDERS) == set(metric_kinds()) == set(METRICS)
    prom, _ = fake_prometheus()
    for kind, metric in METRICS.items():
        assert metric.kind == kind
        assert type(metrics.provider_for(metric, prom)) is PROVIDER_CLASSES[kind]


def test_the_value_baseline_and_judge_providers_read_what_their_kind_needs() -> None:
    prom, fake = fake_prometheus()
    got = metrics.provider_for(METRICS["value"], prom).measure(METRICS["value"], CTX, None)
    assert got == metrics.Measurement(0.5, None, 200.0)
    got = metrics.provider_for(METRICS["baseline"], prom).measure(METRICS["baseline"], CTX, None)
    assert got == metrics.Measurement(None, "stale", pair=(0.5, 0.2))  # both sides, no arithmetic
    got = metrics.provider_for(METRICS["judge"], prom).measure(METRICS["judge"], CTX, "2026-01-02T03:04:05.000000Z")
    assert got.value is None and got.series == ([1.0, 2.0], [3.0])
    since = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert fake.asked == [("error-rate", "web-canary", None), ("latency", "web-canary", None), ("latency", "web", None),
                          ("judged", "web-canary", (60.0, 10.0, since)), ("judged", "web", (60.0, 10.0, since))]


class FakeResponse:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


def test_the_http_probe_is_healthy_only_on_a_2xx_in_time() -> None:
    metric, urls = METRICS["http"], []

    def get(status: int | Exception) -> Any:
        def fake(url: str, timeout: float) -> FakeResponse:
            urls.append((url, timeout))
            if isinstance(status, Exception):
                raise status
            return FakeResponse(status)
        return fake

    assert metrics.HttpProbe(get(204)).measure(metric, CTX, None) == metrics.Measurement(1.0)
    assert metrics.HttpProbe(get(503)).measure(metric, CTX, None) == \
        metrics.Measurement(0.0, "http://web-canary.demo/healthz: HTTP 503")
    assert metrics.HttpProbe(get(requests.ConnectTimeout())).measure(metric, CTX, None) == \
        metrics.Measurement(0.0, "http://web-canary.demo/healthz: ConnectTimeout")
    assert urls == [("http://web-canary.demo/healthz", 1.0)] * 3


# ----------------------------------------------------------------------------------------------------- executor


def executor(spec: SafeRolloutSpec | None = None) -> ex.Executor:
    return ex.Executor(REF, spec or make_spec(), OperatorConfig.from_env({}), SafeRolloutStatus)


# one action of every type
SAMPLES: list[a.Action] = [
    a.ReadTarget(), a.CheckDatabase(5.0), a.QueryMetrics("canary", "analysis", ("error-rate",)), a.TakeSnapshot("s1"),
    a.VerifySnapshot("s1"), a.RestoreDatabase("s1", 1), a.CheckRestored("s1"), a.PruneSnapshots(3, "s1"),
    a.RunMigration("web-migrate-1", 1, 600.0), a.CheckMigration("web-migrate-1"),
    a.EnsureCanary({"web": "demo/web:2.0"}, 5), a.DeleteCanary(), a.SetWeight(25), a.SetTargetImages({"web": "x"}),
    a.LabelTarget(), a.HoldTarget("h1", "h2"), a.ReleaseTarget("h2"),
    a.WriteReport("web-incident", "# report"), a.Event("Reason", "message"), a.Notify("high", "title", "text"),
]


def handler_name(action_type: type) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", action_type.__name__).lower()  # SetWeight: set_weight


def test_the_executor_has_one_handler_for_every_action_type() -> None:
    types = typing.get_args(a.Action)
    assert sorted(type(x).__name__ for x in SAMPLES) == sorted(t.__name__ for t in types)  # this test knows them all
    called: list[tuple[str, a.Action]] = []

    class Recording(ex.Executor):
        pass

    def recorder(name: str) -> Callable[[ex.Executor, a.Action], None]:
        return lambda self, act: called.append((name, act))

    for t in types:
        handler = getattr(ex.Executor, handler_name(t))
        assert typing.get_type_hints(handler)["act"] is t  # the handler takes exactly that type
        setattr(Recording, handler_name(t), recorder(handler_name(t)))
    run = Recording(REF, make_spec(), OperatorConfig.from_env({}), SafeRolloutStatus)
    for x in SAMPLES:
        run.run(x)
    assert called == [(handler_name(type(x)), x) for x in SAMPLES]  # each reached its own handler, and only that


class FakeRouter:
    """One router: records its lifecycle calls in the shared log."""

    log: list[tuple[Any, ...]] = []

    def prepare(self, ref: RolloutRef, spec: SafeRolloutSpec, first_weight: int) -> CanaryPlan:
        self.log.append(("prepare", ref, spec, first_weight))
        return CanaryPlan(replicas=2, behind_stable=True)

    def set_weight(self, ref: RolloutRef, spec: SafeRolloutSpec, weight: int) -> None:
        self.log.append(("set_weight", ref, spec, weight))

    def clean_up(self, ref: RolloutRef, spec: SafeRolloutSpec) -> None:
        self.log.append(("clean_up", ref, spec))


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Every router is the fake one, and the canary Deployment's calls are recorded in the same log."""
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(FakeRouter, "log", calls)
    for name in ROUTERS:
        monkeypatch.setitem(ROUTERS, name, FakeRouter)
    monkeypatch.setattr(workloads, "delete_canary", lambda ref, spec: calls.append(("delete_canary", ref, spec)))

    def ensure_canary(ref: RolloutRef, spec: SafeRolloutSpec, images: dict[str, str], plan: CanaryPlan) -> bool:
        calls.append(("ensure_canary", ref, spec, images, plan))
        return True

    monkeypatch.setattr(workloads, "ensure_canary", ensure_canary)
    return calls


@pytest.mark.parametrize("name", [*(r for r in models.ROUTERS if r != "partition"), BLUE_GREEN])
def test_the_canary_lifecycle_goes_through_the_specs_router(name: str, log: list[tuple[Any, ...]]) -> None:
    spec = spec_for(name)
    run = executor(spec)
    assert run(a.EnsureCanary({"web": "demo/web:2.0"}, 5)) == a.CanaryState(True)
    assert run(a.SetWeight(5)) == a.Outcome(a.SetWeight(5), True)
    assert run(a.DeleteCanary()) == a.Outcome(a.DeleteCanary(), True)
    assert log == [("prepare", REF, spec, 5),
                   ("ensure_canary", REF, spec, {"web": "demo/web:2.0"}, CanaryPlan(replicas=2, behind_stable=True)),
                   ("set_weight", REF, spec, 5),
                   ("delete_canary", REF, spec), ("clean_up", REF, spec)]  # the canary first, then the router's objects


def test_a_statefulset_canary_is_its_own_template_and_no_deployment(log: list[tuple[Any, ...]],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The partition router: EnsureCanary writes the StatefulSet's template (statefulsets.ensure_canary), never a
    canary Deployment, and DeleteCanary deletes no Deployment."""
    def ensure(ref: RolloutRef, spec: SafeRolloutSpec, images: dict[str, str]) -> tuple[bool, str | None]:
        log.append(("statefulset", ref, spec, images))
        return True, "web-2"

    monkeypatch.setattr(statefulsets, "ensure_canary", ensure)
    spec = spec_for("partition")
    run = executor(spec)
    assert run(a.EnsureCanary({"web": "demo/web:2.0"}, 5)) == a.CanaryState(True, "web-2")
    assert run(a.SetWeight(5)) == a.Outcome(a.SetWeight(5), True)
    assert run(a.DeleteCanary()) == a.Outcome(a.DeleteCanary(), True)
    assert log == [("prepare", REF, spec, 5), ("statefulset", REF, spec, {"web": "demo/web:2.0"}),
                   ("set_weight", REF, spec, 5), ("clean_up", REF, spec)]


def test_delete_canary_cleans_up_with_the_real_router_of_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    """No fake router: the nginx spec's DeleteCanary reaches NginxRouter.clean_up, the gateway spec's a no-op."""
    monkeypatch.setattr(workloads, "delete_canary", lambda ref, spec: None)
    cleaned: list[str] = []
    monkeypatch.setattr(nginx.NginxRouter, "clean_up", lambda self, ref, spec: cleaned.append(ref.name))
    assert executor(spec_for("gatewayAPI"))(a.DeleteCanary()) == a.Outcome(a.DeleteCanary(), True)
    assert cleaned == []
    assert executor(spec_for("nginx"))(a.DeleteCanary()) == a.Outcome(a.DeleteCanary(), True)
    assert cleaned == ["web"]


def test_every_failure_becomes_a_result(monkeypatch: pytest.MonkeyPatch) -> None:
    register("hunter2-secret")

    def fail(e: Exception) -> Any:
        def raise_(*_: Any) -> None:
            raise e
        return raise_

    run = executor()
    act = a.SetTargetImages({"web": "x"})
    monkeypatch.setattr(workloads, "set_target_images", fail(kube.Refused("Deployment web is not ours")))
    assert run(act) == a.Outcome(act, False, "Refused: Deployment web is not ours", refused=True)
    monkeypatch.setattr(workloads, "set_target_images", fail(RuntimeError("password hunter2-secret rejected")))
    out = run(act)
    assert isinstance(out, a.Outcome) and not out.ok and not out.refused and "hunter2-secret" not in out.message
    monkeypatch.setattr(workloads, "set_target_images", fail(ApiException(status=422, reason="Unprocessable")))
    out = run(act)
    assert isinstance(out, a.Outcome) and out.refused
    # no spec.database: the snapshot and restore actions answer with their own results
    assert run(a.TakeSnapshot("s1")) == a.SnapshotResult("s1", False, "ValueError: spec.database is not set")
    assert run(a.CheckRestored("s1")) == a.RestoreResult("s1", False, "ValueError: spec.database is not set")
    monkeypatch.setattr(events, "emit", fail(RuntimeError("events down")))
    assert run(a.Event("Reason", "message")) is None
    assert set(run.timings) == {"SetTargetImages", "TakeSnapshot", "CheckRestored", "Event"}


def test_one_metrics_failure_is_that_metrics_inconclusive_result(monkeypatch: pytest.MonkeyPatch) -> None:
    register("db.internal:5432-secret")
    prom, _ = fake_prometheus()
    monkeypatch.setattr(ex, "prometheus", lambda cfg, spec: prom)
    spec = make_spec(**{"analysis.metrics": [
        {"name": "error-rate", "template": "error-rate", "max": 0.01},
        {"name": "boom", "query": "up", "max": 1},
        {"name": "latency", "query": "q", "baseline": {"maxRatio": 1.5}},
        {"name": "judged", "query": "q", "judge": {"window": "1m", "step": "10s"}},
    ]})
    run = executor(spec)
    monkeypatch.setattr(run, "context", lambda target: {**CTX, "secret": "db.internal:5432-secret"})
    out = run(a.QueryMetrics("canary", "analysis", ("error-rate", "boom", "latency", "judged")))
    assert isinstance(out, a.MetricValues)
    assert out.values == {"error-rate": 0.5, "boom": None, "latency": None, "judged": None}
    assert out.errors == {"boom": "RuntimeError: connection to *** refused", "latency": "stale"}
    assert out.samples == {"error-rate": 200.0}
    assert out.pairs == {"latency": (0.5, 0.2)}
    assert out.series == {"judged": ([1.0, 2.0], [3.0])}
    assert out.asked_at is not None
    # rollback.verify: the error rate alone, under its own name
    out = run(a.QueryMetrics("stable", "verify", (), max_error_rate=0.05))
    assert isinstance(out, a.MetricValues) and out.values == {metrics.VERIFY_ERROR_RATE: 0.5}


def test_every_database_provider_field_has_a_snapshot_provider() -> None:
    from saferollout.adapters.snapshots import PROVIDERS
    from saferollout.core.models import Database

    names = {f.alias or n for n, f in Database.model_fields.items() if n in ("postgres", "volume_snapshot")}
    assert names == set(PROVIDERS) == {"postgres", "volumeSnapshot"}
    db = Database.model_validate({"volumeSnapshot": {"pvc": "data"}})
    assert db.provider()[0] == "volumeSnapshot" and db.provider()[1] is db.volume_snapshot
