"""kopf handlers, kept thin: read the object, run the core's loop with the executor, write status."""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from saferollout import observability
from saferollout.adapters import events, kube
from saferollout.adapters.kube import RolloutRef
from saferollout.config import OperatorConfig
from saferollout.core import actions as a
from saferollout.core.engine import Inputs
from saferollout.core.loop import drive
from saferollout.core.models import GROUP, PLURAL, VERSION, SafeRolloutSpec, SafeRolloutStatus
from saferollout.executor import Executor
from saferollout.redact import CURRENT_ROLLOUT, redact

COMMAND_ANNOTATION = "saferollout.dev/command"
CFG = OperatorConfig.from_env()
log = logging.getLogger("saferollout")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="saferollout.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="saferollout.dev")
    settings.posting.enabled = False  # our own Events carry the story; kopf's would repeat it
    settings.execution.max_workers = 32
    settings.watching.server_timeout = 300
    kube.on_request = lambda verb: observability.API_REQUESTS.labels(verb).inc()
    if CFG.metrics_port:
        observability.serve(CFG.metrics_port, CFG.metrics_host)
        log.info("metrics and health on :%d (/metrics, /healthz)", CFG.metrics_port)


def _status_dict(status: SafeRolloutStatus) -> dict[str, Any]:
    return status.model_dump(by_alias=True, exclude_none=True, mode="json")


# sharp: ticks keep their cadence however long a reconcile takes, so analyses do not drift late tick by tick
@kopf.timer(GROUP, VERSION, PLURAL, interval=CFG.tick_seconds, sharp=True)
def reconcile(name: str, namespace: str | None, uid: str, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta,
              **_: Any) -> None:
    assert namespace is not None  # the resource is namespaced
    ref = RolloutRef(namespace, name, uid)
    generation = meta.get("generation")
    try:
        parsed = SafeRolloutSpec.model_validate(dict(spec))
    except ValidationError as e:
        _invalid(ref, dict(status), generation, e)
        return
    current = SafeRolloutStatus.model_validate(dict(status))
    holder = {"status": current}
    executor = Executor(ref, parsed, CFG, lambda: holder["status"])
    command = (meta.get("annotations") or {}).get(COMMAND_ANNOTATION)

    def inputs(results: list[a.Result]) -> Inputs:
        return Inputs(now=datetime.now(UTC), name=name, generation=generation, command=command, results=results)

    def write(new: SafeRolloutStatus) -> None:
        kube.write_status(ref, _status_dict(new))
        observability.observe(f"{namespace}/{name}", holder["status"], new, parsed.analysis.interval_seconds)
        holder["status"] = new
        if new.phase != holder.get("logged_phase", current.phase):
            log.info("%s/%s phase %s: %s", namespace, name, new.phase.value if new.phase else None, new.message)
            holder["logged_phase"] = new.phase  # type: ignore[assignment]

    observability.heartbeat()
    token = CURRENT_ROLLOUT.set((namespace, name))
    with observability.RECONCILE_SECONDS.time():
        try:
            drive(parsed, current, inputs, executor, write, CFG.settings)
        except Exception:
            observability.RECONCILE_ERRORS.inc()
            raise
        finally:
            CURRENT_ROLLOUT.reset(token)


def _timers_without_finalizer() -> None:
    """kopf puts a finalizer on every object that has a timer, so deleting a SafeRollout would hang whenever no
    operator runs (uninstalled, crashed, scaled to zero). Nothing here needs one: the timer stops with the object
    and the garbage collector removes what the rollout owns. kopf has no public switch, so the flag is cleared on
    our registered timer (a test checks it)."""
    registry = kopf.get_default_registry()._spawning
    registry._handlers = [dataclasses.replace(h, requires_finalizer=False) for h in registry._handlers]


_timers_without_finalizer()


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def forget(name: str, namespace: str | None, **_: Any) -> None:
    """Owner references let the garbage collector remove the canary and reports; only the gauge needs us."""
    observability.set_phase(f"{namespace}/{name}", None)


def _invalid(ref: RolloutRef, status: dict[str, Any], generation: int | None, e: ValidationError) -> None:
    """A spec the CRD let through but the models refuse: say so once, touch nothing."""
    if (status or {}).get("observedGeneration") == generation and (status or {}).get("phase") == "Blocked":
        return
    problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()[:5])
    message = redact(f"invalid spec: {problems}")
    new = {**(status or {}), "phase": "Blocked", "message": message, "observedGeneration": generation}
    kube.write_status(ref, new)
    events.emit(ref, "InvalidSpec", message, "Warning")
