"""One end-to-end test per shared scenario file, run by the harness against the local cluster.

The scenario directory is `$SAFEROLLOUT_SCENARIOS`, else `<repo>/../shared/scenarios`. A missing or empty
directory fails (it never skips): a suite that silently runs no scenario would look green and prove nothing.
One harness Session (Prometheus, PostgreSQL, the cluster connection) serves every scenario. The scenarios run
`$SAFEROLLOUT_SCENARIO_WORKERS` at a time (default 3; 1 runs each inside its own test, one after another) through
harness.pool, which starts with the first test that needs one; each test waits for its own file's result, so a
failure still names the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.pool import ScenarioPool
from harness.scenario import Session

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = Path(os.environ.get("SAFEROLLOUT_SCENARIOS") or REPO.parent / "shared" / "scenarios")
PROJECT_SCENARIOS = REPO / "scenarios"  # the project's own, in the same format, run after the shared ones
DEMO = REPO / "demo"  # `make demo`'s two sides, run here as scenarios too


def _scenario_files() -> list[object]:
    files = sorted(SCENARIOS.glob("*.yaml")) if SCENARIOS.is_dir() else []
    if not files:  # a test that fails and says why, instead of a suite with nothing in it
        return [pytest.param(None, id="no-scenarios", marks=pytest.mark.e2e)]
    own = sorted(PROJECT_SCENARIOS.glob("*.yaml"))
    params: list[object] = [pytest.param(f, id=f.stem, marks=pytest.mark.e2e) for f in files]
    params += [pytest.param(f, id=f"project-{f.stem}", marks=pytest.mark.e2e) for f in own]
    return params + [pytest.param(f, id=f"demo-{f.stem}", marks=pytest.mark.e2e) for f in sorted(DEMO.glob("*.yaml"))]


RELEASE, RELEASE_NAMESPACE = "sr-scenarios", "saferollout-scenarios"
DEFAULT_WORKERS = 3


def workers() -> int:
    raw = os.environ.get("SAFEROLLOUT_SCENARIO_WORKERS", str(DEFAULT_WORKERS))
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise pytest.UsageError(f"SAFEROLLOUT_SCENARIO_WORKERS={raw!r}: give a whole number, 1 or more")
    return n


@pytest.fixture(scope="module")  # the in-cluster operator watches every namespace: gone before other modules
def harness_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """The harness as CI proves it: the operator installed by helm from its image, one pod on the real node for
    every scenario (the chart's ServiceAccount and RBAC, restricted Pod Security), the demo app in real pods and
    Traefik as the Gateway API data plane wherever a scenario can run so (harness.pods.stand_in_reason).

    SAFEROLLOUT_HARNESS_PODS=0: the stand-ins (local demo processes, the harness's router, the operator as a local
    process under the chart's ServiceAccount token): faster, not what CI proves."""
    from tests.e2e.chart import install, sa_kubeconfig, uninstall
    from tests.e2e.cluster import ensure_cluster, tools_dir

    kubeconfig = ensure_cluster()
    if os.environ.get("SAFEROLLOUT_HARNESS_PODS", "1") != "0":
        with Session(kubeconfig=kubeconfig, kubectl=tools_dir() / "kubectl", pods=True, in_cluster=True) as session:
            yield session
        return
    # the harness runs the operator with --namespace <the scenario's>, as the chart's pod runs with
    # watchNamespaces set: that install also grants kopf's namespace watch (without it kopf retries ~54 s at
    # every start). Cluster scope, so the value names no namespace that must exist, and the ClusterRole covers
    # the namespaces concurrent runs are renamed to (demo-s3) as well as demo.
    install(RELEASE, RELEASE_NAMESPACE, ("--set", "watchNamespaces={demo}"))
    token_kubeconfig = sa_kubeconfig(tmp_path_factory.mktemp("sa"), RELEASE, RELEASE_NAMESPACE)
    os.environ["SAFEROLLOUT_HARNESS_OPERATOR_KUBECONFIG"] = str(token_kubeconfig)
    try:
        with Session(kubeconfig=kubeconfig, kubectl=tools_dir() / "kubectl") as session:
            yield session
    finally:
        os.environ.pop("SAFEROLLOUT_HARNESS_OPERATOR_KUBECONFIG", None)
        uninstall(RELEASE, RELEASE_NAMESPACE)


def _selected_files(items: list[pytest.Item]) -> list[Path]:
    """The scenario files of the test_scenario items this pytest session will run (after -k, --deselect, ...)."""
    files = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        if item.path == Path(__file__) and getattr(item, "originalname", None) == "test_scenario" and callspec:
            f = callspec.params.get("scenario_file")
            if isinstance(f, Path):
                files.append(f)
    return files


@pytest.fixture(scope="module")
def scenario_pool(request: pytest.FixtureRequest) -> Iterator[ScenarioPool | None]:
    """The selected files running in the background, or None with one worker (each test runs its own). Module
    scope: a run still going when the last test here ended (one timed out) is waited for before other modules."""
    n = workers()
    if n == 1:
        yield None
        return
    session: Session = request.getfixturevalue("harness_session")
    with ScenarioPool(session, _selected_files(request.session.items), n) as pool:
        yield pool


@pytest.mark.e2e
@pytest.mark.timeout(900)
@pytest.mark.parametrize("scenario_file", _scenario_files())
def test_scenario(scenario_file: Path | None, request: pytest.FixtureRequest) -> None:
    if scenario_file is None:
        pytest.fail(f"no scenario files (*.yaml) in {SCENARIOS}: set SAFEROLLOUT_SCENARIOS or provide "
                    "../shared/scenarios")
    pool: ScenarioPool | None = request.getfixturevalue("scenario_pool")  # the cluster only once there is work
    if pool is None:
        session: Session = request.getfixturevalue("harness_session")
        result = session.run(scenario_file)
    else:
        job = pool.job(scenario_file)
        print(f"run {'alone: ' + job.exclusive if job.exclusive else 'beside others as ' + str(job.tag)}")
        result = pool.result(scenario_file)
    print(result.report())
    failed = [c.line() for c in result.checks if not c.passed] + [f"ERROR {e}" for e in result.errors]
    assert result.passed, f"scenario {result.name} failed (logs in {result.run_dir}):\n" + "\n".join(failed)
