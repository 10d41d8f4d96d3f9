"""Kubernetes Events on the SafeRollout, so `kubectl describe` and `kubectl get events` tell the story."""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime

from saferollout.adapters import kube
from saferollout.adapters.kube import RolloutRef
from saferollout.core.models import GROUP, KIND, VERSION
from saferollout.redact import redact

log = logging.getLogger("saferollout.events")
_HOST = socket.gethostname()


def emit(ref: RolloutRef, reason: str, message: str, type_: str = "Normal") -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{ref.name}.", "namespace": ref.namespace},
        "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": ref.name,
                           "namespace": ref.namespace, "uid": ref.uid},
        "reason": reason, "message": redact(message)[:1024], "type": type_,
        "source": {"component": "saferollout", "host": _HOST},
        "reportingComponent": "saferollout.dev/operator", "reportingInstance": _HOST,
        "firstTimestamp": now, "lastTimestamp": now, "eventTime": None, "count": 1,
    }
    try:
        kube.core().create_namespaced_event(ref.namespace, body)
    except Exception as e:  # an event is worth a log line, never a failed reconcile
        log.warning("could not record event %s on %s/%s: %s", reason, ref.namespace, ref.name, kube.error_text(e))
