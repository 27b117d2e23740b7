"""One kernel connection per principal: made on a principal's first request, reused, closed at shutdown.

Identity comes from the connection, never from a request: an API key's requests go out on a
connection opened with that principal's own CurveZMQ key file, to the tcp socket the file names,
so the kernel authenticates the principal itself. Such a connection never goes to the local ipc
socket, where the kernel would take it for the operator (the uid that owns the socket). Without
keys, everyone shares the gateway's own connection (the operator on ipc, or LLMOS_KEY's user).

A principal's key can change under a running gateway (`llmos user rotate` rewrites its key file;
the kernel then refuses the old key on the connections it opened). Before each request the
gateway looks at the key file (a stat; the public key only when the stat changed) and, if it holds
another key, connects again with it; a call the kernel refuses for a revoked key drops the
connection too (app.py tries once more). A removed user's key file is gone: its requests are 403.

Each principal also has a bound on the streams it holds open through the gateway (429 past it).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from llmos.specs.keys import SOCKET_META, read_key_file

from ..client import AsyncClient
from ..errors import KernelUnavailable, KeyRefused, LLMOSError
from .errors import ApiError
from .keys import KeyEntry

PROGRAM_NAME = "llmos-serve"


@dataclass(frozen=True)
class Identity:
    """Who a request runs as: an API key's entry, or None for the gateway's own identity."""

    entry: KeyEntry | None

    @property
    def label(self) -> str:
        return self.entry.name if self.entry else "(gateway)"


class Principals:
    """Connections by identity, and each identity's count of open streams."""

    def __init__(self, socket: str | None, key: str | None, max_streams: int):
        self.socket = socket          # the gateway's own: --socket, else the client's defaults
        self.key = key                # the gateway's own key file (LLMOS_KEY), if any
        self.max_streams = max_streams
        self._clients: dict[Identity, AsyncClient] = {}
        self._key_seen: dict[Identity, tuple[tuple | None, str | None]] = {}   # key file's stamp, public key
        self._locks: dict[Identity, asyncio.Lock] = {}
        self._streams: dict[Identity, int] = {}

    async def client(self, who: Identity) -> AsyncClient:
        """The identity's connection, opened on first use (once, however many requests wait for it)."""
        found = self._clients.get(who)
        if found is not None and self._key_changed(who):
            await self.forget(who, found)
        elif found is not None:
            return found
        lock = self._locks.setdefault(who, asyncio.Lock())
        async with lock:
            if who not in self._clients:
                # read before connecting: a key file rewritten meanwhile differs from it, and is seen next time
                seen = _key_seen(who.entry.key_file) if who.entry else (None, None)
                self._clients[who] = await self._connect(who)
                self._key_seen[who] = seen
            return self._clients[who]

    def _key_changed(self, who: Identity) -> bool:
        """Does the identity's key file hold another key than its connection was opened with?"""
        if who.entry is None or who not in self._key_seen:
            return False
        stamp, public = self._key_seen[who]
        if _stamp(who.entry.key_file) == stamp:
            return False
        now = _key_seen(who.entry.key_file)
        if now[1] == public:
            self._key_seen[who] = now        # touched or rewritten, the same key: keep the connection
            return False
        return True

    async def _connect(self, who: Identity) -> AsyncClient:
        if who.entry is None:
            client = AsyncClient(self.socket, PROGRAM_NAME, timeout=30.0, key=self.key)
        else:
            client = AsyncClient(principal_socket(who.entry), f"{PROGRAM_NAME}:{who.entry.name}", timeout=30.0,
                                 key=who.entry.key_file)
        await client.connect()
        return client

    async def forget(self, who: Identity, client: AsyncClient | None = None) -> None:
        """Drop a connection that was lost (the next request connects again), or one whose key went away."""
        current = self._clients.get(who)
        if current is None or (client is not None and current is not client):
            return
        del self._clients[who]
        self._key_seen.pop(who, None)
        await current.close()

    async def keep_only(self, keep: set[Identity]) -> None:
        """Close the connections of identities no longer in the key table (a removed API key)."""
        for who in [w for w in self._clients if w.entry is not None and w not in keep]:
            await self.forget(who)

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    def take_stream(self, who: Identity) -> None:
        """Hold one of the identity's max_streams generations; 429 when all are taken. give_stream() returns it."""
        held = self._streams.get(who, 0)
        if held >= self.max_streams:
            raise ApiError(429, f"{who.label} already has {held} generations in flight, the gateway's limit per "
                                f"key (--max-streams); wait for one to finish", "rate_limit_error",
                           code="too_many_streams", retry_after=1)
        self._streams[who] = held + 1

    def give_stream(self, who: Identity) -> None:
        held = self._streams.pop(who, 0) - 1
        if held > 0:
            self._streams[who] = held


def principal_socket(entry: KeyEntry) -> str:
    """The tcp socket a principal's key file names: the only place its connection may go."""
    try:
        socket = read_key_file(entry.key_file).get(SOCKET_META, "")
    except FileNotFoundError:
        raise KeyRefused(f"the key file of '{entry.name}' ({entry.key_file}) is gone: its kernel user was "
                         f"removed (`llmos user add` makes a new one), or the file was moved") from None
    except (OSError, ValueError) as exc:
        raise KernelUnavailable(f"the key file of '{entry.name}' cannot be read: {exc}") from None
    if not socket.startswith("tcp://"):
        raise KernelUnavailable(f"the key file of '{entry.name}' ({entry.key_file}) names no tcp socket; "
                                f"use the file `llmos user add` wrote on a tcp kernel")
    return socket


def _stamp(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _key_seen(path: str) -> tuple[tuple | None, str | None]:
    """The key file's stamp and the public key in it (None where it cannot be read)."""
    stamp = _stamp(path)
    try:
        return stamp, read_key_file(path).get("public-key")
    except (OSError, ValueError):
        return stamp, None


def is_lost(exc: LLMOSError) -> bool:
    """A failure that means the connection itself is gone, not one call."""
    return isinstance(exc, KernelUnavailable)
