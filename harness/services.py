"""Real Prometheus and PostgreSQL servers on loopback, started and stopped by the harness.

`TcpForwarder` makes one of them reachable from the real node's pods at the bridge's gateway address, while the
server itself stays on loopback.

Both keep their data directory across stop/start, because the faults `stopPrometheus`/`startPrometheus` and
`stopDatabase`/`startDatabase` are outages, not resets: the operator must see the same server come back.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

PROMETHEUS_BIN = os.environ.get("SAFEROLLOUT_PROMETHEUS_BIN", "/usr/bin/prometheus")
PG_BIN = Path(os.environ.get("SAFEROLLOUT_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_OS_USER = "postgres"


_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def free_port() -> int:
    """A loopback port nobody listens on now, and never one this process handed out before: concurrent runs start
    their servers a moment after asking, and must not be given the same port in between (another process may still
    take it: the usual small race, acceptable for a test harness)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with _handed_out_lock:
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("no loopback port that this process has not handed out already")


def wait_http(url: str, timeout: float, ok: tuple[int, ...] = (200,)) -> bool:
    """Poll a URL until it answers one of `ok`; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status in ok:
                    return True
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    return False


# ------------------------------------------------------------------------------------------------ Prometheus


class TextExporter(ThreadingHTTPServer):
    """A synthetic exporter the benches' Prometheus scrapes, on loopback: `body()` is its whole answer, in the text
    format."""

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _TextHandler)
        self.daemon_threads = True

    def body(self) -> bytes:
        raise NotImplementedError


class _TextHandler(BaseHTTPRequestHandler):
    server: TextExporter

    def do_GET(self) -> None:
        data = self.server.body()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return


@dataclass(frozen=True)
class ScrapeTarget:
    """One demo process, labelled as the Service whose pods it stands in for (its series' own label wins)."""

    job: str
    port: int
    service: str
    namespace: str
    host: str = "127.0.0.1"  # e.g. a ClusterIP, reached through kube-proxy's rules on the host (the real node)


def merge_targets(groups: Mapping[str | None, list[ScrapeTarget]]) -> list[ScrapeTarget]:
    """Every group's targets, in the groups' order; a job name in two places is an error (Prometheus would refuse
    the whole config, and every run's scrapes with it)."""
    out: list[ScrapeTarget] = []
    seen: dict[str, str | None] = {}
    for key, targets in groups.items():
        for t in targets:
            if t.job in seen:
                raise ValueError(f"scrape job {t.job!r} is set under {seen[t.job]!r} and {key!r}")
            seen[t.job] = key
            out.append(t)
    return out


def scrape_configs(targets: list[ScrapeTarget]) -> list[dict[str, Any]]:
    """One job per target, labelled as its Service; honor_labels: the demo app's own `service` label (the Service a
    request came through) wins."""
    return [{"job_name": t.job, "honor_labels": True, "static_configs": [
        {"targets": [f"{t.host}:{t.port}"], "labels": {"service": t.service, "namespace": t.namespace}}
    ]} for t in targets]


class Prometheus:
    """A real Prometheus (Debian's package) scraping the demo processes every second."""

    def __init__(self, root: Path, binary: str = PROMETHEUS_BIN, port: int | None = None,
                 retention: str = "1d") -> None:
        self.root = root
        self.retention = retention  # a back-filled history (bench/backtest.py) is older than a day
        self.binary = binary
        self.port = port or free_port()
        self.data = root / "data"
        self.config = root / "prometheus.yml"
        self.log = root / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._groups: dict[str | None, list[ScrapeTarget]] = {}
        self._lock = threading.Lock()
        self.data.mkdir(parents=True, exist_ok=True)
        self._write_config()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> None:
        cfg: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": scrape_configs(merge_targets(self._groups)),
        }
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
        tmp.replace(self.config)

    def set_targets(self, targets: list[ScrapeTarget], key: str | None = None) -> None:
        """Scrape these processes from now on (reloads a running server).

        Without a key they replace every target; with one, only the targets last set under that key, so concurrent
        scenario runs each keep their own (an empty list drops the key).
        """
        with self._lock:
            groups = {} if key is None else dict(self._groups)
            groups.pop(key, None)
            if targets:
                groups[key] = list(targets)
            merge_targets(groups)  # a job name in two groups is refused before the config changes
            self._groups = groups
            self._write_config()
            if self.running:
                req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
                with urllib.request.urlopen(req, timeout=10) as r:
                    if r.status != 200:
                        raise RuntimeError(f"prometheus reload answered {r.status}")

    def start(self, timeout: float = 60) -> None:
        """Start on the same port and data directory as before; returns once /-/ready answers."""
        if self.running:
            return
        if not Path(self.binary).exists():
            raise RuntimeError(f"{self.binary} not found: install Debian's prometheus package")
        logf = self.log.open("ab")
        self._proc = subprocess.Popen(
            [self.binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.data}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle",
             f"--storage.tsdb.retention.time={self.retention}", "--log.level=warn"],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        logf.close()
        if not wait_http(f"{self.url}/-/ready", timeout):
            self.stop()
            raise RuntimeError(f"prometheus did not become ready in {timeout:g}s; see {self.log}")

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (Prometheus flushes its head), SIGKILL if it hangs; the data directory stays."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; the `result` list (empty when there is no data)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus query failed: {body}")
        result = body["data"]["result"]
        return result if isinstance(result, list) else []

    def targets_up(self) -> dict[str, bool]:
        """{job: healthy} for the active targets."""
        with urllib.request.urlopen(f"{self.url}/api/v1/targets?state=active", timeout=5) as r:
            body = json.load(r)
        return {t["labels"].get("job", "?"): t.get("health") == "up" for t in body["data"]["activeTargets"]}


