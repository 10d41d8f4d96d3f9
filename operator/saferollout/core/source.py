"""spec.template omitted: the target Deployment's own pod template is the version (a GitOps release).

Each decision gets the target as read for it (`Inputs.target`) and compares the hash of its pod template with the
version the rollout is about (`status.templateHash`) and with the approved one (`status.source.stableTemplateHash`):

- first sight: the template that runs is the stable version (adopted; or, if the webhook already holds a new one,
  that one is rolled out);
- the same hash as the rollout's: nothing new;
- the stable hash again (a revert commit): a rollout under way is abandoned (traffic to stable first, the canary
  removed) and nothing starts; a hold the webhook did not end is ended by one write;
- any other hash: a new version. A rollout under way is abandoned the same way and the new version starts from
  stage 1, so a third version never gets more than the first stage's weight before it is analysed. During a
  rollback the rollback finishes first.
"""

from __future__ import annotations

from saferollout.core import actions as a
from saferollout.core import transitions as go
from saferollout.core.clock import iso
from saferollout.core.models import Phase, RefusedVersion, SourceStatus
from saferollout.core.run import Run, images


def version(run: Run) -> tuple[str, str, bool] | None:
    """(template hash, why, a revert) of a rollout attempt to start now, or None."""
    t = run.inp.target
    if t is None:
        if run.s.phase is None:
            run.s.message = f"waiting to read Deployment {run.spec.target_ref.name}"
        return None
    if run.spec.track_config and not run.settings.webhooks:
        if run.s.phase != Phase.blocked:
            go.block(run, "TrackConfigNeedsWebhook", "trackConfig needs the operator's admission webhooks (the chart's "
                     "webhook.enabled=true): without them the pods read the ConfigMaps and Secrets Git names, and an "
                     "edit would reach the stable pods unanalysed")
        return None
    if t.label != run.inp.name and a.LabelTarget not in run.polled:
        if t.label:  # another SafeRollout's target: never taken over
            if run.s.phase is None:
                go.block(run, "TargetClaimed", f"Deployment {run.spec.target_ref.name} is the target of SafeRollout "
                         f"{t.label} (label saferollout.dev/target); it is not taken over")
            return None
        run.act(a.LabelTarget())
    if run.s.source is None:
        new = _adopt(run, t)
        _keep_held(run, t)
        _track(run, t)
        return new
    _normalise(run, t)
    _keep_held(run, t)
    _track(run, t)
    if t.template_hash == run.s.template_hash or run.s.phase == Phase.rolling_back:
        return None
    if t.template_hash == run.s.source.stable_template_hash:
        return t.template_hash, f"the pod template of Deployment {run.spec.target_ref.name} is the stable " \
            f"version {t.template_hash} again", True
    if t.config is not None and t.template_approved:
        return t.template_hash, f"new version {t.template_hash}: config {t.config} of the ConfigMaps and Secrets " \
            f"that Deployment {run.spec.target_ref.name} references (its pod template is the stable one)", False
    return t.template_hash, f"new pod template {t.template_hash} on Deployment {run.spec.target_ref.name}" + (
        f" (generation {t.generation})" if t.generation is not None else ""), False


def _adopt(run: Run, t: a.TargetView) -> tuple[str, str, bool] | None:
    """The first look: what runs now is the stable version. A template the webhook already holds (its annotation
    names another stable one) is a version to roll out."""
    stable = t.stable_hash or t.template_hash
    moving = run.s.phase is not None and not run.s.phase.terminal  # spec.template was just removed mid-rollout
    run.s.source = SourceStatus(stable_template_hash=stable, application=t.application,
                                stable_images=dict(t.images) if stable == t.template_hash else None,
                                generation=t.generation, revision=t.revision)
    run.s.observed_generation = run.inp.generation
    if moving and t.template_hash == stable:  # undo what that rollout left (weight, canary), start nothing
        return stable, "spec.template was removed: the target's own pod template is the version now", True
    if t.template_hash != stable:
        return t.template_hash, f"Deployment {run.spec.target_ref.name} holds a new pod template {t.template_hash}", False
    run.s.template_hash = stable
    run.s.phase, run.s.step = Phase.succeeded, None
    run.s.message = (f"watching Deployment {run.spec.target_ref.name}: its pod template {stable} "
                     f"({images(t.images)}) is the stable version; a change of it is released as a canary")
    run.s.finished_at = iso(run.now)
    run.condition("Ready", "True", "Adopted", run.s.message)
    run.condition("Progressing", "True", "Adopted", run.s.message)
    run.condition("Degraded", "False", "Adopted", "")
    run.event("TargetAdopted", run.s.message)
    return None


