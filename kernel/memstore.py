"""Named memory regions, in their principal's namespace, persisted in SQLite, searchable by meaning.

A region's name is the caller's to choose and lives inside its principal's namespace: alice's
`notes` and bob's `notes` are two regions (stored as `alice/notes` and `bob/notes`; principal
names cannot hold a `/`), and a region outside the caller's namespace is simply not found.

Writes are committed with synchronous=FULL before the syscall replies, so nothing
acknowledged is lost on a crash or power cut. All database work runs on one worker thread:
SQLite connections are not shared across threads, and the event loop never waits on a disk.

Vectors (memwrite with embed=true) are float32 blobs in their own table, committed with their
entry. memsearch does not scan SQLite: each (region, model) it searches gets an in-memory
float32 matrix, loaded lazily from the table and kept in step with every write and delete
(on the same worker thread, after the commit), so a search is one matrix-vector product.
numpy's BLAS product was measured against faiss (faiss.knn, IndexFlatIP) for exact search on
100k x 384: 8 ms against 24 ms per query on a 2-core CPU, so numpy it is
(examples/bench_memsearch.py).

With `[memory] encrypt = true` each value is stored AES-GCM sealed (sealing.py; the row's
`sealed` column says so), so the file alone gives none of them away.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from . import memusage
from .errors import SyscallError, edquot, enoent
from .sealing import ValueSeal, stored_value
from .vectors import RegionVectors

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
CREATE TABLE IF NOT EXISTS vectors (
    region TEXT NOT NULL,
    key TEXT NOT NULL,
    model TEXT NOT NULL,
    vector BLOB NOT NULL,          -- float32, native byte order, as the embedding model gave it
    PRIMARY KEY (region, key)
);
CREATE INDEX IF NOT EXISTS vectors_by_model ON vectors (region, model);
"""
MAX_INDEX_BYTES = 2 << 30      # matrices kept in memory, all regions together; the least recently used go first


