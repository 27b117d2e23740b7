"""Named memory regions, owned by a program name, persisted in SQLite.

Writes are committed with synchronous=FULL before the syscall replies, so nothing
acknowledged is lost on a crash or power cut. All database work runs on one worker thread:
SQLite connections are not shared across threads, and the event loop never waits on a disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .errors import SyscallError, enoent

_SCHEMA = """
CREATE TABLE IF NOT EXISTS regions (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    region TEXT NOT NULL REFERENCES regions(name) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    is_text INTEGER NOT NULL,
    version INTEGER NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (region, key)
);
"""


class MemoryStore:
    def __init__(self, path: Path):
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memstore")
        self._db: sqlite3.Connection | None = None
        self._pool.submit(self._open).result()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(_SCHEMA)
        self._db = db

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        def _close():
            if self._db is not None:
                self._db.close()
                self._db = None
        self._pool.submit(_close).result()
        self._pool.shutdown(wait=True)

    # -- the three syscalls' bodies; each checks ownership inside its transaction ----------------

    async def write(self, owner: str, region: str, key: str, value: str | bytes) -> dict:
        return await self._run(self._write, owner, region, key, value)

    async def read(self, owner: str, region: str, key: str | None, prefix: str = "") -> dict:
        return await self._run(self._read, owner, region, key, prefix)

    async def delete(self, owner: str, region: str, key: str | None) -> dict:
        return await self._run(self._delete, owner, region, key)

    def _check_owner(self, region: str, owner: str, create: bool) -> None:
        row = self._db.execute("SELECT owner FROM regions WHERE name = ?", (region,)).fetchone()
        if row is None:
            if not create:
                raise enoent(f"no memory region '{region}'")
            self._db.execute("INSERT INTO regions (name, owner, created) VALUES (?, ?, ?)", (region, owner, time.time()))
        elif row[0] != owner:
            raise SyscallError("EACCES", f"memory region '{region}' belongs to program '{row[0]}', not '{owner}'")

    def _write(self, owner: str, region: str, key: str, value: str | bytes) -> dict:
        is_text = isinstance(value, str)
        blob = value.encode() if is_text else bytes(value)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            self._check_owner(region, owner, create=True)
            row = db.execute("SELECT version FROM entries WHERE region = ? AND key = ?", (region, key)).fetchone()
            version = (row[0] + 1) if row else 1
            db.execute("INSERT OR REPLACE INTO entries (region, key, value, is_text, version, updated) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (region, key, blob, int(is_text), version, time.time()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return {"region": region, "key": key, "bytes": len(blob), "version": version}

    def _read(self, owner: str, region: str, key: str | None, prefix: str) -> dict:
        self._check_owner(region, owner, create=False)
        if key is None:
            rows = self._db.execute(
                "SELECT key FROM entries WHERE region = ? AND substr(key, 1, ?) = ? ORDER BY key",
                (region, len(prefix), prefix)).fetchall()
            return {"region": region, "keys": [r[0] for r in rows]}
        row = self._db.execute("SELECT value, is_text, version, updated FROM entries WHERE region = ? AND key = ?",
                               (region, key)).fetchone()
        if row is None:
            raise enoent(f"no key '{key}' in memory region '{region}'")
        value = bytes(row[0]).decode() if row[1] else bytes(row[0])
        return {"region": region, "key": key, "value": value, "version": row[2], "updated": row[3]}

    def _delete(self, owner: str, region: str, key: str | None) -> dict:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            self._check_owner(region, owner, create=False)
            if key is None:
                deleted = db.execute("DELETE FROM entries WHERE region = ?", (region,)).rowcount
                db.execute("DELETE FROM regions WHERE name = ?", (region,))
            else:
                deleted = db.execute("DELETE FROM entries WHERE region = ? AND key = ?", (region, key)).rowcount
                if deleted == 0:
                    raise enoent(f"no key '{key}' in memory region '{region}'")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return {"region": region, "deleted": deleted}
