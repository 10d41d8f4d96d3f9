"""The chart's admission webhook (webhook.enabled): off by default; on, the configuration, its Service, the
certificate, the operator's settings, and no new RBAC (the chart ships the configuration, kopf does not manage it)."""

from __future__ import annotations

import base64

from cryptography import x509

from saferollout.config import OperatorConfig
from tests.unit.test_chart import (
    FULLNAME,
    NAMESPACE,
    container,
    env_of,
    grants,
    of_kind,
    one,
    render,
    render_error,
    rules_of,
)

ON = ("--set", "webhook.enabled=true")


def test_the_webhook_is_off_by_default() -> None:
    objs = render()
    assert not of_kind(objs, "MutatingWebhookConfiguration") and not of_kind(objs, "Secret")
    assert "SAFEROLLOUT_WEBHOOK_PORT" not in env_of(objs)


def test_the_webhook_holds_only_updates_of_labelled_deployments_and_fails_closed() -> None:
    objs = render(*ON)
    config = one(objs, "MutatingWebhookConfiguration")
    hook, pods = config["webhooks"]
    assert hook["failurePolicy"] == "Fail" and hook["sideEffects"] == "None" and hook["timeoutSeconds"] == 5
    assert hook["admissionReviewVersions"] == ["v1"] and hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["rules"] == [{"apiGroups": ["apps"], "apiVersions": ["v1"], "resources": ["deployments"],
                              "operations": ["UPDATE"], "scope": "Namespaced"}]
    assert hook["objectSelector"] == {"matchExpressions": [{"key": "saferollout.dev/target", "operator": "Exists"}]}
    assert "namespaceSelector" not in hook  # cluster-wide, as the operator
    service = hook["clientConfig"]["service"]
    assert service == {"name": f"{FULLNAME}-webhook", "namespace": NAMESPACE, "path": "/hold-template", "port": 443}
    svc = next(s for s in of_kind(objs, "Service") if s["metadata"]["name"] == f"{FULLNAME}-webhook")
    assert svc["spec"]["ports"] == [{"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}]
    namespaced = one(render(*ON, "--set", "watchNamespaces={a,b}"), "MutatingWebhookConfiguration")["webhooks"]
    assert [h["namespaceSelector"]["matchExpressions"][0]["values"] for h in namespaced] == [["a", "b"]] * 2
    # trackConfig's: only CREATE of pods labelled saferollout.dev/config, failing closed unless told otherwise
    assert pods["name"] == "config-copies.saferollout.dev" and pods["failurePolicy"] == "Fail"
    assert pods["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                              "operations": ["CREATE"], "scope": "Namespaced"}]
    assert pods["objectSelector"] == {"matchExpressions": [{"key": "saferollout.dev/config", "operator": "Exists"}]}
    assert pods["clientConfig"]["service"]["path"] == "/config-copies"
    assert pods["clientConfig"]["caBundle"] == hook["clientConfig"]["caBundle"]
    ignore = one(render(*ON, "--set", "webhook.podFailurePolicy=Ignore"), "MutatingWebhookConfiguration")
    assert [h["failurePolicy"] for h in ignore["webhooks"]] == ["Fail", "Ignore"]


def test_the_generated_certificate_names_the_service_and_is_the_ca_bundle() -> None:
    objs = render(*ON)
    secret = one(objs, "Secret")
    assert secret["type"] == "kubernetes.io/tls" and secret["metadata"]["name"] == f"{FULLNAME}-webhook-tls"
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert f"{FULLNAME}-webhook.{NAMESPACE}.svc" in names
    bundle = one(objs, "MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["caBundle"]
    assert bundle == secret["data"]["ca.crt"]
    ca = x509.load_pem_x509_certificate(base64.b64decode(bundle))
    assert cert.issuer == ca.subject


def test_a_certificate_of_ones_own_is_mounted_and_its_ca_used() -> None:
    objs = render(*ON, "--set", "webhook.certSecret=my-tls", "--set", "webhook.caBundle=Q0E=")
    assert not of_kind(objs, "Secret")
    assert one(objs, "MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["caBundle"] == "Q0E="
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "webhook-tls", "secret": {"secretName": "my-tls", "defaultMode": 0o400}} in pod["volumes"]


def test_the_operator_serves_it_with_the_mounted_certificate() -> None:
    objs = render(*ON, "--set", "webhook.port=10443", "--set", "webhook.timeoutSeconds=3",
                  "--set", "webhook.failurePolicy=Ignore")
    c = container(objs)
    assert {"name": "webhook", "containerPort": 10443, "protocol": "TCP"} in c["ports"]
    assert {"name": "webhook-tls", "mountPath": "/etc/saferollout/webhook", "readOnly": True} in c["volumeMounts"]
    cfg = OperatorConfig.from_env(env_of(objs))
    assert cfg.webhook_port == 10443
    assert (cfg.webhook_cert_file, cfg.webhook_key_file) == ("/etc/saferollout/webhook/tls.crt",
                                                             "/etc/saferollout/webhook/tls.key")
    hook = one(objs, "MutatingWebhookConfiguration")["webhooks"][0]
    assert hook["timeoutSeconds"] == 3 and hook["failurePolicy"] == "Ignore"
    policy = one(objs, "NetworkPolicy")
    assert {"ports": [{"port": 10443, "protocol": "TCP"}]} in policy["spec"]["ingress"]


def test_the_webhook_needs_no_rbac() -> None:
    assert grants(rules_of(render(*ON))) == grants(rules_of(render()))


def test_the_schema_bounds_the_webhook_values() -> None:
    render_error("--set", "webhook.timeoutSeconds=31")
    render_error("--set", "webhook.failurePolicy=Maybe")
    render_error("--set", "webhook.port=80")
    assert "additional properties 'tls' not allowed" in render_error("--set", "webhook.tls=x")
