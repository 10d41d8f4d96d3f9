"""A data plane in miniature: follows the router object the operator writes and sends load to the local processes.

Nothing implements the Gateway API, Istio, ingress-nginx or kube-proxy here, so this reads what the operator
writes (every 0.2 s) and splits a bounded load between the stable and canary demo processes by those weights. What
the weights are read from depends on the router (harness.traffic): an HTTPRoute's backendRefs, a VirtualService's
destinations, the canary Ingress's annotation, or the pods a Service's selector matches. A backend with weight 0 or
an absent weight gets nothing (absent is treated as 0 by choice, see docs/harness.md); a name that is neither
version gets nothing either and is reported. Every change of weights is recorded with its time: the expectations
about weights are computed from what the data plane actually applied.
"""

from __future__ import annotations

import http.client
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from harness.demoapp import ROLE_HEADER, SERVICE_HEADER
from harness.timeline import WeightChange

POLL_SECONDS = 0.2
MAX_IN_FLIGHT = 256
REQUEST_TIMEOUT = 15.0


def canary_share(weights: dict[str, int], stable: str, canary: str) -> int:
    """The canary's percent of the routed traffic: its weight when weights sum to 100, else its share, rounded."""
    total = sum(w for name, w in weights.items() if name in (stable, canary) and w > 0)
    c = max(0, weights.get(canary, 0))
    if total <= 0 or c == 0:
        return 0
    return c if total == 100 else round(100 * c / total)


def backend_weights(route: dict[str, Any]) -> dict[str, int]:
    """{backendRef name: weight} of the route's first rule; absent weights read as 0."""
    rules = (route.get("spec") or {}).get("rules") or []
    if not rules:
        return {}
    out: dict[str, int] = {}
    for ref in rules[0].get("backendRefs") or []:
        name = ref.get("name")
        if isinstance(name, str):
            w = ref.get("weight")
            out[name] = out.get(name, 0) + (int(w) if isinstance(w, int) and w > 0 else 0)
    return out


Condition = tuple[str, str, bool]  # a header a request must carry: (lower-case name, value, value is a regex)


def satisfies(headers: dict[str, str], conds: tuple[Condition, ...]) -> bool:
    """The request's headers meet every condition: exact, or a regex matched against the whole value."""
    lower = {k.lower(): v for k, v in headers.items()}
    for name, value, regex in conds:
        have = lower.get(name)
        if have is None or not (re.fullmatch(value, have) if regex else have == value):
            return False
    return True


@dataclass(frozen=True)
class Plan:
    """What a data plane does with a request, beyond the weights: rules that match headers first (the most
    conditions first, as the Gateway API orders them; Istio's order is kept by the reader), and a mirror."""

    weights: dict[str, int]
    matches: tuple[tuple[str, tuple[Condition, ...]], ...] = ()  # (weights key, every header it needs)
    mirror: tuple[str, int] | None = None  # (weights key, percent) each request is copied to
    cookies: tuple[tuple[str, str], ...] = ()  # (weights key, "name=value") its answers set: a sticky stage's

    @property
    def label(self) -> str:
        """How the expectations name it: `mirror`, `sticky`, `match` or `weight`."""
        return "mirror" if self.mirror else "sticky" if self.cookies else "match" if self.matches else "weight"

    def describe(self) -> str:
        parts = []
        for key, conds in self.matches:
            shown = " ".join(n + ("~" if r else "=") + v for n, v, r in conds)
            parts.append(f"match {shown} -> {key}")
        if self.mirror:
            parts.append(f"mirror {self.mirror[1]}% -> {self.mirror[0]}")
        parts += [f"{key} sets cookie {cookie}" for key, cookie in self.cookies]
        return "; ".join(parts)


def set_cookies(ref: dict[str, Any]) -> list[str]:
    """The `name=value` of each Set-Cookie a backendRef's ResponseHeaderModifier adds or sets on its answers."""
    out = []
    for f in ref.get("filters") or []:
        mod = f.get("responseHeaderModifier") or {}
        if f.get("type") == "ResponseHeaderModifier":
            out += [str(h.get("value", "")).split(";", 1)[0].strip() for h in (mod.get("add") or []) + (mod.get("set") or [])
                    if str(h.get("name", "")).lower() == "set-cookie"]
    return [c for c in out if "=" in c]


