"""Scenario runs side by side: renaming a run's namespace, who must run alone, merged scrape targets, the pool's
order. No cluster: the pool runs a stand-in session."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from harness.format import Scenario, load, parse
from harness.isolation import NAME_MAX, claims, database_names, exclusive_reason, isolated, tagged_name
from harness.pool import Job, ScenarioPool, next_job, plan
from harness.scenario import Result, Session
from harness.services import Prometheus, ScrapeTarget, merge_targets, scrape_configs

REPO = Path(__file__).resolve().parents[2]
ALL_SCENARIOS = sorted((REPO.parent / "shared" / "scenarios").glob("*.yaml")) + sorted((REPO / "scenarios").glob("*.yaml"))

QUERY = 'sum(rate(http_requests_total{namespace="demo",service="web"}[10s])) or sum(x{namespace = "demo"})'


def rollout(namespace: str | None = "demo") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "web"}
    if namespace is not None:
        meta["namespace"] = namespace
    return {
        "apiVersion": "saferollout.dev/v1alpha1", "kind": "SafeRollout", "metadata": meta,
        "spec": {
            "targetRef": {"kind": "Deployment", "name": "web"},
            "template": {"containers": [{"name": "web", "image": "demo/web:2.0"}]},
            "strategy": {"canary": {"stages": [{"weight": 5, "duration": "10s"}],
                                    "traffic": {"gatewayAPI": {"httpRoute": "web", "stableService": "web",
                                                               "canaryService": "web-canary"}}}},
            "analysis": {"metrics": [{"name": "errors", "query": QUERY, "max": 1,
                                      "templateRef": {"kind": "AnalysisTemplate", "name": "t", "namespace": "demo"}}]},
        },
    }


def scenario(name: str = "t", namespace: str | None = "demo", **extra: Any) -> Scenario:
    data: dict[str, Any] = {"name": name, "rollout": rollout(namespace), "expect": {"phase": "Succeeded"}}
    data.update(extra)
    return parse(data, Path(f"{name}.yaml"))


# --------------------------------------------------------------------------------------------------- names


def test_tagged_name_fits_a_dns_label_and_stays_unique() -> None:
    assert tagged_name("demo", "s3") == "demo-s3"
    long = "a" * 70
    one, two = tagged_name(long, "s1"), tagged_name(long, "s12")
    assert len(one) <= NAME_MAX and len(two) <= NAME_MAX and one != two and two.endswith("-s12")
    assert tagged_name("x" * 59 + "-abc", "s1").endswith("x-s1")  # no "--" left where it was cut
    assert database_names("s7") == ("app_s7", "app_s7")


# ---------------------------------------------------------------------------------------------- isolated


def test_isolated_renames_the_namespace_wherever_the_scenario_names_it() -> None:
    s = scenario(
        objects=[{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"namespace": "demo"}},
                 {"apiVersion": "saferollout.dev/v1alpha1", "kind": "ClusterAnalysisTemplate",
                  "metadata": {"name": "p"}, "spec": {"query": QUERY}}],
        faults=[{"at": {"afterSeconds": 1}, "do": "patch",
                 "patch": {"spec": {"analysis": {"metrics": [{"name": "e", "query": QUERY}]}}}},
                {"at": {"afterSeconds": 2}, "do": "applyObject",
                 "object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d"},
                            "data": {"namespace": "demo"}}}],
        expect={"phase": "RolledBack", "targetImages": {"web": "demo/web:1.0"},
                "incidentReportContains": ["rollout demo/web rolled back", "demo"]})
    out = isolated(s, "s4")
    assert out.namespace == "demo-s4"
    text = json.dumps([out.rollout, out.objects, [f.patch for f in out.faults], [f.obj for f in out.faults]])
    assert '"namespace": "demo"' not in text and 'namespace=\\"demo\\"' not in text
    assert text.count("demo-s4") == 10  # metadata, templateRef, 2 queries x (rollout, template, patch), 2 ConfigMaps
    assert 'namespace = \\"demo-s4\\"' in text  # the matcher keeps its spacing
    assert out.spec["template"]["containers"][0]["image"] == "demo/web:2.0"  # an image is not a namespace
    assert out.expect["targetImages"] == {"web": "demo/web:1.0"}
    assert out.expect["incidentReportContains"] == ["rollout demo-s4/web rolled back", "demo"]
    assert s.namespace == "demo" and s.rollout is not None and s.rollout["metadata"]["namespace"] == "demo"
    assert [f.index for f in out.faults] == [0, 1] and out.faults[1].do == "applyObject"


def test_isolated_names_the_default_namespace_and_leaves_cases_alone() -> None:
    assert isolated(scenario(name="quiet", namespace=None), "s2").namespace == "harness-quiet-s2"
    cases = parse({"name": "bad", "cases": [{"patch": {"spec": {"x": 1}}}], "expect": {"refusedAtApply": True}},
                  Path("bad.yaml"))
    assert isolated(cases, "s2") is cases


@pytest.mark.parametrize("path", ALL_SCENARIOS, ids=[p.stem for p in ALL_SCENARIOS])
def test_every_scenario_file_isolates(path: Path) -> None:
    """Each file the suite runs renames cleanly: nothing in it names the old namespace as a namespace any more."""
    s = load(path)
    out = isolated(s, "s9")
    if s.rollout is None:
        return
    assert out.namespace == tagged_name(s.namespace, "s9") != s.namespace
    dumped = yaml.safe_dump([out.rollout, list(out.objects), [f.patch for f in out.faults], [f.obj for f in out.faults]])
    assert f"namespace: {s.namespace}\n" not in dumped
    assert f'namespace="{s.namespace}"' not in dumped


# ------------------------------------------------------------------------------------------------ exclusive


@pytest.mark.parametrize(("do", "alone"), [("stopPrometheus", True), ("startPrometheus", True),
                                           ("stopDatabase", True), ("startDatabase", True),
                                           ("killOperator", True), ("restartOperator", True),
                                           ("corruptSnapshot", False)])
def test_faults_on_shared_servers_make_a_scenario_exclusive(do: str, alone: bool) -> None:
    extra: dict[str, Any] = {"database": {}} if "Database" in do or do == "corruptSnapshot" else {}
    s = scenario(faults=[{"at": {"afterSeconds": 1}, "do": do}], **extra)
    reason = exclusive_reason(s)
    assert (reason is not None) == alone
    if reason:
        assert do in reason and "every run" in reason
    assert exclusive_reason(scenario()) is None


def test_the_shared_outage_scenarios_are_exclusive() -> None:
    by_name = {load(p).name: load(p) for p in ALL_SCENARIOS}
    if "prometheus-outage" not in by_name:  # a missing shared directory fails, as in test_harness_format
        pytest.fail("no shared scenarios beside the repo (../shared/scenarios): prometheus-outage not found")
    assert exclusive_reason(by_name["prometheus-outage"])
    assert exclusive_reason(by_name["healthy-promotes"]) is None


def test_claims_name_the_objects_a_run_makes() -> None:
    s = scenario(objects=[{"apiVersion": "v1", "kind": "ClusterAnalysisTemplate", "metadata": {"name": "p"}}],
                 faults=[{"at": {"afterSeconds": 1}, "do": "applyObject",
                          "object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}}])
    assert claims(s) == {"ClusterAnalysisTemplate/p", "ConfigMap/c"}
    assert claims(scenario()) == frozenset()


# ---------------------------------------------------------------------------------------------- targets


def target(job: str, port: int = 1) -> ScrapeTarget:
    return ScrapeTarget(job, port, "web", "demo")


def test_merge_targets_keeps_every_group_and_refuses_a_job_twice() -> None:
    merged = merge_targets({"s1": [target("a"), target("b")], "s2": [target("c")]})
    assert [t.job for t in merged] == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"'a'.*'s1'.*'s2'"):
        merge_targets({"s1": [target("a")], "s2": [target("a")]})
    [cfg] = scrape_configs([ScrapeTarget("j", 8080, "web", "demo-s1")])
    assert cfg == {"job_name": "j", "honor_labels": True, "static_configs": [
        {"targets": ["127.0.0.1:8080"], "labels": {"service": "web", "namespace": "demo-s1"}}]}


def test_set_targets_by_key_replaces_only_that_key(tmp_path: Path) -> None:
    prom = Prometheus(tmp_path, binary="/nonexistent", port=1)  # never started: only its config file

    def jobs() -> list[str]:
        return [c["job_name"] for c in yaml.safe_load(prom.config.read_text())["scrape_configs"] or []]

    prom.set_targets([target("a")], key="s1")
    prom.set_targets([target("b"), target("c")], key="s2")
    prom.set_targets([target("a2")], key="s1")
    assert jobs() == ["b", "c", "a2"]
    with pytest.raises(ValueError):
        prom.set_targets([target("b")], key="s3")
    assert jobs() == ["b", "c", "a2"]  # a refused set changes nothing
    prom.set_targets([], key="s2")
    assert jobs() == ["a2"]
    prom.set_targets([target("x")])  # no key: every target replaced, as before
    assert jobs() == ["x"]
    prom.set_targets([])
    assert jobs() == []


# ------------------------------------------------------------------------------------------------ the pool


def job(name: str, tag: str | None = "s", exclusive: str | None = None, claim: frozenset[str] = frozenset()) -> Job:
    return Job(Path(f"{name}.yaml"), None if exclusive else f"{tag}-{name}", exclusive, claim)


def test_next_job_runs_exclusive_ones_alone_and_respects_claims() -> None:
    a, b, c = job("a"), job("b", claim=frozenset({"X/p"})), job("c", claim=frozenset({"X/p"}))
    ex = job("ex", exclusive="stops Prometheus")
    assert next_job([a, b], [], 2) is a
    assert next_job([b], [a, job("z")], 2) is None  # every worker busy
    assert next_job([c, a], [b], 3) is a  # c waits on b's object, a goes ahead
    assert next_job([ex, a], [b], 3) is None  # the exclusive one waits for b, and holds a back
    assert next_job([ex, a], [], 3) is ex
    assert next_job([a], [ex], 3) is None


def write(tmp_path: Path, name: str, faults: list[dict[str, Any]] | None = None) -> Path:
    data: dict[str, Any] = {"name": name, "rollout": rollout(), "expect": {"phase": "Succeeded"}}
    if faults:
        data["faults"] = faults
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_plan_puts_exclusive_runs_first_untagged(tmp_path: Path) -> None:
    files = [write(tmp_path, "one"), write(tmp_path, "outage", [{"at": {"afterSeconds": 1}, "do": "stopPrometheus"}]),
             write(tmp_path, "two"), tmp_path / "missing.yaml"]
    jobs = plan(files, 3)
    assert [(j.path.stem, j.tag) for j in jobs] == [("outage", None), ("one", "s1"), ("two", "s3"), ("missing", "s4")]
    assert [j.path.stem for j in plan(files, 1)] == ["one", "outage", "two", "missing"]
    assert all(j.tag is None for j in plan(files, 1))


class FakeSession:
    """Records which runs overlapped."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: set[str] = set()
        self.overlaps: list[set[str]] = []
        self.started: list[tuple[str, str | None]] = []

    def run(self, path: Path, *, isolate: str | None = None) -> Result:
        with self.lock:
            self.running.add(path.stem)
            self.overlaps.append(set(self.running))
            self.started.append((path.stem, isolate))
        time.sleep(0.05)
        with self.lock:
            self.running.discard(path.stem)
        if path.stem == "boom":
            raise RuntimeError("harness bug")
        return Result(path.stem, str(path), True)


