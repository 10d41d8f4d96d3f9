"""Snapshot, verify and restore times of the PostgreSQL provider for a database of a given size (default 100 MB).

Starts a real PostgreSQL 15 on loopback, seeds it, and prints figures. Not a test.
Run: .venv/bin/python bench/snapshot.py [--mb 100]
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT)]

from harness.services import Postgres  # noqa: E402
from saferollout.adapters.snapshots.postgres import PostgresSnapshots  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=100, help="approximate size of the seeded data")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sr-bench-"))
    root.chmod(0o755)
    pg = Postgres(root / "pg")
    pg.start()
    try:
        dsn = pg.reset_app(secrets.token_urlsafe(12))
        rows = args.mb * 1024 * 1024 // 250  # ~250 bytes a row on disk
        t = time.perf_counter()
        pg.run_as_app(f"""
            CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), kind text, payload text);
            INSERT INTO events (kind, payload)
              SELECT 'k' || (i % 50), md5(i::text) || md5((i*7)::text) || md5((i*13)::text) || md5((i*17)::text)
              FROM generate_series(1, {rows}) i;
            CREATE INDEX ON events (kind);
            CREATE TABLE accounts (id int PRIMARY KEY, balance numeric);
            INSERT INTO accounts SELECT i, i * 1.5 FROM generate_series(1, 100000) i;
            ANALYZE;""")
        seed = time.perf_counter() - t
        with pg.admin("app") as conn:
            size = conn.execute("SELECT pg_database_size('app')").fetchone()[0]  # type: ignore[index]
        snaps = PostgresSnapshots(dsn, root / "store")
        t = time.perf_counter()
        info = snaps.take("snap-1-bench")
        take = time.perf_counter() - t
        t = time.perf_counter()
        verified = snaps.verify("snap-1-bench")
        verify = time.perf_counter() - t
        pg.run_as_app("UPDATE accounts SET balance = 0 WHERE id % 2 = 0; ALTER TABLE events ADD COLUMN x int;")
        t = time.perf_counter()
        out = snaps.restore("snap-1-bench", None)
        restore = time.perf_counter() - t
        t = time.perf_counter()
        equal = snaps.equals("snap-1-bench")
        check = time.perf_counter() - t
        print(f"database size          {size / 1e6:8.1f} MB  ({rows + 100000} rows; seeded in {seed:.1f} s)")
        print(f"snapshot (pg_dump -Fc) {take:8.2f} s   dump {info.size_bytes / 1e6:.1f} MB, sha256 + checksums included")
        print(f"verify (scratch copy)  {verify:8.2f} s   {verified}")
        print(f"restore (+pre-dump)    {restore:8.2f} s   ok={out.ok}: {out.message}")
        print(f"equals check           {check:8.2f} s   {equal}")
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
