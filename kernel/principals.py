"""Principals: who a connection is, proved by the transport, and what that one may ever hold.

A principal is a person or a service account. Its identity is what the transport proved: the
CurveZMQ public key the ZAP handler admitted (kernel/auth.py), or, on a private ipc socket that
only the booting uid can open, the `operator`. A frame never names it. Each principal has an
upper bound of capabilities (`hello` may ask for fewer, never more) and quotas; names a client
chooses (program names, memory regions) live inside its principal's namespace.

The table persists as STATE_DIR/principals.json (0600); each principal's key pair is made by
the kernel, its secret written to STATE_DIR/keys/NAME.key_secret for the operator to hand over.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from llmos.specs.keys import KERNEL_KEY_META, SOCKET_META, private_dir, private_umask, read_key_file, write_key_file

OPERATOR = "operator"          # the uid that booted the kernel, on its private ipc socket
SERVICES = "services"          # the kernel's own service host
RESERVED = {OPERATOR, SERVICES}
NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
MAX_USERS = 10_000             # the table is loaded whole and indexed in memory
MAX_RETIRED = 4096             # revoked keys remembered (in memory) to name their user in the audit log


class PrincipalError(ValueError):
    """A user-management request that cannot be done; the message says why."""


@dataclass
class Principal:
    name: str
    caps: frozenset[str]
    quotas: dict[str, int] = field(default_factory=dict)   # overrides of the [quotas] defaults
    public_key: str | None = None                          # Z85; None for operator and services
    created: float = field(default_factory=time.time)

    def describe(self) -> dict:
        return {"name": self.name, "caps": sorted(self.caps), "quotas": dict(self.quotas),
                "public_key": self.public_key, "created": round(self.created, 3)}


class PrincipalTable:
    def __init__(self, state_dir: Path, all_caps: tuple[str, ...], user_caps: tuple[str, ...]):
        self.path = state_dir / "principals.json"
        self.keys_dir = state_dir / "keys"
        self.all_caps = frozenset(all_caps)
        self.user_caps = tuple(user_caps)     # what `user add` grants when it names no caps
        self._by_name: dict[str, Principal] = {}
        self._by_key: dict[str, Principal] = {}
        self._retired: dict[str, str] = {}    # a revoked public key -> the user it was, oldest first
        self.kernel_public = self.kernel_secret = ""
        self.operator = Principal(OPERATOR, self.all_caps)
        self.services = Principal(SERVICES, self.all_caps - {"admin"})

    # -- persistence -----------------------------------------------------------------------------

    def load(self) -> None:
        """Read the table and the kernel's key pair, making the pair on first boot."""
        private_dir(self.keys_dir)
        secret_file = self.keys_dir / "kernel.key_secret"
        if not secret_file.exists():
            public, secret = (k.decode() for k in zmq.curve_keypair())
            write_key_file(secret_file, public, secret)
            write_key_file(self.keys_dir / "kernel.key", public)
        keys = read_key_file(secret_file)
        self.kernel_public, self.kernel_secret = keys["public-key"], keys["secret-key"]
        self._by_name, self._by_key = {}, {}
        if self.path.exists():
            for row in json.loads(self.path.read_text()):
                self._index(Principal(row["name"], frozenset(row["caps"]) & self.all_caps, row.get("quotas", {}),
                                      row.get("public_key"), row.get("created", 0.0)))

    def _save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with private_umask():
            tmp.write_text(json.dumps([p.describe() for p in self._by_name.values()], indent=1))
        os.replace(tmp, self.path)

    def _index(self, p: Principal) -> None:
        self._by_name[p.name] = p
        if p.public_key:
            self._by_key[p.public_key] = p

    # -- lookups ---------------------------------------------------------------------------------

    def by_key(self, z85_public: str) -> Principal | None:
        return self._by_key.get(z85_public)

    def retired(self, z85_public: str) -> str | None:
        """The user a revoked key belonged to (while remembered), for the audit line of its refusal."""
        return self._retired.get(z85_public)

    def get(self, name: str) -> Principal | None:
        if name == OPERATOR:
            return self.operator
        if name == SERVICES:
            return self.services
        return self._by_name.get(name)

    def users(self) -> list[Principal]:
        return sorted(self._by_name.values(), key=lambda p: p.name)

    # -- user management (admin) -----------------------------------------------------------------

    def add(self, name: str, caps: list[str] | None, quotas: dict[str, int], socket: str) -> tuple[Principal, Path]:
        if not NAME.fullmatch(name) or name in RESERVED:
            raise PrincipalError(f"'{name[:40]}' cannot be a user name: use 1-32 of a-z, 0-9, _ and -, "
                                 f"starting with a letter, and not {' or '.join(sorted(RESERVED))}")
        if name in self._by_name:
            raise PrincipalError(f"user '{name}' exists; rotate its key or remove it first")
        if len(self._by_name) >= MAX_USERS:
            raise PrincipalError(f"this kernel has {MAX_USERS} users, its limit; remove some first")
        granted = frozenset(self.user_caps if caps is None else caps)
        unknown = sorted(granted - self.all_caps)
        if unknown:
            raise PrincipalError(f"unknown capabilities: {', '.join(unknown)}; known: {', '.join(sorted(self.all_caps))}")
        principal = Principal(name, granted, dict(quotas))
        path = self._new_key(principal, socket)
        self._index(principal)
        self._save()
        return principal, path

    def rotate(self, name: str, socket: str) -> tuple[Principal, Path]:
        principal = self._by_name.get(name)
        if principal is None:
            raise PrincipalError(f"no user '{name}'")
        self._retire(principal)
        path = self._new_key(principal, socket)
        self._index(principal)
        self._save()
        return principal, path

    def remove(self, name: str) -> Principal:
        principal = self._by_name.pop(name, None)
        if principal is None:
            raise PrincipalError(f"no user '{name}'")
        self._retire(principal)
        (self.keys_dir / f"{name}.key_secret").unlink(missing_ok=True)
        self._save()
        return principal

    def _retire(self, principal: Principal) -> None:
        """Its key admits nobody from now on, on new connections or open ones (auth.principal_of)."""
        key = principal.public_key or ""
        if self._by_key.pop(key, None) is not None:
            self._retired[key] = principal.name
            if len(self._retired) > MAX_RETIRED:
                del self._retired[next(iter(self._retired))]

    def _new_key(self, principal: Principal, socket: str) -> Path:
        public, secret = (k.decode() for k in zmq.curve_keypair())
        principal.public_key = public
        return write_key_file(self.keys_dir / f"{principal.name}.key_secret", public, secret,
                              {KERNEL_KEY_META: self.kernel_public, SOCKET_META: socket, "principal": principal.name})
