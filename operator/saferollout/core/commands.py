"""What a person asks through the saferollout.dev/command annotation: abort, promote, resume, retry."""

from __future__ import annotations

from saferollout.core import transitions as go
from saferollout.core.models import Phase, Severity
from saferollout.core.phases import bluegreen
from saferollout.core.run import Run

COMMANDS = ("abort", "promote", "resume", "retry")
ACTIVE = (Phase.pending, Phase.preflight, Phase.progressing, Phase.paused, Phase.promoting)


def take(run: Run) -> str | None:
    """The verb of a command not seen before (each carries a unique id), or None."""
    cmd = run.inp.command
    if not cmd or cmd == run.s.last_command:
        return None
    run.s.last_command = cmd
    verb = cmd.split("/", 1)[0]
    if verb not in COMMANDS:
        run.event("CommandIgnored", f"unknown command {verb!r}; expected one of {', '.join(COMMANDS)}", True)
        return None
    return verb


def carry_out(run: Run, verb: str) -> None:
    """abort, promote and resume; retry starts a new attempt and is the engine's (it needs the template)."""
    phase = run.s.phase
    if verb == "abort" and phase in ACTIVE:
        run.history("abort", message="aborted by a person")
        go.rollback(run, "Aborted", "aborted by a person", Severity.high)
    elif verb == "promote" and run.blue_green and run.s.stage == 0 and phase in (Phase.progressing, Phase.paused):
        run.history("promote", message="switch requested by a person")
        bluegreen.switch(run, "promotion requested")
    elif verb == "promote" and phase in (Phase.progressing, Phase.paused):
        run.history("promote", message="promoted by a person")
        run.event("PromotionRequested", "full promotion requested; remaining stages skipped")
        go.promote(run)
    elif verb == "resume" and phase == Phase.paused and run.s.pause_reason in ("breach", "inconclusive"):
        go.resume(run, "resumed by a person")
    else:
        run.event("CommandIgnored", f"{verb} does nothing in phase {phase.value if phase else 'none'}", True)