class MemoryStore:
    def __init__(self, path: Path, max_index_bytes: int = MAX_INDEX_BYTES, seal: ValueSeal | None = None):
        self.path = path
        self.seal = seal           # None: values stored as given
        self.max_index_bytes = max_index_bytes
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memstore")
        self._db: sqlite3.Connection | None = None
        self._indexes: OrderedDict[tuple[str, str], RegionVectors] = OrderedDict()   # LRU, worker thread only
        self._pool.submit(self._open).result()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:   # so that memdel gives the space back
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            db.execute("VACUUM")
        db.executescript(_SCHEMA + memusage.SCHEMA)
        if "sealed" not in {row[1] for row in db.execute("PRAGMA table_info(entries)")}:
            db.execute("ALTER TABLE entries ADD COLUMN sealed INTEGER NOT NULL DEFAULT 0")
        self._db = db

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        def _close():
            if self._db is not None:
                self._db.close()
                self._db = None
            self._indexes.clear()
        self._pool.submit(_close).result()
        self._pool.shutdown(wait=True)

    # -- the syscalls' bodies; each checks ownership inside its transaction ----------------------

    async def write(self, owner: str, region: str, key: str, value: str | bytes,
                    vector: list[float] | None = None, model: str | None = None,
                    limits: tuple[int | None, int | None] = (None, None)) -> dict:
        return await self.write_many(owner, region, [(key, value, vector)], model, limits)

    async def write_many(self, owner: str, region: str, items: list[tuple[str, str | bytes, list[float] | None]],
                         model: str | None = None, limits: tuple[int | None, int | None] = (None, None)) -> dict:
        """Several entries in one transaction; the last one's {region, key, bytes, version}.
        limits: the owner's (bytes, keys) quota; EDQUOT, and nothing written, past either."""
        return _shown(await self._run(self._write_many, owner, _named(owner, region), items, model, limits), region)

    async def read(self, owner: str, region: str, key: str | None, prefix: str = "") -> dict:
        return _shown(await self._run(self._read, owner, _named(owner, region), key, prefix), region)

    async def delete(self, owner: str, region: str, key: str | None) -> dict:
        return _shown(await self._run(self._delete, owner, _named(owner, region), key), region)

    async def check_access(self, owner: str, region: str, must_exist: bool) -> None:
        """ENOENT for a region the owner does not have (when it must exist)."""
        await self._run(self._check_owner, _named(owner, region), owner, False if must_exist else None)

    async def search(self, owner: str, region: str, query: list[float], model: str, k: int) -> dict:
        return _shown(await self._run(self._search, owner, _named(owner, region),
                                      np.asarray(query, dtype=np.float32), model, k), region)

    def _check_owner(self, region: str, owner: str, create: bool | None) -> None:
        """create: True makes a missing region, False raises ENOENT for it, None lets it be."""
        row = self._db.execute("SELECT owner FROM regions WHERE name = ?", (region,)).fetchone()
        if row is None:
            if create is False:
                raise enoent(f"no memory region '{region}'")
            if create:
                self._db.execute("INSERT INTO regions (name, owner, created) VALUES (?, ?, ?)",
                                 (region, owner, time.time()))
        elif row[0] != owner:     # only a namespace mix-up could get here: still, say nothing of it
            raise enoent(f"no memory region '{region}'")

    def _write_many(self, owner: str, region: str, items: list, model: str | None, limits: tuple) -> dict:
        db = self._db
        now = time.time()
        out = None
        db.execute("BEGIN IMMEDIATE")
        try:
            self._check_owner(region, owner, create=True)
            memusage.used(db, owner)      # counted before these writes change what it would count
            grown_bytes = grown_keys = 0
            for key, value, vector in items:
                is_text = isinstance(value, str)
                plain = value.encode() if is_text else bytes(value)
                blob = self.seal.seal(region, key, plain) if self.seal else plain
                row = db.execute("SELECT version, length(value) FROM entries WHERE region = ? AND key = ?",
                                 (region, key)).fetchone()
                version = (row[0] + 1) if row else 1
                grown_bytes += len(blob) - (row[1] if row else 0)
                grown_keys += 0 if row else 1
                db.execute("INSERT OR REPLACE INTO entries (region, key, value, is_text, version, updated, sealed) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (region, key, blob, int(is_text), version, now, int(self.seal is not None)))
                if vector is None:
                    db.execute("DELETE FROM vectors WHERE region = ? AND key = ?", (region, key))
                else:
                    db.execute("INSERT OR REPLACE INTO vectors (region, key, model, vector) VALUES (?, ?, ?, ?)",
                               (region, key, model, np.asarray(vector, dtype=np.float32).tobytes()))
                out = {"region": region, "key": key, "bytes": len(plain), "version": version}
            _check_quota(owner, memusage.add(db, owner, grown_bytes, grown_keys), limits)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        for key, _, vector in items:    # committed: bring the loaded matrices in step
            for (r, m), index in self._indexes.items():
                if r == region and (vector is None or m != model):
                    index.remove(key)
            index = self._indexes.get((region, model))
            if vector is not None and index is not None:
                vec = np.asarray(vector, dtype=np.float32)
                if len(vec) == index.dim:
                    index.put(key, vec)
                else:
                    self._indexes.pop((region, model))   # another dimension: reload from the table on next search
        return out

    def _read(self, owner: str, region: str, key: str | None, prefix: str) -> dict:
        self._check_owner(region, owner, create=False)
        if key is None:
            rows = self._db.execute(
                "SELECT key FROM entries WHERE region = ? AND substr(key, 1, ?) = ? ORDER BY key",
                (region, len(prefix), prefix)).fetchall()
            return {"region": region, "keys": [r[0] for r in rows]}
        row = self._db.execute("SELECT value, is_text, sealed, version, updated FROM entries "
                               "WHERE region = ? AND key = ?", (region, key)).fetchone()
        if row is None:
            raise enoent(f"no key '{key}' in memory region '{region}'")
        value = stored_value(self.seal, region, key, *row[:3])
        return {"region": region, "key": key, "value": value, "version": row[3], "updated": row[4]}

    def _delete(self, owner: str, region: str, key: str | None) -> dict:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            self._check_owner(region, owner, create=False)
            where, params = ("region = ?", (region,)) if key is None else ("region = ? AND key = ?", (region, key))
            count, nbytes = db.execute(f"SELECT COUNT(*), COALESCE(SUM(length(value)), 0) FROM entries WHERE {where}",
                                       params).fetchone()
            memusage.add(db, owner, -nbytes, -count)
            if key is None:
                deleted = db.execute("DELETE FROM entries WHERE region = ?", (region,)).rowcount
                db.execute("DELETE FROM vectors WHERE region = ?", (region,))
                db.execute("DELETE FROM regions WHERE name = ?", (region,))
            else:
                deleted = db.execute("DELETE FROM entries WHERE region = ? AND key = ?", (region, key)).rowcount
                if deleted == 0:
                    raise enoent(f"no key '{key}' in memory region '{region}'")
                db.execute("DELETE FROM vectors WHERE region = ? AND key = ?", (region, key))
            db.execute("COMMIT")
            db.execute("PRAGMA incremental_vacuum").fetchall()    # the freed pages go back to the file system
        except BaseException:
            db.execute("ROLLBACK")
            raise
        for (r, m) in list(self._indexes):
            if r != region:
                continue
            if key is None:
                del self._indexes[(r, m)]
            else:
                self._indexes[(r, m)].remove(key)
        return {"region": region, "deleted": deleted}

    # -- semantic search -------------------------------------------------------------------------

    def _index(self, region: str, model: str) -> RegionVectors | None:
        """The region's matrix for this model, loaded from SQLite on first use; None if it has no vectors."""
        index = self._indexes.get((region, model))
        if index is not None:
            self._indexes.move_to_end((region, model))
            return index
        rows = self._db.execute("SELECT key, vector FROM vectors WHERE region = ? AND model = ?",
                                (region, model)).fetchall()
        if not rows:
            return None
        dim = len(rows[0][1]) // 4
        rows = [r for r in rows if len(r[1]) == dim * 4]
        index = RegionVectors(dim)
        index.matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim).copy()
        index.keys = [r[0] for r in rows]
        index.rows = {key: i for i, key in enumerate(index.keys)}
        self._indexes[(region, model)] = index
        total = sum(ix.nbytes for ix in self._indexes.values())
        while total > self.max_index_bytes and len(self._indexes) > 1:
            _, evicted = self._indexes.popitem(last=False)     # reloaded from SQLite when searched again
            total -= evicted.nbytes
        return index

    def _search(self, owner: str, region: str, query: np.ndarray, model: str, k: int) -> dict:
        self._check_owner(region, owner, create=False)
        index = self._index(region, model)
        if index is None:
            return {"region": region, "model": model, "searched": 0, "results": []}
        if len(query) != index.dim:
            raise SyscallError("EINVAL", f"the query's embedding has {len(query)} dimensions but region '{region}' "
                                         f"holds {index.dim}-dimensional vectors of '{model}'")
        results = []
        for key, score in index.search(query, k):
            row = self._db.execute("SELECT value, is_text, sealed FROM entries WHERE region = ? AND key = ?",
                                   (region, key)).fetchone()
            if row is None:
                continue
            value = stored_value(self.seal, region, key, *row)
            results.append({"key": key, "score": round(score, 6), "value": value})
        return {"region": region, "model": model, "searched": len(index), "results": results}


def _named(owner: str, region: str) -> str:
    """A region's name in the store: inside its owner's namespace."""
    return f"{owner}/{region}"


def _shown(result: dict, region: str) -> dict:
    """A result as its caller named the region."""
    if isinstance(result, dict) and "region" in result:
        result["region"] = region
    return result


def _check_quota(owner: str, usage: tuple[int, int], limits: tuple[int | None, int | None]) -> None:
    (nbytes, keys), (max_bytes, max_keys) = usage, limits
    if max_bytes is not None and nbytes > max_bytes:
        raise edquot(f"memwrite: user '{owner}' would hold {nbytes} bytes of memory, its quota is {max_bytes}; "
                     f"memdel some, or ask the operator for more")
    if max_keys is not None and keys > max_keys:
        raise edquot(f"memwrite: user '{owner}' would hold {keys} keys, its quota is {max_keys}; "
                     f"memdel some, or ask the operator for more")