# ------------------------------------------------------------------------------------------------ PostgreSQL


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the postgres OS user when we are root."""
    return ["runuser", "-u", PG_OS_USER, "--", *argv] if os.geteuid() == 0 else argv


def _chown_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, PG_OS_USER, PG_OS_USER)


class Postgres:
    """A real PostgreSQL 15 cluster: TCP on 127.0.0.1 with SCRAM passwords, admin over its private socket."""

    APP_USER = "app"
    APP_DB = "app"

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.data = root / "data"
        self.sock = root / "sock"
        self.log = root / "postgres.log"
        self.password: str | None = None
        self._lock = threading.Lock()  # role and database changes, one at a time

    @property
    def running(self) -> bool:
        r = subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "status"]),
                           capture_output=True, check=False)
        return r.returncode == 0

    def _init(self) -> None:
        for d in (self.root, self.sock):
            d.mkdir(parents=True, exist_ok=True)
            _chown_postgres(d)
        os.chmod(self.root, 0o755)
        if not self.log.exists():
            self.log.touch()
            _chown_postgres(self.log)
        if (self.data / "PG_VERSION").exists():
            return
        r = subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                                         "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8",
                                         "--locale=C.UTF-8"]),
                           capture_output=True, text=True, check=False, cwd=self.root)
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stderr.strip() or r.stdout.strip()}")

    def start(self, timeout: float = 60) -> None:
        """Start (initialising the cluster the first time) and wait until it accepts connections."""
        self._init()
        if self.running:
            return
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.sock} "
                "-c fsync=off -c full_page_writes=off -c max_connections=100")
        r = subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                                         "-w", "-t", str(int(timeout)), "-o", opts, "start"]),
                           capture_output=True, text=True, check=False, cwd=self.root)
        if r.returncode != 0:
            raise RuntimeError(f"postgres did not start: {r.stderr.strip() or r.stdout.strip()}; see {self.log}")

    def stop(self) -> None:
        """Fast shutdown: open sessions are cut, as in a real outage; the data directory stays."""
        if not self.data.exists() or not self.running:
            return
        subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
                       capture_output=True, check=False, cwd=self.root)

    def admin(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        """A superuser connection over the unix socket (trust), autocommit."""
        return psycopg.connect(host=str(self.sock), port=self.port, user="postgres", dbname=dbname,
                               autocommit=True, connect_timeout=5)

    def dsn(self, password: str) -> str:
        return self.app_database(password).dsn()

    def facts(self, password: str) -> dict[str, str]:
        """What a `database.secretValue` may name: {password} as is, {dsn} URL-encoded, {user}, {host}, ..."""
        return self.app_database(password).facts()

    def app_database(self, password: str, user: str = APP_USER, dbname: str = APP_DB) -> AppDatabase:
        return AppDatabase(self.port, user, dbname, password)

    def reset_app(self, password: str) -> str:
        """A fresh role `app` (with this password, CREATEDB for scratch restores) owning a fresh database `app`.

        Databases the previous scenario's role owned (scratch copies) are dropped with it. Returns the DSN.
        """
        self.reset_database(password)
        self.password = password
        return self.dsn(password)

    def reset_database(self, password: str, user: str = APP_USER, dbname: str = APP_DB) -> AppDatabase:
        """`reset_app` for any role and database name: concurrent scenario runs each get their own pair."""
        with self._lock, self.admin() as conn:
            _drop_role(conn, user)
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                sql.Identifier(user), sql.Literal(password)))
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(dbname), sql.Identifier(user)))
        return self.app_database(password, user, dbname)

    def drop_database(self, db: AppDatabase) -> None:
        """The role and every database it owns (its own, and the operator's scratch copies)."""
        with self._lock, self.admin() as conn:
            _drop_role(conn, db.user)
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db.dbname)))

    def run_as_app(self, statements: str) -> None:
        """Run SQL as the database's owner over TCP, as the application would."""
        if self.password is None:
            raise RuntimeError("no scenario database yet")
        self.app_database(self.password).run(statements)

    def checksum(self) -> str:
        """See `checksum`; for the scenario database."""
        if self.password is None:
            raise RuntimeError("no scenario database yet")
        return self.app_database(self.password).checksum()