def test_pool_runs_side_by_side_and_the_exclusive_one_alone(tmp_path: Path) -> None:
    names = ["a", "b", "c", "d", "e", "boom"]
    files = [write(tmp_path, n) for n in names]
    files.insert(2, write(tmp_path, "outage", [{"at": {"afterSeconds": 1}, "do": "stopPrometheus"}]))
    fake = FakeSession()
    with ScenarioPool(cast(Session, fake), files, 3) as pool:
        results = {f.stem: pool.result(f, timeout=10) for f in files}
    assert all(results[n].passed for n in names if n != "boom")
    assert not results["boom"].passed and "harness bug" in results["boom"].errors[0]
    assert fake.started[0] == ("outage", None)
    assert all(o == {"outage"} for o in fake.overlaps if "outage" in o)
    assert max(len(o) for o in fake.overlaps) > 1
    assert all(len(o) <= 3 for o in fake.overlaps)
    assert {tag for _, tag in fake.started[1:]} == {f"s{i}" for i in (1, 2, 4, 5, 6, 7)}


def test_pool_closed_early_starts_nothing_more(tmp_path: Path) -> None:
    files = [write(tmp_path, n) for n in "abcdef"]
    fake = FakeSession()
    pool = ScenarioPool(cast(Session, fake), files, 2)
    pool.close()  # before any thread started
    with pytest.raises(RuntimeError, match="closed before it ran"):
        pool.result(files[0], timeout=1)
    assert fake.started == []
    with pytest.raises(ValueError):
        ScenarioPool(cast(Session, fake), files, 0)