def _keep_held(run: Run, t: a.TargetView) -> None:
    """The webhook's invariant, kept by the operator too: a template other than the approved one is paused. Only
    needed when the webhook did not hold it (not installed, failurePolicy Ignore, the label came after the write);
    the Deployment controller may have replaced some stable pods by then, and the event says so."""
    src = run.s.source
    if src is None or t.paused or t.template_hash == src.stable_template_hash or a.HoldTarget in run.polled:
        return
    if t.config is not None and t.template_approved:  # only the config changed: the stable pods read copies
        return
    if t.label not in (None, run.inp.name):
        return
    run.act(a.HoldTarget(src.stable_template_hash or "", t.template_hash))
    run.polled.add(a.HoldTarget)
    run.event("TemplateNotHeld", f"Deployment {run.spec.target_ref.name} was not paused on the new pod template "
              f"{t.template_hash} (is the admission webhook installed?): paused now; pods it replaced meanwhile "
              "already run the new template", warning=True)


def _normalise(run: Run, t: a.TargetView) -> None:
    """trackConfig switched on for an adopted target: the hashes recorded before were of the template alone (the
    webhook's); the same template is the same stable version now, with the config it runs, not a new one."""
    src = run.s.source
    if src is None or t.raw_hash is None or t.stable_hash is None or src.stable_template_hash != t.raw_hash:
        return
    src.stable_template_hash = t.stable_hash
    if run.s.template_hash == t.raw_hash:
        run.s.template_hash = t.stable_hash


def _track(run: Run, t: a.TargetView) -> None:
    """trackConfig on a target whose pods still read the objects Git names (or whose label names another config
    than the approved version's, written by someone else): one write gives them copies of the config they run now
    (the stable version), so that an edit in place reaches them only by a promotion. The Deployment controller
    then replaces the stable pods once."""
    src = run.s.source
    if not run.spec.track_config or t.config is None or t.config_label == t.config or src is None \
            or t.template_hash != src.stable_template_hash or a.ReleaseTarget in run.polled \
            or t.label not in (None, run.inp.name):
        return
    run.act(a.ReleaseTarget(t.template_hash, "track"))
    run.polled.add(a.ReleaseTarget)
    run.event("ConfigTracked", f"the pods of Deployment {run.spec.target_ref.name} are given copies of config "
              f"version {t.config} (the ConfigMaps and Secrets they reference, as they are now): they are replaced "
              "once, and an edit of those objects is released as a canary")


def apply(run: Run, r: a.Result) -> None:
    """Every write to the target is counted (status.source.targetWrites): the no-fight budget of a rollout."""
    if isinstance(r, a.Outcome) and r.ok and isinstance(r.action, a.TARGET_WRITES) and run.s.source is not None:
        run.s.source.target_writes += 1


def refuse(run: Run, reason: str) -> RefusedVersion:
    """A rollback of a version of the target's template: nothing is written to the target (it stays paused on the
    refused template, which is what Git says); the status says which version was refused."""
    src = run.s.source or SourceStatus()
    run.s.source = src
    refused = RefusedVersion(template_hash=run.s.template_hash or "", generation=src.generation, revision=src.revision,
                             images=dict(run.s.canary_images or {}), at=iso(run.now), reason=reason)
    src.refused = refused
    return refused


def describe(run: Run) -> str:
    """The version being rolled out, in Git terms when known: `template 1a2b... (generation 7, revision abc)`."""
    src = run.s.source
    parts = [f"generation {src.generation}"] if src and src.generation is not None else []
    if src and src.revision:
        parts.append(f"revision {src.revision}")
    return f"pod template {run.s.template_hash}" + (f" ({', '.join(parts)})" if parts else "")
