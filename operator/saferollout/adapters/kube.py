"""Kubernetes API access shared by the adapters: one configured client, typed helpers, conflict retries."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from saferollout.core.models import GROUP, KIND, PLURAL, VERSION

T = TypeVar("T")
_api: client.ApiClient | None = None
on_request: Callable[[str], None] | None = None  # set by the operator to count requests (a metric)
FIELD_MANAGER = "saferollout"
pool_size = 16  # connections kept to the API server: one per thread that runs rollouts, or they churn


class _CountingApiClient(client.ApiClient):  # type: ignore[misc]
    def call_api(self, *args: Any, **kwargs: Any) -> Any:
        if on_request is not None:
            on_request(str(args[0] if args else kwargs.get("method", "?")))
        return super().call_api(*args, **kwargs)


def api() -> client.ApiClient:
    global _api
    if _api is None:
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            config.load_incluster_config()
        else:
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
        conf = client.Configuration.get_default_copy()
        conf.connection_pool_maxsize = pool_size
        _api = _CountingApiClient(conf)
        # the API server names the field manager after the user agent: managedFields (and Argo CD's diff, and
        # `kubectl get -o yaml --show-managed-fields`) then say which writes are the operator's
        _api.user_agent = FIELD_MANAGER
    return _api


def core() -> client.CoreV1Api:
    return client.CoreV1Api(api())


def apps() -> client.AppsV1Api:
    return client.AppsV1Api(api())


def custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api())


def autoscaling() -> client.AutoscalingV2Api:
    return client.AutoscalingV2Api(api())


def not_found(e: Exception) -> bool:
    return isinstance(e, ApiException) and e.status == 404


def read_or_none(read: Callable[..., Any], *args: Any) -> dict[str, Any] | None:
    """An object as a plain dict, or None when it does not exist (other API errors raise)."""
    try:
        obj = read(*args)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    out: dict[str, Any] = api().sanitize_for_serialization(obj)
    return out


class Refused(Exception):
    """The cluster's answer no retry can mend: the object is not ours to change, or it is invalid as written."""


def refused(e: Exception) -> bool:
    """Refused by us (not our object) or by the API server as invalid (400, 422): retrying changes nothing."""
    return isinstance(e, Refused) or (isinstance(e, ApiException) and e.status in (400, 422))


def owned_by(obj: dict[str, Any], ref: RolloutRef) -> bool:
    return owned_by_uid(obj, ref.uid)


def owned_by_uid(obj: dict[str, Any], uid: str) -> bool:
    return any(o.get("uid") == uid for o in (obj.get("metadata") or {}).get("ownerReferences") or [])


def retry_conflicts(fn: Callable[[], T], attempts: int = 5) -> T:
    """Read-modify-write under optimistic concurrency: retry when someone wrote in between."""
    for i in range(attempts):
        try:
            return fn()
        except ApiException as e:
            if e.status != 409 or i == attempts - 1:
                raise
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class RolloutRef:
    namespace: str
    name: str
    uid: str

    def owner(self) -> dict[str, Any]:
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": False}


def write_status(ref: RolloutRef, status: dict[str, Any]) -> None:
    """Replace the whole status (JSON patch `add` creates or replaces it), so cleared fields really go."""
    custom().patch_namespaced_custom_object_status(
        GROUP, VERSION, ref.namespace, PLURAL, ref.name, [{"op": "add", "path": "/status", "value": status}],
        _content_type="application/json-patch+json")


def error_text(e: Exception) -> str:
    if isinstance(e, ApiException):
        import json

        try:
            return f"{e.status} {json.loads(e.body or '').get('message', e.reason)}"
        except (ValueError, TypeError, AttributeError):
            return f"{e.status} {e.reason}"
    return f"{type(e).__name__}: {e}"
