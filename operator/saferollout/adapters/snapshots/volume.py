"""CSI VolumeSnapshots of the PersistentVolumeClaim that holds a rollout's data (snapshot.storage.k8s.io/v1).

A snapshot is a VolumeSnapshot `<rollout>-<id>` of `database.volumeSnapshot.pvc`; the CSI driver cuts it, so it is
crash-consistent (what a power cut would leave), not application-consistent. A restore never writes into a
volume: it snapshots the claim the target mounts now (`<rollout>-pre-restore-<id>`, kept, so what the canary wrote
can still be recovered), creates a new claim `<pvc>-restored-<id>` from the snapshot and points the target
Deployment's pod volume at it; the old claim is left untouched. Everything created carries the label
`saferollout.dev/rollout`. Nothing gets an owner reference: snapshots and data must outlive the SafeRollout.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import secrets
import time
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.utils.quantity import parse_quantity

from saferollout.adapters import kube
from saferollout.adapters.snapshotting import RestoreOutcome, SnapshotInfo
from saferollout.core import models
from saferollout.core.models import VolumeSnapshotDatabase

GROUP, VERSION, PLURAL = "snapshot.storage.k8s.io", "v1", "volumesnapshots"
ROLLOUT = "saferollout.dev/rollout"
ROLE = "saferollout.dev/snapshot-role"  # snapshot | pre-restore | restored | verify
SNAPSHOT_ID = "saferollout.dev/snapshot-id"
SMP = "application/strategic-merge-patch+json"
log = logging.getLogger(__name__)


def k8s_name(text: str, limit: int = 253) -> str:
    """A valid object name for `text`: snapshot ids carry upper case (`snap-1-20260101T000000`), names may not."""
    name = re.sub(r"[^a-z0-9.-]+", "-", text.lower()).strip("-.")
    if len(name) > limit:  # keep it unique: the cut is replaced by a digest of the whole
        name = name[: limit - 9].rstrip("-.") + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return name or hashlib.sha256(text.encode()).hexdigest()[:16]


def quantity_bytes(value: str | int | None) -> int:
    """Bytes in a Kubernetes quantity (`1Gi`, `500M`, `1e9`, 1024), rounded up; 0 when absent."""
    if value is None or value == "":
        return 0
    ceiled: int = math.ceil(parse_quantity(value))  # parse_quantity gives a Decimal
    return ceiled


def identity(uid: str, content: str) -> str:
    """sha256 of the VolumeSnapshot's uid and its bound VolumeSnapshotContent: names this very snapshot, not its data."""
    return hashlib.sha256(f"{uid}/{content}".encode()).hexdigest()


def claim_from_snapshot(name: str, source: dict[str, Any], snapshot: dict[str, Any], labels: dict[str, str],
                        annotations: dict[str, str]) -> dict[str, Any]:
    """A PVC like `source` (class, access modes, mode, size at least the snapshot's restoreSize) filled from `snapshot`."""
    src = source.get("spec") or {}
    request = ((src.get("resources") or {}).get("requests") or {}).get("storage")
    restore_size = (snapshot.get("status") or {}).get("restoreSize")
    storage = restore_size if quantity_bytes(restore_size) > quantity_bytes(request) else request
    spec: dict[str, Any] = {
        "accessModes": list(src.get("accessModes") or ["ReadWriteOnce"]),
        "resources": {"requests": {"storage": str(storage or "1Gi")}},
        "dataSource": {"apiGroup": GROUP, "kind": "VolumeSnapshot", "name": snapshot["metadata"]["name"]},
    }
    for key in ("storageClassName", "volumeMode"):
        if src.get(key) is not None:
            spec[key] = src[key]
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "labels": labels, "annotations": annotations}, "spec": spec}


def _ignore_404(e: ApiException) -> None:
    if e.status != 404:
        raise e


