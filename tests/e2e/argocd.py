"""A real Argo CD for the end-to-end tests: start/stop it, give it a Git repository, drive Applications, read them.

cluster/argocd-up.sh runs the Argo CD application controller and repo-server (built from Go modules by
cluster/build-argocd.sh) and Redis as plain processes on loopback, against the local cluster. There is no Argo CD API
server: everything is done through the Application resource, the way Argo CD's own controller reads it.

    state = ensure_argocd()                       # builds if needed (a failed build raises), starts, returns
    repo = GitRepo.create(tmp_path / "app.git")   # a local repository; repo.url is a file:// URL
    sha = repo.commit("web 1.0", {"deploy.yaml": text})
    create_application("web", repo.url, dest_namespace="shop")
    app = wait_synced("web", sha)                 # Synced at that commit, its sync operation finished
    resource_health(app, "SafeRollout", "web")    # Argo CD's own verdict, from the chart's Lua health check

A commit is seen within about SR_ARGOCD_APP_RESYNC seconds (5 by default; upstream 120 s plus jitter): the
controller compares every Application that often, and the repo-server trusts a branch's resolved commit for only
SR_ARGOCD_REVISION_CACHE (2 s; upstream 3 min). refresh(name, hard=True) asks at once, as a Git webhook would.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.e2e.cluster import CLUSTER_DIR, REPO, kubectl

NAMESPACE = "argocd"
# Deleting an Application with this finalizer deletes the resources it manages (cascade), as in Argo CD's own docs.
CASCADE_FINALIZER = "resources-finalizer.argocd.argoproj.io"

Json = dict[str, Any]


# --- the processes ------------------------------------------------------------------------------------------------


def state_dir() -> Path:
    """Where cluster/argocd-up.sh keeps logs, pid files and the repo-server's clones: beside the cluster's state dir
    (.cache/cluster -> .cache/cluster-argocd), or SR_ARGOCD_STATE_DIR."""
    override = os.environ.get("SR_ARGOCD_STATE_DIR")
    if override:
        return Path(override)
    cluster_state = Path(os.environ.get("SR_STATE_DIR") or REPO / ".cache" / "cluster")
    return cluster_state.with_name(f"{cluster_state.name}-argocd")


def metrics_port() -> int:
    """The application controller's metrics port, as cluster/argocd-up.sh chose it."""
    return int(os.environ.get("SR_ARGOCD_METRICS_PORT", "28082"))


def ensure_argocd() -> Path:
    """Builds Argo CD if needed, starts the cluster and Argo CD unless they run, and returns Argo CD's state dir.

    A failed build, a missing Redis or a component that does not come up raises RuntimeError with the script's
    stderr (it names the component and shows its log). Never a skip: Argo CD is part of what is tested.
    """
    result = subprocess.run(["bash", str(CLUSTER_DIR / "argocd-up.sh")], cwd=REPO, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"cluster/argocd-up.sh failed with exit code {result.returncode}:\n{result.stderr}")
    lines = result.stdout.strip().splitlines()
    return Path(lines[-1]) if lines else state_dir()


def stop_argocd() -> None:
    """Deletes every Application in namespace argocd, stops Argo CD and removes its state (the cluster keeps running)."""
    result = subprocess.run(["bash", str(CLUSTER_DIR / "argocd-down.sh")], cwd=REPO, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"cluster/argocd-down.sh failed with exit code {result.returncode}:\n{result.stderr}")