def rule_plan(route: dict[str, Any]) -> Plan:
    """An HTTPRoute's rules as the harness's data plane applies them: the first rule without header matches
    gives the weights (absent weights read as 0), its RequestMirror filter the mirror and its backendRefs'
    Set-Cookie the cookies; a rule whose every match needs headers is a match rule to its backendRef of highest
    weight. Paths are not looked at: the load asks `/`."""
    rules = (route.get("spec") or {}).get("rules") or []
    weights: dict[str, int] | None = None
    mirror: tuple[str, int] | None = None
    cookies: list[tuple[str, str]] = []
    matches: list[tuple[str, tuple[Condition, ...]]] = []
    for rule in rules:
        refs = [r for r in rule.get("backendRefs") or [] if isinstance(r.get("name"), str)]
        header_sets = [tuple((str(h.get("name", "")).lower(), str(h.get("value", "")),
                              h.get("type") == "RegularExpression") for h in m.get("headers") or [])
                       for m in rule.get("matches") or [{}]]
        if header_sets and all(header_sets) and refs:
            best = max(refs, key=lambda r: r.get("weight", 1) if isinstance(r.get("weight", 1), int) else 0)
            matches += [(str(best["name"]), conds) for conds in header_sets]
            continue
        if weights is not None:
            continue
        weights = {}
        for ref in refs:
            w = ref.get("weight")
            weights[ref["name"]] = weights.get(ref["name"], 0) + (int(w) if isinstance(w, int) and w > 0 else 0)
            cookies += [(str(ref["name"]), c) for c in set_cookies(ref)]
        for f in rule.get("filters") or []:
            rm = f.get("requestMirror") or {}
            name = (rm.get("backendRef") or {}).get("name")
            if f.get("type") == "RequestMirror" and isinstance(name, str):
                percent = rm.get("percent")
                frac = rm.get("fraction") or {}
                if isinstance(percent, int):
                    mirror = (name, percent)
                elif isinstance(frac.get("numerator"), int):
                    mirror = (name, round(100 * frac["numerator"] / (frac.get("denominator") or 100)))
                else:
                    mirror = (name, 100)
    matches.sort(key=lambda m: -len(m[1]))  # stable sort: more header matches first, then the route's order
    return Plan(weights or {}, tuple(matches), mirror, tuple(cookies))


@dataclass(frozen=True)
class Backend:
    """Where requests for one weights key go: the process (role) and the Service they came through.

    `label` is sent as X-Harness-Service, so the process labels the requests with it; None lets the process label
    them with its own Service (the replica-ratio router, where both versions sit behind one Service).
    """

    role: str  # "stable" or "canary"
    label: str | None


MAX_KEPT = 10_000
UPSTREAM_SETTLE = 2.5  # seconds after a route change before a real data plane's requests count under it
SEEN_LATE = 2 * POLL_SECONDS + 0.1  # how late the harness may see a change the data plane already applies
SETTLING = "settling"  # the plan label of the requests sent around a change


def bursts(times: list[tuple[float, int]], gap: float = 1.0) -> list[tuple[float, float, int, int]]:
    """(first, last, status, count) of the answers of one status that came within `gap` seconds of each other."""
    out: list[tuple[float, float, int, int]] = []
    for t, code in sorted(times):
        if out and out[-1][2] == code and t - out[-1][1] <= gap:
            first, _, _, n = out[-1]
            out[-1] = (first, t, code, n + 1)
        else:
            out.append((t, t, code, 1))
    return out


