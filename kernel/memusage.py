"""What each principal holds in the memory store, kept in step inside the writes' transactions.

A `usage` row per owner (bytes of values, number of keys) is updated in the same transaction
as the entries it counts, so a quota check never scans a principal's entries and can never
drift from them; a store from before this table gets its rows counted once, on first use.
"""

from __future__ import annotations

import sqlite3

SCHEMA = "CREATE TABLE IF NOT EXISTS usage (owner TEXT PRIMARY KEY, bytes INTEGER NOT NULL, keys INTEGER NOT NULL);"


def used(db: sqlite3.Connection, owner: str) -> tuple[int, int]:
    """(bytes, keys) the owner's regions hold."""
    row = db.execute("SELECT bytes, keys FROM usage WHERE owner = ?", (owner,)).fetchone()
    if row is not None:
        return row[0], row[1]
    low, high = owner + "/", owner + "0"     # '0' follows '/': every region named "owner/..."
    keys, nbytes = db.execute("SELECT COUNT(*), COALESCE(SUM(length(value)), 0) FROM entries "
                              "WHERE region >= ? AND region < ?", (low, high)).fetchone()
    db.execute("INSERT INTO usage (owner, bytes, keys) VALUES (?, ?, ?)", (owner, nbytes, keys))
    return nbytes, keys


def add(db: sqlite3.Connection, owner: str, nbytes: int, keys: int) -> tuple[int, int]:
    """Count `nbytes` and `keys` more (or fewer) for the owner; its new (bytes, keys)."""
    old_bytes, old_keys = used(db, owner)
    new = (old_bytes + nbytes, old_keys + keys)
    db.execute("UPDATE usage SET bytes = ?, keys = ? WHERE owner = ?", (*new, owner))
    return new
