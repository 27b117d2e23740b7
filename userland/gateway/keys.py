"""The gateway's API-key table: which kernel principal each API key speaks as.

An API key is a bearer secret an HTTP client sends; the kernel knows nothing of it. The table maps
sha256(API key) to a principal's name and the path of that principal's CurveZMQ key file (from
`llmos user add`), and the gateway opens that principal's own connection with it, so the kernel
sees the principal itself: its fair share, quotas and audit lines. The table never holds an API
key, only its hash, so a leaked table grants nothing; a key is shown once, when it is made.
Lookup is by hash, so no comparison runs over the secret itself.

The file is JSON, written atomically (a new 0600 file, then rename) under a private umask.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from llmos.specs.keys import private_umask

KEY_PREFIX = "sk-llmos-"
KEY_BYTES = 32                 # 256 bits from the OS's CSPRNG
KEYS_ENV = "LLMOS_GATEWAY_KEYS"
TABLE_VERSION = 1


def default_keys_path() -> Path:
    """$LLMOS_GATEWAY_KEYS, else $XDG_CONFIG_HOME/llmos/gateway-keys.json (~/.config when unset)."""
    if os.environ.get(KEYS_ENV):
        return Path(os.environ[KEYS_ENV])
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(config) / "llmos" / "gateway-keys.json"


def digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class KeyEntry:
    """What one API key stands for: the principal and the key file the gateway connects with."""

    name: str
    key_file: str
    created: float = 0.0


class KeyTableError(ValueError):
    """The table cannot be read or the change cannot be made; the message says how to fix it."""


class KeyTable:
    """The table in one file; load() reads it again, add()/remove() write it back."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._by_digest: dict[str, KeyEntry] = {}
        self._stamp: tuple[int, int] | None = None     # (mtime_ns, size) of what was read

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> "KeyTable":
        try:
            st = self.path.stat()
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            self._by_digest, self._stamp = {}, None
            return self
        except (OSError, ValueError) as exc:
            raise KeyTableError(f"cannot read the API key table {self.path}: {exc}") from None
        if not isinstance(raw, dict) or raw.get("version") != TABLE_VERSION or not isinstance(raw.get("keys"), dict):
            raise KeyTableError(f"{self.path} is not an llmos gateway key table (version {TABLE_VERSION})")
        try:
            self._by_digest = {d: KeyEntry(**e) for d, e in raw["keys"].items()}
        except TypeError as exc:
            raise KeyTableError(f"{self.path} holds a malformed entry: {exc}") from None
        self._stamp = (st.st_mtime_ns, st.st_size)
        return self

    def reload_if_changed(self) -> bool:
        """Read the file again if it changed since it was read (a key added or removed while serving)."""
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return False
        self.load()
        return True

    def lookup(self, api_key: str) -> KeyEntry | None:
        return self._by_digest.get(digest(api_key))

    def entries(self) -> list[KeyEntry]:
        return sorted(self._by_digest.values(), key=lambda e: e.name)

    def __len__(self) -> int:
        return len(self._by_digest)

    def add(self, name: str, key_file: str) -> str:
        """A new API key for `name`, connecting with `key_file`; returned once, stored only as its hash.
        The path is made absolute but its links are kept: a Kubernetes Secret's files are links that
        move to a new folder on each update, and the table must keep naming the current one."""
        if not name or len(name) > 128 or not name.isprintable():
            raise KeyTableError("a key's name must be 1 to 128 printable characters")
        if any(e.name == name for e in self._by_digest.values()):
            raise KeyTableError(f"there is already a key named '{name}'; remove it first (`llmos serve keys rm {name}`)")
        api_key = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
        self._by_digest[digest(api_key)] = KeyEntry(name, os.path.abspath(key_file), round(time.time(), 3))
        self._save()
        return api_key

    def remove(self, name: str) -> None:
        found = [d for d, e in self._by_digest.items() if e.name == name]
        if not found:
            raise KeyTableError(f"no key named '{name}' in {self.path}")
        for d in found:
            del self._by_digest[d]
        self._save()

    def _save(self) -> None:
        data = {"version": TABLE_VERSION, "keys": {d: asdict(e) for d, e in self._by_digest.items()}}
        tmp = self.path.with_name(self.path.name + ".tmp")
        with private_umask():
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1)
        os.replace(tmp, self.path)
        self.load()
