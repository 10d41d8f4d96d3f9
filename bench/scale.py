"""Many rollouts in one operator process: memory, CPU per analysis tick, tick lag, API and Prometheus load.

On the local cluster (KWOK makes the pods cheap) it creates N target Deployments with Services, HTTPRoutes and
SafeRollouts whose stages are long (they stay Progressing), starts one operator, lets it reach steady state and
reads its own /metrics twice, `--measure` seconds apart. A synthetic exporter gives Prometheus one healthy request
counter per canary Service, so every analysis has data. Prints a table; not a test.

Run: .venv/bin/python bench/scale.py --counts 100,500,1000 [--interval 10s] [--measure 60] [--ungrouped]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT)]

from harness.services import Prometheus, TextExporter, free_port, wait_http  # noqa: E402
from tests.e2e.cluster import ensure_cluster, kubectl  # noqa: E402

START = time.time()


class Exporter(TextExporter):
    """One healthy counter per canary and stable Service: 20 requests/s, 0.1% errors."""

    services: list[tuple[str, str]] = []

    def body(self) -> bytes:
        t = time.time() - START
        lines = ["# TYPE http_requests_total counter"]
        for svc, ns in self.services:
            lines.append(f'http_requests_total{{service="{svc}",namespace="{ns}",code="200"}} {20 * t * 0.999:.3f}')
            lines.append(f'http_requests_total{{service="{svc}",namespace="{ns}",code="500"}} {20 * t * 0.001:.3f}')
        return ("\n".join(lines) + "\n").encode()


class BenchPrometheus(Prometheus):
    """Scrapes the exporter with its own labels (honor_labels), every second."""

    exporter_port = 0

    def _write_config(self) -> None:
        cfg = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
               "scrape_configs": [{"job_name": "synthetic", "honor_labels": True,
                                   "static_configs": [{"targets": [f"127.0.0.1:{self.exporter_port}"]}]}]}
        self.config.write_text(yaml.safe_dump(cfg))


def manifests(ns: str, n: int, interval: str) -> str:
    docs: list[dict[str, Any]] = []
    for i in range(n):
        name = f"r{i}"
        docs += [
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
             "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                      "template": {"metadata": {"labels": {"app": name}},
                                   "spec": {"containers": [{"name": "app", "image": "demo/app:1.0"}],
                                            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists"}]}}}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
             "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}},
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": name, "namespace": ns},
             "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": name, "port": 80, "weight": 100}]}]}},
            {"apiVersion": "saferollout.dev/v1alpha1", "kind": "SafeRollout", "metadata": {"name": name, "namespace": ns},
             "spec": {"targetRef": {"name": name}, "template": {"containers": [{"name": "app", "image": "demo/app:2.0"}]},
                      "strategy": {"canary": {"stages": [{"weight": 5, "duration": "2h"}, {"weight": 100, "duration": "1h"}],
                                              "traffic": {"gatewayAPI": {"httpRoute": name, "stableService": name,
                                                                         "canaryService": f"{name}-canary"}}}},
                      "analysis": {"interval": interval, "metrics": [
                          {"name": "error-rate", "template": "error-rate", "max": 0.01}]}}},
        ]
    return yaml.safe_dump_all(docs)


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[key] = float(value)
    return out


def total(m: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in m.items() if k == prefix or k.startswith(prefix + "{"))


def quantile(a: dict[str, float], b: dict[str, float], name: str, q: float) -> float:
    """Quantile of the histogram's observations between two scrapes, interpolated linearly inside the bucket it
    falls in, as PromQL's histogram_quantile does."""
    buckets: list[tuple[float, float]] = []
    for k, v in b.items():
        m = re.fullmatch(name + r'_bucket\{le="([^"]+)"\}', k)
        if m:
            buckets.append((float(m.group(1)), v - a.get(k, 0.0)))
    buckets.sort()
    count = buckets[-1][1] if buckets else 0
    if count <= 0:
        return float("nan")
    lower, below = 0.0, 0.0
    for le, c in buckets:
        if c >= q * count:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (q * count - below) / (c - below) if c > below else le
        lower, below = le, c
    return float("inf")


def share_over(a: dict[str, float], b: dict[str, float], name: str, le: float) -> float:
    """Share of the histogram's observations between two scrapes above the bucket bound `le`."""
    count = total(b, name + "_count") - total(a, name + "_count")
    key = f'{name}_bucket{{le="{le:g}"}}' if le != int(le) else f'{name}_bucket{{le="{le:.1f}"}}'
    return (1 - (b.get(key, 0.0) - a.get(key, 0.0)) / count) if count > 0 else float("nan")


