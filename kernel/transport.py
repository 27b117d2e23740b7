"""ROUTER sockets that never wait on a peer, and the kernel's client-facing socket built on one.

Sends use ROUTER_MANDATORY and NOBLOCK: a peer that is gone (EHOSTUNREACH) is reported so
the kernel can reap it; a peer that stopped reading (its pipe is full, EAGAIN) is reported
so the kernel can cut it off. Nobody waits on a slow or dead client, driver or service host.

Who may use which routing id, and so where a reply may go, is kernel/peers.py's: a reply goes
only to the connection that sent the request. What one client can make the kernel hold is
bounded (the limits are in specs/protocol.py): frames by ZMQ_MAXMSGSIZE, frames it has not read
by UnreadReplies, per connection and per principal, requests ZeroMQ queues from a connection
before the kernel takes them by RCVHWM (RECV_HWM: each keeps a whole receive buffer alive), and
bytes ZeroMQ holds from a tcp peer without delivering them (requests queued, a frame still
arriving, an unfinished multipart message) by InboundGuard (both in kernel/bounds.py), whose
checks run however busy clients keep the socket (recv yields to the loop).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable

import zmq
import zmq.asyncio

from llmos.specs.keys import private_umask
from llmos.specs.protocol import MAX_WIRE_FRAME_BYTES, RECV_HWM, SEND_HWM

from . import logs
from .auth import RevokedConnections, principal_of, proved_key, secure
from .bounds import InboundGuard, UnreadReplies
from .peers import Peers, seed_routing_ids
from .principals import PrincipalTable

log = logs.get("llmos.transport")

YIELD_EVERY = 32    # messages a Transport's recv hands over before it lets the loop run others


class Router:
    """A bound ROUTER: `await recv()` on the loop, `send()` that raises at once instead of waiting."""

    def __init__(self, ctx: zmq.asyncio.Context, url: str, before_bind=None, **options: int):
        self.url = url
        seed_routing_ids()         # before the socket: libzmq picks where its peers' ids start then
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
                 on_unreachable: Callable[[bytes, str], None], index: int = 0,
                 on_revoked: Callable[[bytes, str], None] = lambda connection, key: None,
                 unread: UnreadReplies | None = None):
        self.url = url
        self.principals = principals
        self.revoked = RevokedConnections(on_revoked)
        self.index = index              # routing ids are per socket: a connection's id starts with this
        self.on_unreachable = on_unreachable
        self.ipc_path = ipc_path(url)
        if self.ipc_path and self.ipc_path.exists():
            self.ipc_path.unlink()   # stale: the boot lock proved no kernel owns it
        self.router = Router(ctx, url, before_bind=lambda sock: secure(sock, url, principals),
                             MAXMSGSIZE=MAX_WIRE_FRAME_BYTES, SNDHWM=SEND_HWM, RCVHWM=RECV_HWM)
        self._ipc_inode = self.ipc_path.stat().st_ino if self.ipc_path else None
        # Who is at the other end of each routing id, and how much each connection and principal
        # has not read (the principals of one socket never use another: users tcp, the operator ipc).
        self.peers = Peers(self.router.sock, self.connection, on_unreachable, unread,
                           InboundGuard() if url.startswith("tcp://") else None)
        self._received = 0

    async def recv(self) -> tuple[list[bytes], list[bytes], str, int | None]:
        """The next message: its routing id, its frames after it, the principal the transport proved
        ('' when its connection's key was revoked since: reported once per connection), and the OS
        socket it came in on (to see later whether the peer reads what it is sent).

        A request is one frame; the dispatcher answers any other count EINVAL, to the routing id alone.
        A message whose routing id its connection may not use is dropped, and that connection cut.

        While messages are waiting, zmq.asyncio hands them over without ever giving the loop back; so
        every YIELD_EVERY messages recv does, or nothing else would run while a client keeps the
        socket busy: not the InboundGuard's checks, not heartbeats, not other sockets."""
        self._received += 1
        if self._received % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        while True:
            parts = await self.router.recv_frames()
            try:
                fd = parts[-1].get(zmq.SRCFD)
            except zmq.ZMQError:
                fd = None
            principal = principal_of(parts[-1], self.url, self.principals)
            refused = self.peers.admit(parts[0].bytes, fd, principal)
            if refused is None:
                break
            self.peers.refuse(parts[0].bytes, fd, refused)
        if self.peers.inbound is not None and fd is not None:
            self.peers.inbound.delivered(fd, parts[1:])
        if not principal:
            self.revoked.refused(self.connection(parts[0].bytes), proved_key(parts[-1]))
        return [parts[0].bytes], [p.bytes for p in parts[1:]], principal, fd

    def connection(self, routing_id: bytes) -> bytes:
        """A connection's kernel-wide id: this socket's index, then the peer's routing id on it
        (ZeroMQ numbers its peers per socket, so two sockets' peers may share a routing id)."""
        return bytes([self.index]) + routing_id

    def fits(self, routing: list[bytes], nbytes: int) -> bool:
        """Whether a reply of nbytes stays within what its connection and principal may leave unread."""
        return self.peers.fits(routing[0], nbytes)

    def send(self, routing: list[bytes], frame: bytes) -> bool:
        """Queue a frame for a client without waiting; False if it could not be delivered: the kernel
        never heard from that routing id, its connection has gone, or it was cut for not reading."""
        if not self.peers.deliverable(routing[0], len(frame)):
            return False
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
        self.peers.close()
        self.router.close()
        try:
            if self.ipc_path and self.ipc_path.stat().st_ino == self._ipc_inode:
                self.ipc_path.unlink()   # only our own socket file, never a successor's
        except FileNotFoundError:
            pass


def ipc_path(url: str) -> Path | None:
    return Path(url[len("ipc://"):]) if url.startswith("ipc://") else None
