"""kubectl-saferollout: watch and steer SafeRollouts from a terminal or a script.

Exit codes a script can rely on:
  0  done / the rollout Succeeded (status --watch)
  1  an API or connection error
  2  bad usage
  3  the rollout ended RolledBack, Failed or Blocked (status --watch), or a command was refused
  4  not found
  5  status --watch timed out

backtest needs Prometheus only: it reads no cluster and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from saferollout.core import partition
from saferollout.core.durations import format_duration, parse_duration
from saferollout.core.engine import DEFAULT_STAGES
from saferollout.core.models import GROUP, PLURAL, VERSION, PartitionStatus, SafeRolloutSpec

OK, API_ERROR, USAGE, ENDED_BADLY, NOT_FOUND, TIMEOUT = 0, 1, 2, 3, 4, 5
TERMINAL = {"Succeeded", "RolledBack", "Failed", "Blocked"}
BAR = 30


# ------------------------------------------------------------------------------------------------------- render


def _age(ts: str | None, now: datetime) -> str:
    if not ts:
        return "-"
    t = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return format_duration(max(0.0, (now - t).total_seconds()))


def stage_kind(stage: dict[str, Any]) -> str:
    """What a stage sends the canary: ` 25%` (a weight), `header match x-canary, cookie beta`, `mirror 20%`."""
    weight = int(stage.get("weight") or 0)
    if stage.get("mirror") is not None:
        return f"mirror {stage['mirror']}% (shadow)"
    parts = []
    match = stage.get("match") or {}
    if match:
        names = [str(h.get("name")) for h in match.get("headers") or []] + \
            [f"cookie {c.get('name')}" for c in match.get("cookies") or []]
        parts.append("header match " + ", ".join(names))
    if weight or not parts:
        parts.append(f"{weight:>3}%")
    return " + ".join(parts) + (" sticky" if stage.get("sticky") else "")


def _partition_line(st: dict[str, Any]) -> list[str]:
    """A StatefulSet target: its partition and which pods run which revision (status.partition)."""
    if not isinstance(st.get("partition"), dict):
        return []
    try:
        return [f"Partition: {partition.describe(PartitionStatus.model_validate(st['partition']))}"]
    except ValueError:
        return []


def stages_of(obj: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, duration) of each stage: the kind is the weight (` 25%`), a header match or a mirror."""
    canary = ((obj.get("spec") or {}).get("strategy") or {}).get("canary") or {}
    stages = canary.get("stages")
    if stages:
        return [(stage_kind(s), str(s["duration"])) for s in stages]
    return [(stage_kind({"weight": s.weight}), s.duration) for s in DEFAULT_STAGES]


def progress(obj: dict[str, Any]) -> float:
    """Fraction of the rollout's planned time that is behind it (stages done + elapsed part of the current one)."""
    st = obj.get("status") or {}
    phase = st.get("phase")
    if phase in ("Succeeded",):
        return 1.0
    stages = stages_of(obj)
    total = sum(parse_duration(d) for _, d in stages) or 1.0
    stage = st.get("stage") or 0
    if phase == "Promoting":
        return 1.0 if stage >= len(stages) else 0.99
    if stage < 1:
        return 0.0
    done = sum(parse_duration(d) for _, d in stages[: stage - 1])
    elapsed = float(st.get("stageElapsedSeconds") or 0)
    if st.get("stageResumedAt"):
        elapsed += (datetime.now(UTC) - datetime.fromisoformat(st["stageResumedAt"].replace("Z", "+00:00"))).total_seconds()
    current = parse_duration(stages[stage - 1][1])
    return min(1.0, (done + min(elapsed, current)) / total)


def bar(fraction: float, width: int = BAR) -> str:
    filled = round(fraction * width)
    return "[" + "#" * filled + "-" * (width - filled) + f"] {fraction * 100:3.0f}%"


