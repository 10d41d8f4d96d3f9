"""Time to detect and time to revert, on the local cluster with the real operator, Prometheus and router.

A canary at 20% of 100 requests/s is healthy, then (at a known moment) fails half its requests. Prometheus scrapes
every 1 s, the analysis interval is 1 s, the rate window 10 s; failureLimit 1 and 3. Measured per run:
  detect  = failure starts -> the operator's rollback decision (harness: phase RollingBack observed, 0.25 s polls)
  write   = decision -> HTTPRoute written with weight 0 (operator's own timestamps, status.incident)
  applied = failure starts -> the harness's router sends no more traffic to the canary (0.2 s polls)
The physical limit printed beside it (worst case of the scrape phase): the first scrape after the failure begins
comes within one scrape interval, rate() needs a second sample one scrape later, then failureLimit-1 analysis intervals.
With --routers, the same failure (failureLimit 1) once per router: Gateway API, Istio VirtualService, NGINX canary
Ingress, replica ratio; the decision -> API write time of each.
Prints tables; not a test. Run: .venv/bin/python bench/detect.py [--runs 3] [--routers gatewayAPI,istio,nginx,replicas]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT)]

from harness.scenario import Session  # noqa: E402
from tests.e2e.cluster import ensure_cluster, tools_dir  # noqa: E402

SCRAPE, INTERVAL, FAIL_AT = 1.0, 1.0, 20


TRAFFIC: dict[str, dict[str, Any]] = {
    "gatewayAPI": {"gatewayAPI": {"httpRoute": "web", "stableService": "web", "canaryService": "web-canary"}},
    "istio": {"istio": {"virtualService": "web-vs", "route": "primary"}},
    "nginx": {"nginx": {"ingress": "web"}},
    "replicas": {"replicas": {}},
}


def scenario(limit: int, router: str = "gatewayAPI") -> dict[str, Any]:
    ns = f"bench-detect-{limit}" + ("" if router == "gatewayAPI" else f"-{router.lower()}")
    return {
        "name": f"detect-limit-{limit}-{router.lower()}",
        "description": "bench: canary fails half its requests at a known moment",
        "rollout": {
            "apiVersion": "saferollout.dev/v1alpha1", "kind": "SafeRollout",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {
                "targetRef": {"kind": "Deployment", "name": "web"},
                "template": {"containers": [{"name": "web", "image": "demo/web:9.0"}]},
                "strategy": {"canary": {"stages": [{"weight": 20, "duration": "5m"}, {"weight": 100, "duration": "1m"}],
                                        "traffic": TRAFFIC[router]}},
                "analysis": {"interval": f"{INTERVAL:g}s", "failureLimit": limit, "metrics": [
                    {"name": "error-rate", "template": "error-rate", "max": 0.01, "onBreach": "rollback",
                     "severity": "critical"}]},
                "rollback": {"verify": {"duration": "30s", "successes": 2}},
            },
        },
        "app": {"stable": {"errorRate": 0.0, "latencyMs": {"p50": 10, "p95": 30}},
                "canary": {"errorRate": 0.0, "latencyMs": {"p50": 10, "p95": 30},
                           "when": {"afterSeconds": FAIL_AT, "errorRate": 0.5}}},
        "load": {"rps": 100},
        "expect": {"phase": "RolledBack", "withinSeconds": 120},
    }


def seconds(a: str | None, b: str | None) -> float | None:
    if not a or not b:
        return None
    ta, tb = (datetime.fromisoformat(x.replace("Z", "+00:00")) for x in (a, b))
    return (tb - ta).total_seconds()


def measure(session: Session, limit: int, workdir: Path, router: str = "gatewayAPI") -> dict[str, float | None]:
    path = workdir / f"detect-{limit}-{router}.yaml"
    path.write_text(yaml.safe_dump(scenario(limit, router)))
    result = session.run(path)
    if not result.passed:
        raise RuntimeError(f"bench run failed: {result.report()}")
    timeline = result.to_json()["timeline"]
    fail = next(e["t"] for e in timeline if e["kind"] == "app" and "errorRate=0.5" in e["text"])
    decided = next(e["t"] for e in timeline if e["kind"] == "phase" and "-> RollingBack" in e["text"])
    applied = next(e["t"] for e in timeline if e["kind"] == "router" and "(canary 0%)" in e["text"] and e["t"] > fail)
    status = json.loads((Path(result.run_dir) / "rollout.json").read_text()).get("status", {})
    inc = status.get("incident") or {}
    return {"detect": decided - fail, "write": seconds(inc.get("decidedAt"), inc.get("trafficRevertedAt")),
            "applied": applied - fail, "operator_detect": seconds(inc.get("firstFailedAt"), inc.get("decidedAt"))}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--limits", default="1,3")
    p.add_argument("--routers", default="", help="also: decision -> API write per router, e.g. "
                                                  + ",".join(TRAFFIC))
    a = p.parse_args()
    kubeconfig = ensure_cluster()
    work = Path(tempfile.mkdtemp(prefix="sr-detect-"))
    rows = []
    per_router: list[tuple[str, list[float], list[float]]] = []
    with Session(kubeconfig=kubeconfig, kubectl=tools_dir() / "kubectl") as session:
        for router in [r for r in a.routers.split(",") if r]:
            runs = [measure(session, 1, work, router) for _ in range(a.runs)]
            per_router.append((router, [r["write"] or 0.0 for r in runs], [r["applied"] or 0.0 for r in runs]))
            print(f"{router}: " + json.dumps(runs), flush=True)
        for limit in (int(x) for x in a.limits.split(",") if x):
            runs = [measure(session, limit, work) for _ in range(a.runs)]
            bound = 2 * SCRAPE + (limit - 1) * INTERVAL

            def med(k: str, runs: list[dict[str, float | None]] = runs) -> float:
                return statistics.median([v for r in runs if (v := r[k]) is not None])
            rows.append((limit, bound, med("detect"), max(r["detect"] or 0 for r in runs), med("write"),
                         med("applied"), med("operator_detect")))
            print(f"failureLimit={limit}: " + json.dumps(runs), flush=True)
    if rows:
        print("\nfailureLimit | lower bound s | detect median s | detect max s | decision->API write ms | "
              "failure->router at 0% s | operator's first failed check->decision s")
    for limit, bound, det, det_max, write, applied, op in rows:
        print(f"{limit} | {bound:.1f} | {det:.2f} | {det_max:.2f} | {write * 1000:.0f} | {applied:.2f} | {op:.2f}")
    if per_router:
        print("\nrouter | decision->API write ms, median | max | failure->no canary traffic s, median")
        for router, writes, applied_s in per_router:
            print(f"{router} | {statistics.median(writes) * 1000:.0f} | {max(writes) * 1000:.0f} | "
                  f"{statistics.median(applied_s):.2f}")


if __name__ == "__main__":
    main()
