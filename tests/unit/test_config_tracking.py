"""spec.trackConfig: a ConfigMap or Secret that the target's pod template references, edited in place, is a new
version, canaried and promoted or refused like a new template (issue 15).

The world holds the objects as the API server does; the stable pods read the copies their template's label names
(what the pod webhook gives them), or, before the first tracked write, the objects as they are. `World.edit_config`
is a sync of a commit that changes only a ConfigMap.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import kopf
import pytest
import yaml
from pydantic import ValidationError

from saferollout import handlers
from saferollout.core import configs
from saferollout.core.configs import CONFIG_LABEL, CONFIGMAP, SECRET
from saferollout.core.models import SafeRolloutSpec
from saferollout.core.templates import STABLE_ANNOTATION, template_hash_of
from tests.unit.world import BASE, World, pod_template, target_deployment

CM, PW = (CONFIGMAP, "web-config"), (SECRET, "web-db")
GOOD = {"MODE": "blue"}
TEMPLATE = pod_template("demo/web:1.0", envFrom=[{"configMapRef": {"name": "web-config"}}],
                        env=[{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "web-db", "key": "pw"}}}])
TEMPLATE["spec"]["volumes"] = [{"name": "conf", "configMap": {"name": "web-config"}},
                               {"name": "both", "projected": {"sources": [{"configMap": {"name": "web-config"}},
                                                                          {"secret": {"name": "web-db"}}]}}]


def cfg_of(data: dict[str, str]) -> str:
    return configs.config_hash({CM: {"data": data}, PW: {"data": {"pw": "c2VjcmV0"}}}, "shop/web")


C1 = cfg_of(GOOD)


def tracked_spec(**changes: Any) -> SafeRolloutSpec:
    data = yaml.safe_load(BASE)
    del data["template"]
    data["trackConfig"] = True
    data.update(changes)
    return SafeRolloutSpec.model_validate(data)


def world_of(spec: SafeRolloutSpec) -> World:
    return World(spec, deployment=target_deployment(TEMPLATE, labelled=True),
                 config_objects={CM: {"data": dict(GOOD)}, PW: {"data": {"pw": "c2VjcmV0"}}})


def tracked_world(bad: str | None = None) -> World:
    """Adopted and settled. With `bad`, a canary (or stable pods) reading that config version errs."""
    w = world_of(tracked_spec())

    def metrics(name: str, target: str, weight: int, t: float) -> float | None:
        reads = w.canary_config if target == "canary" else w.stable_config()
        return 0.5 if name == "error-rate" and bad is not None and reads == bad else 0.001
    w.metrics = metrics
    return w.run(10, until=lambda x: x.phase() == "Succeeded" and x.stable_config() == C1
                 and x.deployment is not None and CONFIG_LABEL in x.deployment["spec"]["template"]["metadata"]["labels"])


# ------------------------------------------------------------------------------------------------ pure rules


def test_every_kind_of_reference_is_found_and_renamed_to_its_copy() -> None:
    assert configs.references(TEMPLATE["spec"]) == [CM, PW]
    refs = set(configs.references(TEMPLATE["spec"]))
    renamed = configs.rewritten(TEMPLATE["spec"], "abc", refs)
    assert renamed is not None and configs.references(renamed) == [(CONFIGMAP, "web-config-sr-abc"),
                                                                   (SECRET, "web-db-sr-abc")]
    assert renamed["volumes"][1]["projected"]["sources"][1]["secret"]["name"] == "web-db-sr-abc"
    assert configs.rewritten(renamed, "abc", refs) is None  # a reinvoked webhook changes nothing
    assert configs.rewritten({"containers": [{"name": "c", "image": "x"}]}, "abc", refs) is None


def test_a_copy_name_fits_an_object_name() -> None:
    long = "c" * 250
    name = configs.copy_name(long, "0123456789")
    assert len(name) == 253 and name.endswith("-sr-0123456789") and name != configs.copy_name("c" * 249, "0123456789")
    assert configs.copy_name("web", "abc") == "web-sr-abc"


def test_a_version_has_its_own_configmap_that_owns_its_copies() -> None:
    owner = {"apiVersion": "saferollout.dev/v1alpha1", "kind": "SafeRollout", "name": "web", "uid": "u"}
    version = configs.version_object("web", "0123456789", [CM, PW], owner)
    name = version["metadata"]["name"]
    assert name == "web-sr-0123456789-version" and not name.endswith(configs.copy_name("", "0123456789"))
    assert version["metadata"]["ownerReferences"] == [owner] and version["immutable"] is True
    assert version["data"] == {"references": "ConfigMap/web-config,Secret/web-db"}
    assert version["metadata"]["labels"][configs.VERSION_OF] == "true"
    assert len(configs.version_object("w" * 253, "0123456789", [], owner)["metadata"]["name"]) <= 253


def test_two_rollouts_reading_one_configmap_get_copies_of_their_own() -> None:
    objects = {CM: {"data": dict(GOOD)}}
    assert configs.config_hash(objects, "shop/web") != configs.config_hash(objects, "shop/api")


def admitted_pod(config: str | None) -> dict[str, Any]:
    """A pod of the target's template as the webhook gets it: the ServiceAccount admission has added the token's
    projected volume, which reads ConfigMap kube-root-ca.crt (a mesh's injector adds its own, as istio-ca-root-cert)."""
    tmpl = configs.given(TEMPLATE, config) if config else json_copy(TEMPLATE)
    pod = {"metadata": tmpl["metadata"], "spec": json_copy(tmpl["spec"])}
    pod["spec"]["volumes"].append({"name": "kube-api-access-x7k2p", "projected": {"sources": [
        {"serviceAccountToken": {"path": "token"}}, {"configMap": {"name": "kube-root-ca.crt"}}]}})
    return pod


def json_copy(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(yaml.safe_load(yaml.safe_dump(obj)))


def test_the_pod_patch_renames_only_what_the_template_names() -> None:
    assert configs.pod_patch(admitted_pod(None)) == {}
    patch = configs.pod_patch(admitted_pod("abc"))
    assert set(patch["spec"]) == {"containers", "volumes"}
    assert patch["spec"]["containers"][0]["envFrom"] == [{"configMapRef": {"name": "web-config-sr-abc"}}]
    assert patch["spec"]["containers"][0]["image"] == "demo/web:1.0"
    assert patch["spec"]["volumes"][-1]["projected"]["sources"][1] == {"configMap": {"name": "kube-root-ca.crt"}}
    assert configs.references(patch["spec"]) == [(CONFIGMAP, "kube-root-ca.crt"), (CONFIGMAP, "web-config-sr-abc"),
                                                 (SECRET, "web-db-sr-abc")]


def test_the_kopf_pod_handler_answers_with_a_json_patch_of_the_references() -> None:
    pod = admitted_pod("abc")
    body = kopf.Body(pod)  # type: ignore[arg-type]  # a RawBody is a TypedDict of these keys
    patch = kopf.Patch(body=body)
    asyncio.run(handlers.config_copies(body=body, patch=patch, logger=logging.getLogger("t")))
    values = {op["path"]: op.get("value") for op in patch.as_json_patch()}
    assert values, "no patch"
    assert all(p.startswith(("/spec/containers", "/spec/volumes")) for p in values), values
    assert "web-config-sr-abc" in str(values) and "web-db-sr-abc" in str(values) and "web-config'" not in str(values)
    assert "kube-root-ca.crt-sr" not in str(values)


def test_a_version_covers_the_data_and_not_the_label_that_names_the_copies() -> None:
    assert configs.version_hash(configs.given(TEMPLATE, "x"), C1) == configs.version_hash(TEMPLATE, C1)
    assert configs.version_hash(TEMPLATE, C1) != configs.version_hash(TEMPLATE, cfg_of({"MODE": "red"}))
    assert configs.version_hash(TEMPLATE, None) == template_hash_of(TEMPLATE)
    # a copy keeps the data only: Argo CD's tracking label on a copy would make Argo CD prune it as its own
    obj = {"kind": "ConfigMap", "metadata": {"labels": {"app.kubernetes.io/instance": "shop"},
                                             "annotations": {"argocd.argoproj.io/tracking-id": "shop:..."}},
           "data": {"a": "1"}}
    assert configs.data_of(obj) == {"data": {"a": "1"}}
    copy = configs.copy_object(CONFIGMAP, "web-config", "abc", {"data": {"a": "1"}}, "web", {"uid": "u"})
    assert copy["immutable"] is True and copy["metadata"]["name"] == "web-config-sr-abc"
    assert set(copy["metadata"]["labels"]) == {configs.COPY_OF, CONFIG_LABEL} and "annotations" not in copy["metadata"]
    secret = configs.copy_object(SECRET, "db", "abc", {"data": {"pw": "eA=="}, "type": "kubernetes.io/basic-auth"},
                                 "web", {"uid": "u"})
    assert secret["type"] == "kubernetes.io/basic-auth" and secret["data"] == {"pw": "eA=="}


def test_track_config_needs_the_target_template() -> None:
    data = yaml.safe_load(BASE)
    data["trackConfig"] = True
    with pytest.raises(ValidationError, match=r"trackConfig needs spec\.template omitted"):
        SafeRolloutSpec.model_validate(data)


# ------------------------------------------------------------------------------------------ in the simulated world


def test_adoption_gives_the_stable_pods_copies_of_the_config_they_run_in_one_write() -> None:
    w = tracked_world()
    assert w.deployment is not None
    assert w.deployment["spec"]["template"]["metadata"]["labels"][CONFIG_LABEL] == C1
    assert w.deployment["metadata"]["annotations"][STABLE_ANNOTATION] == template_hash_of(w.deployment["spec"]["template"])
    assert not w.deployment["spec"].get("paused")
    assert w.target_writes == {"operator": 1, "git": 0} and C1 in w.copies
    assert "ConfigTracked" in w.reasons() and w.weights_seen == []
    w.run(30)
    assert w.target_writes["operator"] == 1  # idle: nothing more


def test_a_config_edit_is_canaried_and_promoted_with_one_write() -> None:
    w = tracked_world()
    writes = w.target_writes["operator"]
    w.edit_config(*CM, {"MODE": "green"})
    c2 = cfg_of({"MODE": "green"})
    w.run(200, until=lambda x: x.canary is not None)
    assert w.canary_config == c2 and w.stable_config() == C1  # the stable pods still read the approved copies
    assert w.deployment is not None and not w.deployment["spec"].get("paused")  # nothing to hold: same template
    w.run(300, until=World.done)
    assert w.phase() == "Succeeded", w.status.message
    assert w.weights_seen == [5, 25, 50, 100]
    assert w.stable_config() == c2 and w.configs_read == {C1, c2}
    assert w.target_writes["operator"] - writes == 1  # the promotion: the label that names the new copies
    assert w.status.source is not None and w.status.source.target_writes >= 1


def test_a_bad_config_is_refused_the_stable_pods_never_read_it_and_a_revert_starts_nothing() -> None:
    bad = cfg_of({"MODE": "broken"})
    w = tracked_world(bad=bad)
    writes = w.target_writes["operator"]
    w.edit_config(*CM, {"MODE": "broken"})
    w.run(300, until=World.done)
    assert w.phase() == "RolledBack", w.status.message
    assert w.configs_read == {C1}, "a stable pod read the refused config"
    assert w.target_writes["operator"] == writes  # a rollback writes nothing to the target
    src = w.status.source
    assert src is not None and src.refused is not None
    degraded = next(c for c in w.status.conditions if c.type == "Degraded")
    assert degraded.status == "True"
    seen, n = list(w.weights_seen), len(w.events)
    w.edit_config(*CM, dict(GOOD))  # the revert commit
    w.run(30, until=World.done)
    assert w.phase() == "Succeeded" and w.weights_seen == seen and w.canary is None
    assert "TemplateReverted" in [e.reason for e in w.events[n:]]
    assert next(c for c in w.status.conditions if c.type == "Degraded").status == "False"
    assert w.configs_read == {C1} and w.target_writes["operator"] == writes


def test_a_new_template_and_a_new_config_in_one_commit_are_one_version() -> None:
    w = tracked_world()
    new = pod_template("demo/web:2.0", envFrom=TEMPLATE["spec"]["containers"][0]["envFrom"],
                       env=TEMPLATE["spec"]["containers"][0]["env"])
    new["spec"]["volumes"] = TEMPLATE["spec"]["volumes"]
    new["metadata"]["labels"][CONFIG_LABEL] = C1  # Argo CD's apply keeps the label it does not hold
    w.edit_config(*CM, {"MODE": "green"})
    w.commit(new)
    assert w.deployment is not None and w.deployment["spec"]["paused"] is True  # the template is held
    w.run(300, until=World.done)
    assert w.phase() == "Succeeded", w.status.message
    assert w.stable_config() == cfg_of({"MODE": "green"}) and w.target_images == {"web": "demo/web:2.0"}


def test_without_track_config_an_edit_starts_nothing() -> None:
    w = world_of(tracked_spec(trackConfig=False)).run(10, until=lambda x: x.phase() == "Succeeded")
    w.edit_config(*CM, {"MODE": "green"})
    w.run(30)
    assert w.canary is None and w.weights_seen == [] and w.target_writes["operator"] == 0


def test_switching_track_config_on_for_an_adopted_target_is_one_write_not_a_rollout() -> None:
    w = world_of(tracked_spec(trackConfig=False)).run(10, until=lambda x: x.phase() == "Succeeded")
    w.spec = tracked_spec()
    w.run(30)
    assert w.canary is None and w.weights_seen == [] and w.phase() == "Succeeded"
    assert w.target_writes["operator"] == 1 and w.stable_config() == C1 and "ConfigTracked" in w.reasons()


def test_the_crd_refuses_switching_track_config_off() -> None:
    from saferollout.crdgen import crd  # the generated schema carries the transition rule
    rules = [r for r in crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
             ["x-kubernetes-validations"] if "oldSelf" in r["rule"]]
    assert rules and "cannot be switched off" in rules[0]["message"]


def test_without_the_webhooks_track_config_is_blocked() -> None:
    w = world_of(tracked_spec())
    w.settings = dataclasses.replace(w.settings, webhooks=False)
    w.run(10, until=World.done)
    assert w.phase() == "Blocked" and "webhook.enabled=true" in (w.status.message or "")
    assert "TrackConfigNeedsWebhook" in [c.reason for c in w.status.conditions]
    assert w.target_writes["operator"] == 0 and not w.copies


def test_a_label_naming_another_config_is_put_back_to_the_approved_one() -> None:
    w = tracked_world()
    assert w.deployment is not None
    other = dict(w.deployment)
    other["spec"] = {**w.deployment["spec"], "template": configs.given(w.deployment["spec"]["template"], "0000000000")}
    w.update_target(other, "git")  # someone writes the label (a rollout undo to an older template, say)
    w.run(10)
    assert configs.CONFIG_LABEL in w.deployment["spec"]["template"]["metadata"]["labels"]
    assert w.deployment["spec"]["template"]["metadata"]["labels"][CONFIG_LABEL] == C1
    assert w.canary is None and w.weights_seen == [] and w.stable_config() == C1