@dataclass
class RouterStats:
    sent: Counter[str] = field(default_factory=Counter)  # per backend: stable, canary
    codes: Counter[str] = field(default_factory=Counter)  # "stable 200", "canary 500", ...
    failed: int = 0  # connection errors and timeouts
    dropped: int = 0  # no slot free (MAX_IN_FLIGHT) or no backend with weight
    unrouted: int = 0  # weight on a backendRef that is neither Service
    # (the plan's label: weight, match, sticky or mirror; the request carried load.tagged's headers; stable,
    # canary or mirror: where it, or for mirror its copy, went; its user held a cookie the data plane had set)
    seen: Counter[tuple[str, bool, str, bool]] = field(default_factory=Counter)
    mirrored: int = 0  # copies sent to the mirror (their answers are counted as "mirror <code>" and dropped)
    # a real data plane's own answers (no pod answered): (monotonic time, status; 0: no answer), the first MAX_KEPT
    data_plane: list[tuple[float, int]] = field(default_factory=list)


class Router:
    """Polls the weights in one thread, paces the load in another, sends it from a bounded pool.

    `read_weights` returns {key: weight} (None when the object is not there); `backends` maps the keys that lead
    to a demo process, exactly one with role stable and one with role canary; `ports` maps roles to ports.
    """

    def __init__(self, read_weights: Callable[[], dict[str, int] | Plan | None], backends: dict[str, Backend],
                 ports: dict[str, int], rps: float, max_seconds: float,
                 on_change: Callable[[str], None] | None = None, what: str = "weights",
                 canary_share: int | None = None, tagged: tuple[int, dict[str, str]] | None = None,
                 users: int | None = None, upstream: tuple[str, int] | None = None,
                 settle: float = UPSTREAM_SETTLE, upstream_label: str | None = None) -> None:
        self._read_weights = read_weights
        # a real data plane (Traefik) at this address: every request goes there, and the answer's X-Harness-Role
        # says where it went; the weights are still read, for the timeline and the expectations
        self.upstream = upstream
        # ... which applies a route change some time after the write (Traefik: up to ~2.1 s), and may apply it before
        # the harness's next read sees it: a request sent from SEEN_LATE before a change was seen to `settle` after
        # it is counted under SETTLING, not under the new plan nor the old (decided once the load has stopped)
        self.settle = settle
        self._answered: list[tuple[float, str, bool, str, bool]] = []  # (sent at, plan label, tagged, role, cookie)
        # sent as X-Harness-Service to the upstream: the Service the requests go through (a ClusterIP, blue-green's
        # active or preview), which the answering pod labels them with; None: the pod's own Service
        self.upstream_label = upstream_label
        # load.tagged: this percent of the requests carries these headers (spread evenly, as the errors are)
        self.tagged = tagged
        # load.users: the requests come from this many users in turn, each keeping the cookies answers set
        self.jars: list[dict[str, str]] = [{} for _ in range(users or 0)]
        self._plan = Plan({})
        self.backends = dict(backends)
        roles = {b.role: k for k, b in backends.items()}
        if set(roles) != {"stable", "canary"} or len(roles) != len(backends):
            raise ValueError(f"backends need exactly one stable and one canary key, got {backends}")
        self.stable_key, self.canary_key = roles["stable"], roles["canary"]
        self._ports = dict(ports)
        self.rps = rps
        self.max_seconds = max_seconds
        self.what = what
        # a broken data plane: the weights are read (and shown) but not applied; this percent goes to the canary
        self.canary_share = canary_share
        self._on_change = on_change or (lambda _text: None)
        self._lock = threading.Lock()
        self._weights: dict[str, int] = {}
        self.changes: list[WeightChange] = []  # canary weight changes, first entry at the first read
        self.raw_changes: list[tuple[float, dict[str, int]]] = []
        self.stats = RouterStats()
        self._stats_lock = threading.Lock()  # the pool's threads count answers concurrently
        self.read_errors = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)
        self._pool = ThreadPoolExecutor(max_workers=min(MAX_IN_FLIGHT, 64), thread_name_prefix="router-req")
        self._threads = [threading.Thread(target=self._poll_loop, name="router-poll", daemon=True),
                         threading.Thread(target=self._load_loop, name="router-load", daemon=True)]
        self._rng = random.Random()
        self._mirror_count = 0
        self.first_read = threading.Event()

    # ------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Stop pacing at once; requests in flight finish (bounded by their timeout)."""
        self._stop.set()
        for t in self._threads:
            if t.ident is not None:  # started
                t.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)
        changes = [t for t, _ in self.raw_changes]
        with self._stats_lock:
            for sent, label, tagged, role, bearer in self._answered:
                near = any(sent - self.settle <= c <= sent + SEEN_LATE for c in changes)
                self.stats.seen[(SETTLING if near else label, tagged, role, bearer)] += 1
            self._answered.clear()

    # --------------------------------------------------------------------------------------------- weights
    @property
    def canary_weight(self) -> int:
        with self._lock:
            return canary_share(self._weights, self.stable_key, self.canary_key)

    @property
    def weights(self) -> dict[str, int]:
        with self._lock:
            return dict(self._weights)

    def _poll_loop(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.poll_once()
            self._stop.wait(POLL_SECONDS)

    def poll_once(self) -> None:
        """Read the weights once; record a change with the time it was seen."""
        try:
            weights = self._read_weights()
        except Exception as e:  # the API server may blink; keep the last weights, as a data plane would
            self.read_errors += 1
            self.last_error = str(e)
            return
        if weights is None:
            return
        plan = weights if isinstance(weights, Plan) else Plan(dict(weights))
        weights = plan.weights
        now = time.monotonic()
        with self._lock:
            if self.raw_changes and plan == self._plan:
                return
            self._plan = plan
            self._weights = dict(weights)
            canary = canary_share(weights, self.stable_key, self.canary_key)
            self.raw_changes.append((now, dict(weights)))
            if not self.changes or self.changes[-1][1] != canary:
                self.changes.append((now, canary))
        self.first_read.set()
        shown = ", ".join(f"{k}={v}" for k, v in weights.items()) or "no backends"
        extra = f"; {plan.describe()}" if plan.describe() else ""
        self._on_change(f"{self.what} {shown} (canary {canary}%){extra}")

    # ------------------------------------------------------------------------------------------------ load
    def _pick(self, headers: dict[str, str] | None = None, plan: Plan | None = None) -> str | None:
        """The weights key for one request, "other" for weight on a key that leads to no process, None for none.
        `plan`: the one the caller counts the request under (read once, so a change in between cannot split them)."""
        with self._lock:
            plan = plan or self._plan
            w = plan.weights
            for key, conds in plan.matches:
                if headers is not None and satisfies(headers, conds):
                    return key if key in self.backends else "other"
            stable = max(0, w.get(self.stable_key, 0))
            canary = max(0, w.get(self.canary_key, 0))
            other = sum(v for k, v in w.items() if k not in (self.stable_key, self.canary_key) and v > 0)
        if self.canary_share is not None:
            stable, canary, other = 100 - self.canary_share, self.canary_share, 0
        total = stable + canary + other
        if total <= 0:
            return None
        x = self._rng.uniform(0, total)
        if x < stable:
            return self.stable_key
        if x < stable + canary:
            return self.canary_key
        return "other"

    def _load_loop(self) -> None:
        if self.rps <= 0:
            return
        self.first_read.wait(timeout=10)
        start = time.monotonic()
        deadline = start + self.max_seconds
        total = int(self.rps * self.max_seconds)
        for i in range(total):
            due = start + i / self.rps
            if due >= deadline:
                break
            if self._stop.wait(max(0.0, due - time.monotonic())):
                break
            tagged = self.tagged is not None and (i + 1) * self.tagged[0] // 100 > i * self.tagged[0] // 100
            headers = dict(self.tagged[1]) if tagged and self.tagged else {}
            jar = self.jars[i % len(self.jars)] if self.jars else {}
            bearer = bool(jar)
            if jar:
                held = "; ".join(f"{k}={v}" for k, v in jar.items())
                name = next((k for k in headers if k.lower() == "cookie"), "Cookie")  # tagged's, in any case
                headers[name] = f"{headers[name]}; {held}" if headers.get(name) else held
            with self._lock:
                plan = self._plan
            if self.upstream is not None:
                if not self._slots.acquire(blocking=False):
                    self.stats.dropped += 1
                    continue
                self._pool.submit(self._forward, time.monotonic(), plan.label, tagged, bearer, headers)
                continue
            key = self._pick(headers, plan)
            if key is None:
                self.stats.dropped += 1
                continue
            if key == "other":
                self.stats.unrouted += 1
                continue
            if not self._slots.acquire(blocking=False):
                self.stats.dropped += 1
                continue
            self.stats.sent[self.backends[key].role] += 1
            self.stats.seen[(plan.label, tagged, self.backends[key].role, bearer)] += 1
            self._pool.submit(self._send, self.backends[key], headers)
            for by, cookie in plan.cookies:  # the answer's Set-Cookie, kept by its user (the data plane adds it)
                if by == key and self.jars:
                    name, _, value = cookie.partition("=")
                    jar[name] = value
            if plan.mirror and plan.mirror[0] in self.backends and self.canary_share is None:
                percent = plan.mirror[1]
                self._mirror_count += 1
                n = self._mirror_count
                if n * percent // 100 > (n - 1) * percent // 100 and self._slots.acquire(blocking=False):
                    self.stats.mirrored += 1
                    self.stats.seen[(plan.label, tagged, "mirror", bearer)] += 1
                    self._pool.submit(self._send, self.backends[plan.mirror[0]], headers, True)

    def _send(self, backend: Backend, extra: dict[str, str] | None = None, mirror: bool = False) -> None:
        """One request; a mirror's copy is sent the same way and its answer only counted ("mirror 200")."""
        headers = {**(extra or {}), "Connection": "close"}
        if backend.label:
            headers[SERVICE_HEADER] = backend.label
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self._ports[backend.role], timeout=REQUEST_TIMEOUT)
            try:
                conn.request("GET", "/", headers=headers)
                resp = conn.getresponse()
                resp.read()
                with self._stats_lock:
                    self.stats.codes[f"{'mirror' if mirror else backend.role} {resp.status}"] += 1
            finally:
                conn.close()
        except OSError:
            with self._stats_lock:
                self.stats.failed += 1
        finally:
            self._slots.release()

    def _forward(self, sent: float, label: str, tagged: bool, bearer: bool, extra: dict[str, str]) -> None:
        """One request through the data plane; counted where the answering pod says it belongs."""
        assert self.upstream is not None
        try:
            conn = http.client.HTTPConnection(*self.upstream, timeout=REQUEST_TIMEOUT)
            try:
                conn.request("GET", "/", headers={**extra, "Connection": "close",
                                                  **({SERVICE_HEADER: self.upstream_label} if self.upstream_label else {})})
                resp = conn.getresponse()
                resp.read()
                role = resp.getheader(ROLE_HEADER) or "data-plane"  # no pod answered: Traefik's own 5xx/404
                with self._stats_lock:
                    self.stats.codes[f"{role} {resp.status}"] += 1
                    if role in ("stable", "canary"):
                        self.stats.sent[role] += 1
                        self._answered.append((sent, label, tagged, role, bearer))
                    else:
                        self.stats.unrouted += 1
                        if len(self.stats.data_plane) < MAX_KEPT:
                            self.stats.data_plane.append((time.monotonic(), resp.status))
            finally:
                conn.close()
        except (OSError, http.client.HTTPException):
            with self._stats_lock:
                self.stats.failed += 1
                if len(self.stats.data_plane) < MAX_KEPT:
                    self.stats.data_plane.append((time.monotonic(), 0))  # no answer at all
        finally:
            self._slots.release()

    def summary(self) -> str:
        s = self.stats
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(s.codes.items()))
        seen = ", ".join(f"{label}/{'tagged' if tagged else 'untagged'}{'+cookie' if bearer else ''}->{to}={n}"
                         for (label, tagged, to, bearer), n in sorted(s.seen.items())
                         if label != "weight" or tagged or bearer)
        return (f"sent stable={s.sent['stable']} canary={s.sent['canary']} mirrored={s.mirrored}"
                f"{'; ' + seen if seen else ''}; answers {codes or 'none'}; "
                f"failed={s.failed} dropped={s.dropped} unrouted={s.unrouted} route-read-errors={self.read_errors}")