def render_row(obj: dict[str, Any], now: datetime) -> list[str]:
    st = obj.get("status") or {}
    meta = obj["metadata"]
    return [meta.get("namespace", ""), meta["name"], st.get("phase") or "-", str(st.get("stage") or "-"),
            f"{st.get('weight', 0)}%", _age(meta.get("creationTimestamp"), now), (st.get("message") or "")[:70]]


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def render_status(obj: dict[str, Any], now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    st = obj.get("status") or {}
    spec = obj.get("spec") or {}
    meta = obj["metadata"]
    images = ", ".join(f"{c['name']}={c['image']}" for c in (spec.get("template") or {}).get("containers", []))
    source = st.get("source")
    if "template" not in spec:  # the target's own pod template is the version: say which, in Git terms
        images = ", ".join(f"{k}={v}" for k, v in (st.get("canaryImages") or {}).items()) or "-"
        where = [f"generation {source['generation']}"] if source and source.get("generation") is not None else []
        if source and source.get("revision"):
            where.append(f"revision {source['revision']}")
        images += f" (pod template {st.get('templateHash') or '-'}" + "".join(f", {w}" for w in where) + ")"
    lines = [
        f"Name:      {meta.get('namespace')}/{meta['name']}",
        f"Phase:     {st.get('phase') or 'Pending (not seen by the operator yet)'}"
        + (f" ({st['pauseReason']})" if st.get("pauseReason") else ""),
        f"Message:   {st.get('message') or '-'}",
        f"New:       {images}",
        f"Stable:    {', '.join(f'{k}={v}' for k, v in (st.get('stableImages') or {}).items()) or '-'}",
        f"Weight:    {st.get('weight', 0)}% to the canary"
        + (f"; also {st['routing']}" if st.get("routing") else ""),
        *_partition_line(st),
        f"Progress:  {bar(progress(obj))}",
        "Stages:",
    ]
    current = st.get("stage") or 0
    phase = st.get("phase")
    for i, (w, d) in enumerate(stages_of(obj), start=1):
        if phase == "Succeeded" or (phase == "Promoting" and current >= i) or i < current:
            mark = "done"
        elif i == current and phase in ("Progressing", "Paused"):
            mark = "<- now"
        else:
            mark = ""
        lines.append(f"  {i}. {w}  {d:>5}  {mark}")
    metrics = (st.get("analysis") or {}).get("metrics") or []
    if metrics:
        lines.append(f"Analysis:  last run {_age((st.get('analysis') or {}).get('lastRun'), now)} ago")
        rows = [[m["name"], "no data" if m.get("value") is None else f"{m['value']:.4g}", m.get("threshold", ""),
                 m.get("verdict", "") + (" (dry run)" if m.get("dryRun") else ""), str(m.get("consecutiveFailures", 0)),
                 (m.get("message") or "")[:50]]
                for m in metrics]
        lines += ["  " + line for line in table(rows, ["METRIC", "VALUE", "THRESHOLD", "VERDICT", "FAILS", "NOTE"]
                                                ).splitlines()]
    lines += render_dry_run(st)
    lines += render_deadline(st, spec, now)
    if source:
        refused = source.get("refused")
        lines.append(f"Target:    stable template {source.get('stableTemplateHash') or '-'}; "
                     f"{source.get('targetWrites', 0)} write(s) to the Deployment in this rollout"
                     + (f"; Argo CD Application {source['application']}" if source.get("application") else ""))
        if refused:
            lines.append(f"Refused:   pod template {refused.get('templateHash')} (generation {refused.get('generation')}"
                         + (f", revision {refused['revision']}" if refused.get("revision") else "") + ")")
    snap = st.get("snapshot")
    if snap:
        lines.append(f"Snapshot:  {snap['id']} {snap.get('state')} {snap.get('sizeBytes') or '?'} bytes"
                     + (" verified" if snap.get("verified") else ""))
    lines += render_migration(st, spec)
    inc = st.get("incident")
    if inc:
        on = f" on {inc['metric']}" if inc.get("metric") else ""
        lines.append(f"Incident:  {inc.get('reason')}{on}; report {inc.get('reportRef') or '(being written)'}")
    conds = st.get("conditions") or []
    if conds:
        lines.append("Conditions: " + ", ".join(f"{c['type']}={c['status']} ({c['reason']})" for c in conds))
    return "\n".join(lines)


def render_migration(st: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """spec.migration's Job: its name, state, duration, and the last lines of its log once it ended."""
    m = st.get("migration")
    forward_only = bool((spec.get("database") or {}).get("forwardOnly"))
    if not m:
        return ["Migration: " + (f"Job not created yet (timeout {(spec['migration'] or {}).get('timeout') or '10m'})"
                                 if spec.get("migration") else "none")] if spec.get("migration") else []
    took = f" in {m['durationSeconds']:.1f}s" if m.get("durationSeconds") is not None else ""
    lines = [f"Migration: Job {m.get('job')} {m.get('state')}{took}" + (f": {m['message']}" if m.get("message") else "")
             + (" (forwardOnly database: never restored)" if forward_only else "")]
    log_lines = (m.get("logs") or "").splitlines()
    if log_lines:
        lines.append(f"  log ({m.get('logsSource') or 'log'}, last {min(5, len(log_lines))} of {len(log_lines)} lines):")
        lines += [f"    {line[:160]}" for line in log_lines[-5:]]
    return lines


def render_dry_run(st: dict[str, Any]) -> list[str]:
    """dryRun metrics over the whole rollout: shown, never acted on."""
    tallies = (st.get("analysis") or {}).get("dryRun") or []
    if not tallies:
        return []
    lines = ["Dry run:   judged, never acted on"]
    for t in tallies:
        would = (f"would have breached {t['wouldBreach']}x ({t.get('onBreach')}; first at stage "
                 f"{t.get('firstBreachStage')}, {t.get('firstBreachWeight')}%)") if t.get("wouldBreach") else \
            "never would have breached"
        value = "no data" if t.get("lastValue") is None else f"{t['lastValue']:.4g}"
        lines.append(f"  {t['name']}: {t.get('checks', 0)} checks, {t.get('passes', 0)} pass, {t.get('failures', 0)} "
                     f"fail, {t.get('inconclusive', 0)} inconclusive; {would}; latest {t.get('lastVerdict') or '-'} "
                     f"{value}")
    return lines


def render_deadline(st: dict[str, Any], spec: dict[str, Any], now: datetime) -> list[str]:
    """spec.progressDeadlineSeconds: what the rollout waits on the cluster for, and how long it has left; or, once
    it ran out, what it waited for and what was done."""
    rec = st.get("progressDeadline")
    if not rec:
        return []
    if rec.get("exceededAt"):
        return [f"Deadline:  {rec.get('message') or 'progress deadline exceeded'}; then {rec.get('action')}"]
    limit = int(spec.get("progressDeadlineSeconds") or SafeRolloutSpec.model_fields["progress_deadline_seconds"].default)
    failures = f"; {rec['failures']} failed attempt(s), the last: {rec.get('lastError')}" if rec.get("failures") else ""
    if rec.get("pausedAt"):
        return [f"Deadline:  waiting for {rec.get('waitingFor')}; the clock stands while paused{failures}"]
    left = "-"
    if rec.get("deadlineAt"):
        at = datetime.fromisoformat(rec["deadlineAt"].replace("Z", "+00:00"))
        left = format_duration(max(0.0, (at - now).total_seconds()))
    return [f"Deadline:  waiting {_age(rec.get('since'), now)} for {rec.get('waitingFor')}; {left} left of "
            f"progressDeadlineSeconds {limit} (then {spec.get('onProgressDeadline') or 'rollback'}){failures}"]


def render_history(obj: dict[str, Any]) -> str:
    st = obj.get("status") or {}
    rows = [[h["at"][:19].replace("T", " "), h["action"], str(h.get("stage") or "-"), f"{h.get('weight', '-')}%",
             h.get("metric") or "-", (h.get("message") or "")[:60]] for h in st.get("history") or []]
    out = [f"rollout attempt {st.get('attempt', 0)} of {obj['metadata']['name']}: {st.get('phase')}"]
    out.append(table(rows, ["TIME", "ACTION", "STAGE", "WEIGHT", "METRIC", "MESSAGE"]) if rows else "no breach actions")
    inc = st.get("incident") or {}
    if inc.get("reportRef"):
        out.append(f"incident report: kubectl get configmap {inc['reportRef']} -o jsonpath='{{.data.report\\.md}}'")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------- api


class Api:
    def __init__(self, kubeconfig: str | None, context: str | None) -> None:
        from kubernetes import client, config

        config.load_kube_config(config_file=kubeconfig, context=context)
        self.custom = client.CustomObjectsApi()
        self.exc = client.exceptions.ApiException

    def get(self, ns: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        return obj

    def list(self, ns: str | None) -> list[dict[str, Any]]:
        if ns is None:
            res = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        else:
            res = self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
        items: list[dict[str, Any]] = res.get("items", [])
        return items

    def patch(self, ns: str, name: str, body: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, body,
                                                   _content_type="application/merge-patch+json")


def command_patch(verb: str) -> dict[str, Any]:
    return {"metadata": {"annotations": {"saferollout.dev/command": f"{verb}/{time.time_ns()}"}}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kubectl saferollout", description="Watch and steer SafeRollouts.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("-n", "--namespace", default=None)
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("--kubeconfig", default=None)
    p.add_argument("--context", default=None)
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("get", help="list rollouts")
    s = sub.add_parser("status", help="show one rollout; --watch follows it to the end")
    s.add_argument("name")
    s.add_argument("-w", "--watch", action="store_true")
    s.add_argument("--timeout", default="30m", help="with --watch: give up after this long (exit 5)")
    s.add_argument("--interval", type=float, default=1.0)
    for verb, text in (("pause", "hold the weight (spec.paused: true)"),
                       ("resume", "resume a paused rollout"), ("abort", "roll back now"),
                       ("promote", "skip the remaining stages and promote"), ("retry", "start a rolled-back or blocked "
                                                                                      "rollout again"),
                       ("history", "breach actions and the incident report of the last attempt")):
        sub.add_parser(verb, help=text).add_argument("name")
    backtest_parser(sub)
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return USAGE if e.code else OK
    if args.cmd == "backtest":
        return backtest(args)
    try:
        api = Api(args.kubeconfig, args.context)
    except Exception as e:
        print(f"error: cannot load the kubeconfig: {e}", file=sys.stderr)
        return API_ERROR
    ns = None if args.all_namespaces else (args.namespace or _current_namespace(args.kubeconfig, args.context))
    try:
        return run(api, args, ns)
    except api.exc as e:
        if e.status == 404:
            print(f"error: safeRollout {getattr(args, 'name', '')!r} not found in namespace {ns}", file=sys.stderr)
            return NOT_FOUND
        print(f"error: the API server answered {e.status}: {e.reason}", file=sys.stderr)
        return API_ERROR
    except (OSError, ConnectionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return API_ERROR


BACKTEST_HELP = """Replay a rollout's analysis over a past window of Prometheus history with the operator's own
decision core, queries and label settings, on a simulated clock; print what it would have done.

  kubectl saferollout backtest -f rollout.yaml --from 2026-11-30T10:00:00Z --to 2026-11-30T11:00:00Z
  kubectl saferollout backtest -f rollout.yaml --from now-7d --to now --releases releases.yaml \\
      --sweep error-rate.max=0.005,0.01,0.02

Without --releases the rollout starts at --from. The AnalysisTemplates and ClusterAnalysisTemplates its metrics
name are read from the same file (more YAML documents), not from a cluster.
A releases file lists past releases, each labelled good or bad:
  releases:
    - {name: v41, at: "2026-11-24T09:00:00Z", label: good}
    - {name: v42, at: "2026-11-26T14:30:00Z", label: bad}
--sweep PARAM=V1,V2,... replays every release once per value and prints detections, false rollbacks and the
median time to detect. PARAM: failureLimit, inconclusiveLimit, interval, or <metric>.<field> (error-rate.max,
latency.judge.confidence, ...). Label names, the rate window and the default stages are the operator's: set them
with the same SAFEROLLOUT_* environment variables the Helm chart sets (README: Operator settings)."""


def backtest_parser(sub: Any) -> None:
    b = sub.add_parser("backtest", help="replay a rollout's analysis over Prometheus history (writes nothing)",
                       description=BACKTEST_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("-f", "--filename", required=True, help="a SafeRollout manifest (or its spec)")
    b.add_argument("--from", dest="start", required=True, help="RFC 3339 time, or now-<duration> (now-7d, now-2h)")
    b.add_argument("--to", dest="end", default="now", help="RFC 3339 time, or now-<duration>; default now")
    b.add_argument("--prometheus", default=None, help="Prometheus URL; default: the rollout's "
                   "analysis.prometheus.address, else SAFEROLLOUT_PROMETHEUS_URL, else the operator's default")
    b.add_argument("--releases", default=None, help="a YAML file of labelled past releases")
    b.add_argument("--sweep", default=None, help="PARAM=V1,V2,...: one replay of every release per value")


def _when(text: str, now: datetime) -> datetime:
    if text == "now":
        return now
    if text.startswith("now-"):
        rest = text[4:]
        days = float(rest[:-1]) * 86400 if rest.endswith("d") else parse_duration(rest)
        return now - timedelta(seconds=days)
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _load_spec(path: str) -> tuple[SafeRolloutSpec, str, str, list[dict[str, Any]]]:
    """The SafeRollout (or a bare spec) of a file, and every document in it (the templates it may name)."""
    import yaml

    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]
    doc = next((d for d in docs if d.get("kind") == "SafeRollout"), None if any("kind" in d for d in docs)
               else docs[0] if docs else None)
    if doc is None:
        raise ValueError(f"{path}: no SafeRollout in it")
    meta = doc.get("metadata") or {}
    spec = doc.get("spec", doc) if "kind" in doc else doc
    return SafeRolloutSpec.model_validate(spec), str(meta.get("name") or "rollout"), \
        str(meta.get("namespace") or "default"), docs


def backtest(args: argparse.Namespace) -> int:
    import yaml

    from saferollout import backtest as bt
    from saferollout.adapters.prometheus import PrometheusApi, QueryFailed
    from saferollout.config import OperatorConfig

    now = datetime.now(UTC)
    try:
        spec, name, namespace, docs = _load_spec(args.filename)
        start, end = _when(args.start, now), _when(args.end, now)
        releases = None
        if args.releases:
            with open(args.releases) as f:
                releases = bt.releases_from(yaml.safe_load(f))
        if args.sweep and releases is None:
            raise bt.BacktestError("--sweep needs --releases: a sweep is scored against labelled releases")
        param, _, values = (args.sweep or "").partition("=")
        if args.sweep and not (param and values):
            raise bt.BacktestError("--sweep takes PARAM=V1,V2,...")
        cfg = OperatorConfig.from_env()
        url = args.prometheus or (spec.analysis.prometheus.address if spec.analysis.prometheus else None) \
            or cfg.prometheus_url
        run = bt.Backtest(spec, cfg, url, start, end, name, namespace,
                          templates=bt.templates_from(docs, namespace))
    except (OSError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return USAGE
    try:
        PrometheusApi(url, cfg.prometheus_timeout, 1).query("1")
    except QueryFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return API_ERROR
    for note in run.notes:
        print(f"note: {note}")
    try:
        if args.sweep:
            assert releases is not None
            rows = run.sweep(param, [v.strip() for v in values.split(",") if v.strip()], releases)
            print(bt.render_sweep(param, rows))
        elif releases is not None:
            for _, out in run.releases(releases):
                print(out.summary())
        else:
            print(bt.render_timeline(run.once()))
    except bt.BacktestError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE
    print(f"history {start:%Y-%m-%dT%H:%M:%SZ} .. {end:%Y-%m-%dT%H:%M:%SZ} "
          f"({format_duration((end - start).total_seconds())}) at {spec.analysis.interval}: "
          f"{run.range_requests} range requests to Prometheus, {run.wall:.2f}s")
    return OK


def _current_namespace(kubeconfig: str | None, context: str | None) -> str:
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)
        if context:
            contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)
            active = next(c for c in contexts if c["name"] == context)
        return str(active["context"].get("namespace") or "default")
    except Exception:
        return "default"


def run(api: Api, args: argparse.Namespace, ns: str | None) -> int:
    out_json = args.output == "json"
    if args.cmd == "get":
        items = api.list(ns)
        if out_json:
            print(json.dumps([{"namespace": i["metadata"].get("namespace"), "name": i["metadata"]["name"],
                               **(i.get("status") or {})} for i in items], indent=2))
        else:
            now = datetime.now(UTC)
            print(table([render_row(i, now) for i in items],
                        ["NAMESPACE", "NAME", "PHASE", "STAGE", "WEIGHT", "AGE", "MESSAGE"]) if items
                  else f"no SafeRollouts in {ns or 'any namespace'}")
        return OK
    assert ns is not None or not args.all_namespaces, "-A only goes with get"
    ns = ns or "default"
    if args.cmd == "status":
        deadline = time.monotonic() + parse_duration(args.timeout)
        while True:
            obj = api.get(ns, args.name)
            phase = (obj.get("status") or {}).get("phase")
            if out_json:
                print(json.dumps({"name": args.name, "namespace": ns, **(obj.get("status") or {})}))
            else:
                if args.watch and sys.stdout.isatty():
                    print("\x1b[2J\x1b[H", end="")
                print(render_status(obj))
            if not args.watch:
                return OK
            if phase in TERMINAL:
                return OK if phase == "Succeeded" else ENDED_BADLY
            if time.monotonic() > deadline:
                print(f"timed out after {args.timeout} in phase {phase}", file=sys.stderr)
                return TIMEOUT
            time.sleep(args.interval)
            if not out_json and not sys.stdout.isatty():
                print("---")
    obj = api.get(ns, args.name)
    phase = (obj.get("status") or {}).get("phase")
    if args.cmd == "history":
        print(json.dumps((obj.get("status") or {}).get("history") or []) if out_json else render_history(obj))
        return OK
    if args.cmd == "pause":
        api.patch(ns, args.name, {"spec": {"paused": True}})
        return _said(out_json, args.name, "paused", "spec.paused set; the weight is held")
    if args.cmd == "resume":
        if (obj.get("spec") or {}).get("paused"):
            api.patch(ns, args.name, {"spec": {"paused": False}})
            return _said(out_json, args.name, "resumed", "spec.paused cleared")
        if phase != "Paused":
            return _refused(out_json, args.name, f"resume: the rollout is {phase}, not Paused")
    allowed = {"abort": {"Pending", "Preflight", "Progressing", "Paused", "Promoting"},
               "promote": {"Progressing", "Paused"}, "resume": {"Paused"},
               "retry": {"RolledBack", "Failed", "Blocked"}}
    if phase not in allowed[args.cmd]:
        return _refused(out_json, args.name, f"{args.cmd}: not possible in phase {phase}")
    api.patch(ns, args.name, command_patch(args.cmd))
    return _said(out_json, args.name, args.cmd, f"{args.cmd} requested; the operator acts on its next tick")


def _said(out_json: bool, name: str, verb: str, text: str) -> int:
    print(json.dumps({"name": name, "command": verb, "accepted": True, "message": text}) if out_json
          else f"safeRollout/{name}: {text}")
    return OK


def _refused(out_json: bool, name: str, text: str) -> int:
    print(json.dumps({"name": name, "accepted": False, "message": text}) if out_json else f"error: {text}",
          file=sys.stdout if out_json else sys.stderr)
    return ENDED_BADLY


if __name__ == "__main__":
    raise SystemExit(main())
