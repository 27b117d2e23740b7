"""ROUTER sockets that never wait on a peer, and the kernel's client-facing socket built on one.

Sends use ROUTER_MANDATORY and NOBLOCK: a peer that is gone (EHOSTUNREACH) is reported so
the kernel can reap it; a peer that stopped reading (its pipe is full, EAGAIN) is reported
so the kernel can cut it off. Nobody waits on a slow or dead client, driver or service host.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable

import zmq
import zmq.asyncio

from llmos.specs.protocol import MAX_FRAME_BYTES

from . import logs

log = logs.get("llmos.transport")

SEND_HWM = 10_000  # frames queued to one client before it counts as not reading


class Router:
    """A bound ROUTER: `await recv()` on the loop, `send()` that raises at once instead of waiting."""

    def __init__(self, ctx: zmq.asyncio.Context, url: str, **options: int):
        self.url = url
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        for name, value in options.items():
            self.sock.setsockopt(getattr(zmq, name), value)
        self.sock.bind(url)
        # zmq.asyncio reports send errors through futures; a synchronous shadow of the same
        # socket raises them at once, which is what a non-blocking send needs.
        self._send_sock = zmq.Socket.shadow(self.sock.underlying)

    async def recv(self) -> list[bytes]:
        return await self.sock.recv_multipart(copy=True)

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

    def __init__(self, ctx: zmq.asyncio.Context, url: str, on_unreachable: Callable[[bytes, str], None]):
        self.url = url
        self.on_unreachable = on_unreachable
        self.ipc_path = ipc_path(url)
        if self.ipc_path:
            self.ipc_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if self.ipc_path.exists():
                self.ipc_path.unlink()   # stale: the boot lock proved no kernel owns it
        self.router = Router(ctx, url, MAXMSGSIZE=MAX_FRAME_BYTES, SNDHWM=SEND_HWM, RCVHWM=SEND_HWM)
        self._ipc_inode = None
        if self.ipc_path:
            os.chmod(self.ipc_path, stat.S_IRUSR | stat.S_IWUSR)  # only this user's programs
            self._ipc_inode = self.ipc_path.stat().st_ino

    async def recv(self) -> list[bytes]:
        return await self.router.recv()

    def send(self, routing: list[bytes], frame: bytes) -> bool:
        """Queue a frame for a client without waiting; False if it could not be delivered."""
        try:
            self.router.send(routing + [frame])
            return True
        except zmq.Again:
            self.on_unreachable(routing[0], "not reading: its receive queue is full")
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                self.on_unreachable(routing[0], "disconnected")
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
