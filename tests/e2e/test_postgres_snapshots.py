"""The PostgreSQL snapshot provider against a real PostgreSQL 15: take, verify, restore, nothing lost."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from harness.services import Postgres
from saferollout.adapters.snapshots.postgres import PostgresSnapshots
from saferollout.redact import redact

pytestmark = pytest.mark.e2e

SEED = """
CREATE TABLE orders (id serial PRIMARY KEY, total numeric NOT NULL);
INSERT INTO orders (total) SELECT (i % 97)::numeric FROM generate_series(1, 2000) i;
CREATE TABLE customers (id int PRIMARY KEY, name text);
INSERT INTO customers SELECT i, 'c' || i FROM generate_series(1, 300) i;
"""
MIGRATION = """
ALTER TABLE orders ADD COLUMN currency text DEFAULT 'EUR';
UPDATE orders SET total = total * 1.2 WHERE id % 3 = 0;
CREATE TABLE audit (id int);
INSERT INTO orders (total) VALUES (4242);
"""


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    root = Path(tempfile.mkdtemp(prefix="sr-pg-"))  # pytest's tmp dirs are 0700: the postgres user could not enter
    root.chmod(0o755)
    server = Postgres(root / "pg")
    server.start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def db(pg: Postgres, tmp_path: Path) -> tuple[Postgres, PostgresSnapshots, str]:
    password = secrets.token_urlsafe(12)
    dsn = pg.reset_app(password)
    pg.run_as_app(SEED)
    return pg, PostgresSnapshots(dsn, tmp_path / "store"), password


def test_take_is_idempotent_and_verify_proves_the_copy(db: tuple[Postgres, PostgresSnapshots, str]) -> None:
    pg, snaps, _ = db
    info = snaps.take("snap-1-a")
    again = snaps.take("snap-1-a")
    assert info == again and info.tables == 2 and info.size_bytes > 0 and len(info.sha256) == 64
    assert len(list(snaps.store.glob("snap-*.dump"))) == 1
    assert snaps.verify("snap-1-a") == "2 tables, 2300 rows match"
    with pg.admin() as conn:  # the scratch database is gone
        assert not conn.execute("SELECT 1 FROM pg_database WHERE datname LIKE 'sr_verify_%'").fetchall()


def test_restore_returns_schema_and_rows_and_keeps_the_canary_state(db: tuple[Postgres, PostgresSnapshots, str]) -> None:
    pg, snaps, _ = db
    before = pg.checksum()
    snaps.take("snap-1-b")
    pg.run_as_app(MIGRATION)
    assert pg.checksum() != before and not snaps.equals("snap-1-b")
    out = snaps.restore("snap-1-b", None)
    assert out.ok, out.message
    assert pg.checksum() == before and snaps.equals("snap-1-b")
    assert out.pre_restore_dump is not None and Path(out.pre_restore_dump).stat().st_size > 0
    # the rows the canary wrote are set aside, not lost: restore the dump elsewhere and find them
    with pg.admin() as conn:
        conn.execute("CREATE DATABASE aside OWNER app")
    try:
        snaps._run(["pg_restore", "--no-owner", "--dbname=aside", out.pre_restore_dump], dbname="aside")
        with psycopg.connect(pg.dsn(pg.password or ""), dbname="aside") as conn:
            row = conn.execute("SELECT count(*) FROM orders WHERE total = 4242 AND currency = 'EUR'").fetchone()
            assert row == (1,)
    finally:
        with pg.admin() as conn:
            conn.execute("DROP DATABASE aside WITH (FORCE)")


def test_a_damaged_snapshot_is_refused_before_anything_changes(db: tuple[Postgres, PostgresSnapshots, str]) -> None:
    pg, snaps, _ = db
    info = snaps.take("snap-1-c")
    pg.run_as_app(MIGRATION)
    after_migration = pg.checksum()
    with open(info.location, "r+b") as f:
        f.seek(info.size_bytes // 2)
        f.write(b"\x00" * 64)
    out = snaps.restore("snap-1-c", None)
    assert not out.ok and "damaged" in out.message
    assert pg.checksum() == after_migration  # untouched


def test_secrets_stay_out_of_errors(db: tuple[Postgres, PostgresSnapshots, str], tmp_path: Path) -> None:
    pg, _, password = db
    bad = PostgresSnapshots(pg.dsn(password).replace("/app", "/nope"), tmp_path / "s2")
    with pytest.raises(Exception) as err:
        bad.take("snap-1-d")
    assert password not in redact(str(err.value))


def test_prune_keeps_the_newest_and_never_the_current(db: tuple[Postgres, PostgresSnapshots, str]) -> None:
    _, snaps, _ = db
    for i in range(4):
        snaps.take(f"snap-{i}-x")
    gone = snaps.prune(keep=2, current="snap-0-x")
    assert sorted(gone) == ["snap-1-x.dump", "snap-2-x.dump"]
    assert sorted(p.name for p in snaps.store.glob("snap-*.dump")) == ["snap-0-x.dump", "snap-3-x.dump"]


HOSTILE = 'x"; \\! touch {path} #'


def test_a_hostile_schema_name_is_dropped_by_the_restore_and_runs_nothing(
        db: tuple[Postgres, PostgresSnapshots, str]) -> None:
    """Before: the restore wrote `DROP SCHEMA "<name>"` into a psql script; this name closed the quote and ran a
    shell command in the operator. Now names go through sql.Identifier and the dump through pg_restore."""
    pg, snaps, _ = db
    owned = Path(f"/tmp/sr-owned-{secrets.token_hex(3)}")  # short: PostgreSQL cuts names at 63 bytes
    before = pg.checksum()
    snaps.take("snap-h-1")
    schema = HOSTILE.format(path=owned).replace('"', '""')
    pg.run_as_app(f'CREATE SCHEMA "{schema}"; CREATE TABLE "{schema}".t (i int); INSERT INTO "{schema}".t VALUES (1);')
    out = snaps.restore("snap-h-1", None)
    ran = owned.exists()
    owned.unlink(missing_ok=True)
    assert not ran, "the schema's name ran a shell command"
    assert out.ok, out.message
    assert pg.checksum() == before
    with pg.admin("app") as conn:
        names = [r[0] for r in conn.execute("SELECT nspname FROM pg_namespace").fetchall()]
    assert not [n for n in names if n.startswith(("x", "sr_aside_"))], names


def test_a_failed_replay_puts_the_database_back(db: tuple[Postgres, PostgresSnapshots, str]) -> None:
    """The restore renames the user schemas aside first; a replay that fails renames them back."""
    pg, snaps, _ = db
    snaps.take("snap-h-2")
    pg.run_as_app(MIGRATION)
    after_migration = pg.checksum()
    snaps._replay = lambda *_: (_ for _ in ()).throw(RuntimeError("pg_restore failed: simulated"))  # type: ignore[method-assign]
    out = snaps.restore("snap-h-2", None)
    assert not out.ok and "as it was" in out.message
    assert pg.checksum() == after_migration


def test_snapshot_files_are_private(db: tuple[Postgres, PostgresSnapshots, str]) -> None:
    _, snaps, _ = db
    info = snaps.take("snap-h-3")
    assert snaps.store.stat().st_mode & 0o777 == 0o700
    for p in (Path(info.location), Path(info.location).with_suffix(".json")):
        assert p.stat().st_mode & 0o777 == 0o600, p