def _drop_role(conn: psycopg.Connection[Any], user: str) -> None:
    row = conn.execute("SELECT oid FROM pg_roles WHERE rolname = %s", (user,)).fetchone()
    if row is None:
        return
    owned = conn.execute("SELECT datname FROM pg_database WHERE datdba = %s", (row[0],)).fetchall()
    for (name,) in owned:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(user)))
    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(user)))


@dataclass(frozen=True)
class AppDatabase:
    """One scenario's role and database on the harness's PostgreSQL, reached over TCP as the application would."""

    port: int
    user: str
    dbname: str
    password: str

    def dsn(self, host: str = "127.0.0.1", port: int | None = None) -> str:
        """The DSN on loopback, or at another address that forwards to it (where pods reach the server)."""
        return (f"postgresql://{self.user}:{urllib.parse.quote(self.password, safe='')}"
                f"@{host}:{port or self.port}/{self.dbname}")

    def facts(self, host: str = "127.0.0.1", port: int | None = None) -> dict[str, str]:
        """What a `database.secretValue` may name: {password} as is, {dsn} URL-encoded, {user}, {host}, ..."""
        return {"password": self.password, "dsn": self.dsn(host, port), "user": self.user, "host": host,
                "port": str(port or self.port), "dbname": self.dbname}

    def run(self, statements: str) -> None:
        """Run SQL as the database's owner."""
        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(statements.encode())

    def checksum(self) -> str:
        return checksum(self.dsn())


