"""Memory values encrypted at rest (`[memory] encrypt = true`): AES-256-GCM, one key per state dir.

What it protects: the database file (memory.sqlite3 and its WAL) copied off the machine, read
from a backup or a disk thrown away, never holds a value in the clear, and a value moved to
another (region, key) or altered fails to open (the pair is the associated data). What it does
not: anyone with the operator's uid reads STATE_DIR/keys/memory.key beside it, and the running
kernel holds the key and the plaintext in memory. Keys, region names and embedding vectors stay
in the clear (search needs them).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from llmos.specs.keys import private_dir, private_umask

from . import logs
from .errors import eio

log = logs.get("llmos.memstore")

KEY_BYTES = 32       # AES-256
NONCE_BYTES = 12     # 96 bits, random per value: 2^32 values per key keep the collision chance negligible


class ValueSeal:
    def __init__(self, key: bytes):
        self._aead = AESGCM(key)

    @classmethod
    def from_key_file(cls, path: Path) -> "ValueSeal":
        """The key at `path`, made (0600, in a 0700 folder) on first use."""
        private_dir(path.parent)
        if not path.exists():
            with private_umask():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, AESGCM.generate_key(bit_length=KEY_BYTES * 8))
            finally:
                os.close(fd)
            log.info("memstore.key_made", path=str(path))
        if stat.S_IMODE(path.stat().st_mode) != 0o600:
            log.warning("memstore.key_mode_repaired", path=str(path), mode=oct(stat.S_IMODE(path.stat().st_mode)))
            path.chmod(0o600)
        key = path.read_bytes()
        if len(key) != KEY_BYTES:
            raise ValueError(f"{path} holds {len(key)} bytes, not a {KEY_BYTES}-byte AES key; restore it from "
                             f"a backup (without it the encrypted values cannot be read)")
        return cls(key)

    def seal(self, region: str, key: str, plain: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plain, _associated(region, key))

    def open(self, region: str, key: str, sealed: bytes) -> bytes:
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _associated(region, key))
        except InvalidTag:
            raise eio(f"memory value '{key}' in '{region}' does not decrypt: altered, moved, or sealed "
                      f"with another key file") from None


def stored_value(seal: ValueSeal | None, region: str, key: str, stored: bytes, is_text: int,
                 sealed: int) -> str | bytes:
    """A value as the caller wrote it, from its row (opened if it was sealed)."""
    blob = bytes(stored)
    if sealed:
        if seal is None:
            raise eio(f"memory value '{key}' is encrypted but this kernel runs with [memory] encrypt off; "
                      f"turn it on (the key is STATE_DIR/keys/memory.key)")
        blob = seal.open(region, key, blob)
    return blob.decode() if is_text else blob


def _associated(region: str, key: str) -> bytes:
    """(region, key) as one unambiguous byte string: the region's length first."""
    r = region.encode()
    return len(r).to_bytes(4, "big") + r + key.encode()
