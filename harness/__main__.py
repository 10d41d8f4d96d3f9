"""`python -m harness run FILE [--json]`: run one scenario against the running local cluster (`make scenario`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.format import ScenarioError, load
from harness.kube import default_kubeconfig
from harness.pool import ScenarioPool
from harness.scenario import Result, Session


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness", description="SafeRollout's scenario harness.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run scenario files; exit 0 when all pass")
    run.add_argument("files", nargs="+", type=Path, metavar="FILE")
    run.add_argument("--json", action="store_true", help="also print each result as JSON")
    run.add_argument("--kubeconfig", type=Path, default=None,
                     help="default: $KUBECONFIG, else .cache/cluster/kubeconfig")
    run.add_argument("--kubectl", type=Path, default=None, help="default: the kubectl built by cluster/build.sh")
    run.add_argument("--no-operator", action="store_true",
                     help="do not start the operator (it runs elsewhere, e.g. installed with Helm)")
    run.add_argument("--skip-crds", action="store_true",
                     help="do not apply crds/*.yaml; use the SafeRollout CRD already in the cluster")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--pods", action="store_true", default=None,
                      help="the demo app in real pods, Traefik as the Gateway API data plane (default when the "
                           "cluster has the real node); scenarios it cannot carry keep the stand-ins, and say why")
    mode.add_argument("--stand-ins", dest="pods", action="store_false",
                      help="the demo app as local processes, the harness's router and the operator as a local "
                           "process for every scenario")
    run.add_argument("--local-operator", action="store_true",
                     help="with --pods: the operator as a local process, not the helm-installed pod")
    run.add_argument("--workers", type=int, default=1,
                     help="run this many files at a time (docs/harness.md: isolation, the exclusive rule)")
    check = sub.add_parser("check", help="only read and validate scenario files")
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")
    a = p.parse_args(argv)

    if a.command == "check":
        bad = 0
        for f in a.files:
            try:
                s = load(f)
                print(f"ok  {f}: {s.name}")
            except (ScenarioError, OSError) as e:
                bad += 1
                print(f"ERR {f}: {e}")
        return 1 if bad else 0

    for f in a.files:
        try:
            load(f)
        except (ScenarioError, OSError) as e:
            print(f"invalid scenario {f}: {e}", file=sys.stderr)
            return 2
    if a.workers < 1:
        p.error("--workers must be 1 or more")
    kubeconfig = a.kubeconfig or default_kubeconfig()
    pods = a.pods if a.pods is not None else (kubeconfig.parent / "node" / "settings").is_file()
    failed = 0

    def report(result: Result) -> None:
        nonlocal failed
        print(result.report(), flush=True)
        if a.json:
            print(json.dumps(result.to_json(), indent=2), flush=True)
        failed += not result.passed

    with Session(kubeconfig, a.kubectl, operator=not a.no_operator, crds=[] if a.skip_crds else None,
                 pods=pods, in_cluster=pods and not a.local_operator) as session:
        if a.workers == 1:
            for f in a.files:
                report(session.run(f))
        else:
            files = list(dict.fromkeys(a.files))  # a result per file
            with ScenarioPool(session, files, a.workers) as pool:
                for f in files:
                    report(pool.result(f))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
