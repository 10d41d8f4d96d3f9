"""PostgreSQL snapshots with pg_dump / pg_restore.

The dump and the checksums of every table are taken inside one exported transaction snapshot, so "the state before
the rollout" is exact even while the application writes.

No text built from data reaches a shell or psql: schema names go through `sql.Identifier`, the dump is replayed by
`pg_restore --dbname` itself (one transaction), and the database name reaches it as a conninfo quoted by the
driver. The restore first renames the user schemas aside (one transaction), so a replay that fails is undone by
renaming them back. The password reaches the tools through the environment (PGPASSWORD), never argv; the Secret's
whole value is registered for redaction before it is parsed, and a parser's error, which quotes its input, is
never passed on. Dumps are 0600 in a 0700 store.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from saferollout.adapters.snapshotting import RestoreOutcome, SnapshotInfo
from saferollout.redact import redact, register

USER_SCHEMAS = """
    SELECT nspname FROM pg_namespace
    WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' ORDER BY 1"""
TABLES = """
    SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
    ORDER BY 1, 2"""
COLUMNS = """
    SELECT table_schema, table_name, string_agg(column_name || ' ' || data_type || ' ' || is_nullable || ' '
           || coalesce(column_default, ''), ', ' ORDER BY ordinal_position)
    FROM information_schema.columns
    WHERE table_schema NOT LIKE 'pg\\_%' AND table_schema <> 'information_schema'
    GROUP BY 1, 2"""


