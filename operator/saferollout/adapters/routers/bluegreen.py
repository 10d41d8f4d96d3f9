"""Blue-green as a router with two weights: 0 = the active Service selects the target's pods (blue),
100 = it selects the new version's pods (green). The switch is one write of the Service's selector; the selector
it had before is kept in an annotation, so switching back restores exactly what the user wrote."""

from __future__ import annotations

import json

from saferollout.adapters import kube
from saferollout.adapters.kube import RolloutRef
from saferollout.adapters.workloads import CANARY_OF, CanaryPlan
from saferollout.core.models import SafeRolloutSpec

ORIGINAL = "saferollout.dev/original-selector"


class BlueGreenRouter:
    def prepare(self, ref: RolloutRef, spec: SafeRolloutSpec, first_weight: int) -> CanaryPlan:
        return CanaryPlan()  # the new version gets all its pods, behind the preview Service only

    def clean_up(self, ref: RolloutRef, spec: SafeRolloutSpec) -> None:
        """Nothing to remove: the active Service is the user's, and switching back restored its selector."""

    def set_weight(self, ref: RolloutRef, spec: SafeRolloutSpec, weight: int) -> None:
        bg = spec.strategy.blue_green
        assert bg is not None
        core = kube.core()

        def write() -> None:
            svc = core.read_namespaced_service(bg.active_service, ref.namespace)
            annotations = dict(svc.metadata.annotations or {})
            current = dict(svc.spec.selector or {})
            original = json.loads(annotations[ORIGINAL]) if ORIGINAL in annotations else current
            green = {CANARY_OF: spec.target_ref.name}
            wanted = green if weight > 0 else original
            if current == wanted and (weight > 0) == (ORIGINAL in annotations):
                return
            if weight > 0:
                annotations[ORIGINAL] = json.dumps(original, sort_keys=True)
            else:
                annotations.pop(ORIGINAL, None)
            body = {"metadata": {"resourceVersion": svc.metadata.resource_version,
                                 "annotations": {**{k: None for k in (svc.metadata.annotations or {})}, **annotations}},
                    "spec": {"selector": {**{k: None for k in current}, **wanted}}}
            core.patch_namespaced_service(bg.active_service, ref.namespace, body,
                                          _content_type="application/merge-patch+json")

        kube.retry_conflicts(write)