def progressing(ns: str) -> int:
    out = kubectl("get", "saferollouts", "-n", ns, "-o", "jsonpath={range .items[*]}{.status.phase}{\"\\n\"}{end}",
                  check=False).stdout
    return sum(1 for line in out.splitlines() if line == "Progressing")


def run(n: int, interval: str, measure: float, grouped: bool, prom_url: str, exporter: Exporter) -> dict[str, Any]:
    ns = f"scale-{n}{'' if grouped else '-ungrouped'}"
    exporter.services = [(f"r{i}{suffix}", ns) for i in range(n) for suffix in ("", "-canary")]
    kubectl("create", "namespace", ns, check=False)
    t = time.monotonic()
    kubectl("apply", "--server-side", "-f", "-", input=manifests(ns, n, interval))
    created = time.monotonic() - t
    port = free_port()
    log = Path(tempfile.gettempdir()) / f"saferollout-{ns}.log"
    env = {**os.environ, "SAFEROLLOUT_PROMETHEUS_URL": prom_url, "SAFEROLLOUT_RATE_WINDOW": "10s",
           "SAFEROLLOUT_METRICS_PORT": str(port), "SAFEROLLOUT_METRICS_HOST": "127.0.0.1",
           "SAFEROLLOUT_QUERY_GROUP_TTL": "1" if grouped else "0", "SAFEROLLOUT_SNAPSHOT_DIR": tempfile.gettempdir()}
    with log.open("wb") as logf:
        op = subprocess.Popen([sys.executable, "-m", "saferollout", "run", "-n", ns], env=env, stdout=logf,
                              stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        if not wait_http(f"http://127.0.0.1:{port}/healthz", 60):
            raise RuntimeError(f"operator did not start; see {log}")
        t = time.monotonic()
        deadline = t + 900
        while progressing(ns) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {progressing(ns)}/{n} rollouts reached Progressing; see {log}")
            time.sleep(5)
        ready = time.monotonic() - t
        time.sleep(max(5.0, 2 * float(interval.rstrip("s"))))  # settle: the first analyses after the stage start
        url = f"http://127.0.0.1:{port}/metrics"
        a = scrape(url)
        time.sleep(measure)
        b = scrape(url)
        ticks = total(b, "saferollout_analysis_lag_seconds_count") - total(a, "saferollout_analysis_lag_seconds_count")
        cpu = total(b, "process_cpu_seconds_total") - total(a, "process_cpu_seconds_total")
        return {
            "rollouts": n, "grouped": grouped, "created_s": created, "all_progressing_s": ready,
            "rss_mb": total(b, "process_resident_memory_bytes") / 1e6,
            "cpu_cores": cpu / measure,
            "cpu_ms_per_tick": 1000 * cpu / ticks if ticks else float("nan"),
            "ticks_per_s": ticks / measure,
            "lag_p50_s": quantile(a, b, "saferollout_analysis_lag_seconds", 0.5),
            "lag_p99_s": quantile(a, b, "saferollout_analysis_lag_seconds", 0.99),
            "late_over_1s_pct": 100 * share_over(a, b, "saferollout_analysis_lag_seconds", 1.0),
            "write_p99_s": quantile(a, b, "saferollout_status_write_seconds", 0.99),
            "api_rps": (total(b, "saferollout_api_requests_total") - total(a, "saferollout_api_requests_total")) / measure,
            "prom_qps": (total(b, "saferollout_prometheus_queries_total")
                         - total(a, "saferollout_prometheus_queries_total")) / measure,
        }
    finally:
        op.terminate()
        op.wait(30)
        # the next count must not measure this one's garbage collection
        kubectl("delete", "namespace", ns, "--timeout=600s", check=False)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--counts", default="100,500,1000")
    p.add_argument("--interval", default="10s")
    p.add_argument("--measure", type=float, default=60.0)
    p.add_argument("--ungrouped", action="store_true", help="also measure with query grouping off (before/after)")
    a = p.parse_args()
    os.environ["KUBECONFIG"] = str(ensure_cluster())
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    exporter = Exporter(free_port())
    threading.Thread(target=exporter.serve_forever, daemon=True).start()
    root = Path(tempfile.mkdtemp(prefix="sr-scale-"))
    BenchPrometheus.exporter_port = exporter.server_address[1]
    prom = BenchPrometheus(root / "prometheus")
    prom.start()
    rows = []
    try:
        for n in (int(x) for x in a.counts.split(",")):
            for grouped in ([True, False] if a.ungrouped else [True]):
                row = run(n, a.interval, a.measure, grouped, prom.url, exporter)
                rows.append(row)
                print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                      flush=True)
    finally:
        prom.stop()
        exporter.shutdown()
    cols = list(rows[0]) if rows else []
    print("\n" + " | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols))


if __name__ == "__main__":
    main()
