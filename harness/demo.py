"""`make demo`: a healthy and a failing rollout side by side, live, ending with the rollback's incident report.

Each rollout is a scenario (demo/healthy.yaml, demo/failing.yaml), both run side by side by one harness process
(`python -m harness run --workers 2`): one Prometheus, one operator for both (the helm-installed pod on the real
node, when the cluster has it), each side's demo app in its own pods behind Traefik, in its own namespace (the
harness's isolation adds `-s1`, `-s2`). This process only watches both SafeRollouts through the API server and
draws what it sees; it also keeps the incident report, because the harness deletes the namespace when its run
ends.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from harness.isolation import tagged_name
from saferollout.cli import bar, progress, stages_of
from saferollout.core.models import GROUP, PLURAL, VERSION

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = [REPO / "demo" / "healthy.yaml", REPO / "demo" / "failing.yaml"]
WIDTH = 44
TERMINAL = {"Succeeded", "RolledBack", "Failed", "Blocked"}


@dataclass
class Side:
    file: Path
    namespace: str
    name: str
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    obj: dict[str, Any] | None = None
    report: str | None = None
    seen: list[str] = field(default_factory=list)

    @property
    def phase(self) -> str | None:
        return ((self.obj or {}).get("status") or {}).get("phase")


def load_side(path: Path, tag: str) -> Side:
    """The side as the harness runs it beside the other: its namespace carries the run's tag (harness.isolation)."""
    meta = yaml.safe_load(path.read_text())["rollout"]["metadata"]
    return Side(path, tagged_name(meta["namespace"], tag), meta["name"])


def column(side: Side) -> list[str]:
    obj = side.obj
    title = f"{side.file.stem}: {side.namespace}/{side.name}"
    if obj is None:
        return [title, "waiting for the harness to apply it..."]
    st = obj.get("status") or {}
    stages = stages_of(obj)
    lines = [
        title,
        f"phase   {st.get('phase') or 'Pending'}",
        f"stage   {st.get('stage') or '-'}/{len(stages)}   canary weight {st.get('weight', 0)}%",
        f"        {bar(progress(obj), 24)}",
    ]
    for m in (st.get("analysis") or {}).get("metrics") or []:
        value = "no data" if m.get("value") is None else f"{m['value']:.4g}"
        fails = f" x{m['consecutiveFailures']}" if m.get("consecutiveFailures") else ""
        lines.append(f"{m['name'][:12]:12s} {value:>8s} {m.get('threshold', ''):>9s} {m.get('verdict', '')}{fails}")
    snap = st.get("snapshot")
    if snap:
        lines.append(f"snapshot {snap.get('state')}{' verified' if snap.get('verified') else ''}")
    restore = st.get("restore")
    if restore:
        lines.append(f"restore  {restore.get('state')} ({restore.get('attempts')} attempt)")
    lines.append((st.get("message") or "")[: WIDTH - 1])
    return lines


def draw(sides: list[Side], started: float, tty: bool) -> None:
    cols = [column(s) for s in sides]
    height = max(len(c) for c in cols)
    out = [f"SafeRollout demo — {time.monotonic() - started:5.0f}s   (logs: {', '.join(str(s.log) for s in sides)})", ""]
    for i in range(height):
        row = [(c[i] if i < len(c) else "")[: WIDTH - 1].ljust(WIDTH) for c in cols]
        out.append("  ".join(row).rstrip())
    if tty:
        print("\x1b[2J\x1b[H" + "\n".join(out), flush=True)
    else:
        print("\n".join(out) + "\n", flush=True)


def poll(api: client.CustomObjectsApi, core: client.CoreV1Api, side: Side) -> None:
    try:
        side.obj = api.get_namespaced_custom_object(GROUP, VERSION, side.namespace, PLURAL, side.name)
    except client.exceptions.ApiException as e:
        if e.status != 404:
            raise
        return
    ref = ((side.obj.get("status") or {}).get("incident") or {}).get("reportRef")
    if ref and side.report is None:
        with contextlib.suppress(client.exceptions.ApiException):  # not written yet: next poll
            side.report = core.read_namespaced_config_map(ref, side.namespace).data.get("report.md")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.demo", description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--kubeconfig", type=Path, default=REPO / ".cache" / "cluster" / "kubeconfig")
    p.add_argument("--interval", type=float, default=1.0)
    a = p.parse_args(argv)
    if not a.kubeconfig.exists():
        print(f"no cluster: {a.kubeconfig} is missing; run `make cluster` first", file=sys.stderr)
        return 2
    os.environ["KUBECONFIG"] = str(a.kubeconfig)
    config.load_kube_config(config_file=str(a.kubeconfig))
    api, core = client.CustomObjectsApi(), client.CoreV1Api()
    sides = [load_side(f, f"s{i}") for i, f in enumerate(SCENARIOS, 1)]  # harness.pool's tags, by place
    logs = REPO / ".cache" / "demo"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / "harness.log"
    with log.open("wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "harness", "run", "--workers", str(len(sides)),
                                 "--kubeconfig", str(a.kubeconfig), *map(str, SCENARIOS)],
                                stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    for s in sides:
        s.proc, s.log = proc, log
    tty = sys.stdout.isatty()
    started = time.monotonic()
    last = ""
    try:
        while any(s.proc is not None and s.proc.poll() is None for s in sides):
            for s in sides:
                if s.phase not in TERMINAL or s.report is None:
                    poll(api, core, s)
            frame = repr([column(s) for s in sides])
            if tty or frame != last:
                draw(sides, started, tty)
                last = frame
            time.sleep(a.interval)
    except KeyboardInterrupt:
        proc.terminate()
        return 130
    draw(sides, started, tty)
    for s in sides:
        if s.report:
            print("\n" + "=" * 100 + f"\nIncident report of {s.namespace}/{s.name}\n" + "=" * 100 + "\n" + s.report)
    verdicts = verdicts_in(log.read_text(errors="replace"))
    for s in sides:
        name = yaml.safe_load(s.file.read_text())["name"]
        print(f"{s.file.stem}: ended {s.phase}; harness {verdicts.get(name, 'gave no verdict')} (log: {log})")
    return 0 if proc.returncode == 0 else 1


def verdicts_in(log: str) -> dict[str, str]:
    """Each scenario's PASSED/FAILED line of the harness's report."""
    out = {}
    for line in log.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "==" and words[1] in ("PASSED", "FAILED"):
            out[words[2]] = words[1]
    return out


if __name__ == "__main__":
    raise SystemExit(main())
