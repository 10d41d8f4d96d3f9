"""Hypothesis strategies for SafeRollout: spec documents, spec edits, commands, and the world's answers to actions.

Two families of spec documents:

* `spec_dicts()` - mostly valid shapes with hostile field values (huge and malformed durations, NaN and infinite
  thresholds, names long and short, wrong types, stray keys); the models must refuse them with a ValidationError or
  accept them, and the core must then cope with what they accepted.
* `valid_spec_dicts()` - valid by construction (canary over each router, blue-green, with and without a database),
  with only the occasional hostile value, to drive the decision core through whole rollouts.

The world's answers (`answer_for`) are what an executor can plausibly return for an action: success, an
`Outcome(ok=False)`, a result of the right type with random content, or a crash of the operator before the answer.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from hypothesis import reject
from hypothesis import strategies as st
from pydantic import ValidationError

from saferollout.core import actions as a
from saferollout.core.engine import iso
from saferollout.core.models import Metric, SafeRolloutSpec, Verdict

NAN = math.nan
INF = math.inf
VERIFY_ERROR_RATE = "verify-error-rate"  # the key the executor answers rollback.verify.maxErrorRate under

# ------------------------------------------------------------------------------------------------- scalars

GOOD_DURATIONS = ["1s", "2s", "5s", "10s", "30s", "1.5s"]  # within every duration field's bounds
EDGE_DURATIONS = ["0s", "0ms", "100ms", "500ms", "1ms", "1m", "90s", "1h30m", "24h", "25h", "6h", "1000000000h",
                  "99999999999h",
                  "9" * 20 + "ms", "1" + "0" * 308 + "s", "9" * 400 + "s", "9" * 30 + "h", "0.0000001s"]
BAD_DURATIONS = ["", "1e9h", "-1s", "10d", "1 s", "s", "1.s", "inf", "NaN", "1h-30m", "5", "1S", "1m\n"]

DURATIONS: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(EDGE_DURATIONS),
    st.sampled_from(BAD_DURATIONS),
    st.from_regex(r"\A([0-9]{1,4}(\.[0-9]{1,2})?(ms|s|m|h)){1,3}\Z"),
    st.sampled_from([30, 1.5, None, True, ["1s"]]),
)


def durations() -> st.SearchStrategy[Any]:
    """Hostile duration fields: zero, huge (400 digits), malformed, random, and the occasional wrong type."""
    return DURATIONS


SHORT_DURATIONS = ["1s", "2s", "5s", "10s", "30s", "1m", "2s", "5s"]


def valid_durations(edgy: bool = False) -> st.SearchStrategy[str]:
    """Durations for valid specs: short ones (so a rollout gets somewhere); with `edgy`, also zero and huge ones."""
    if not edgy:
        return st.sampled_from(SHORT_DURATIONS)
    return st.sampled_from([*SHORT_DURATIONS, "0s", "500ms", "1h", "24h", "1000000000h", "99999999999h", "9" * 400 + "s"])


HOSTILE_FLOATS: st.SearchStrategy[Any] = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([-0.0, -1.0, NAN, INF, -INF, 1e308, 5e-324]),
    st.sampled_from([10**20, 10**400, -(10**400)]),
    st.sampled_from(["0.5", "nan", "inf", True, None]),
)


def hostile_floats() -> st.SearchStrategy[Any]:
    """Thresholds: any float (NaN, infinities, negative, subnormal), huge ints, the odd string or bool."""
    return HOSTILE_FLOATS


GOOD_NAMES = ["web", "a", "api-1", "x" * 55, "db-0"]
BAD_NAMES = ["", "Web", "-web", "web-", "web\n", "web_1", "we b", "x" * 56, "x" * 63, "x" * 64, "x" * 253, "x" * 254,
             "é", "9" * 63]
HOSTILE_NAMES: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(BAD_NAMES), st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,70}[a-z0-9])?\Z"), st.sampled_from([1, None]))


def names() -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(GOOD_NAMES), HOSTILE_NAMES)


class _Omit:
    def __repr__(self) -> str:
        return "OMIT"


OMIT: Any = _Omit()


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not OMIT}


# -------------------------------------------------------------------------------------------- spec documents


class Pick:
    """Draws each field valid, or with probability `rate`% hostile: a document has a few bad values, not only bad
    ones (a fully random document is refused at its first field and tests nothing behind it)."""

    def __init__(self, draw: st.DrawFn, rate: int) -> None:
        self.draw, self.rate = draw, rate

    def __call__(self, valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> Any:
        bad = self.rate > 0 and self.draw(st.integers(0, 99)) < self.rate
        return self.draw(hostile if bad else valid)

    def value(self, valid: Any, hostile: st.SearchStrategy[Any]) -> Any:
        return self(st.just(valid), hostile)

    def one(self, valid: list[Any], hostile: list[Any]) -> Any:
        return self(st.sampled_from(valid), st.sampled_from(hostile))

    def duration(self) -> Any:
        return self(st.sampled_from(GOOD_DURATIONS), DURATIONS)

    def name(self) -> Any:
        return self(st.sampled_from(GOOD_NAMES), HOSTILE_NAMES)

    def number(self, valid: list[float]) -> Any:
        return self(st.sampled_from(valid), HOSTILE_FLOATS)

    def optional(self, value: Any) -> Any:
        """The key left out (OMIT, removed by _clean) or given."""
        return OMIT if self.draw(st.booleans()) else value


@st.composite
def stage_lists(draw: st.DrawFn, pick: Pick) -> Any:
    shape = pick.one(["rising"], ["random", "empty", "many", "null", "equal"])
    if shape == "null":
        return None
    if shape == "empty":
        return []
    if shape == "rising":
        ws: list[Any] = sorted(draw(st.sets(st.integers(1, 100), min_size=1, max_size=6)))
    elif shape == "many":
        ws = list(range(1, 23))
    elif shape == "equal":
        ws = [5, 5]
    else:
        ws = draw(st.lists(st.one_of(st.integers(-5, 150), st.sampled_from([5.0, 5.5, "5", None])), min_size=1,
                           max_size=6))
    return [{"weight": pick.value(w, st.sampled_from([0, -1, 101, 5.5, "x"])), "duration": pick.duration()}
            for w in ws]


@st.composite
def metric_dicts(draw: st.DrawFn, pick: Pick, name: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"name": name}
    source = pick.one(["query", "template", "httpGet"], ["two", "none"])
    if source in ("query", "two"):
        d["query"] = pick.one(['sum(rate(x{svc="{{ service }}"}[1m]))', "up"], ["", "q" * 20000])
    if source in ("template", "two"):
        d["template"] = pick.one(["error-rate", "p95-latency", "custom-one"], ["Bad_Template", ""])
    if source == "httpGet":
        d["httpGet"] = _clean({
            "url": pick.optional(pick.one(["http://{{ service }}.{{ namespace }}.svc/healthz", "https://x", "http://web:8080/healthz"],
                                          ["ftp://x", "http://", "http://a b", "x" * 3000])),
            "timeout": pick.optional(pick.duration())})
    threshold = pick.one(["max", "min", "both", "maxRatio", "maxDifference", "judge"],
                         ["none", "baseline-both", "baseline-empty", "baseline-and-judge"])
    if source == "httpGet" and threshold in ("max", "min", "both") and draw(st.booleans()):
        threshold = "none"  # a health check needs no threshold
    if threshold in ("max", "both"):
        d["max"] = pick.number([0.01, 0.0, 2.0, 1.0, -1.0])
    if threshold in ("min", "both"):
        d["min"] = pick.number([0.0, 0.5, -1.0])
    if threshold in ("maxRatio", "baseline-both", "baseline-and-judge"):
        d.setdefault("baseline", {})["maxRatio"] = pick.number([1.2, 1.0, 1e-9])
    if threshold in ("maxDifference", "baseline-both"):
        d.setdefault("baseline", {})["maxDifference"] = pick.number([0.0, 50e6, -1.0])
    if threshold == "baseline-empty":
        d["baseline"] = {}
    if threshold in ("judge", "baseline-and-judge"):
        d["judge"] = _clean({
            "minSamples": pick.optional(pick.one([3, 20, 10000], [2, 10001, -1, 1.5])),
            "confidence": pick.optional(pick.number([0.95, 0.99, 0.51])),
            "direction": pick.optional(pick.one(["increase", "decrease"], ["sideways", ""])),
            "window": pick.optional(pick.duration()),
            "step": pick.optional(pick.duration()),
        })
    d["severity"] = pick.optional(pick.one(["critical", "high", "medium", "low"], ["urgent", "", 1]))
    d["onBreach"] = pick.optional(pick.one(["rollback", "stepBack", "pause", "notify"], ["explode", "StepBack"]))
    limit = pick.optional(pick.one([2, 3, 100], [0, 101, -1]))
    d["failureLimit"] = limit
    d["warnAfter"] = pick.optional(pick.value(1, st.sampled_from([0, 2, 3, 100, 101])))
    if d["warnAfter"] is not OMIT and limit is OMIT:
        d["warnAfter"] = OMIT if draw(st.booleans()) else d["warnAfter"]
    d["dryRun"] = OMIT if draw(st.integers(0, 3)) else pick.one([True, False], ["yes", 1, None])
    return _clean(d)


def traffic_dicts(pick: Pick) -> dict[str, Any]:
    router = pick.one(["gatewayAPI", "istio", "nginx", "replicas"], ["two", "none"])
    out: dict[str, Any] = {}
    if router in ("gatewayAPI", "two"):
        out["gatewayAPI"] = {"httpRoute": pick.name(), "stableService": pick.name(), "canaryService": pick.name()}
    if router in ("istio", "two"):
        out["istio"] = _clean({"virtualService": pick.name(), "route": pick.optional(pick.one(["primary"], ["", 7])),
                               "stableService": pick.optional(pick.name()), "canaryService": pick.optional(pick.name())})
    if router == "nginx":
        out["nginx"] = _clean({"ingress": pick.name(), "stableService": pick.optional(pick.name())})
    if router == "replicas":
        out["replicas"] = _clean({"canaryService": pick.optional(pick.name())})
    return out


@st.composite
def strategy_dicts(draw: st.DrawFn, pick: Pick) -> dict[str, Any]:
    kind = pick.one(["canary", "canary", "blueGreen"], ["both", "none"])
    out: dict[str, Any] = {}
    if kind in ("canary", "both"):
        out["canary"] = _clean({"stages": pick.optional(draw(stage_lists(pick))), "traffic": traffic_dicts(pick)})
    if kind in ("blueGreen", "both"):
        out["blueGreen"] = _clean({
            "activeService": pick.name(), "previewService": pick.name(),
            "autoPromote": pick.optional(pick.one([True, False], ["yes", 2])),
            "previewDuration": pick.optional(pick.duration()),
            "postPromotionDuration": pick.optional(pick.duration()),
            "scaleDownDelay": pick.optional(pick.duration()),
        })
    return out


@st.composite
def database_dicts(draw: st.DrawFn, pick: Pick) -> dict[str, Any]:
    provider = pick.one(["postgres", "volumeSnapshot"], ["both", "none"])
    d: dict[str, Any] = {}
    if provider in ("postgres", "both"):
        d["postgres"] = {"secretRef": {"name": pick.name(), "key": pick.one(["dsn", "url.txt"], ["", "a/b", "k" * 300])}}
    if provider in ("volumeSnapshot", "both"):
        d["volumeSnapshot"] = _clean({"pvc": pick.name(), "volume": pick.optional("data")})
    snap = draw(st.booleans())
    d["snapshotBeforeRollout"] = snap
    d["verifySnapshot"] = pick(st.booleans() if snap else st.just(False), st.just(True))
    d["restoreOnRollback"] = pick(st.booleans() if snap else st.just(False), st.just(True))
    d["retain"] = pick.optional(pick.one([1, 5, 100], [0, 101]))
    d["maxRestoreAttempts"] = pick.optional(pick.one([1, 3, 10], [0, 11]))
    return _clean(d)


@st.composite
def spec_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """A SafeRollout spec as a user could write it: the right shape, with a few (or many) hostile values."""
    pick = Pick(draw, draw(st.sampled_from([0, 0, 1, 2, 5, 20, 60])))
    n = pick(st.integers(1, 4), st.just(0))
    metric_names = pick(st.just(["error-rate", "latency", "health", "memory"][:n]), st.just(["same"] * max(n, 2)))
    d: dict[str, Any] = {
        "targetRef": _clean({"name": pick.name(), "kind": pick.optional(pick.one(["Deployment"], ["StatefulSet"]))}),
        "template": {"containers": [
            _clean({"name": pick.name(), "image": pick.one(["demo/web:2", "envoy:2"], ["", "i" * 2000]),
                    "env": pick.optional([{"name": "A", "value": "1"}])})
            for _ in range(pick.one([1, 2], [0, 33]))]},
        "strategy": draw(strategy_dicts(pick)),
        "analysis": _clean({
            "interval": pick.optional(pick.duration()),
            "failureLimit": pick.optional(pick.one([1, 3, 100], [0, 101])),
            "inconclusiveLimit": pick.optional(pick.one([1, 3], [0, 101])),
            "onInconclusive": pick.optional(pick.one(["pause", "rollback"], ["ignore"])),
            "metrics": metric_names if metric_names is OMIT else [draw(metric_dicts(pick, m)) for m in metric_names],
            "prometheus": pick.optional({"address": pick.one(["http://prometheus:9090"], ["prometheus", "", "http://a b"])}),
        }),
        "preflight": _clean({"stableHealthy": pick.optional(draw(st.booleans())),
                             "timeout": pick.optional(pick.duration())}),
        "rollback": {"verify": _clean({
            "duration": pick.optional(pick.duration()), "successes": pick.optional(pick.one([1, 3, 100], [0, 101])),
            "maxErrorRate": pick.optional(pick.number([0.0, 0.01, 1.0]))})},
        "notifications": [{"webhook": _clean({
            "url": pick.one(["https://hooks.example/x"], ["http://", "ftp://x", "https://a b"]),
            "minSeverity": pick.optional(pick.one(["low", "critical"], ["nope"])),
            "format": pick.optional(pick.one(["generic", "slack"], ["teams"])),
            "timeout": pick.optional(pick.duration())})} for _ in range(pick.one([0, 1], [17]))],
        "paused": pick.optional(pick.one([True, False], ["false", 0, None])),
    }
    if draw(st.booleans()):
        d["database"] = draw(database_dicts(pick))
        d["preflight"]["databaseReachable"] = draw(st.booleans())
    else:
        d["preflight"]["databaseReachable"] = pick.value(False, st.just(True))
    if pick.rate and draw(st.integers(0, 19)) == 0:  # a stray key must be refused, never ignored
        d[draw(st.sampled_from(["unknownKnob", "Paused", "target_ref"]))] = 1
    return _clean(d)


# ------------------------------------------------------------------------------------------ valid documents


@st.composite
def valid_metric_dicts(draw: st.DrawFn, name: str, edgy: bool = False) -> dict[str, Any]:
    kind = draw(st.sampled_from(["template-max", "query-min", "http", "baseline-ratio", "baseline-diff", "judge",
                                 "query-both"]))
    d: dict[str, Any] = {"name": name}
    if kind == "template-max":
        d.update(template=draw(st.sampled_from(["error-rate", "p95-latency"])),
                 max=draw(st.sampled_from([0.01, 0.0, 2.0, -1.0, 1e308] + ([NAN, INF] if edgy else []))))
    elif kind == "query-min":
        d.update(query="sum(up)", min=draw(st.sampled_from([0.5, 0.0, -1.0])))
    elif kind == "query-both":
        d.update(query="sum(up)", min=0.0, max=draw(st.sampled_from([1.0, 0.0, -1.0])))
    elif kind == "http":
        d.update(httpGet={"url": "http://web-canary:8080/healthz"})
    elif kind == "baseline-ratio":
        d.update(query="sum(x)", baseline={"maxRatio": draw(st.sampled_from([1.2, 1.0, 1e-9] + ([INF] if edgy else [])))})
    elif kind == "baseline-diff":
        d.update(query="sum(x)", baseline={"maxDifference": draw(st.sampled_from([0.0, 50e6, -1.0] + ([NAN] if edgy else [])))})
    else:
        d.update(query="sum(x)", judge={"minSamples": draw(st.sampled_from([3, 5, 20])),
                                        "direction": draw(st.sampled_from(["increase", "decrease"]))})
    d["onBreach"] = draw(st.sampled_from(["rollback", "stepBack", "pause", "notify"]))
    d["severity"] = draw(st.sampled_from(["critical", "high", "medium", "low"]))
    limit = draw(st.sampled_from([None, 1, 2, 3]))
    if limit is not None:
        d["failureLimit"] = limit
        if limit > 1 and draw(st.booleans()):
            d["warnAfter"] = limit - 1
    return d


ROUTER_DICTS: dict[str, dict[str, Any]] = {
    "gatewayAPI": {"gatewayAPI": {"httpRoute": "web", "stableService": "web", "canaryService": "web-canary"}},
    "istio": {"istio": {"virtualService": "web"}},
    "nginx": {"nginx": {"ingress": "web"}},
    "replicas": {"replicas": {}},
}


@st.composite
def valid_spec_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """Specs the models accept (valid by construction, filtered by `valid_specs`), with short stages and
    intervals so that a few clock steps take a rollout through its stages."""
    edgy = draw(st.integers(0, 7)) == 0  # now and then zero, huge or non-finite values where the models allow them
    dur = valid_durations(edgy)
    containers = [{"name": "web", "image": "demo/web:2"}]
    if draw(st.booleans()):
        containers.append({"name": "sidecar", "image": "envoy:2"})
    if draw(st.sampled_from(["canary", "canary", "blueGreen"])) == "canary":
        stages: Any = None
        if draw(st.integers(0, 4)):
            ws = sorted(draw(st.sets(st.integers(1, 100), min_size=1, max_size=5)))
            stages = [{"weight": w, "duration": draw(dur)} for w in ws]
        canary: dict[str, Any] = {"traffic": ROUTER_DICTS[draw(st.sampled_from(sorted(ROUTER_DICTS)))]}
        if stages is not None:
            canary["stages"] = stages
        strategy: dict[str, Any] = {"canary": canary}
    else:
        strategy = {"blueGreen": {
            "activeService": "web", "previewService": "web-preview", "autoPromote": draw(st.booleans()),
            "previewDuration": draw(dur), "postPromotionDuration": draw(dur),
            "scaleDownDelay": draw(dur),
        }}
    n = draw(st.integers(1, 3))
    metrics = [draw(valid_metric_dicts(name, edgy)) for name in ["error-rate", "latency", "health"][:n]]
    spec: dict[str, Any] = {
        "targetRef": {"name": "web"},
        "template": {"containers": containers},
        "strategy": strategy,
        "analysis": {"interval": draw(dur), "failureLimit": draw(st.sampled_from([1, 2, 3])),
                     "inconclusiveLimit": draw(st.sampled_from([1, 2, 3])),
                     "onInconclusive": draw(st.sampled_from(["pause", "rollback"])), "metrics": metrics},
        "rollback": {"verify": {"duration": draw(dur), "successes": draw(st.sampled_from([1, 2, 3]))}},
        "paused": mostly(draw, 10),
    }
    if draw(st.booleans()):
        spec["rollback"]["verify"]["maxErrorRate"] = draw(st.sampled_from([0.0, 0.01, 1.0]))
    if draw(st.booleans()):
        restore = draw(st.booleans())
        spec["database"] = {
            **draw(st.sampled_from([{"postgres": {"secretRef": {"name": "db", "key": "dsn"}}},
                                    {"volumeSnapshot": {"pvc": "data", "volume": "data"}}])),
            "snapshotBeforeRollout": restore or draw(st.booleans()), "verifySnapshot": draw(st.booleans()) and restore,
            "restoreOnRollback": restore, "maxRestoreAttempts": draw(st.sampled_from([1, 2, 3])),
        }
        spec["preflight"] = {"databaseReachable": draw(st.booleans()), "stableHealthy": draw(st.booleans())}
    elif draw(st.booleans()):
        spec["preflight"] = {"stableHealthy": True}
    return spec


def validated(d: dict[str, Any]) -> SafeRolloutSpec | None:
    try:
        return SafeRolloutSpec.model_validate(d)
    except ValidationError:
        return None


@st.composite
def valid_specs(draw: st.DrawFn) -> tuple[dict[str, Any], SafeRolloutSpec]:
    """(document, model) for the documents of `valid_spec_dicts` that the models accept."""
    d = draw(valid_spec_dicts())
    spec = validated(d)
    if spec is None:
        reject()
    return d, spec


# ------------------------------------------------------------------------------------------------ spec edits


def spec_edits() -> st.SearchStrategy[tuple[Any, ...]]:
    """Edits a person makes mid-rollout, as (what, args) tuples that read well in a failing example."""
    return st.one_of(
        st.tuples(st.just("truncate-stages"), st.integers(1, 5)),
        st.tuples(st.just("extend-stages"), st.integers(1, 3)),
        st.tuples(st.just("stage-durations"), valid_durations(edgy=True)),
        st.tuples(st.just("replace-stages"), st.sets(st.integers(1, 100), min_size=1, max_size=5).map(sorted)),
        st.tuples(st.just("interval"), valid_durations(edgy=True)),
        st.tuples(st.just("threshold"), st.integers(0, 2), st.sampled_from(["max", "min", "maxRatio", "maxDifference"]),
                  st.sampled_from([0.0, 0.5, 1.0, -1.0, 1e9, NAN, INF])),
        st.tuples(st.just("on-breach"), st.integers(0, 2), st.sampled_from(["rollback", "stepBack", "pause", "notify"])),
        st.tuples(st.just("failure-limit"), st.integers(1, 4)),
        st.tuples(st.just("paused"), st.booleans()),
        st.tuples(st.just("bg-durations"), valid_durations(edgy=True), valid_durations(edgy=True)),
        st.tuples(st.just("new-template"), st.integers(3, 9)),
    )


def apply_edit(doc: dict[str, Any], edit: tuple[Any, ...]) -> dict[str, Any]:
    d = copy.deepcopy(doc)
    what, *args = edit
    canary = d["strategy"].get("canary")
    bg = d["strategy"].get("blueGreen")
    metrics = d["analysis"]["metrics"]
    default = [{"weight": 5, "duration": "2m"}, {"weight": 25, "duration": "3m"}, {"weight": 50, "duration": "3m"},
               {"weight": 100, "duration": "5m"}]
    if what == "truncate-stages" and canary is not None:
        canary["stages"] = (canary.get("stages") or default)[: args[0]]
    elif what == "extend-stages" and canary is not None:
        stages = list(canary.get("stages") or default)
        top = stages[-1]["weight"]
        stages += [{"weight": w, "duration": "1s"} for w in range(top + 1, min(100, top + args[0]) + 1)]
        canary["stages"] = stages
    elif what == "stage-durations" and canary is not None:
        canary["stages"] = [{**s, "duration": args[0]} for s in canary.get("stages") or default]
    elif what == "replace-stages" and canary is not None:
        canary["stages"] = [{"weight": w, "duration": "1s"} for w in args[0]]
    elif what == "interval":
        d["analysis"]["interval"] = args[0]
    elif what == "threshold":
        m = metrics[args[0] % len(metrics)]
        field, value = args[1], args[2]
        if field in ("maxRatio", "maxDifference"):
            if "baseline" in m:
                m["baseline"] = {field: value}
        elif "baseline" not in m and "judge" not in m:
            m[field] = value
    elif what == "on-breach":
        metrics[args[0] % len(metrics)]["onBreach"] = args[1]
    elif what == "failure-limit":
        d["analysis"]["failureLimit"] = args[0]
        for m in metrics:
            m.pop("warnAfter", None)
            m.pop("failureLimit", None)
    elif what == "paused":
        d["paused"] = args[0]
    elif what == "bg-durations" and bg is not None:
        bg["previewDuration"], bg["postPromotionDuration"] = args
    elif what == "new-template":
        d["template"]["containers"][0]["image"] = f"demo/web:{args[0]}"
    return d


def commands() -> st.SearchStrategy[str | None]:
    """The saferollout.dev/command annotation: '<verb>/<id>'; the same id again is the same command."""
    return st.one_of(
        st.builds(lambda verb, n: f"{verb}/{n}", st.sampled_from(["abort", "promote", "resume", "retry", "bogus"]),
                  st.integers(1, 6)),
        st.sampled_from([None, "", "abort", "/", "promote/"]),
    )


def clock_steps() -> st.SearchStrategy[float]:
    """Seconds between two decisions: none, a tick, a stage, an hour, days."""
    return st.one_of(
        st.sampled_from([0.0, 0.001, 0.5, 1.0, 2.0, 5.0, 10.0, 31.0, 60.0, 301.0, 3600.0, 86400.0, 3 * 86400.0]),
        st.floats(min_value=0.0, max_value=7 * 86400.0),
    )


# ------------------------------------------------------------------------------------------ the world's answers


OUTCOME_FIELDS = {f.name for f in dataclasses.fields(a.Outcome)}
METRIC_VALUES_FIELDS = {f.name for f in dataclasses.fields(a.MetricValues)}


@dataclass(frozen=True)
class Crash:
    """The operator died after acting and before the answer was decided on: the reconcile ends here."""

    def __repr__(self) -> str:
        return "Crash()"


CRASH = Crash()
Answer = a.Result | Crash | None


@dataclass
class WorldView:
    """What the simulated cluster holds, so that answers are mostly consistent with what was done."""

    target_images: dict[str, str]
    now: datetime
    asked_at: str | None = None


def mostly(draw: st.DrawFn, percent: int) -> bool:
    """True `percent`% of the time, and what shrinking goes to (a minimal example keeps the happy path)."""
    return draw(st.integers(0, 99)) < percent


FAULTY_VALUES = ["fail", "none", "zero", "nan", "inf", "-inf", "any", "huge"]


def passing_value(m: Metric | None) -> float:
    """A value the metric passes (for a judged metric any: its series decide), 0.0 when no value passes."""
    if m is None:
        return 0.0
    for v in (0.0, 1.0, m.min, m.max, -1.0, 1e-9, 1e9, -1e9):
        if v is not None and math.isfinite(v) and m.verdict(v) == Verdict.passed:
            return v
    return 0.0


def failing_value(m: Metric | None) -> float:
    if m is None:
        return 1.0
    candidates = [(m.max or 0.0) + 1.0, (m.min or 0.0) - 1.0, 1e12, -1e12, 0.0, 1.0]
    for v in candidates:
        if math.isfinite(v) and m.verdict(v) == Verdict.fail:
            return v
    return 1e12


@st.composite
def series_for(draw: st.DrawFn, kind: str, min_samples: int) -> tuple[list[float], list[float]]:
    n = draw(st.integers(min_samples, min_samples + 5))
    if kind == "pass":
        return [1.0] * n, [1.0] * n
    if kind == "fail":
        return [10.0] * n, [1.0] * n
    if kind == "none":
        return [], []
    side = st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, NAN, INF])),
                    max_size=min_samples + 5)
    return draw(side), draw(side)


@st.composite
def metric_values(draw: st.DrawFn, act: a.QueryMetrics, spec: SafeRolloutSpec, asked_at: str | None) -> a.MetricValues:
    by_name = {m.name: m for m in spec.analysis.metrics}
    wanted = [VERIFY_ERROR_RATE] if act.max_error_rate is not None else list(act.metrics)
    if not mostly(draw, 90):
        wanted = [n for n in wanted if draw(st.booleans())]
    values: dict[str, float | None] = {}
    errors: dict[str, str] = {}
    samples: dict[str, float] = {}
    series: dict[str, tuple[list[float], list[float]]] = {}
    pairs: dict[str, tuple[float | None, float | None]] = {}
    for name in wanted:
        m = by_name.get(name) if act.max_error_rate is None else None
        if m is None and act.max_error_rate is not None:
            m = Metric(name=name, template="error-rate", max=act.max_error_rate)
        kind = "pass" if mostly(draw, 94) else draw(st.sampled_from(FAULTY_VALUES))
        value: float | None = {
            "pass": passing_value(m), "fail": failing_value(m), "none": None, "zero": 0.0, "nan": NAN, "inf": INF,
            "-inf": -INF, "huge": 1e308,
        }.get(kind) if kind != "any" else draw(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)))
        if m is not None and m.judge is not None and act.target != "stable":
            series[name] = draw(series_for(kind, m.judge.min_samples))
            value = None
        if m is not None and m.baseline is not None and "pairs" in METRIC_VALUES_FIELDS and draw(st.booleans()):
            # canary and stable apart, the core does the arithmetic (a stable 0 makes a ratio unbounded)
            pairs[name] = draw(st.one_of(
                st.tuples(st.sampled_from([0.0, 1.0, 5.0, None, NAN, INF]), st.sampled_from([0.0, 1.0, 5.0, None, NAN])),
                st.tuples(st.floats(allow_nan=True, allow_infinity=True), st.floats(allow_nan=True,
                                                                                    allow_infinity=True))))
        values[name] = value
        if kind in ("none", "nan") or not mostly(draw, 90):
            errors[name] = draw(st.sampled_from(["Prometheus unreachable at http://p:9090", "no data", "",
                                                 "query failed: 422 bad_data"]))
        if m is not None and m.template == "error-rate":
            # requests behind the rate: the Prometheus adapter drops NaN and infinite readings (the focused test
            # test_any_metric_value_keeps_the_status_strict_json feeds those)
            samples[name] = draw(st.one_of(st.sampled_from([500.0, 0.0, 1.0, 84.0]),
                                           st.floats(min_value=0.0, max_value=1e12)))
    extra: dict[str, Any] = {"pairs": pairs} if pairs else {}
    return a.MetricValues(act.target, act.purpose, values, errors, samples, series, asked_at=asked_at, **extra)


def _outcomes(act: a.Action) -> list[Answer]:
    out: list[Answer] = [a.Outcome(act, False, "write refused: 409 Conflict"), a.Outcome(act, False, "timed out")]
    if "refused" in OUTCOME_FIELDS:  # a refusal no retry can mend (where the core knows the difference)
        out.append(a.Outcome(act, False, "admission webhook denied the request", **{"refused": True}))
    return [*out, CRASH]


def faults_for(act: a.Action, world: WorldView) -> list[Answer]:
    """Every answer but the happy one: failures, odd results, a crash."""
    if isinstance(act, a.ReadTarget):
        images = world.target_images
        return [a.TargetState(dict(images), False, "1"), a.TargetState({}, True),
                a.TargetState({**images, "web": "demo/web:0"}, True, "7"), a.TargetState({"other": "x:1"}, True),
                a.Outcome(act, False, 'deployments.apps "web" not found'), CRASH]
    if isinstance(act, a.QueryMetrics):
        return [a.Outcome(act, False, "boom"), CRASH]
    if isinstance(act, a.TakeSnapshot | a.VerifySnapshot):
        sid = act.snapshot_id
        return [a.SnapshotResult(sid, True, taken_at=iso(world.now - timedelta(seconds=1))),
                a.SnapshotResult(sid, False, "pg_dump: connection refused"), a.SnapshotResult("some-other-snapshot", True),
                CRASH]
    if isinstance(act, a.RestoreDatabase | a.CheckRestored):
        sid = act.snapshot_id
        return [a.RestoreResult(sid, False, "pg_restore: error", pre_restore_dump="pre.dump"),
                a.RestoreResult(sid, True, "restored, not verified"), a.RestoreResult(sid, False, ""), CRASH]
    if isinstance(act, a.EnsureCanary):
        return [a.CanaryState(False), *_outcomes(act)]
    if isinstance(act, a.WriteReport):
        return [a.Outcome(act, False, "configmap too large"), CRASH]
    return _outcomes(act)  # SetWeight, SetTargetImages, DeleteCanary, PruneSnapshots, CheckDatabase


def happy(act: a.Action, world: WorldView) -> Answer:
    if isinstance(act, a.ReadTarget):
        return a.TargetState(dict(world.target_images), True, "1")
    if isinstance(act, a.TakeSnapshot | a.VerifySnapshot):
        return a.SnapshotResult(act.snapshot_id, True, "ok", size_bytes=100, sha256="ab", location="/s", tables=3)
    if isinstance(act, a.RestoreDatabase | a.CheckRestored):
        return a.RestoreResult(act.snapshot_id, True, "ok", pre_restore_dump="pre.dump", verified=True)
    if isinstance(act, a.EnsureCanary):
        return a.CanaryState(True, "c1")
    if isinstance(act, a.WriteReport):
        return a.ReportWritten(act.name)
    return a.Outcome(act, True)


@st.composite
def answer_for(draw: st.DrawFn, act: a.Action, spec: SafeRolloutSpec, world: WorldView) -> Answer:
    """What the executor may answer to `act` (None: nothing to decide on, as for events): mostly what works,
    now and then a fault."""
    if isinstance(act, a.Event | a.Notify):
        return None
    if mostly(draw, 93):
        return draw(metric_values(act, spec, world.asked_at)) if isinstance(act, a.QueryMetrics) else happy(act, world)
    return draw(st.sampled_from(faults_for(act, world)))
