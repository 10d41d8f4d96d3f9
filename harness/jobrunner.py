"""The harness as the kubelet of migration Jobs: it really runs their psql against the scenario's PostgreSQL.

Pods on KWOK's nodes run nothing (KWOK's default stages mark a Job's pod Succeeded at once), so a migration Job
would always "succeed". A Job pod whose nodeSelector asks for `harness.saferollout.dev/runner: "true"` (a label no
node has, so the pod is never scheduled and KWOK never touches it) is run here instead:

- its first container's `command` + `args`, with `$(VAR)` filled in from its `env` (a literal `value`, or a
  `secretKeyRef` read from the cluster), as Kubernetes does; the program must be `psql` (nothing else is run), and
  the argv goes to it as is: no shell, so nothing in the manifest or the Secret is parsed as a command;
- its env (the same values) is the process's environment, beside PATH;
- its exit code, and its output (stdout and stderr, as a kubelet keeps them) as the container's termination
  message: the last 80 lines, at most 2048 bytes, as FallbackToLogsOnError does, written to the pod's status
  (phase Succeeded or Failed). The Job controller then ends the Job, as on a real node.

The pod has no node, so the API server has no kubelet to read its log from: the operator falls back to the
termination message, as it would on a node whose kubelet lost the log.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from harness.kube import Kube

RUNNER_LABEL = "harness.saferollout.dev/runner"
PROGRAMS = ("psql",)
MESSAGE_LINES, MESSAGE_BYTES = 80, 2048
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def wanted(pod: dict[str, Any]) -> bool:
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    return (spec.get("nodeSelector") or {}).get(RUNNER_LABEL) == "true" and not spec.get("nodeName") \
        and status.get("phase") not in ("Succeeded", "Failed") and not (pod.get("metadata") or {}).get(
            "deletionTimestamp")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: a known variable is replaced, `$$(VAR)` stays `$(VAR)`, others are kept."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        m = _VAR.match(text, i)
        if m and m.group(1) in env:
            out.append(env[m.group(1)])
            i = m.end()
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def tail(output: str) -> str:
    lines = output.rstrip("\n").splitlines()[-MESSAGE_LINES:]
    data = "\n".join(lines).encode()[-MESSAGE_BYTES:]
    return data.decode(errors="replace")


class JobRunner:
    """Looks for runnable Job pods in one namespace when asked (`poll`), and runs each once, in a thread."""

    def __init__(self, kube: Kube, namespace: str, note: Callable[[str], None]) -> None:
        self.kube, self.ns, self.note = kube, namespace, note
        self.started: set[str] = set()
        self.finished: list[tuple[str, int]] = []  # (pod, exit code)
        self.threads: list[threading.Thread] = []

    def poll(self) -> None:
        r = self.kube.kubectl("get", "pods", "-n", self.ns, "-l", "saferollout.dev/kind=migration", "-o", "json",
                              check=False, timeout=20)
        if r.returncode != 0:
            return
        for pod in json.loads(r.stdout).get("items") or []:
            name = pod["metadata"]["name"]
            if name in self.started or not wanted(pod):
                continue
            self.started.add(name)
            t = threading.Thread(target=self._run, args=(pod,), name=f"job-{name}", daemon=True)
            self.threads.append(t)
            t.start()

    def join(self, timeout: float = 30) -> None:
        for t in self.threads:
            t.join(timeout)

    # ------------------------------------------------------------------------------------------------ one pod
    def _env(self, container: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for e in container.get("env") or []:
            if "value" in e:
                env[e["name"]] = expand(str(e["value"]), env)
                continue
            ref = (e.get("valueFrom") or {}).get("secretKeyRef") or {}
            if ref:
                r = self.kube.kubectl("get", "secret", ref["name"], "-n", self.ns, "-o", "json", timeout=20)
                data = (json.loads(r.stdout).get("data") or {}).get(ref["key"])
                if data is None:
                    raise RuntimeError(f"Secret {ref['name']} has no key {ref['key']}")
                env[e["name"]] = base64.b64decode(data).decode()
        return env

    def _run(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        container = pod["spec"]["containers"][0]
        started = _now()
        try:
            env = self._env(container)
            argv = [expand(str(x), env) for x in [*(container.get("command") or []), *(container.get("args") or [])]]
            if not argv or os.path.basename(argv[0]) not in PROGRAMS:
                raise RuntimeError(f"the harness runs only {', '.join(PROGRAMS)}, not {argv[:1]}")
            program = shutil.which(os.path.basename(argv[0]))
            if program is None:
                raise RuntimeError(f"{argv[0]} is not installed on this machine")
            limit = float(pod["spec"].get("activeDeadlineSeconds") or 300)
            self.note(f"running migration pod {name}: {os.path.basename(argv[0])} with {len(argv) - 1} argument(s)")
            t0 = time.monotonic()
            done = subprocess.run([program, *argv[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}, timeout=limit,
                                  check=False, stdin=subprocess.DEVNULL)
            code, output = done.returncode, done.stdout
            self.note(f"migration pod {name} exited {code} after {time.monotonic() - t0:.1f}s")
        except subprocess.TimeoutExpired as e:
            code, output = 137, (e.stdout or "") if isinstance(e.stdout, str) else ""
            self.note(f"migration pod {name} killed at its deadline")
        except Exception as e:  # a pod the harness cannot run fails, as a pod whose image cannot start would
            code, output = 128, f"harness: {e}"
            self.note(f"migration pod {name} could not run: {e}")
        self.finished.append((name, code))
        self._finish(pod, container, code, output, started)

    def _finish(self, pod: dict[str, Any], container: dict[str, Any], code: int, output: str, started: str) -> None:
        state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                "message": tail(output), "startedAt": started, "finishedAt": _now()}}
        status = {"phase": "Succeeded" if code == 0 else "Failed", "containerStatuses": [
            {"name": container["name"], "image": container.get("image", ""), "imageID": "", "ready": False,
             "restartCount": 0, "started": False, "state": state}]}
        r = self.kube.kubectl("patch", "pod", pod["metadata"]["name"], "-n", self.ns, "--subresource=status",
                              "--type=merge", "-p", json.dumps({"status": status}), check=False, timeout=20)
        if r.returncode != 0:
            self.note(f"could not write the status of pod {pod['metadata']['name']}: {r.stderr.strip()}")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
