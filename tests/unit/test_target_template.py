"""spec.template omitted: the target Deployment's pod template is the version (GitOps releases, issue 15).

The simulated world holds the target Deployment as the API server would, with the admission webhook
(`core.templates.admit`) mutating every UPDATE of a labelled Deployment in the same write, and the Deployment
controller rolling out a template only while the Deployment is not paused. `World.commit` is a sync of a commit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from saferollout.core import actions as a
from saferollout.core.models import SafeRolloutSpec
from saferollout.core.templates import (
    HELD_ANNOTATION,
    STABLE_ANNOTATION,
    TARGET_LABEL,
    admit,
    merge,
    template_hash_of,
)
from tests.unit.world import BASE, World, pod_template, target_deployment

V1 = pod_template("demo/web:1.0")
# a new version that changes more than the image: args and resources too
V2 = pod_template("demo/web:2.0", args=["--workers", "4"], resources={"limits": {"memory": "256Mi"}})
V3 = pod_template("demo/web:3.0", args=["--workers", "8"])
H1, H2, H3 = (template_hash_of(t) for t in (V1, V2, V3))


def gitops_spec(**changes: Any) -> SafeRolloutSpec:
    data = yaml.safe_load(BASE)
    del data["template"]
    data.update(changes)
    return SafeRolloutSpec.model_validate(data)


def gitops_world(webhook: bool = True, labelled: bool = False, **kw: Any) -> World:
    w = World(gitops_spec(), deployment=target_deployment(V1, labelled=labelled), webhook=webhook, **kw)
    return w.run(5, until=lambda x: x.phase() == "Succeeded")


def failing_version(bad: str, stable_too: bool = True) -> Any:
    """The canary's error rate is high while it runs the template with hash `bad`, as is the stable one's if its
    pods ever run it (`stable_too`)."""
    def fn(name: str, target: str, weight: int, t: float) -> float | None:
        w = fn.world  # type: ignore[attr-defined]
        runs = w.canary_hash if target == "canary" else w.running if stable_too else None
        return 0.5 if name == "error-rate" and runs == bad else 0.001
    return fn


def with_world(w: World, fn: Any) -> World:
    fn.world = w
    w.metrics = fn
    return w


def reasons_since(w: World, n: int) -> list[str]:
    return [e.reason for e in w.events[n:]]


# ------------------------------------------------------------------------------------------------ the webhook


def dep(template: dict[str, Any], annotations: dict[str, str] | None = None, paused: bool = False) -> dict[str, Any]:
    d = target_deployment(template, labelled=True)
    d["metadata"]["annotations"] = dict(annotations or {})
    if paused:
        d["spec"]["paused"] = True
    return d


def test_the_webhook_pauses_a_new_template_in_the_same_write() -> None:
    old, new = dep(V1), dep(V2)
    patch = admit(old, new)
    assert patch == {"metadata": {"annotations": {STABLE_ANNOTATION: H1, HELD_ANNOTATION: H2}}, "spec": {"paused": True}}


def test_the_webhook_keeps_a_held_template_paused_whoever_unpauses_it() -> None:
    held = dep(V2, {STABLE_ANNOTATION: H1, HELD_ANNOTATION: H2}, paused=True)
    resumed = merge(held, {"spec": {"paused": False}})  # kubectl rollout resume, or `paused: false` in Git
    assert admit(held, resumed) == {"spec": {"paused": True}}
    scaled = merge(held, {"spec": {"replicas": 5}})
    assert admit(held, scaled) == {}


def test_a_revert_unpauses_what_the_webhook_held_in_its_own_write() -> None:
    held = dep(V2, {STABLE_ANNOTATION: H1, HELD_ANNOTATION: H2}, paused=True)
    reverted = merge(held, {"spec": {"template": V1}})
    assert admit(held, reverted) == {"metadata": {"annotations": {HELD_ANNOTATION: None}}, "spec": {"paused": False}}


def test_the_webhook_leaves_a_deployment_paused_by_someone_else_alone() -> None:
    old = dep(V1, {STABLE_ANNOTATION: H1})
    assert admit(old, merge(old, {"spec": {"paused": True}})) == {}


def test_a_promotion_write_passes_the_webhook_unchanged() -> None:
    held = dep(V2, {STABLE_ANNOTATION: H1, HELD_ANNOTATION: H2}, paused=True)
    promoted = merge(held, {"metadata": {"annotations": {STABLE_ANNOTATION: H2, HELD_ANNOTATION: None}},
                            "spec": {"paused": False}})
    assert admit(held, promoted) == {}


def test_a_put_that_drops_the_annotations_gets_them_back() -> None:
    held = dep(V2, {STABLE_ANNOTATION: H1, HELD_ANNOTATION: H2}, paused=True)
    replaced = dep(V2)  # kubectl replace: no annotations, not paused
    assert admit(held, replaced) == {"metadata": {"annotations": {STABLE_ANNOTATION: H1, HELD_ANNOTATION: H2}},
                                     "spec": {"paused": True}}


def test_the_hash_covers_every_field_of_the_pod_template() -> None:
    base = pod_template("demo/web:1.0")
    for change in ({"args": ["-v"]}, {"command": ["/bin/app"]}, {"resources": {"requests": {"cpu": "1"}}},
                   {"env": [{"name": "A", "value": "1"}]}, {"envFrom": [{"configMapRef": {"name": "cfg"}}]},
                   {"readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}}}):
        assert template_hash_of(pod_template("demo/web:1.0", **change)) != template_hash_of(base), change
    volumes = merge(base, {"spec": {"volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}]}})
    assert template_hash_of(volumes) != template_hash_of(base)
    reordered = {"spec": base["spec"], "metadata": base["metadata"]}
    assert template_hash_of(reordered) == template_hash_of(base)


# ---------------------------------------------------------------------------------------------------- the spec


def test_template_may_be_omitted_with_a_canary_router_that_leaves_the_target_alone() -> None:
    assert gitops_spec().target_template
    assert not World(SafeRolloutSpec.model_validate(yaml.safe_load(BASE))).spec.target_template
    with pytest.raises(ValidationError, match=r"without spec\.template"):
        gitops_spec(strategy={"canary": {"traffic": {"replicas": {}}}})
    with pytest.raises(ValidationError, match=r"without spec\.template"):
        gitops_spec(strategy={"blueGreen": {"activeService": "web", "previewService": "web-preview"}})


# ------------------------------------------------------------------------------------------------- the flows


def test_adoption_labels_the_target_once_and_records_its_template_as_stable() -> None:
    w = gitops_world()
    assert w.phase() == "Succeeded"
    assert w.status.source is not None and w.status.source.stable_template_hash == H1
    assert w.deployment is not None and w.deployment["metadata"]["labels"][TARGET_LABEL] == "web"
    assert w.target_writes == {"operator": 1, "git": 0}
    assert w.canary is None and w.weights_seen == []
    assert "TargetAdopted" in w.reasons()
    ready = next(c for c in w.status.conditions if c.type == "Ready")
    assert ready.status == "True" and ready.reason == "Adopted"
    w.run(30)
    assert w.target_writes["operator"] == 1  # idle: nothing more is written


def test_a_label_that_git_holds_means_no_write_at_adoption() -> None:
    w = gitops_world(labelled=True)
    assert w.phase() == "Succeeded" and w.target_writes == {"operator": 0, "git": 0}


def test_a_healthy_commit_is_canaried_from_the_held_template_and_promoted_with_one_write() -> None:
    w = gitops_world(labelled=True)
    w.commit(V2, revision="c0ffee")
    assert w.deployment is not None and w.deployment["spec"]["paused"] is True  # held in the sync's own write
    assert w.running == H1
    w.run(200, until=lambda x: x.canary is not None)
    assert w.canary_template == V2  # every field: args and resources, not only the image
    assert w.running == H1  # the stable pods were not replaced
    assert w.status.source is not None and w.status.source.revision == "c0ffee"
    w.run(200, until=World.done)
    assert w.phase() == "Succeeded", w.status.message
    assert w.weights_seen == [5, 25, 50, 100]
    assert w.running == H2 and not w.deployment["spec"].get("paused")
    assert w.deployment["metadata"]["annotations"] == {STABLE_ANNOTATION: H2, "saferollout.dev/revision": "c0ffee"}
    assert w.target_writes == {"operator": 1, "git": 1}
    assert w.status.source.target_writes == 1 and w.status.source.stable_template_hash == H2
    assert w.canary is None and w.weight == 0
    assert "TargetReleased" in w.reasons()


def test_a_failing_commit_rolls_back_without_touching_the_target_and_a_revert_starts_nothing() -> None:
    w = gitops_world(labelled=True)
    with_world(w, failing_version(H2))
    w.commit(V2, revision="bad1")
    w.run(200, until=World.done)
    assert w.phase() == "RolledBack", w.status.message
    assert w.ran == {H1}  # the stable pods never ran the refused template
    assert w.deployment is not None and w.deployment["spec"]["paused"] is True
    assert w.target_writes == {"operator": 0, "git": 1}
    src = w.status.source
    assert src is not None and src.target_writes == 0 and src.refused is not None
    assert (src.refused.template_hash, src.refused.generation, src.refused.revision) == (H2, 2, "bad1")
    degraded = next(c for c in w.status.conditions if c.type == "Degraded")
    assert degraded.status == "True" and H2 in degraded.message
    assert "TemplateRefused" in w.reasons()
    # the revert commit: the webhook ends the hold in the sync's own write, the operator writes nothing
    seen, events = list(w.weights_seen), len(w.events)
    w.commit(V1)
    assert not w.deployment["spec"].get("paused") and HELD_ANNOTATION not in w.deployment["metadata"]["annotations"]
    log = len(w.log)
    w.run(30, until=World.done)
    assert w.phase() == "Succeeded" and w.status.conditions
    assert next(c for c in w.status.conditions if c.type == "Degraded").status == "False"
    assert w.target_writes == {"operator": 0, "git": 2}
    assert w.weights_seen == seen and w.canary is None
    assert not any("EnsureCanary" in line or "QueryMetrics" in line for line in w.log[log:])
    assert "RolloutStarted" not in reasons_since(w, events) and "TemplateReverted" in reasons_since(w, events)
    assert w.ran == {H1}


def test_without_the_webhook_the_operator_holds_and_releases_the_target_itself() -> None:
    w = gitops_world(labelled=True, webhook=False)
    with_world(w, failing_version(H2, stable_too=False))  # its pods replaced before the hold run V2 unharmed
    w.commit(V2)
    assert w.deployment is not None and not w.deployment["spec"].get("paused")  # nothing held it
    w.run(200, until=World.done)
    assert w.phase() == "RolledBack"
    assert "TemplateNotHeld" in w.reasons()
    assert w.deployment["spec"]["paused"] is True
    assert w.target_writes["operator"] == 1  # the hold
    w.commit(V1)
    w.run(30, until=World.done)
    assert w.phase() == "Succeeded" and not w.deployment["spec"].get("paused")
    assert w.target_writes["operator"] == 2  # and exactly one write to end it
    assert w.status.source is not None and w.status.source.target_writes == 1


def test_a_third_version_during_a_rollout_abandons_the_second_and_starts_at_the_first_stage() -> None:
    w = gitops_world(labelled=True)
    w.commit(V2)
    w.run(200, until=lambda x: x.weight == 25)
    assert w.canary_hash == H2
    n = len(w.log)
    w.commit(V3)
    w.run(2)
    after = [line for line in w.log[n:] if "Event" not in line and "Notify" not in line]
    assert "SetWeight(weight=0)" in after[0], after  # traffic to stable before anything else
    w.run(200, until=lambda x: x.canary_hash == H3)
    assert w.status.stage == 1 and w.weight <= 5
    # the third version gets no more than the first stage's weight before an analysis of it passed
    weights_after = []
    analysed = False
    for line in w.log[n:]:
        if "QueryMetrics(target='canary'" in line and w.canary_hash == H3:
            analysed = True
        if "SetWeight(weight=" in line:
            weight = int(line.split("SetWeight(weight=")[1].split(")")[0])
            weights_after.append(weight)
            assert weight <= 5 or analysed, line
    w.run(200, until=World.done)
    assert w.phase() == "Succeeded"
    assert w.running == H3 and w.ran == {H1, H3}
    assert w.status.source is not None and w.status.source.stable_template_hash == H3
    assert w.weights_seen == [5, 25, 5, 25, 50, 100]
    assert w.target_writes["operator"] == 1


def test_a_revert_during_a_rollout_abandons_it_safely_and_starts_nothing() -> None:
    w = gitops_world(labelled=True)
    w.commit(V2)
    w.run(200, until=lambda x: x.weight == 25)
    n = len(w.log)
    w.commit(V1)
    assert w.deployment is not None and not w.deployment["spec"].get("paused")
    w.run(30, until=World.done)
    after = [line for line in w.log[n:] if "Event" not in line and "Notify" not in line]
    assert "SetWeight(weight=0)" in after[0], after
    assert w.phase() == "Succeeded" and w.canary is None and w.weight == 0
    assert w.ran == {H1} and w.target_writes["operator"] == 0


def test_a_breach_after_promotion_fails_honestly_without_writing_over_git() -> None:
    w = gitops_world(labelled=True)

    def after_promotion(name: str, target: str, weight: int, t: float) -> float | None:
        return 0.3 if name == "error-rate" and target == "stable" and w.running == H2 else 0.001
    w.metrics = after_promotion
    w.commit(V2)
    w.run(200, until=World.done)
    assert w.phase() == "Failed", w.status.message
    assert "revert the commit" in (w.status.message or "")
    assert w.target_writes["operator"] == 1 and w.running == H2
    assert w.status.source is not None and w.status.source.refused is not None


def test_abort_refuses_the_held_template_and_retry_rolls_it_out_again() -> None:
    w = gitops_world(labelled=True)
    w.commit(V2)
    w.run(200, until=lambda x: x.weight == 5)
    w.command = "abort/1"
    w.run(60, until=World.done)
    assert w.phase() == "RolledBack" and w.ran == {H1}
    assert w.status.source is not None and w.status.source.refused is not None
    assert w.status.source.refused.template_hash == H2
    w.command = "retry/2"
    w.run(200, until=lambda x: x.phase() == "Succeeded")
    assert w.running == H2 and w.status.attempt == 2  # adoption is attempt 0


def test_a_template_held_before_the_rollout_existed_is_rolled_out() -> None:
    d = target_deployment(V2, labelled=True)
    d["spec"]["paused"] = True
    d["metadata"]["annotations"] = {STABLE_ANNOTATION: H1, HELD_ANNOTATION: H2}
    w = World(gitops_spec(), deployment=d)
    w.running = H1
    w.ran = {H1}
    w.run(200, until=World.done)
    assert w.phase() == "Succeeded" and w.running == H2 and w.weights_seen == [5, 25, 50, 100]


def test_a_target_claimed_by_another_rollout_is_not_taken_over() -> None:
    d = target_deployment(V1)
    d["metadata"]["labels"][TARGET_LABEL] = "other"
    w = World(gitops_spec(), deployment=d).run(5)
    assert w.phase() == "Blocked" and "other" in (w.status.message or "")
    assert w.target_writes["operator"] == 0


def test_the_target_is_read_for_every_decision_and_an_unreadable_one_waits() -> None:
    w = World(gitops_spec(), deployment=target_deployment(V1))
    w.deployment = None  # as if the GET failed: no view
    w.run(3)
    assert w.phase() is None and "waiting to read" in (w.status.message or "")
    assert not [x for x in w.log if "TargetView" in x]
    assert isinstance(a.TargetView(H1, {}), a.TargetView)


# -------------------------------------------------------------------------------------------- the kopf handler


def test_the_kopf_handler_answers_with_the_json_patch_of_the_hold() -> None:
    import asyncio
    import logging

    import kopf

    from saferollout import handlers

    def kbody(d: dict[str, Any]) -> kopf.Body:
        return kopf.Body(d)  # type: ignore[arg-type]  # a RawBody is a TypedDict of these keys

    old, new = dep(V1), dep(V2)
    body = kbody(new)
    patch = kopf.Patch(body=body)
    asyncio.run(handlers.hold_template(body=body, patch=patch, namespace="shop", logger=logging.getLogger("t"),
                                       old=kbody(old)))
    ops = sorted(patch.as_json_patch(), key=lambda op: str(op["path"]))
    assert ops == [
        {"op": "add", "path": "/metadata/annotations/saferollout.dev~1held-template", "value": H2},
        {"op": "add", "path": "/metadata/annotations/saferollout.dev~1stable-template", "value": H1},
        {"op": "add", "path": "/spec/paused", "value": True},
    ]
    untouched = kopf.Patch(body=kbody(old))
    asyncio.run(handlers.hold_template(body=kbody(merge(old, {"spec": {"replicas": 3}})), patch=untouched,
                                       namespace="shop", logger=logging.getLogger("t"), old=kbody(old)))
    assert untouched.as_json_patch() == [{"op": "add", "path": "/metadata/annotations/saferollout.dev~1stable-template",
                                          "value": H1}]


def test_the_certificate_is_valid_for_the_webhook_hosts(tmp_path: Any) -> None:
    import ipaddress

    from cryptography import x509

    from saferollout.adapters.certs import write_self_signed

    cert_path, key_path = write_self_signed(tmp_path / "tls", ["127.0.0.1", "web.shop.svc"])
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["web.shop.svc"]
    assert key_path.stat().st_mode & 0o777 == 0o600


def test_removing_spec_template_mid_rollout_cleans_up_and_adopts_the_target() -> None:
    classic = SafeRolloutSpec.model_validate(yaml.safe_load(BASE))
    w = World(classic)
    w.run(200, until=lambda x: x.weight == 25)
    w.spec = gitops_spec()
    w.deployment = target_deployment(V1)
    w.running, w.ran = H1, {H1}
    w.run(30, until=World.done)
    assert w.phase() == "Succeeded" and w.weight == 0 and w.canary is None
    assert w.status.source is not None and w.status.source.stable_template_hash == H1


# --------------------------------------------------------------------------------------- random commit streams


COMMITS = {"v1": V1, "v2": V2, "v3": V3}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.tuples(st.sampled_from(["v1", "v2", "v3", "wait"]), st.integers(1, 40)), min_size=1,
                      max_size=8),
       bad=st.sets(st.sampled_from([H2, H3])))
@example(steps=[("v2", 5), ("v1", 1)], bad={H2})  # the revert lands during the rollback's scaleDownDelay
def test_the_stable_pods_only_ever_run_approved_templates(steps: list[tuple[str, int]], bad: set[str]) -> None:
    """Whatever the commits and their timing: the stable pods run only templates that were approved (the adopted
    one or a promoted one), the operator writes the target at most once per rollout, and every rollout ends."""
    w = gitops_world(labelled=True)
    with_world(w, failing_version_of(bad))
    approved = {H1}

    def check(x: World) -> bool:
        src = x.status.source
        assert src is not None
        approved.add(src.stable_template_hash or "")
        assert x.ran <= approved, (x.ran, approved)
        assert src.target_writes <= 1
        return False
    for what, seconds in steps:
        if what != "wait":
            w.commit(COMMITS[what])
        w.run(seconds, until=check)
    # a commit during a rollback is taken up by the decision after it ends (the rollback finishes first), so the
    # run goes on until the status has caught up with the Deployment, or 400 s
    w.run(400, until=lambda x: check(x) or (x.done() and x.status.template_hash == template_hash_of(
        x.deployment["spec"]["template"] if x.deployment else None)))
    assert w.done(), w.status.message
    assert w.status.template_hash == template_hash_of(w.deployment["spec"]["template"] if w.deployment else None)
    paused = bool(w.deployment and w.deployment["spec"].get("paused"))
    assert paused == (w.running != w.status.template_hash), (w.phase(), paused)


def failing_version_of(bad: set[str]) -> Any:
    def fn(name: str, target: str, weight: int, t: float) -> float | None:
        w = fn.world  # type: ignore[attr-defined]
        runs = w.canary_hash if target == "canary" else w.running
        return 0.5 if name == "error-rate" and runs in bad else 0.001
    return fn


def test_a_decision_in_flight_at_deletion_cannot_label_the_target_after_its_release(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen on the real cluster: a decision running when the SafeRollout was deleted labelled the target again right
    after the deletion had released it, and the webhook would then hold the next commit with no one to release it."""
    import asyncio
    import threading

    import kopf

    from saferollout import handlers
    from saferollout.adapters import workloads
    from saferollout.adapters.kube import RolloutRef

    order: list[str] = []
    deciding, may_finish = threading.Event(), threading.Event()

    def slow_decision(*_: Any) -> handlers.Reconciled:
        order.append("decision starts")
        deciding.set()
        may_finish.wait(5)
        order.append("decision labels the target")
        return handlers.Reconciled(None, 0.0, True)

    monkeypatch.setattr(handlers, "_reconcile", slow_decision)
    def release(ref: RolloutRef, target: str) -> bool:
        order.append("release")
        return True

    monkeypatch.setattr(workloads, "let_go", release)
    def executor(*_: Any) -> Callable[[a.Action], a.Outcome]:
        def run(act: a.Action) -> a.Outcome:
            order.append(f"{act}")
            return a.Outcome(act, True)
        return run

    monkeypatch.setattr(handlers, "Executor", executor)
    ref = RolloutRef("shop", "web", "uid-1")
    spec = yaml.safe_load(BASE)
    del spec["template"]  # the target's own template is the version
    first = threading.Thread(target=handlers.reconcile, args=(ref, spec, {}, {}))
    first.start()
    assert deciding.wait(5)

    async def delete() -> None:
        event: kopf.RawEvent = {"type": "DELETED", "object": {"status": {"phase": "Progressing", "weight": 5}}}
        changed: Any = handlers.changed  # called as kopf would, with only the arguments it reads
        deleted = asyncio.ensure_future(changed(event=event, uid=ref.uid, name=ref.name, namespace=ref.namespace,
                                                meta={}, spec=spec))
        await asyncio.sleep(0.2)
        assert "release" not in order, "the release did not wait for the decision in flight"
        may_finish.set()
        await deleted

    asyncio.run(delete())
    first.join(5)
    late = handlers.reconcile(ref, spec, {}, {})
    # mid-rollout: the canary (owned, garbage-collected) gets no traffic any more, then the target is released
    assert order == ["decision starts", "decision labels the target", f"{a.SetWeight(0)}", "release"]
    assert late.after is None and not late.wrote  # a decision after the deletion does nothing
    handlers._gone.pop(ref.uid, None)
