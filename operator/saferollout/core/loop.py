"""The one loop that turns decisions into acts: write status, act, feed results back.

It lives beside the core (it does no I/O itself: the caller passes `execute` and `write`) so that the kopf handler
and the unit tests' simulated world run exactly the same sequence.
"""

from __future__ import annotations

from collections.abc import Callable

from saferollout.core import actions as a
from saferollout.core.engine import Decision, Inputs, Settings, decide
from saferollout.core.models import SafeRolloutSpec, SafeRolloutStatus

MAX_STEPS = 40


def drive(
    spec: SafeRolloutSpec,
    status: SafeRolloutStatus,
    inputs: Callable[[list[a.Result]], Inputs],
    execute: Callable[[a.Action], a.Result | None],
    write: Callable[[SafeRolloutStatus], None],
    settings: Settings | None = None,
) -> Decision:
    """One reconcile: decide, persist intent, act, repeat while acts produce results to decide on.

    Returns the last decision: its status is what was written, its wake_after when to call again.
    """
    settings = settings or Settings()
    results: list[a.Result] = []
    for _ in range(MAX_STEPS):
        decision = decide(spec, status, inputs(results), settings)
        if decision.status != status:
            write(decision.status)  # before acting: a restart finds the intent
            status = decision.status
        results = []
        for action in decision.actions:
            result = execute(action)
            if result is not None:
                results.append(result)
        if not results:
            return decision
    # still busy after MAX_STEPS: carry on soon
    return Decision(status, [], min(decision.wake_after or settings.poll_seconds, settings.poll_seconds))