def checksum(dsn: str) -> str:
    """SHA-256 over the schema and every row of every user table.

    Schema: columns (name, type, nullability, default), constraints and indexes of every table outside the system
    schemas. Rows: each table's rows as text, sorted, so physical order (which a restore changes) does not count.
    Sequences' positions are not rows and are left out.
    """
    h = hashlib.sha256()
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema') "
            "ORDER BY 1, 2").fetchall()
        for schema, table in tables:
            h.update(f"table {schema}.{table}\n".encode())
            for row in conn.execute(
                    "SELECT column_name, data_type, is_nullable, coalesce(column_default, '') "
                    "FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
                    "ORDER BY ordinal_position", (schema, table)):
                h.update(("column " + "|".join(map(str, row)) + "\n").encode())
            for row in conn.execute(
                    "SELECT conname, pg_get_constraintdef(c.oid) FROM pg_constraint c "
                    "JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
                    "WHERE n.nspname = %s AND t.relname = %s ORDER BY 1", (schema, table)):
                h.update(("constraint " + "|".join(map(str, row)) + "\n").encode())
            for row in conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s "
                                    "AND tablename = %s ORDER BY 1", (schema, table)):
                h.update(("index " + "|".join(map(str, row)) + "\n").encode())
            ident = sql.Identifier(schema, table)
            count_row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ident)).fetchone()
            rows_digest = conn.execute(sql.SQL(
                "SELECT md5(coalesce(string_agg(r::text, E'\\n' ORDER BY r::text), '')) FROM {} AS r"
            ).format(ident)).fetchone()
            h.update(f"rows {count_row[0] if count_row else 0} {rows_digest[0] if rows_digest else ''}\n".encode())
    return h.hexdigest()


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10, group: bool = False) -> None:
    """TERM, then KILL after `timeout`; `group` signals the whole process group (a pod's processes die together)."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        proc.wait(5)


# ------------------------------------------------------------------------------------------------ TCP forwarder


class TcpForwarder:
    """Forwards TCP from one address to a server on loopback, so the server itself stays on 127.0.0.1.

    The real node's pods reach the host only at the bridge's gateway address (10.240.0.1 by default), which is how
    they reach the API server too (cluster/node: a socat on that address). A forwarder on that address, for the
    duration of a test, makes Prometheus or PostgreSQL reachable from pods without either listening anywhere but
    loopback. It is bounded: at most `max_connections` at once (more are closed on accept), each closed after
    `idle_timeout` seconds without a byte either way. It refuses a wildcard listen address (0.0.0.0, ::), which
    would expose the server on every interface of the machine.

        with TcpForwarder("10.240.0.1", prometheus.port) as fwd:
            url = f"http://{fwd.address}"
    """

    def __init__(self, listen_host: str, target_port: int, *, listen_port: int = 0, target_host: str = "127.0.0.1",
                 max_connections: int = 32, idle_timeout: float = 300) -> None:
        if ipaddress.ip_address(listen_host).is_unspecified:
            raise ValueError(f"refusing to listen on the wildcard address {listen_host}: name one address")
        self.listen_host = listen_host
        self.port = listen_port
        self.target = (target_host, target_port)
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.accepted = 0
        self.refused = 0
        self._server: socket.socket | None = None
        self._lock = threading.Lock()
        self._active = 0
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> str:
        """host:port where clients connect."""
        return f"[{self.listen_host}]:{self.port}" if ":" in self.listen_host else f"{self.listen_host}:{self.port}"

    def __enter__(self) -> TcpForwarder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        server = socket.socket(socket.AF_INET6 if ":" in self.listen_host else socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((self.listen_host, self.port))
        server.listen(64)
        self.port = int(server.getsockname()[1])
        self._server = server
        self._spawn(self._accept, server)

    def stop(self) -> None:
        """Stops listening and cuts every open connection; returns once the threads are gone."""
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()
        with self._lock:
            open_sockets = list(self._sockets)
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for t in list(self._threads):
            t.join(5)

    @property
    def active(self) -> int:
        with self._lock:
            return self._active

    def _spawn(self, target: Callable[[socket.socket], None], sock: socket.socket) -> None:
        t = threading.Thread(target=target, args=(sock,), name=f"forward-{self.address}", daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _accept(self, server: socket.socket) -> None:
        while self._server is server:
            try:
                client, _ = server.accept()
            except OSError:
                return
            with self._lock:
                full = self._active >= self.max_connections
                if not full:
                    self._active += 1
                    self._sockets.add(client)
            if full:
                self.refused += 1
                client.close()
                continue
            self.accepted += 1
            self._spawn(self._pump, client)

    def _pump(self, client: socket.socket) -> None:
        """Copies bytes both ways until both sides have closed (a half-close is passed on), or idle_timeout."""
        upstream: socket.socket | None = None
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
            with self._lock:
                self._sockets.add(upstream)
            peer = {client: upstream, upstream: client}
            with selectors.DefaultSelector() as sel:
                sel.register(client, selectors.EVENT_READ)
                sel.register(upstream, selectors.EVENT_READ)
                open_ends = 2
                while open_ends:
                    events = sel.select(self.idle_timeout)
                    if not events:
                        return
                    for key, _ in events:
                        src = client if key.fileobj is client else upstream
                        data = src.recv(65536)
                        if data:
                            peer[src].sendall(data)
                            continue
                        sel.unregister(src)
                        open_ends -= 1
                        with contextlib.suppress(OSError):
                            peer[src].shutdown(socket.SHUT_WR)
        except OSError:
            return
        finally:
            with self._lock:
                self._active -= 1
                self._sockets.discard(client)
                if upstream is not None:
                    self._sockets.discard(upstream)
            client.close()
            if upstream is not None:
                upstream.close()