def controller_log_tail(lines: int = 40) -> str:
    """The end of the application controller's log, for failure messages."""
    path = state_dir() / "logs" / "argocd-application-controller.log"
    if not path.is_file():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --- Git ---------------------------------------------------------------------------------------------------------


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}
    result = subprocess.run(["git", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {cwd} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


@dataclass(frozen=True)
class GitRepo:
    """A local Git repository with a work tree, on branch `branch`. Argo CD fetches it from `url` (file://)."""

    path: Path
    branch: str = "main"

    @classmethod
    def create(cls, path: Path, branch: str = "main") -> GitRepo:
        path.mkdir(parents=True, exist_ok=True)
        _git(path, "init", "-q", "-b", branch)
        for key, value in (("user.name", "e2e"), ("user.email", "e2e@saferollout.invalid"), ("commit.gpgsign", "false")):
            _git(path, "config", key, value)
        return cls(path, branch)

    @property
    def url(self) -> str:
        return self.path.resolve().as_uri()

    def head(self) -> str:
        return _git(self.path, "rev-parse", "HEAD").strip()

    def commit(self, message: str, files: Mapping[str, str | None]) -> str:
        """Writes the files (None deletes one; paths relative to the work tree), commits everything, returns the sha."""
        for name, text in files.items():
            target = self.path / name
            if text is None:
                target.unlink(missing_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
        _git(self.path, "add", "-A")
        _git(self.path, "commit", "-q", "--allow-empty", "-m", message)
        return self.head()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def git_daemon(base: Path, port: int | None = None) -> Iterator[Callable[[GitRepo], str]]:
    """Serves the repositories under `base` read-only with `git daemon` on 127.0.0.1, as a Git server would.

    Yields a function that gives a repository's git:// URL (the repository must be under base).
    """
    port = port or free_port()
    proc = subprocess.Popen(["git", "daemon", "--reuseaddr", "--listen=127.0.0.1", f"--port={port}", "--export-all",
                             f"--base-path={base}", "--informative-errors", str(base)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"git daemon on 127.0.0.1:{port} did not start:\n{err}")
            time.sleep(0.1)

        def url(repo: GitRepo) -> str:
            return f"git://127.0.0.1:{port}/{repo.path.resolve().relative_to(base.resolve())}"

        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- Applications ------------------------------------------------------------------------------------------------


def application_manifest(name: str, repo_url: str, *, dest_namespace: str, path: str = ".", revision: str = "main",
                         automated: bool = True, self_heal: bool = True, prune: bool = True,
                         ignore_differences: Sequence[Json] = (), sync_options: Sequence[str] = (),
                         annotations: Mapping[str, str] | None = None, cascade: bool = True) -> Json:
    """An Application in namespace argocd, project default, deploying `path` of the repo into the local cluster.

    revisionHistoryLimit is high so that status.history holds every sync the test makes (upstream keeps 10).
    """
    spec: Json = {
        "project": "default",
        "source": {"repoURL": repo_url, "targetRevision": revision, "path": path},
        "destination": {"server": "https://kubernetes.default.svc", "namespace": dest_namespace},
        "revisionHistoryLimit": 100,
    }
    if automated:
        spec["syncPolicy"] = {"automated": {"selfHeal": self_heal, "prune": prune}}
    if sync_options:
        spec.setdefault("syncPolicy", {})["syncOptions"] = list(sync_options)
    if ignore_differences:
        spec["ignoreDifferences"] = list(ignore_differences)
    metadata: Json = {"name": name, "namespace": NAMESPACE}
    if annotations:
        metadata["annotations"] = dict(annotations)
    if cascade:
        metadata["finalizers"] = [CASCADE_FINALIZER]
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", "metadata": metadata, "spec": spec}


def apply_application(manifest: Json) -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "--field-manager", "e2e", "-f", "-", input=json.dumps(manifest))


def create_application(name: str, repo_url: str, **kwargs: Any) -> Json:
    """Creates (or updates) the Application; keyword arguments as for application_manifest. Returns the manifest."""
    manifest = application_manifest(name, repo_url, **kwargs)
    apply_application(manifest)
    return manifest


def delete_application(name: str, timeout: float = 120) -> None:
    """Deletes the Application and waits until it is gone (with the cascade finalizer: its resources too)."""
    kubectl("delete", "applications.argoproj.io", name, "-n", NAMESPACE, "--ignore-not-found", f"--timeout={int(timeout)}s")


def get_application(name: str) -> Json:
    app: Json = json.loads(kubectl("get", "applications.argoproj.io", name, "-n", NAMESPACE, "-o", "json").stdout)
    return app


def refresh(name: str, hard: bool = False) -> None:
    """Asks the controller to compare the Application with Git now (hard: regenerate manifests, skip every cache)."""
    kubectl("annotate", "applications.argoproj.io", name, "-n", NAMESPACE, "--overwrite",
            f"argocd.argoproj.io/refresh={'hard' if hard else 'normal'}")


def sync_status(app: Json) -> str:
    return str(app.get("status", {}).get("sync", {}).get("status", ""))


def synced_revision(app: Json) -> str:
    return str(app.get("status", {}).get("sync", {}).get("revision", ""))


def app_health(app: Json) -> str:
    return str(app.get("status", {}).get("health", {}).get("status", ""))


def resource(app: Json, kind: str, name: str) -> Json | None:
    """The Application's entry for one managed resource (status, health; needs --persist-resource-health, which
    cluster/argocd-up.sh sets: Argo CD 3 keeps resource health out of the Application by default)."""
    for entry in app.get("status", {}).get("resources", []):
        if entry.get("kind") == kind and entry.get("name") == name:
            found: Json = entry
            return found
    return None


def resource_status(app: Json, kind: str, name: str) -> str:
    """Synced / OutOfSync of one managed resource, "" when Argo CD does not list it."""
    entry = resource(app, kind, name)
    return str(entry.get("status", "")) if entry else ""


def resource_health(app: Json, kind: str, name: str) -> str:
    """Argo CD's health of one managed resource (Healthy, Progressing, Degraded, Suspended, ...), "" when none."""
    entry = resource(app, kind, name)
    return str(entry.get("health", {}).get("status", "")) if entry else ""


def history(app: Json) -> list[Json]:
    """status.history: one entry per sync operation that succeeded (id, revision, deployedAt, initiatedBy)."""
    items: list[Json] = app.get("status", {}).get("history", [])
    return items


def operation_phase(app: Json) -> str:
    """The phase of the last (or current) sync operation: Running, Succeeded, Failed, Error, Terminating; "" if none."""
    return str(app.get("status", {}).get("operationState", {}).get("phase", ""))


def sync_operations(name: str) -> dict[str, int]:
    """Sync operations the controller ran for the Application since it started, by phase (Succeeded, Failed, ...),
    from its own counter argocd_app_sync_total. Unlike status.history this also counts failed syncs."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port()}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if not line.startswith("argocd_app_sync_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
        if labels.get("name") == name and labels.get("namespace") == NAMESPACE:
            phase = labels.get("phase", "")
            counts[phase] = counts.get(phase, 0) + int(float(line.rsplit(" ", 1)[1]))
    return counts


def events(name: str) -> list[Json]:
    """The Kubernetes Events Argo CD recorded on the Application (OperationStarted, OperationCompleted, ResourceUpdated:
    "Updated sync status: Synced -> OutOfSync", ...), oldest first. Each has lastTimestamp, reason, message, count."""
    items: list[Json] = json.loads(kubectl("get", "events", "-n", NAMESPACE, "-o", "json", "--field-selector",
                                           f"involvedObject.kind=Application,involvedObject.name={name}").stdout)["items"]
    return sorted(items, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))


def went_out_of_sync(name: str, since: float) -> bool:
    """Argo CD reported the Application OutOfSync (an event) at or after `since` (epoch seconds, second precision)."""
    for event in events(name):
        stamp = event.get("lastTimestamp") or event.get("eventTime")
        if stamp and "-> OutOfSync" in event.get("message", "") and (
                datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp() >= int(since)):
            return True
    return False


def describe(app: Json) -> str:
    """One paragraph on the Application's state, for failure messages."""
    status = app.get("status", {})
    lines = [f"sync={sync_status(app)} revision={synced_revision(app)[:12]} health={app_health(app)} "
             f"operation={operation_phase(app)} history={len(history(app))}"]
    op = status.get("operationState", {})
    if op.get("message"):
        lines.append(f"operation message: {op['message']}")
    lines += [f"condition {c.get('type')}: {c.get('message')}" for c in status.get("conditions", [])]
    lines += [f"  {r.get('kind')}/{r.get('name')}: {r.get('status')} {r.get('health', {}).get('status', '')}"
              for r in status.get("resources", [])]
    return "\n".join(lines)


def wait_for_app(name: str, predicate: Callable[[Json], bool], what: str, timeout: float = 90,
                 interval: float = 0.25) -> Json:
    """Polls the Application until predicate(app) holds and returns it; on timeout fails saying what it waited for,
    the Application's state and the end of the controller's log."""
    deadline = time.monotonic() + timeout
    app: Json = {}
    while True:
        result = kubectl("get", "applications.argoproj.io", name, "-n", NAMESPACE, "-o", "json", check=False)
        if result.returncode == 0:
            app = json.loads(result.stdout)
            if predicate(app):
                return app
        if time.monotonic() > deadline:
            raise AssertionError(f"Application {name}: no {what} within {timeout:.0f}s\n{describe(app)}\n"
                                 f"--- controller log ---\n{controller_log_tail()}")
        time.sleep(interval)


def is_synced(app: Json, revision: str | None = None) -> bool:
    """Synced (at `revision` if given), and no sync operation running."""
    return (sync_status(app) == "Synced" and (revision is None or synced_revision(app) == revision)
            and operation_phase(app) != "Running")


def wait_synced(name: str, revision: str | None = None, timeout: float = 90) -> Json:
    return wait_for_app(name, lambda app: is_synced(app, revision),
                        f"Synced{f' at {revision[:12]}' if revision else ''}", timeout)