class VolumeSnapshotProvider:
    def __init__(self, namespace: str, rollout: str, cfg: VolumeSnapshotDatabase, *, target: str | None = None,
                 ready_timeout: float = 120.0, bind_timeout: float = 30.0, poll: float = 1.0) -> None:
        """`target` is the Deployment restore repoints; by default it is read from the SafeRollout's targetRef."""
        self.ns, self.rollout, self.cfg, self._target = namespace, rollout, cfg, target
        self.ready_timeout, self.bind_timeout, self.poll = ready_timeout, bind_timeout, poll

    # ------------------------------------------------------------------------------------------------- names

    def snapshot_name(self, snapshot_id: str) -> str:
        return k8s_name(f"{self.rollout}-{snapshot_id}")

    def pre_restore_name(self, snapshot_id: str) -> str:
        return k8s_name(f"{self.rollout}-pre-restore-{snapshot_id}")

    def restored_claim(self, snapshot_id: str) -> str:
        return k8s_name(f"{self.cfg.pvc}-restored-{snapshot_id}")

    def _labels(self, role: str) -> dict[str, str]:
        return {ROLLOUT: self.rollout, ROLE: role}

    # ----------------------------------------------------------------------------------------------- helpers

    def _get_snapshot(self, name: str) -> dict[str, Any] | None:
        try:
            vs: dict[str, Any] = kube.custom().get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
        except ApiException as e:
            _ignore_404(e)
            return None
        return vs

    def _ensure_snapshot(self, name: str, pvc: str, snapshot_id: str, role: str) -> dict[str, Any]:
        """The VolumeSnapshot `name` of `pvc`, created unless it exists: a retry or a restart never takes a second."""
        for _ in range(2):
            vs = self._get_snapshot(name)
            if vs is not None:
                source = (vs.get("spec") or {}).get("source") or {}
                if source.get("persistentVolumeClaimName") != pvc:
                    raise ValueError(f"VolumeSnapshot {name} exists but is of {source or 'something else'}, not of claim {pvc}")
                return vs
            spec: dict[str, Any] = {"source": {"persistentVolumeClaimName": pvc}}
            if self.cfg.volume_snapshot_class:
                spec["volumeSnapshotClassName"] = self.cfg.volume_snapshot_class
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VolumeSnapshot",
                    "metadata": {"name": name, "labels": self._labels(role), "annotations": {SNAPSHOT_ID: snapshot_id}},
                    "spec": spec}
            try:
                created: dict[str, Any] = kube.custom().create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)
                return created
            except ApiException as e:
                if e.status != 409:  # 409: created meanwhile, read it again
                    raise
        raise RuntimeError(f"VolumeSnapshot {name} could not be created or read")

    def _wait_ready(self, name: str) -> dict[str, Any]:
        """Poll, bounded, until the snapshot controller reports readyToUse; its errors may be transient, so keep waiting."""
        deadline = time.monotonic() + self.ready_timeout
        last_error = ""
        while True:
            vs = self._get_snapshot(name)
            if vs is None:
                raise LookupError(f"VolumeSnapshot {name} disappeared while waiting for it")
            st = vs.get("status") or {}
            if st.get("readyToUse") is True:
                return vs
            last_error = str((st.get("error") or {}).get("message") or last_error)
            if time.monotonic() >= deadline:
                why = f": {last_error}" if last_error else " (is a CSI snapshot controller running?)"
                raise TimeoutError(f"VolumeSnapshot {name} not readyToUse after {self.ready_timeout:g}s{why}")
            time.sleep(self.poll)

    def _ready_snapshot(self, snapshot_id: str) -> dict[str, Any]:
        name = self.snapshot_name(snapshot_id)
        vs = self._get_snapshot(name)
        if vs is None:
            raise LookupError(f"VolumeSnapshot {name} not found")
        if (vs.get("status") or {}).get("readyToUse") is not True:
            raise ValueError(f"VolumeSnapshot {name} is not readyToUse")
        return vs

    def _claim(self, name: str) -> dict[str, Any] | None:
        try:
            pvc = kube.core().read_namespaced_persistent_volume_claim(name, self.ns)
        except ApiException as e:
            _ignore_404(e)
            return None
        out: dict[str, Any] = kube.api().sanitize_for_serialization(pvc)
        return out

    def _create_claim(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create the claim and insist the API server kept the snapshot as its dataSource (it drops unknown kinds)."""
        name = body["metadata"]["name"]
        try:
            kube.core().create_namespaced_persistent_volume_claim(self.ns, body)
        except ApiException as e:
            if e.status != 409:
                raise
        pvc = self._claim(name)
        if pvc is None:
            raise LookupError(f"claim {name} vanished right after it was created")
        if (pvc["spec"].get("dataSource") or {}).get("name") != body["spec"]["dataSource"]["name"]:
            raise ValueError(f"claim {name} does not restore from VolumeSnapshot {body['spec']['dataSource']['name']}: "
                             "its spec.dataSource is missing or names another source")
        return pvc

    def _delete_claim(self, name: str) -> None:
        try:
            kube.core().delete_namespaced_persistent_volume_claim(name, self.ns)
        except ApiException as e:
            _ignore_404(e)

    def target(self) -> str:
        if self._target is None:
            obj = kube.custom().get_namespaced_custom_object(models.GROUP, models.VERSION, self.ns, models.PLURAL, self.rollout)
            self._target = str(obj["spec"]["targetRef"]["name"])
        return self._target

    def _deployment(self) -> dict[str, Any]:
        dep = kube.apps().read_namespaced_deployment(self.target(), self.ns)
        out: dict[str, Any] = kube.api().sanitize_for_serialization(dep)
        return out

    def _volume(self, dep: dict[str, Any]) -> tuple[str, str]:
        """(pod volume name, claim it mounts now): `volume` by name, else the one that mounts the PVC or a restore of it."""
        volumes = dep["spec"]["template"]["spec"].get("volumes") or []
        claims = {v["name"]: (v.get("persistentVolumeClaim") or {}).get("claimName") for v in volumes}
        if self.cfg.volume:
            claim = claims.get(self.cfg.volume)
            if not claim:
                raise LookupError(f"Deployment {self.target()} has no PVC volume named {self.cfg.volume!r}")
            return self.cfg.volume, claim
        pvc = self.cfg.pvc
        found = [(v, c) for v, c in claims.items() if c and (c == pvc or c.startswith(f"{pvc}-restored-"))]
        if len(found) != 1:
            how = "no volume" if not found else f"volumes {', '.join(v for v, _ in found)}"
            raise LookupError(f"Deployment {self.target()} has {how} mounting claim {pvc}; set database.volumeSnapshot.volume")
        return found[0]

    # --------------------------------------------------------------------------------------------- interface

    def reachable(self, timeout: float) -> None:
        """The claim exists and is Bound, or Pending only because its class binds on the first pod (WaitForFirstConsumer)."""
        try:
            obj = kube.core().read_namespaced_persistent_volume_claim(self.cfg.pvc, self.ns, _request_timeout=timeout)
        except ApiException as e:
            if e.status == 404:
                raise LookupError(f"PersistentVolumeClaim {self.cfg.pvc} not found in namespace {self.ns}") from e
            raise
        pvc: dict[str, Any] = kube.api().sanitize_for_serialization(obj)
        phase = (pvc.get("status") or {}).get("phase")
        if phase == "Bound":
            return
        cls = pvc["spec"].get("storageClassName")
        if phase == "Pending" and cls:
            sc = client.StorageV1Api(kube.api()).read_storage_class(cls, _request_timeout=timeout)
            if sc.volume_binding_mode == "WaitForFirstConsumer":
                return
        raise RuntimeError(f"PersistentVolumeClaim {self.cfg.pvc} is {phase or 'without a phase'}, not Bound")

    def take(self, snapshot_id: str) -> SnapshotInfo:
        name = self.snapshot_name(snapshot_id)
        self._ensure_snapshot(name, self.cfg.pvc, snapshot_id, "snapshot")
        vs = self._wait_ready(name)
        st, meta = vs.get("status") or {}, vs["metadata"]
        content = st.get("boundVolumeSnapshotContentName") or ""
        return SnapshotInfo(location=f"volumesnapshot/{self.ns}/{name}", size_bytes=quantity_bytes(st.get("restoreSize")),
                            sha256=identity(meta["uid"], content), tables=0,
                            taken_at=str(st.get("creationTime") or meta.get("creationTimestamp")))

    def verify(self, snapshot_id: str) -> str:
        """Provision a scratch claim from the snapshot, then delete it.

        Bound proves the CSI driver made a volume out of the snapshot, so the snapshot exists on the storage and
        can be restored. Merely accepted (Pending with the snapshot as dataSource, e.g. WaitForFirstConsumer or a
        slow provisioner) proves only that the API server and the snapshot objects agree. Neither reads the data:
        that it is the state the application expects, or even mountable by it, cannot be seen from here.
        """
        vs = self._ready_snapshot(snapshot_id)
        source = self._claim(self.cfg.pvc)
        if source is None:
            raise LookupError(f"PersistentVolumeClaim {self.cfg.pvc} not found: its class and size shape the scratch claim")
        try:  # leftovers of an interrupted verify
            leftovers = kube.core().list_namespaced_persistent_volume_claim(
                self.ns, label_selector=f"{ROLLOUT}={self.rollout},{ROLE}=verify").items
            for claim in leftovers:  # one by one: the operator is not granted deletecollection
                kube.core().delete_namespaced_persistent_volume_claim(claim.metadata.name, self.ns)
        except ApiException as e:
            _ignore_404(e)
        scratch = k8s_name(f"{self.rollout}-verify-{snapshot_id}", 243) + "-" + secrets.token_hex(4)
        body = claim_from_snapshot(scratch, source, vs, self._labels("verify"), {SNAPSHOT_ID: snapshot_id})
        try:
            self._create_claim(body)
            deadline = time.monotonic() + self.bind_timeout
            while True:
                pvc = self._claim(scratch)
                phase = ((pvc or {}).get("status") or {}).get("phase")
                if phase == "Bound":
                    return f"scratch claim {scratch} bound from VolumeSnapshot {vs['metadata']['name']}: it restores"
                if phase == "Lost" or time.monotonic() >= deadline:
                    break
                time.sleep(self.poll)
            failed = [e.message for e in kube.core().list_namespaced_event(
                self.ns, field_selector=f"involvedObject.kind=PersistentVolumeClaim,involvedObject.name={scratch}").items
                if e.type == "Warning" and e.reason in ("ProvisioningFailed", "ClaimLost")]
            if failed or phase == "Lost":
                raise RuntimeError(f"scratch claim from VolumeSnapshot {vs['metadata']['name']} failed: "
                                   f"{failed[-1] if failed else 'claim Lost'}")
            return (f"scratch claim {scratch} accepted with VolumeSnapshot {vs['metadata']['name']} as its dataSource "
                    f"(still {phase or 'Pending'} after {self.bind_timeout:g}s, not provisioned)")
        finally:
            self._delete_claim(scratch)

    def restore(self, snapshot_id: str, pre_restore_dump: str | None) -> RestoreOutcome:
        try:
            vs = self._ready_snapshot(snapshot_id)
            dep = self._deployment()
            volume, current = self._volume(dep)
        except (ApiException, LookupError, ValueError) as e:
            return RestoreOutcome(False, f"nothing restored: {kube.error_text(e)}", pre_restore_dump)
        restored = self.restored_claim(snapshot_id)
        if current == restored:  # a previous attempt got this far; its pre-restore snapshot is the one passed in
            return RestoreOutcome(True, f"Deployment {self.target()} already mounts {restored}", pre_restore_dump)
        pre = pre_restore_dump or self.pre_restore_name(snapshot_id)
        try:  # keep what the canary wrote, before anything is touched
            self._ensure_snapshot(pre, current, snapshot_id, "pre-restore")
            self._wait_ready(pre)
        except (ApiException, LookupError, ValueError, TimeoutError, RuntimeError) as e:
            return RestoreOutcome(False, f"pre-restore snapshot {pre} of claim {current} failed, nothing restored: "
                                  f"{kube.error_text(e)}", pre)
        try:
            source = self._claim(self.cfg.pvc) or self._claim(current)
            if source is None:
                raise LookupError(f"neither claim {self.cfg.pvc} nor {current} exists to shape the restored claim")
            self._create_claim(claim_from_snapshot(restored, source, vs, self._labels("restored"), {SNAPSHOT_ID: snapshot_id}))
            patch = {"spec": {"template": {"spec": {"volumes": [
                {"name": volume, "persistentVolumeClaim": {"claimName": restored}}]}}}}
            kube.apps().patch_namespaced_deployment(self.target(), self.ns, patch, _content_type=SMP)
        except (ApiException, LookupError, ValueError) as e:
            return RestoreOutcome(False, f"restore to claim {restored} failed: {kube.error_text(e)}", pre)
        if not self.equals(snapshot_id):
            return RestoreOutcome(False, f"Deployment {self.target()} does not mount {restored} after the patch", pre)
        return RestoreOutcome(True, f"Deployment {self.target()} volume {volume} now mounts {restored}, restored from "
                              f"VolumeSnapshot {vs['metadata']['name']}; claim {current} is kept, saved as {pre}", pre)

    def equals(self, snapshot_id: str) -> bool:
        """The target mounts the claim restored from this snapshot, and that claim exists."""
        restored = self.restored_claim(snapshot_id)
        return self._volume(self._deployment())[1] == restored and self._claim(restored) is not None

    def prune(self, keep: int, current: str) -> list[str]:
        """Oldest first, beyond `keep`; never `current`, never a pre-restore snapshot (it holds the canary's writes)."""
        items = kube.custom().list_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, label_selector=f"{ROLLOUT}={self.rollout},{ROLE}=snapshot")["items"]
        items.sort(key=lambda s: (s["metadata"].get("creationTimestamp") or "", s["metadata"]["name"]))
        keep_name = self.snapshot_name(current)
        doomed = [s["metadata"]["name"] for s in items if s["metadata"]["name"] != keep_name][: max(0, len(items) - keep)]
        for name in doomed:
            try:
                kube.custom().delete_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
            except ApiException as e:
                _ignore_404(e)
        return doomed
