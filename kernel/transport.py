"""ROUTER sockets that never wait on a peer, and the kernel's client-facing socket built on one.

Sends use ROUTER_MANDATORY and NOBLOCK: a peer that is gone (EHOSTUNREACH) is reported so
the kernel can reap it; a peer that stopped reading (its pipe is full, EAGAIN) is reported
so the kernel can cut it off. Nobody waits on a slow or dead client, driver or service host.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Callable

import zmq
import zmq.asyncio

from llmos.specs.keys import private_umask
from llmos.specs.protocol import (BULK_REPLY_BUDGET, BULK_REPLY_BYTES, BULK_REPLY_WINDOW_S, MAX_WIRE_FRAME_BYTES,
                                  SEND_HWM)

from . import logs
from .auth import principal_of, secure
from .principals import PrincipalTable

log = logs.get("llmos.transport")


class Router:
    """A bound ROUTER: `await recv()` on the loop, `send()` that raises at once instead of waiting."""

    def __init__(self, ctx: zmq.asyncio.Context, url: str, before_bind=None, **options: int):
        self.url = url
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        for name, value in options.items():
            self.sock.setsockopt(getattr(zmq, name), value)
        if before_bind is not None:
            before_bind(self.sock)
        with private_umask():      # an ipc socket file is born 0600: no window before a chmod
            self.sock.bind(url)
        # zmq.asyncio reports send errors through futures; a synchronous shadow of the same
        # socket raises them at once, which is what a non-blocking send needs.
        self._send_sock = zmq.Socket.shadow(self.sock.underlying)

    async def recv(self) -> list[bytes]:
        return await self.sock.recv_multipart(copy=True)

    async def recv_frames(self) -> list[zmq.Frame]:
        """A message as zmq Frames, which carry the transport's properties (User-Id)."""
        return await self.sock.recv_multipart(copy=False)

    def send(self, frames: list[bytes]) -> None:
        """Queue a message without waiting; raises zmq.Again (peer not reading) or zmq.ZMQError."""
        self._send_sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        # The socket's FD is edge-triggered; asking the asyncio socket for EVENTS re-arms its
        # reader, which a send on the shadow would otherwise leave asleep with messages queued.
        self.sock.get(zmq.EVENTS)

    def close(self) -> None:
        self.sock.close(0)


class Transport:
    """The kernel's socket for clients: reports the ones it cannot reach instead of blocking on them."""

    def __init__(self, ctx: zmq.asyncio.Context, url: str, principals: PrincipalTable,
                 on_unreachable: Callable[[bytes, str], None], index: int = 0):
        self.url = url
        self.index = index              # routing ids are per socket: a connection's id starts with this
        self.on_unreachable = on_unreachable
        self.ipc_path = ipc_path(url)
        if self.ipc_path and self.ipc_path.exists():
            self.ipc_path.unlink()   # stale: the boot lock proved no kernel owns it
        self.router = Router(ctx, url, before_bind=lambda sock: secure(sock, url, principals),
                             MAXMSGSIZE=MAX_WIRE_FRAME_BYTES, SNDHWM=SEND_HWM, RCVHWM=SEND_HWM)
        self._ipc_inode = self.ipc_path.stat().st_ino if self.ipc_path else None

    async def recv(self) -> tuple[list[bytes], list[bytes], str]:
        """The next message: its routing id, its frames after it, and the principal the transport proved.

        A request is one frame; the dispatcher answers any other count EINVAL, to the routing id alone."""
        parts = await self.router.recv_frames()
        return [parts[0].bytes], [p.bytes for p in parts[1:]], principal_of(parts[-1], self.url)

    def connection(self, routing_id: bytes) -> bytes:
        """A connection's kernel-wide id: this socket's index, then the peer's routing id on it
        (ZeroMQ numbers its peers per socket, so two sockets' peers may share a routing id)."""
        return bytes([self.index]) + routing_id

    def send(self, routing: list[bytes], frame: bytes) -> bool:
        """Queue a frame for a client without waiting; False if it could not be delivered."""
        try:
            self.router.send(routing + [frame])
            return True
        except zmq.Again:
            self.on_unreachable(self.connection(routing[0]), "not reading: its receive queue is full")
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                self.on_unreachable(self.connection(routing[0]), "disconnected")
            else:
                log.warning("transport.send_failed", error=str(exc))
        return False

    def close(self) -> None:
        self.router.close()
        try:
            if self.ipc_path and self.ipc_path.stat().st_ino == self._ipc_inode:
                self.ipc_path.unlink()   # only our own socket file, never a successor's
        except FileNotFoundError:
            pass


def ipc_path(url: str) -> Path | None:
    return Path(url[len("ipc://"):]) if url.startswith("ipc://") else None


class BulkReplyBudget:
    """Bytes of large replies a principal was sent lately, so that one that never reads cannot make
    the kernel queue without end.

    ZeroMQ bounds a peer's queue in frames (SNDHWM), not bytes, and a ROUTER cannot tell how much
    of it a peer has read. So replies of BULK_REPLY_BYTES or more are charged to their principal
    (every connection of it together): at most BULK_REPLY_BUDGET bytes in any BULK_REPLY_WINDOW_S.
    """

    def __init__(self, budget: int = BULK_REPLY_BUDGET, window_s: float = BULK_REPLY_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic):
        self.budget = budget
        self.window_s = window_s
        self.clock = clock
        self._sent: dict[str, deque[tuple[float, int]]] = defaultdict(deque)   # principal -> (when, bytes)
        self._total: dict[str, int] = defaultdict(int)

    def charge(self, principal: str, nbytes: int) -> float | None:
        """Charge a reply of nbytes; None if it may go, else seconds until it would fit."""
        if nbytes < BULK_REPLY_BYTES:
            return None
        now = self.clock()
        sent = self._sent[principal]
        while sent and sent[0][0] <= now - self.window_s:
            self._total[principal] -= sent.popleft()[1]
        if self._total[principal] + nbytes > self.budget:
            if not sent:                     # larger than a whole window's budget: never fits
                return self.window_s
            freed, wait = self._total[principal] + nbytes - self.budget, self.window_s
            for when, size in sent:
                freed -= size
                if freed <= 0:
                    wait = when + self.window_s - now
                    break
            return max(wait, 0.001)
        sent.append((now, nbytes))
        self._total[principal] += nbytes
        return None
