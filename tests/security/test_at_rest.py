"""Memory values at rest: AES-GCM sealed when the config says `[memory] encrypt = true`, as given otherwise."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from harness import KernelProcess, errno_of
from llmos.kernel.memstore import MemoryStore
from llmos.kernel.sealing import ValueSeal

SECRET = "the vault code is 7431-swordfish"


def stored_bytes(db: Path) -> bytes:
    """Everything SQLite wrote: the database file and its write-ahead log."""
    return b"".join(p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists())


def write_and_read(store: MemoryStore, value) -> object:
    async def go():
        await store.write("alice", "notes", "k", value)
        return (await store.read("alice", "notes", "k"))["value"]
    return asyncio.run(go())


def test_encrypted_values_are_not_in_the_file_and_read_back_equal(tmp_path):
    store = MemoryStore(tmp_path / "m.sqlite3", seal=ValueSeal.from_key_file(tmp_path / "keys" / "memory.key"))
    assert write_and_read(store, SECRET) == SECRET
    assert write_and_read(store, SECRET.encode()) == SECRET.encode()
    store.close()
    assert SECRET.encode() not in stored_bytes(tmp_path / "m.sqlite3")


def test_without_encryption_values_are_stored_as_given(tmp_path):
    store = MemoryStore(tmp_path / "m.sqlite3")
    assert write_and_read(store, SECRET) == SECRET
    store.close()
    assert SECRET.encode() in stored_bytes(tmp_path / "m.sqlite3")


def test_the_key_file_is_made_once_0600_in_a_0700_folder(tmp_path):
    path = tmp_path / "keys" / "memory.key"
    ValueSeal.from_key_file(path)
    first = path.read_bytes()
    ValueSeal.from_key_file(path)
    assert path.read_bytes() == first and len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_sealed_value_moved_to_another_key_does_not_open(tmp_path):
    seal = ValueSeal.from_key_file(tmp_path / "memory.key")
    sealed = seal.seal("alice/notes", "a", b"x")
    assert seal.open("alice/notes", "a", sealed) == b"x"
    with pytest.raises(Exception) as info:
        seal.open("alice/notes", "b", sealed)
    assert getattr(info.value, "errno", None) == "EIO"


def test_a_kernel_configured_to_encrypt_seals_memwrites(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[memory]\nencrypt = true\n")
    k = KernelProcess(tmp_path / "k", extra=["--config", str(config)], env={"LLMOS_NO_SERVICES": "1"}).start()
    try:
        with k.client("vault") as c:
            c.memwrite("notes", "k", SECRET)
            assert c.memread("notes", "k")["value"] == SECRET
            assert errno_of(c.memread, "notes", "missing") == "ENOENT"
    finally:
        k.stop()
    assert stat.S_IMODE((k.state_dir / "keys" / "memory.key").stat().st_mode) == 0o600
    assert SECRET.encode() not in stored_bytes(k.state_dir / "memory.sqlite3")