def checksums(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    """Per table: column signature, row count and an order-independent hash of every row."""
    cols = {f"{s}.{t}": sig for s, t, sig in conn.execute(COLUMNS).fetchall()}
    out: dict[str, dict[str, Any]] = {}
    for schema, table in conn.execute(TABLES).fetchall():
        ident = sql.Identifier(schema, table)
        q = sql.SQL("SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))), '') "
                    "FROM {} t").format(ident)
        row = conn.execute(q).fetchone()
        assert row is not None
        out[f"{schema}.{table}"] = {"columns": cols.get(f"{schema}.{table}", ""), "rows": row[0], "hash": row[1]}
    return out


def diff(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> list[str]:
    problems = [f"table {t} missing" for t in sorted(set(a) - set(b))]
    problems += [f"table {t} not in the snapshot" for t in sorted(set(b) - set(a))]
    for t in sorted(set(a) & set(b)):
        if a[t]["columns"] != b[t]["columns"]:
            problems.append(f"{t}: columns differ")
        if a[t]["rows"] != b[t]["rows"]:
            problems.append(f"{t}: {b[t]['rows']} rows, snapshot has {a[t]['rows']}")
        elif a[t]["hash"] != b[t]["hash"]:
            problems.append(f"{t}: row contents differ")
    return problems


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class NotADsn(ValueError):
    """The Secret's value does not parse as a connection string (the parser's own message would quote it)."""


def _url_userinfo(dsn: str) -> str | None:
    """What stands between `scheme://` and the host of a URL DSN: up to the last '@' before the path."""
    text = dsn.strip()
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in ("postgres", "postgresql"):
        return None
    authority = rest.split("/", 1)[0].split("?", 1)[0]
    return authority.rpartition("@")[0] if "@" in authority else None


def _private(path: Path) -> None:
    path.chmod(0o600)


class PostgresSnapshots:
    def __init__(self, dsn: str, store: Path):
        register(dsn)
        userinfo = _url_userinfo(dsn)
        if userinfo is not None:
            register(userinfo)
            for piece in userinfo.replace("@", ":").split(":"):
                register(piece)
            if "@" in userinfo:  # libpq would end the password at the first '@' and quote the rest as a host
                raise NotADsn("the Secret's value is a URL whose user or password holds a bare '@': "
                              "percent-encode it as %40")
        try:
            params = conninfo_to_dict(dsn)
        except Exception:
            raise NotADsn("the Secret's value is not a PostgreSQL connection string "
                          "(key=value pairs, or a postgresql:// URL with its password percent-encoded)") from None
        self.params = {k: str(v) for k, v in params.items() if v is not None}
        register(self.params.get("password"))
        self.dsn = dsn
        self.store = store
        self.dbname = self.params.get("dbname", "postgres")

    # ------------------------------------------------------------------------------------------------ helpers

    def _env(self, dbname: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        mapping = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD",
                   "sslmode": "PGSSLMODE"}
        for key, var in mapping.items():
            if key in self.params:
                env[var] = self.params[key]
        env["PGDATABASE"] = dbname or self.dbname
        env["PGCONNECT_TIMEOUT"] = "10"
        return env

    def _connect(self, dbname: str | None = None, timeout: float = 10, autocommit: bool = True) -> psycopg.Connection[Any]:
        params = dict(self.params, dbname=dbname or self.dbname, connect_timeout=str(max(1, int(timeout))))
        return psycopg.connect(**params, autocommit=autocommit)  # type: ignore[arg-type]

    def _run(self, argv: list[str], dbname: str | None = None, lock_timeout: str | None = None) -> None:
        env = self._env(dbname)
        if lock_timeout:
            env["PGOPTIONS"] = f"-c lock_timeout={lock_timeout}"
        p = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {redact(p.stderr.strip())[-600:]}")

    def _store(self) -> Path:
        self.store.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.store.chmod(0o700)
        return self.store

    def _replay(self, snapshot_id: str, dbname: str | None = None) -> None:
        """pg_restore into the database itself: its name is a conninfo the driver quoted, not text of ours."""
        target = make_conninfo(dbname=dbname or self.dbname)
        self._run(["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction",
                   f"--dbname={target}", str(self._path(snapshot_id))], dbname=dbname, lock_timeout="30s")

    def _path(self, snapshot_id: str) -> Path:
        if "/" in snapshot_id or snapshot_id.startswith("."):
            raise ValueError(f"bad snapshot id {snapshot_id!r}")
        return self.store / f"{snapshot_id}.dump"

    def _meta(self, snapshot_id: str) -> dict[str, Any]:
        meta: dict[str, Any] = json.loads(self._path(snapshot_id).with_suffix(".json").read_text())
        return meta

    # --------------------------------------------------------------------------------------------- interface

    def reachable(self, timeout: float) -> None:
        with self._connect(timeout=timeout) as conn:
            conn.execute("SELECT 1")

    def take(self, snapshot_id: str) -> SnapshotInfo:
        path = self._path(snapshot_id)
        if path.exists() and path.with_suffix(".json").exists():  # already complete: never taken twice
            m = self._meta(snapshot_id)
            return SnapshotInfo(str(path), m["sizeBytes"], m["sha256"], len(m["tables"]), m["takenAt"])
        self._store()
        tmp = path.with_suffix(".partial")
        with self._connect(autocommit=False) as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            row = conn.execute("SELECT pg_export_snapshot(), now()").fetchone()
            assert row is not None
            exported, taken = row
            self._run(["pg_dump", "--format=custom", f"--snapshot={exported}", f"--file={tmp}", "--no-owner"])
            sums = checksums(conn)
            conn.rollback()
        _private(tmp)
        digest = _sha256(tmp)
        meta = {"id": snapshot_id, "takenAt": taken.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "sizeBytes": tmp.stat().st_size, "sha256": digest, "tables": sums, "database": self.dbname}
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
        _private(path.with_suffix(".json"))
        os.replace(tmp, path)  # the .dump appears only when complete
        return SnapshotInfo(str(path), meta["sizeBytes"], digest, len(sums), meta["takenAt"])

    def _check_file(self, snapshot_id: str) -> dict[str, Any]:
        path = self._path(snapshot_id)
        if not path.exists():
            raise FileNotFoundError(f"snapshot file {path.name} is missing from the store")
        meta = self._meta(snapshot_id)
        if _sha256(path) != meta["sha256"]:
            raise ValueError(f"snapshot file {path.name} is damaged: its sha256 no longer matches")
        return meta

    def verify(self, snapshot_id: str) -> str:
        meta = self._check_file(snapshot_id)
        scratch = f"sr_verify_{secrets.token_hex(4)}"
        with self._connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
        try:
            self._replay(snapshot_id, scratch)
            with self._connect(scratch) as conn:
                problems = diff(meta["tables"], checksums(conn))
        finally:
            with self._connect() as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(scratch)))
        if problems:
            raise ValueError("the restored copy differs: " + "; ".join(problems[:5]))
        rows = sum(t["rows"] for t in meta["tables"].values())
        return f"{len(meta['tables'])} tables, {rows} rows match"

    def restore(self, snapshot_id: str, pre_restore_dump: str | None) -> RestoreOutcome:
        try:
            meta = self._check_file(snapshot_id)
        except (OSError, ValueError) as e:
            return RestoreOutcome(False, str(e), pre_restore_dump)
        if pre_restore_dump is None:  # keep what the canary wrote, before anything is touched
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            dump = self._store() / f"pre-restore-{snapshot_id}-{stamp}.dump"
            try:
                self._run(["pg_dump", "--format=custom", f"--file={dump}", "--no-owner"])
                _private(dump)
            except RuntimeError as e:
                return RestoreOutcome(False, f"pre-restore dump failed, nothing restored: {e}")
            pre_restore_dump = str(dump)
        aside = self._set_aside()
        try:
            self._replay(snapshot_id)
        except RuntimeError as e:
            self._put_back(aside)
            return RestoreOutcome(False, f"{e}; the database is as it was", pre_restore_dump)
        self._drop(aside)
        with self._connect() as conn:
            problems = diff(meta["tables"], checksums(conn))
        if problems:
            return RestoreOutcome(False, "restored database differs: " + "; ".join(problems[:5]), pre_restore_dump)
        return RestoreOutcome(True, f"{len(meta['tables'])} tables equal the snapshot", pre_restore_dump)

    def _set_aside(self) -> list[tuple[str, str]]:
        """Rename every user schema out of the way in one transaction; an empty `public` takes its place."""
        token = secrets.token_hex(4)
        with self._connect() as conn:
            names = [r[0] for r in conn.execute(USER_SCHEMAS).fetchall()]
            moved = [(name, f"sr_aside_{token}_{i}") for i, name in enumerate(names)]
            with conn.transaction():
                conn.execute("SET LOCAL lock_timeout = '30s'")
                for old, new in moved:
                    conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))
                conn.execute("CREATE SCHEMA public")
        return moved

    def _put_back(self, moved: list[tuple[str, str]]) -> None:
        with self._connect() as conn, conn.transaction():
            conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
            for old, new in moved:
                conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(new), sql.Identifier(old)))

    def _drop(self, moved: list[tuple[str, str]]) -> None:
        with self._connect() as conn, conn.transaction():
            for _, new in moved:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(new)))

    def equals(self, snapshot_id: str) -> bool:
        meta = self._meta(snapshot_id)
        with self._connect() as conn:
            return not diff(meta["tables"], checksums(conn))

    def prune(self, keep: int, current: str) -> list[str]:
        snaps = sorted(self.store.glob("snap-*.dump"), key=lambda p: p.stat().st_mtime)
        doomed = [p for p in snaps if p.stem != current][: max(0, len(snaps) - keep)]
        for p in doomed:
            p.unlink(missing_ok=True)
            p.with_suffix(".json").unlink(missing_ok=True)
        return [p.name for p in doomed]


