"""spec.migration and spec.database.forwardOnly: the core's decisions in the simulated world, under both clocks."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from saferollout.adapters import kube, migrations
from saferollout.adapters.kube import RolloutRef
from saferollout.core import actions as a
from saferollout.core.migration import JOB_NAME_MAX, job_name
from saferollout.core.models import MIGRATION_LOG_MAX, Migration, SafeRolloutSpec
from tests.unit.test_engine import clock as clock  # every test under both clocks
from tests.unit.world import World, make_spec

JOB = {"spec": {"template": {"spec": {"containers": [
    {"name": "migrate", "image": "demo/migrate:2.0", "command": ["psql", "-c", "ALTER TABLE orders ADD x int"]}]}}}}
DB: dict[str, Any] = {"postgres": {"secretRef": {"name": "web-db", "key": "dsn"}}, "snapshotBeforeRollout": True,
                      "verifySnapshot": True, "restoreOnRollback": True}
FORWARD_ONLY: dict[str, Any] = {"postgres": {"secretRef": {"name": "web-db", "key": "dsn"}},
                                "snapshotBeforeRollout": True, "forwardOnly": True}



def spec(database: dict[str, Any] | None = None, timeout: str | None = None) -> SafeRolloutSpec:
    mig: dict[str, Any] = {"jobTemplate": JOB, **({"timeout": timeout} if timeout else {})}
    return make_spec(database=database or DB, migration=mig)


def canary_fails(name: str, target: str, weight: int, t: float) -> float | None:
    return (0.5 if target == "canary" else 0.001) if name == "error-rate" else 0.1


def acts(w: World) -> list[str]:
    return [line.split(maxsplit=1)[1] for line in w.log if "Event(" not in line and "Notify(" not in line]


def test_a_migration_runs_once_after_the_verified_snapshot_and_before_any_traffic() -> None:
    w = World(spec(), job_db_state="v2").run(200, until=World.done)
    assert w.phase() == "Succeeded" and w.jobs_created == 1
    order = acts(w)
    verified = next(i for i, x in enumerate(order) if x.startswith("VerifySnapshot"))
    created = next(i for i, x in enumerate(order) if x.startswith("RunMigration"))
    first_weight = next(i for i, x in enumerate(order) if x.startswith("SetWeight(weight=5"))
    canary = next(i for i, x in enumerate(order) if x.startswith("EnsureCanary"))
    assert verified < created < canary < first_weight
    ms = w.status.migration
    assert ms is not None and ms.job == "web-migrate-1" and ms.state == "Succeeded"
    assert ms.duration_seconds is not None and 3 <= ms.duration_seconds <= 5
    assert "MigrationStarted" in w.reasons() and "MigrationSucceeded" in w.reasons()
    assert w.weights_seen == [5, 25, 50, 100] and w.restores == 0


def test_a_failing_migration_restores_the_snapshot_and_rolls_back_with_its_log_in_the_report() -> None:
    w = World(spec(), job_outcome="Failed", job_db_state="half-migrated",
              job_logs="ALTER TABLE\nERROR:  column \"currency\" of relation \"orders\" already exists").run(
        120, until=World.done)
    assert w.phase() == "RolledBack"
    assert w.weights_seen == [] and w.canary is None  # no traffic ever moved, no canary was made
    assert w.restores == 1 and w.db_state == "v1"  # the snapshot's state, not what the Job left
    assert [h.action for h in w.status.history] == ["rollback"]
    inc = w.status.incident
    assert inc is not None and inc.reason == "MigrationFailed" and inc.report_ref == "web-incident-1"
    ms = w.status.migration
    assert ms is not None and ms.state == "Failed" and "BackoffLimitExceeded" in (ms.message or "")
    report = w.reports["web-incident-1"]
    for text in ("## Migration", "`web-migrate-1`", "Failed", "already exists", "Duration:"):
        assert text in report, text
    assert any(n.severity == "critical" for n in w.notes)
    assert w.reasons().index("MigrationFailed") < w.reasons().index("DatabaseRestored")
    assert "SetWeight(weight=5" not in "".join(w.log)


def test_a_migration_past_its_timeout_is_stopped_and_rolls_back() -> None:
    w = World(spec(timeout="30s"), job_outcome="hang", job_db_state="v2").run(200, until=World.done)
    assert w.phase() == "RolledBack" and w.jobs_stopped == ["web-migrate-1"]
    ms = w.status.migration
    assert ms is not None and ms.state == "TimedOut" and "30s" in (ms.message or "")
    assert ms.duration_seconds is not None and 30 <= ms.duration_seconds <= 32
    assert w.restores == 1 and w.db_state == "v1" and w.weights_seen == []


@pytest.mark.parametrize("crash", [a.RunMigration, a.CheckMigration])
def test_a_restarted_operator_never_creates_a_second_job(crash: type) -> None:
    w = World(spec(), crash_after=crash)
    w.run(200, until=World.done)
    assert w.phase() == "Succeeded" and w.jobs_created == 1
    assert sum(1 for line in w.log if "RunMigration(" in line) >= 1


def test_a_second_attempt_gets_a_job_of_its_own() -> None:
    w = World(spec(), job_outcome="Failed").run(120, until=World.done)
    assert w.phase() == "RolledBack"
    w.job_outcome, w.command = "Succeeded", "retry/1"
    w.run(200, until=lambda x: x.done() and x.status.attempt == 2)
    assert w.phase() == "Succeeded" and sorted(w.jobs) == ["web-migrate-1", "web-migrate-2"]


def test_an_abort_while_the_migration_runs_stops_it_before_the_restore() -> None:
    w = World(spec(), job_outcome="hang", job_db_state="v2").run(20)
    assert w.status.migration is not None and w.status.migration.state == "Running"
    w.command = "abort/1"
    w.run(120, until=World.done)
    assert w.phase() == "RolledBack" and w.jobs_stopped == ["web-migrate-1"] and w.db_state == "v1"
    order = acts(w)
    stop = next(i for i, x in enumerate(order) if x.startswith("CheckMigration(job='web-migrate-1', stop=True)"))
    restore = next(i for i, x in enumerate(order) if x.startswith("RestoreDatabase"))
    assert stop < restore


# ------------------------------------------------------------------------------------------------- forwardOnly


def test_forward_only_breach_pauses_and_pages_and_never_restores() -> None:
    w = World(make_spec(database=FORWARD_ONLY), metrics=canary_fails).run(60, until=lambda x: x.phase() == "Paused")
    assert w.phase() == "Paused" and w.status.pause_reason == "breach"
    assert w.weight == 5  # held: a person decides
    assert [h.action for h in w.status.history] == ["pause"]
    assert "ForwardOnlyPaused" in w.reasons()
    assert any(n.severity == "critical" and "forwardOnly" in n.title for n in w.notes)
    w.run(60)
    assert w.phase() == "Paused" and w.restores == 0  # it waits; nothing rolls back by itself
    w.command = "abort/1"
    w.run(120, until=World.done)
    assert w.phase() == "RolledBack" and w.restores == 0 and w.target_images == {"web": "demo/web:1.0"}
    assert "forwardOnly" in w.reports["web-incident-1"]


def test_forward_only_failing_migration_rolls_back_the_workload_but_never_the_database() -> None:
    w = World(spec(FORWARD_ONLY), job_outcome="Failed", job_db_state="half-migrated").run(120, until=World.done)
    assert w.phase() == "RolledBack" and w.restores == 0 and w.db_state == "half-migrated"
    ms = w.status.migration
    assert ms is not None and ms.state == "Failed"
    assert any(n.severity == "critical" for n in w.notes)
    assert "forwardOnly" in w.reports["web-incident-1"]


def test_forward_only_inconclusive_rollback_pauses_instead() -> None:
    s = make_spec(database=FORWARD_ONLY, **{"analysis.onInconclusive": "rollback"})
    w = World(s, metrics=lambda n, t, wt, tt: None if t == "canary" else 0.001).run(
        60, until=lambda x: x.phase() == "Paused")
    assert w.phase() == "Paused" and w.restores == 0 and [h.action for h in w.status.history] == ["pause"]


# ------------------------------------------------------------------------------------------------ the model


@pytest.mark.parametrize(("database", "migration", "says"), [
    (None, {"jobTemplate": JOB}, "migration needs spec.database"),
    ({"postgres": {"secretRef": {"name": "d", "key": "k"}}, "snapshotBeforeRollout": True}, {"jobTemplate": JOB},
     "restoreOnRollback: true"),
    ({**DB, "forwardOnly": True}, None, "restoreOnRollback must be false"),
    (DB, {"jobTemplate": JOB, "timeout": "5s"}, "between 10s and 24h"),
    (DB, {"jobTemplate": JOB, "timeout": "25h"}, "between 10s and 24h"),
    (DB, {"jobTemplate": {"spec": {"template": {"spec": {"containers": []}}}}}, "at least one container"),
    (DB, {"jobTemplate": {"spec": {}}}, "at least one container"),
])
def test_bad_migrations_are_refused_with_a_clear_message(database: Any, migration: Any, says: str) -> None:
    with pytest.raises(ValidationError, match=says.replace("(", r"\(")):
        make_spec(database=database, migration=migration)


def test_the_crd_carries_the_cross_field_rules() -> None:
    from saferollout.crdgen import DEFAULT_PATH

    text = DEFAULT_PATH.read_text()
    for rule in ("!has(self.migration) || has(self.database)", "self.database.forwardOnly",
                 "!self.forwardOnly || !self.restoreOnRollback", "duration('10s')"):
        assert rule in text, rule


def test_the_default_timeout_is_ten_minutes() -> None:
    assert Migration.model_validate({"jobTemplate": JOB}).timeout_seconds == 600


def test_job_names_fit_a_label_and_differ_per_rollout_and_attempt() -> None:
    assert job_name("web", 3) == "web-migrate-3"
    long_a, long_b = "a" * 60 + "x", "a" * 60 + "y"
    names = {job_name(long_a, 1), job_name(long_b, 1), job_name(long_a, 2)}
    assert len(names) == 3 and all(len(n) <= JOB_NAME_MAX and not n.startswith("-") for n in names)


def test_the_job_gets_the_operators_name_owner_and_safe_defaults() -> None:
    ref = RolloutRef("shop", "web", "uid-1")
    mig = Migration.model_validate({"jobTemplate": {**JOB, "metadata": {"name": "ignored", "labels": {"team": "a"}}},
                                    "timeout": "90s"})
    body = migrations.job_body(ref, mig, "web-migrate-2", 2)
    assert body["metadata"]["name"] == "web-migrate-2" and body["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert body["metadata"]["labels"] == {"team": "a", "saferollout.dev/rollout": "web",
                                          "saferollout.dev/kind": "migration"}
    assert body["metadata"]["annotations"]["saferollout.dev/attempt"] == "2"
    assert body["spec"]["backoffLimit"] == 0 and body["spec"]["activeDeadlineSeconds"] == 90
    pod = body["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["containers"][0]["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert mig.job_template.spec["template"]["spec"]["containers"][0].get("terminationMessagePolicy") is None


def test_logs_are_bounded_to_their_tail_without_control_characters() -> None:
    text = "\n".join(f"line {i} \x1b[31mred\x1b[0m" for i in range(2000)) + "\nERROR: the last line"
    out = migrations.bound(text)
    assert len(out) <= MIGRATION_LOG_MAX and out.endswith("ERROR: the last line") and "\x1b" not in out
    assert out.startswith("[... ") and migrations.bound("short\r\n") == "short"


def test_the_secrets_the_job_names_are_found_for_masking() -> None:
    pod = {"containers": [{"name": "m", "image": "x", "env": [
        {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "web-db", "key": "dsn"}}},
        {"name": "PLAIN", "value": "v"}]}], "initContainers": [{"name": "i", "image": "x", "env": [
            {"name": "T", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "t"}}}]}]}
    mig = Migration.model_validate({"jobTemplate": {"spec": {"template": {"spec": pod}}}})
    assert migrations.secret_refs(mig) == [("tok", "t"), ("web-db", "dsn")]


# ------------------------------------------------------------------------------- review: stopping the Job safely


def order_of(w: World, prefix: str) -> int:
    return next(i for i, x in enumerate(acts(w)) if x.startswith(prefix))


def test_a_new_release_while_the_job_runs_stops_it_before_the_next_snapshot_and_job() -> None:
    w = World(spec(), job_outcome="hang", job_stop_polls=3).run(20)
    assert w.status.migration is not None and w.status.migration.state == "Running"
    w.spec = make_spec(database=DB, migration={"jobTemplate": JOB},
                       template={"containers": [{"name": "web", "image": "demo/web:3.0"}]})
    w.run(60, until=lambda x: "web-migrate-2" in x.jobs)
    assert w.status.attempt == 2 and "web-migrate-2" in w.jobs
    assert w.jobs_stopped == ["web-migrate-1"] and w.overlaps == []  # no snapshot, no Job beside a running one
    stop = order_of(w, "CheckMigration(job='web-migrate-1', stop=True)")
    assert stop < order_of(w, "TakeSnapshot(snapshot_id='snap-2") < order_of(w, "RunMigration(job='web-migrate-2'")
    assert "MigrationStopped" in w.reasons()


def test_migration_removed_while_the_job_runs_stops_it_and_moves_no_traffic() -> None:
    w = World(spec(), job_outcome="hang", job_db_state="half-migrated").run(20)
    assert w.status.migration is not None and w.status.migration.state == "Running"
    w.spec = make_spec(database=DB)
    w.run(200, until=World.done)
    assert w.jobs_stopped == ["web-migrate-1"] and w.overlaps == [] and w.weights_seen == []
    assert w.phase() == "RolledBack" and w.restores == 1 and w.db_state == "v1"
    ms = w.status.migration
    assert ms is not None and "spec.migration was removed" in (ms.message or "")


def test_the_restore_waits_until_the_jobs_pods_are_gone() -> None:
    w = World(spec(), job_outcome="hang", job_stop_polls=4).run(20)
    w.command = "abort/1"
    w.run(120, until=World.done)
    assert w.phase() == "RolledBack" and w.restores == 1 and w.overlaps == []
    assert sum("CheckMigration(job='web-migrate-1', stop=True)" in x for x in acts(w)) >= 4
    ms = w.status.migration
    assert ms is not None and ms.logs == "ALTER TABLE\nUPDATE 5000"  # read while its pods ended, kept


def test_a_stop_that_keeps_failing_ends_the_rollback_without_restoring() -> None:
    w = World(spec(), job_outcome="hang", job_db_state="half-migrated").run(20)
    w.job_check_fails, w.command = 10 ** 6, "abort/1"
    w.run(400, until=World.done)
    assert w.phase() == "Failed" and w.restores == 0 and w.db_state == "half-migrated"
    ms = w.status.migration
    assert ms is not None and ms.state == "NotStopped" and "pods is forbidden" in (ms.message or "")
    assert "MigrationNotStopped" in w.reasons()
    assert any(n.severity == "critical" and "not stopped" in n.title for n in w.notes)
    assert any(c.type == "Degraded" and c.reason == "MigrationNotStopped" for c in w.status.conditions)
    assert "NOT restored" in (w.status.failure or "")


def test_a_timed_out_job_that_cannot_be_stopped_is_never_restored_over() -> None:
    w = World(spec(timeout="10s"), job_outcome="hang", job_check_fails=0).run(5)
    w.job_check_fails = 10 ** 6
    w.run(400, until=World.done)
    assert w.phase() == "Failed" and w.restores == 0 and w.weights_seen == []
    assert w.status.migration is not None and w.status.migration.state == "NotStopped"


def test_on_progress_deadline_fail_stops_the_job_before_it_ends() -> None:
    s = make_spec(database=DB, migration={"jobTemplate": JOB}, progressDeadlineSeconds=10, onProgressDeadline="fail")
    w = World(s, job_outcome="hang").run(8)
    assert w.status.migration is not None and w.status.migration.state == "Running"
    w.job_check_fails = 10 ** 6
    w.run(200, until=lambda x: x.phase() == "RollingBack")
    assert w.phase() == "RollingBack"
    w.job_check_fails = 0
    w.run(200, until=World.done)
    assert w.phase() == "Failed" and w.jobs_stopped == ["web-migrate-1"] and w.jobs_alive() == []


# ------------------------------------------------------------------------------------- forwardOnly, every path


def test_forward_only_never_restores_on_the_progress_deadline() -> None:
    s = make_spec(database=FORWARD_ONLY, progressDeadlineSeconds=10)
    w = World(s, canary_available_at=float("inf")).run(200, until=World.done)
    assert w.phase() == "RolledBack" and w.restores == 0 and "DatabaseNotRestored" in w.reasons()


def test_forward_only_never_restores_after_a_refused_action() -> None:
    w = World(make_spec(database=FORWARD_ONLY)).run(15, until=lambda x: x.weight == 5)
    execute = w._execute

    def refuse(act: a.Action) -> a.Result | None:
        if isinstance(act, a.SetWeight) and act.weight > 5:
            return a.Outcome(act, False, "HTTPRoute is invalid", refused=True)
        return execute(act)
    w._execute = refuse  # type: ignore[method-assign]
    w.run(200, until=World.done)
    assert w.status.incident is not None and w.status.incident.reason == "ActionRefused"
    assert w.phase() == "RolledBack" and w.restores == 0


def test_forward_only_never_restores_after_an_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from saferollout.core.phases import canary

    w = World(make_spec(database=FORWARD_ONLY)).run(15, until=lambda x: x.weight == 5)
    step = canary.step

    def broken(run: Any) -> None:
        monkeypatch.setattr(canary, "step", step)
        raise ZeroDivisionError("boom")
    monkeypatch.setattr(canary, "step", broken)
    w.run(200, until=World.done)
    assert w.status.incident is not None and w.status.incident.reason == "InternalError"
    assert w.phase() in ("RolledBack", "Failed") and w.restores == 0


# ----------------------------------------------------------------------------- the adapter: stop, logs, masking


class FakeCluster:
    """batch/v1 Jobs and core/v1 pods as migrations.read and create see them; `trail` records the calls."""

    def __init__(self, job: dict[str, Any] | None, pods: int = 1, list_fails: bool = False) -> None:
        self.job, self.pods, self.list_fails = job, pods, list_fails
        self.trail: list[str] = []

    # the BatchV1Api and CoreV1Api methods used
    def read_namespaced_job(self, name: str, ns: str) -> Any:
        return self.job

    def delete_namespaced_job(self, name: str, ns: str, propagation_policy: str) -> None:
        self.trail.append(f"delete {propagation_policy}")
        assert self.job is not None
        self.job["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:10Z"

    def create_namespaced_job(self, ns: str, body: dict[str, Any]) -> Any:
        self.trail.append("create")
        return type("Made", (), {"metadata": type("M", (), {"creation_timestamp": None})()})()

    def list_namespaced_pod(self, ns: str, label_selector: str) -> Any:
        self.trail.append(f"list {label_selector}")
        if self.list_fails:
            raise RuntimeError('pods is forbidden: User cannot list resource "pods"')
        pod = type("P", (), {"status": type("S", (), {"phase": "Running"})()})()
        return type("L", (), {"items": [pod] * self.pods})()


def job_obj(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "web-migrate-1", "uid": "job-uid", "creationTimestamp": "2026-01-01T00:00:00Z",
                         "ownerReferences": [{"uid": "uid-1"}]},
            "spec": {"template": {"spec": {"containers": [{"name": "m", "image": "x", "env": {"A": "b"}}]}}},
            "status": status}


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    fake = FakeCluster(job_obj(active=1))
    monkeypatch.setattr(migrations, "batch", lambda: fake)
    monkeypatch.setattr(kube, "core", lambda: fake)
    monkeypatch.setattr(kube, "read_or_none", lambda read, *args: read(*args))
    return fake


REF = RolloutRef("shop", "web", "uid-1")


def test_a_stop_deletes_first_in_the_foreground_even_when_pods_and_logs_cannot_be_read(cluster: FakeCluster) -> None:
    cluster.list_fails = True

    def mask(refs: Any) -> None:
        raise RuntimeError("secrets is forbidden")
    got = migrations.read(REF, "web-migrate-1", True, mask)
    assert cluster.trail[0] == "delete Foreground"
    assert got.state == "Running" and "stopping" in got.message and got.logs is None  # no log: never unmasked
    got = migrations.read(REF, "web-migrate-1", True, mask)  # still there: its pods are ending
    assert got.state == "Running" and cluster.trail.count("delete Foreground") == 1
    cluster.job, cluster.list_fails = None, False  # foreground deletion: the Job is gone after its pods
    cluster.pods = 1
    assert migrations.read(REF, "web-migrate-1", True, mask).state == "Running"  # a pod of it still listed
    cluster.pods = 0
    assert migrations.read(REF, "web-migrate-1", True, mask).state == "Stopped"


def test_an_ended_job_whose_pod_still_runs_is_not_ended_yet(cluster: FakeCluster) -> None:
    cluster.job = job_obj(conditions=[{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}],
                          terminating=1)
    got = migrations.read(REF, "web-migrate-1", False, lambda refs: None)
    assert got.state == "Running"
    cluster.job = job_obj(conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}])
    cluster.pods = 0
    assert migrations.read(REF, "web-migrate-1", False, lambda refs: None).state == "Failed"


@pytest.mark.parametrize("env", [{"A": "b"}, ["A=b"], [{"name": "A", "valueFrom": "x"}], "x", None])
def test_secret_refs_never_raise_on_odd_templates(env: Any) -> None:
    pod = {"containers": [{"name": "m", "image": "x", "env": env, "envFrom": env}, "junk"], "volumes": env}
    assert migrations.secret_refs(pod) == []


def test_every_secret_the_pod_can_see_is_masked() -> None:
    pod = {"containers": [{"name": "m", "image": "x",
                           "env": [{"name": "D", "valueFrom": {"secretKeyRef": {"name": "web-db", "key": "dsn"}}}],
                           "envFrom": [{"secretRef": {"name": "all-env"}}, {"configMapRef": {"name": "cm"}}]}],
           "volumes": [{"name": "s", "secret": {"secretName": "vol-secret"}},
                       {"name": "p", "projected": {"sources": [{"secret": {"name": "proj-secret"}},
                                                               {"configMap": {"name": "cm"}}]}}]}
    assert migrations.secret_refs(pod) == [("web-db", "dsn"), ("all-env", None), ("vol-secret", None),
                                           ("proj-secret", None)]


def test_the_job_is_masked_from_its_own_template_before_its_log_is_read(cluster: FakeCluster,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cluster.job = job_obj(conditions=[{"type": "Complete", "status": "True"}])
    cluster.job["spec"]["template"]["spec"]["containers"][0]["envFrom"] = [{"secretRef": {"name": "tok"}}]
    cluster.pods = 0
    seen: list[Any] = []
    migrations.read(REF, "web-migrate-1", False, seen.append)
    assert seen == [[("tok", None)]]


def test_the_job_pods_grace_period_is_capped() -> None:
    for given, want in ((None, 30), (600, 30), (5, 5)):
        pod = {"containers": [{"name": "m", "image": "x"}],
               **({"terminationGracePeriodSeconds": given} if given is not None else {})}
        mig = Migration.model_validate({"jobTemplate": {"spec": {"template": {"spec": pod}}}})
        body = migrations.job_body(REF, mig, "web-migrate-1", 1)
        assert body["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == want


# --------------------------------------------------------------------------------- who may run a migration


@pytest.mark.parametrize(("pod", "says"), [
    ({"hostNetwork": True}, "spec.hostNetwork"),
    ({"hostPID": True}, "spec.hostPID"),
    ({"hostIPC": True}, "spec.hostIPC"),
    ({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}, r"spec.volumes\[0\] \(root\): hostPath"),
    ({"containers": [{"name": "m", "image": "x", "securityContext": {"privileged": True}}]},
     r"containers\[0\].securityContext.privileged"),
    ({"initContainers": [{"name": "i", "image": "x", "securityContext": {"allowPrivilegeEscalation": True}}]},
     r"initContainers\[0\].securityContext.allowPrivilegeEscalation"),
    ({"containers": []}, "at least one container"),
])
def test_a_job_template_beyond_the_migrations_rights_is_refused(pod: dict[str, Any], says: str) -> None:
    tpl = {"containers": [{"name": "m", "image": "x"}], **pod}
    with pytest.raises(ValidationError, match=says):
        make_spec(database=DB, migration={"jobTemplate": {"spec": {"template": {"spec": tpl}}}})


def test_the_adapter_refuses_a_foreign_service_account_and_checks_again_before_create(
        cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    from saferollout.core.models import TargetRef

    monkeypatch.setattr(migrations, "target_service_account", lambda ns, target: "web")
    target = TargetRef(name="web")
    for sa, ok in ((None, True), ("web", True), ("admin", False)):
        pod = {"containers": [{"name": "m", "image": "x"}], **({"serviceAccountName": sa} if sa else {})}
        mig = Migration.model_validate({"jobTemplate": {"spec": {"template": {"spec": pod}}}})
        if ok:
            assert migrations.create(REF, mig, "web-migrate-1", 1, target).state == "Created"
        else:
            with pytest.raises(kube.Refused, match="serviceAccountName: 'admin' is not the target's"):
                migrations.create(REF, mig, "web-migrate-1", 1, target)
    mig = Migration.model_validate({"jobTemplate": copy.deepcopy(JOB)})
    mig.job_template.spec["template"]["spec"]["hostNetwork"] = True  # edited past the model's validation
    with pytest.raises(kube.Refused, match="hostNetwork"):
        migrations.create(REF, mig, "web-migrate-1", 1, target)
    assert cluster.trail.count("create") == 2
