"""kopf handlers, kept thin: read the object, run the core's loop with the executor, write status."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import kopf
from pydantic import ValidationError

from saferollout import observability
from saferollout.adapters import analysis_templates, certs, events, kube, workloads
from saferollout.adapters.kube import RolloutRef
from saferollout.adapters.routers import router_for
from saferollout.config import OperatorConfig
from saferollout.core import actions as a
from saferollout.core.analysis_templates import wanted
from saferollout.core.configs import CONFIG_LABEL, pod_patch
from saferollout.core.engine import Inputs
from saferollout.core.loop import drive
from saferollout.core.models import (
    GROUP,
    NAME_MAX,
    PLURAL,
    VERSION,
    SafeRolloutSpec,
    SafeRolloutStatus,
    Strategy,
    TargetRef,
)
from saferollout.core.templates import TARGET_LABEL, admit
from saferollout.executor import Executor
from saferollout.redact import forget, naming, redact

COMMAND_ANNOTATION = "saferollout.dev/command"
CFG = OperatorConfig.from_env()
log = logging.getLogger("saferollout")


_background: set[asyncio.Task[None]] = set()


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="saferollout.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="saferollout.dev")
    settings.posting.enabled = False  # our own Events carry the story; kopf's would repeat it
    settings.execution.max_workers = 4  # kopf's own pool; the rollouts run on POOL
    settings.watching.server_timeout = 300
    kube.on_request = lambda verb: observability.API_REQUESTS.labels(verb).inc()
    kube.pool_size = 2 * CFG.workers  # one connection per thread of POOL and of WRITES, or they churn
    quiet_gc()
    task = asyncio.get_running_loop().create_task(_heartbeat())
    _background.add(task)
    task.add_done_callback(_background.discard)
    if CFG.metrics_port:
        observability.serve(CFG.metrics_port, CFG.metrics_host)
        log.info("metrics and health on :%d (/metrics, /healthz)", CFG.metrics_port)
    if CFG.webhook_port:
        settings.admission.server = webhook_server()
        settings.admission.managed = None  # the chart (or the test harness) ships the MutatingWebhookConfiguration


def webhook_server() -> kopf.WebhookServer:
    """HTTPS on webhook_port with the chart's certificate, or a self-signed one (written to webhook_ca_file, the
    caBundle of a URL clientConfig)."""
    cert, key = CFG.webhook_cert_file, CFG.webhook_key_file
    if not (cert and key):
        made = certs.write_self_signed(Path(tempfile.mkdtemp(prefix="saferollout-webhook-")), CFG.webhook_hosts)
        cert, key = str(made[0]), str(made[1])
        if CFG.webhook_ca_file:
            Path(CFG.webhook_ca_file).write_bytes(made[0].read_bytes())
    log.info("admission webhook on %s:%d (%s)", CFG.webhook_addr, CFG.webhook_port, WEBHOOK_ID)
    return kopf.WebhookServer(addr=CFG.webhook_addr, port=CFG.webhook_port, host=CFG.webhook_hosts[0],
                              certfile=cert, pkeyfile=key)


WEBHOOK_ID = "hold-template"  # the webhook's path: https://<host>:<port>/hold-template


async def hold_template(body: kopf.Body, patch: kopf.Patch, namespace: str | None, logger: kopf.Logger,
                        **kwargs: Any) -> None:
    """UPDATE of a Deployment labelled saferollout.dev/target: a pod template other than the approved one is held
    (spec.paused: true) in this very write, and the stable one back ends the hold (core.templates.admit). Its
    decision needs no API call: everything is in the old and new objects."""
    old = kwargs.get("old")
    changes = admit(dict(old) if old is not None else None, dict(body))
    for key, value in changes.items():
        patch[key] = value
    if changes.get("spec", {}).get("paused") is not None:
        logger.info("admission: spec.paused=%s (%s)", changes["spec"]["paused"], changes.get("metadata"))
    rollout = (body.get("metadata", {}).get("labels") or {}).get(TARGET_LABEL)
    if rollout and namespace:
        _wake_later(namespace, rollout)


def _wake_later(namespace: str, name: str) -> None:
    """The write is not stored yet while we answer: the rollout looks a little later (and again, in case)."""
    uid = _uids.get((namespace, name))
    if uid is None:
        return
    loop = asyncio.get_running_loop()
    for delay in (0.3, 1.5):
        loop.call_later(delay, lambda: _wakeups[uid].set() if uid in _wakeups else None)


CONFIG_WEBHOOK_ID = "config-copies"  # https://<host>:<port>/config-copies


async def config_copies(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
    """CREATE of a pod of a trackConfig target (its template's label saferollout.dev/config): its ConfigMap and
    Secret references are renamed to the copies of that config version (core.configs.pod_patch), so an edit of
    the objects Git names never reaches a stable pod unanalysed. No API call: the label names the copies."""
    changes = pod_patch(dict(body))
    for key, value in changes.items():
        patch[key] = value
    if changes:
        logger.debug("admission: pod given the copies of config %s",
                     ((body.get("metadata") or {}).get("labels") or {}).get(CONFIG_LABEL))


if CFG.webhook_port:  # registered only when served: kopf refuses admission handlers without a server
    kopf.on.mutate("apps", "v1", "deployments", id=WEBHOOK_ID, operations=["UPDATE"],
                   labels={TARGET_LABEL: kopf.PRESENT})(hold_template)
    kopf.on.mutate("v1", "pods", id=CONFIG_WEBHOOK_ID, operations=["CREATE"],
                   labels={CONFIG_LABEL: kopf.PRESENT})(config_copies)


def quiet_gc() -> None:
    """A full collection walks every object with the GIL held: 0.2-0.3 s at 1000 rollouts, every 5-6 s with the
    default thresholds, and each one made the analyses due meanwhile late. What was imported lives as long as the
    process: frozen, it is never walked again. The oldest generation is collected after 1000 collections of the
    middle one instead of 10 (minutes apart at 1000 rollouts); the young generations, where short-lived cycles
    die, keep their thresholds."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 1000)


async def _heartbeat() -> None:
    """Liveness: the event loop turns and the rollouts' pool takes work. Sleeping rollouts do not tick, so the
    ticks themselves cannot be the sign of life."""
    loop = asyncio.get_running_loop()
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(loop.run_in_executor(POOL, observability.heartbeat), 60)
        await asyncio.sleep(10)


def _status_dict(status: SafeRolloutStatus) -> dict[str, Any]:
    """Every string of the status is masked once more: whatever an adapter let through stops here."""
    out: dict[str, Any] = _masked(status.model_dump(by_alias=True, exclude_none=True, mode="json"))
    return out


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


MAX_POLL = 4.0  # seconds: the slowest a rollout that waits on the cluster looks again
POOL = ThreadPoolExecutor(CFG.workers, thread_name_prefix="rollout")
WRITES = ThreadPoolExecutor(CFG.workers, thread_name_prefix="status")  # a decision's last write, off POOL
# what a deletion undoes waits for the decision in flight (a snapshot may take minutes): never on POOL's threads
RELEASES = ThreadPoolExecutor(2, thread_name_prefix="deleted")
_wakeups: dict[str, asyncio.Event] = {}  # uid -> set when the object changed in a way the core must see now
_written: dict[str, SafeRolloutStatus] = {}  # uid -> the status this process wrote last (the watch may lag it)
_seen: dict[str, tuple[Any, ...]] = {}  # uid -> what of the object, when it changes, wakes its rollout
_uids: dict[tuple[str, str], str] = {}  # (namespace, name) -> uid: the admission webhook wakes a rollout by name
# uid -> when its object was deleted. A decision in flight at that moment (a thread of POOL) finishes first; the
# release of the target waits for it (_turns), so no late decision labels the target again after the release, which
# would leave a Deployment that the webhook holds with no SafeRollout to release it.
_gone: dict[str, float] = {}
_turns: dict[str, threading.Lock] = {}  # uid -> held while a decision for it runs
GONE_KEEP = 3600.0  # seconds a deleted uid is remembered (a late event of it is at most a resync away)


# a run in progress (a snapshot may take minutes) finishes before the daemon exits; only then is it cancelled
@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_backoff=300.0, cancellation_timeout=5.0)
async def rollout(name: str, namespace: str | None, uid: str, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta,
                  logger: kopf.Logger, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """One rollout: decide and act, then sleep until the core's next deadline or a change of the object.

    A kopf timer would tick every second whether or not anything is due; at 1000 rollouts most of those 1000
    ticks a second are idle and queue up in front of the due ones. kopf stops the daemon when the object goes
    and when a peer with a higher priority takes over.
    """
    assert namespace is not None  # the resource is namespaced
    wake = _wakeups.setdefault(uid, asyncio.Event())
    _uids[namespace, name] = uid
    loop = asyncio.get_running_loop()
    errors = idle_polls = 0
    stop = asyncio.ensure_future(stopped.wait())
    try:
        while not stop.done():
            wake.clear()
            try:
                done = await loop.run_in_executor(POOL, reconcile, RolloutRef(namespace, name, uid),
                                                  dict(spec), dict(status), dict(meta))
                if done.last_write is not None:
                    await loop.run_in_executor(WRITES, done.last_write)
                errors = 0
                after, idle_polls = backoff(done.after, done.wrote, idle_polls, CFG.tick_seconds)
                if after is not None:  # counted from the decision: the status write already took some of it
                    after = max(0.0, done.decided_at + after - time.monotonic())
                if "template" not in spec:  # the target's template is the version: look at it every source poll
                    after = min(after if after is not None else CFG.source_poll_seconds, CFG.source_poll_seconds)
            except Exception as e:
                errors += 1
                after = min(CFG.tick_seconds * 2 ** errors, CFG.max_sleep)
                observability.RECONCILE_ERRORS.inc()
                logger.error("reconcile failed (%d in a row; next in %.0fs): %s", errors, after, redact(str(e)))
            woken = asyncio.ensure_future(wake.wait())
            await asyncio.wait((woken, stop), timeout=CFG.max_sleep if after is None else min(after, CFG.max_sleep),
                               return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
    finally:
        stop.cancel()
        observability.forget(f"{namespace}/{name}")  # deleted, or a peer works it now: this replica counts it no more
        for table in (_wakeups, _written, _seen):
            table.pop(uid, None)
        turn = _turns.get(uid)
        if turn is not None and not turn.locked():  # a decision kopf gave up waiting for may still hold it
            del _turns[uid]
        if _uids.get((namespace, name)) == uid:
            del _uids[namespace, name]


def backoff(after: float | None, wrote: bool, idle_polls: int, tick: float) -> tuple[float | None, int]:
    """A poll that found nothing moved (a workload still rolling out) asks less often next time: 1, 2, 4 s.
    1000 rollouts waiting on their canaries would otherwise read 1000 Deployments a second."""
    idle_polls = idle_polls + 1 if after is not None and after <= tick and not wrote else 0
    if idle_polls > 1 and after is not None:
        after = max(after, min(tick * 2 ** (idle_polls - 1), MAX_POLL))
    return after, idle_polls


@kopf.on.event(GROUP, VERSION, PLURAL)
async def changed(event: kopf.RawEvent, uid: str, name: str, namespace: str | None, meta: kopf.Meta,
                  spec: kopf.Spec, **_: Any) -> None:
    """A new generation (spec) or new annotations (commands) wake the rollout now; its own status writes do not."""
    if event.get("type") == "DELETED":
        observability.forget(f"{namespace}/{name}")
        forget((namespace or "", name))
        now = time.monotonic()
        for old in [u for u, t in _gone.items() if now - t > GONE_KEEP]:
            del _gone[old]
        _gone[uid] = now
        if namespace:
            last = _written.get(uid) or (event.get("object") or {}).get("status") or {}
            await asyncio.get_running_loop().run_in_executor(
                RELEASES, _deleted, RolloutRef(namespace, name, uid), dict(spec), last)
        return
    seen = (meta.get("generation"), tuple(sorted((meta.get("annotations") or {}).items())))
    if _seen.get(uid, seen) != seen and uid in _wakeups:
        _wakeups[uid].set()
    _seen[uid] = seen


class Reconciled(NamedTuple):
    """The daemon waits from `decided_at`, not from the return: the status write and the way back to the event
    loop (tens of ms under load) come out of the wait, or every analysis would start that much late.

    A decision with nothing left to do after its status write (every analysis that passes) hands that write back
    as `last_write`, and the daemon runs it on WRITES before it sleeps. The API server slows down in bursts
    (a PATCH taking 0.2-0.3 s), and with that write on POOL the analyses due meanwhile queued for a thread: at
    1000 rollouts, p99 0.96 s waiting for a thread against 0.15 s with it on WRITES. Nothing reads the write
    before the daemon's next turn, and a write that comes before an action is still made first, on POOL."""

    after: float | None  # seconds from the last decision until the core wants to run again; None: on change only
    decided_at: float  # time.monotonic() of that decision
    wrote: bool
    last_write: Callable[[], None] | None = None


def reconcile(ref: RolloutRef, spec: dict[str, Any], status: dict[str, Any], meta: dict[str, Any]) -> Reconciled:
    """One decision at a time per rollout, and none after its object is gone."""
    with _turns.setdefault(ref.uid, threading.Lock()):
        if ref.uid in _gone:
            return Reconciled(None, time.monotonic(), False)
        return _reconcile(ref, spec, status, meta)


def _reconcile(ref: RolloutRef, spec: dict[str, Any], status: dict[str, Any], meta: dict[str, Any]) -> Reconciled:
    """Read the object, run the core's loop with the executor."""
    generation = meta.get("generation")
    try:
        if len(ref.name) > NAME_MAX:  # the CRD refuses it too; the name becomes a label value
            raise ValueError(f"metadata.name: at most {NAME_MAX} characters (it becomes a label value)")
        parsed = SafeRolloutSpec.model_validate(spec)
    except ValueError as e:  # pydantic's ValidationError is one
        _written.pop(ref.uid, None)
        _invalid(ref, spec, status, generation, e)
        return Reconciled(None, time.monotonic(), True)
    current = _written.get(ref.uid) or SafeRolloutStatus.model_validate(status)
    holder = {"status": current}
    executor = Executor(ref, parsed, CFG, lambda: holder["status"])
    command = (meta.get("annotations") or {}).get(COMMAND_ANNOTATION)

    decided = [time.monotonic()]
    target: list[a.TargetView | None] = []  # spec.template omitted: read once, and again after a write to it
    templates = analysis_templates.read(wanted(parsed, ref.namespace))  # the shared ones its metrics name

    def inputs(results: list[a.Result]) -> Inputs:
        if parsed.target_template and (not target or any(
                isinstance(r, a.Outcome) and isinstance(r.action, a.TARGET_WRITES) for r in results)):
            target[:] = [_target_view(ref, parsed)]
        decided[0] = time.monotonic()
        return Inputs(now=datetime.now(UTC), name=ref.name, generation=generation, command=command, results=results,
                      target=target[0] if target else None, namespace=ref.namespace, templates=templates)

    unwritten: list[SafeRolloutStatus] = []  # the decision's status, written before the next act or by the daemon

    def write(new: SafeRolloutStatus) -> None:
        unwritten[:] = [new]

    def flush() -> None:
        if not unwritten:
            return
        new = unwritten.pop()
        with observability.STATUS_WRITE_SECONDS.time():
            kube.write_status(ref, _status_dict(new))
        _written[ref.uid] = new
        observability.observe(f"{ref.namespace}/{ref.name}", holder["status"], new, parsed.analysis.interval_seconds)
        holder["status"] = new
        if new.phase != holder.get("logged_phase", current.phase):
            log.info("%s/%s phase %s: %s", ref.namespace, ref.name, new.phase.value if new.phase else None, new.message)
            holder["logged_phase"] = new.phase  # type: ignore[assignment]

    def execute(action: a.Action) -> a.Result | None:
        try:
            flush()  # intent first: a restart finds what was about to be done
        except Exception:
            # a refused status write must not keep traffic on the canary: the revert goes out regardless,
            # and the error goes on to the daemon, which tries the whole reconcile again
            if isinstance(action, a.SetWeight) and action.weight == 0:
                log.error("status write failed; reverting traffic anyway")
                executor(action)
            raise
        return executor(action)

    def last_write() -> None:
        with naming(ref.namespace, ref.name):
            flush()

    with naming(ref.namespace, ref.name), observability.RECONCILE_SECONDS.time():
        decision = drive(parsed, current, inputs, execute, write, CFG.settings)
        return Reconciled(decision.wake_after, decided[0], decision.status is not current,
                          last_write if unwritten else None)


def _deleted(ref: RolloutRef, spec: dict[str, Any], last: SafeRolloutStatus | dict[str, Any]) -> None:
    """After the decision in flight, if any: a rollout deleted mid-way sends its traffic back to the stable version
    (the canary it owns is garbage-collected, and a weight left on the route would go nowhere), and a target whose
    template is the version is released (no SafeRollout releases it any more: the webhook must not hold it)."""
    with _turns.setdefault(ref.uid, threading.Lock()):
        try:
            status = last if isinstance(last, SafeRolloutStatus) else SafeRolloutStatus.model_validate(last)
        except ValueError:
            status = SafeRolloutStatus()
        try:
            parsed = SafeRolloutSpec.model_validate(spec)
        except ValueError:  # made invalid after traffic moved: revert through the router it still names
            if status.weight or status.routing is not None or (last if isinstance(last, dict) else {}).get("weight"):
                _revert_traffic(ref, spec)
            _turns.pop(ref.uid, None)
            return
        moved = status.weight or status.routing is not None  # a match or mirror stage has weight 0
        if moved or (status.phase is not None and not status.phase.terminal):
            during = status.phase.value if status.phase else "-"
            with naming(ref.namespace, ref.name):
                result = Executor(ref, parsed, CFG, lambda: status)(a.SetWeight(0))
            if isinstance(result, a.Outcome) and result.ok:
                log.info("%s/%s deleted during %s: canary weight 0", ref.namespace, ref.name, during)
            else:
                log.error("%s/%s deleted during %s: setting canary weight 0 FAILED: %s", ref.namespace, ref.name,
                          during, result.message if isinstance(result, a.Outcome) else result)
        if parsed.target_template:
            _release(ref, parsed.target_ref.name)
        _turns.pop(ref.uid, None)


def _release(ref: RolloutRef, target: str) -> None:
    try:
        if workloads.let_go(ref, target):
            log.info("%s/%s deleted: Deployment %s is no longer held by SafeRollout", ref.namespace, ref.name, target)
    except Exception as e:  # best effort: the docs say how to do it by hand
        log.warning("%s/%s deleted: could not release Deployment %s: %s", ref.namespace, ref.name, target,
                    redact(kube.error_text(e)))


def _target_view(ref: RolloutRef, spec: SafeRolloutSpec) -> a.TargetView | None:
    """None when it cannot be read: the core waits (and says so) rather than deciding on nothing."""
    try:
        return workloads.target_view(ref, spec)
    except Exception as e:
        log.warning("%s/%s: reading the target failed: %s", ref.namespace, ref.name, redact(kube.error_text(e)))
        return None


def _timers_without_finalizer() -> None:
    """kopf puts a finalizer on every object that has a timer, so deleting a SafeRollout would hang whenever no
    operator runs (uninstalled, crashed, scaled to zero). Nothing here needs one: the timer stops with the object
    and the garbage collector removes what the rollout owns. kopf has no public switch, so the flag is cleared on
    our registered timer (a test checks it)."""
    registry = kopf.get_default_registry()._spawning
    registry._handlers = [dataclasses.replace(h, requires_finalizer=False) for h in registry._handlers]


_timers_without_finalizer()


def _invalid(ref: RolloutRef, spec: dict[str, Any], status: dict[str, Any], generation: int | None,
             e: ValueError) -> None:
    """A spec the CRD let through but the models refuse: say so once; a canary with traffic gets none."""
    if (status or {}).get("observedGeneration") == generation and (status or {}).get("phase") == "Blocked":
        return
    problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()[:5]) \
        if isinstance(e, ValidationError) else str(e)
    message = redact(f"invalid spec: {problems}")
    new = {**(status or {}), "phase": "Blocked", "message": message, "observedGeneration": generation}
    if new.get("weight") or new.get("routing"):  # a match or mirror stage sends requests at weight 0
        if _revert_traffic(ref, spec):
            new["weight"], new["routing"], message = 0, None, message + "; all traffic is back on the stable version"
        else:
            message += "; traffic could NOT be sent back to the stable version: its router is invalid too"
        new["message"] = message
    kube.write_status(ref, new)
    events.emit(ref, "InvalidSpec", message, "Warning")


def _revert_traffic(ref: RolloutRef, spec: dict[str, Any]) -> bool:
    """Weight 0 through the router the invalid spec still names, if that part of it is valid."""
    try:
        # the routers read only targetRef and strategy: the rest may stay unvalidated
        minimal = SafeRolloutSpec.model_construct(
            target_ref=TargetRef.model_validate(spec.get("targetRef")),
            strategy=Strategy.model_validate(spec.get("strategy")))
        router_for(minimal).set_weight(ref, minimal, 0)
    except Exception as e:
        log.error("invalid spec: could not revert traffic: %s", redact(kube.error_text(e)))
        return False
    return True
