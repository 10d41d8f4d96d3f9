"""Scenario runs side by side through one Session: most of a run is waiting out its stages (docs/harness.md).

The exclusive runs (`harness.isolation.exclusive_reason`) go first, each alone and as the file is written (their
namespace and database names as today); then the others, `workers` at a time, each isolated under its own tag
(`s<N>`, N its place in the list). Two runs whose objects share a kind and name (`claims`) never overlap. Runs start
in the order given, so a caller reading the results in that order seldom waits for one that has not begun.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.format import Scenario, ScenarioError, load
from harness.isolation import claims, exclusive_reason
from harness.scenario import Result, Session


@dataclass(frozen=True)
class Job:
    """One file to run: `tag` isolates it (None for an exclusive run, which has the cluster to itself)."""

    path: Path
    tag: str | None
    exclusive: str | None  # why it runs alone
    claims: frozenset[str] = frozenset()

    @property
    def alone(self) -> bool:
        """Untagged, so in the names of its file: nothing may run beside it."""
        return self.tag is None


def plan(paths: Sequence[Path], workers: int) -> list[Job]:
    """The jobs in the order they start: the exclusive ones first. With one worker everything runs as written."""
    jobs: list[Job] = []
    for i, path in enumerate(paths, 1):
        try:
            s: Scenario | None = load(path)
        except (ScenarioError, OSError):
            s = None  # Session.run reports the invalid file, at once and beside anything
        reason = exclusive_reason(s) if s is not None else None
        isolate = workers > 1 and reason is None
        jobs.append(Job(path, f"s{i}" if isolate else None, reason, claims(s) if s is not None else frozenset()))
    if workers == 1:
        return jobs
    return [j for j in jobs if j.exclusive] + [j for j in jobs if not j.exclusive]


def can_start(job: Job, running: Sequence[Job], workers: int) -> bool:
    if len(running) >= workers:
        return False
    if job.alone:
        return not running
    if any(r.alone for r in running):
        return False
    return not any(job.claims & r.claims for r in running)


def next_job(pending: Sequence[Job], running: Sequence[Job], workers: int) -> Job | None:
    """The first pending job that may start beside the running ones. An exclusive one that must wait holds back
    every job behind it (else a stream of short runs could keep it waiting for ever); one waiting on a claim
    does not."""
    for job in pending:
        if can_start(job, running, workers):
            return job
        if job.alone:
            return None
    return None


class ScenarioPool:
    """Runs the files on `workers` threads; `result(path)` waits for one. Use as a context manager."""

    def __init__(self, session: Session, paths: Sequence[Path], workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.session, self.workers = session, workers
        self.jobs = plan(paths, workers)
        self._pending = list(self.jobs)
        self._running: list[Job] = []
        self._results: dict[Path, Result] = {}
        self._cond = threading.Condition()
        self._closed = False
        # daemon threads: an interrupted suite does not wait minutes for the runs still going
        self._threads = [threading.Thread(target=self._work, name=f"scenario-worker-{i}", daemon=True)
                         for i in range(workers)]

    def __enter__(self) -> ScenarioPool:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, timeout: float = 900) -> None:
        """Start nothing more; wait for the runs under way, so their clean-up is done before the session's."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout)

    def job(self, path: Path) -> Job:
        return next(j for j in self.jobs if j.path == path)

    def result(self, path: Path, timeout: float | None = None) -> Result:
        with self._cond:
            def done() -> bool:
                return path in self._results or (self._closed and all(j.path != path for j in self._running))
            if not self._cond.wait_for(done, timeout):
                raise TimeoutError(f"{path} has not finished in {timeout:g}s")
            if path not in self._results:
                raise RuntimeError(f"{path}: the pool was closed before it ran")
            return self._results[path]

    def _work(self) -> None:
        while True:
            with self._cond:
                job = None
                while not self._closed and self._pending:
                    job = next_job(self._pending, self._running, self.workers)
                    if job is not None:
                        break
                    self._cond.wait()
                if job is None:
                    return
                self._pending.remove(job)
                self._running.append(job)
            try:
                result = self.session.run(job.path, isolate=job.tag)
            except Exception as e:  # Session.run reports its failures; anything else is the harness's own bug
                result = Result(job.path.stem, str(job.path), False,
                                errors=[f"the harness failed: {type(e).__name__}: {e}\n{traceback.format_exc()}"])
            with self._cond:
                self._running.remove(job)
                self._results[job.path] = result
                self._cond.notify_all()
