"""ROUTER sockets that never wait on a peer, and the kernel's client-facing socket built on one.

Sends use ROUTER_MANDATORY and NOBLOCK: a peer that is gone (EHOSTUNREACH) is reported so
the kernel can reap it; a peer that stopped reading (its pipe is full, EAGAIN) is reported
so the kernel can cut it off. Nobody waits on a slow or dead client, driver or service host.

What one client can make the kernel hold is bounded here (the limits are in specs/protocol.py):
frames by ZMQ_MAXMSGSIZE, replies it has not read by UnreadReplies, and bytes ZeroMQ holds from
a tcp peer without delivering them (a frame still arriving, an unfinished multipart message)
by InboundGuard.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import struct
import termios
from pathlib import Path
from typing import Callable

import zmq
import zmq.asyncio

from llmos.specs.keys import private_umask
from zmq.utils.monitor import parse_monitor_message

from llmos.specs.protocol import (BULK_REPLY_BYTES, INBOUND_HELD_PER_CONNECTION, INBOUND_HELD_TOTAL,
                                  MAX_WIRE_FRAME_BYTES, SEND_HWM, UNREAD_BYTES_PER_CONNECTION,
                                  UNREAD_BYTES_PER_PRINCIPAL)

from . import logs
from .auth import RevokedConnections, principal_of, proved_key, secure
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
                 on_unreachable: Callable[[bytes, str], None], index: int = 0,
                 on_revoked: Callable[[bytes, str], None] = lambda connection, key: None):
        self.url = url
        self.principals = principals
        self.revoked = RevokedConnections(on_revoked)
        self.index = index              # routing ids are per socket: a connection's id starts with this
        self.on_unreachable = on_unreachable
        self.ipc_path = ipc_path(url)
        if self.ipc_path and self.ipc_path.exists():
            self.ipc_path.unlink()   # stale: the boot lock proved no kernel owns it
        self.router = Router(ctx, url, before_bind=lambda sock: secure(sock, url, principals),
                             MAXMSGSIZE=MAX_WIRE_FRAME_BYTES, SNDHWM=SEND_HWM, RCVHWM=SEND_HWM)
        self._ipc_inode = self.ipc_path.stat().st_ino if self.ipc_path else None
        self.inbound = InboundGuard(self.router.sock) if url.startswith("tcp://") else None

    async def recv(self) -> tuple[list[bytes], list[bytes], str, int | None]:
        """The next message: its routing id, its frames after it, the principal the transport proved
        ('' when its connection's key was revoked since: reported once per connection), and the OS
        socket it came in on (to see later whether the peer reads what it is sent).

        A request is one frame; the dispatcher answers any other count EINVAL, to the routing id alone."""
        parts = await self.router.recv_frames()
        try:
            fd = parts[-1].get(zmq.SRCFD)
        except zmq.ZMQError:
            fd = None
        if self.inbound is not None and fd is not None:
            self.inbound.delivered(fd, parts[1:])
        principal = principal_of(parts[-1], self.url, self.principals)
        if not principal:
            self.revoked.refused(self.connection(parts[0].bytes), proved_key(parts[-1]))
        return [parts[0].bytes], [p.bytes for p in parts[1:]], principal, fd

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


class UnreadReplies:
    """Bytes of large replies each connection may not have read yet, so that one that never reads
    cannot make the kernel queue without end.

    ZeroMQ bounds a peer's queue in frames (SNDHWM), not bytes, and a ROUTER cannot say how much of
    it a peer has read. The OS can: a connection whose socket has nothing left to send (TIOCOUTQ 0)
    has been sent everything queued for it, since ZeroMQ's I/O thread moves a queue to the socket
    as fast as the socket takes it. So each large reply is counted against its connection and its
    principal until that connection's socket is seen empty.
    """

    def __init__(self, per_connection: int = UNREAD_BYTES_PER_CONNECTION,
                 per_principal: int = UNREAD_BYTES_PER_PRINCIPAL, unsent=None):
        self.per_connection = per_connection
        self.per_principal = per_principal
        self.unsent = unsent or unsent_bytes
        self._unread: dict[str, dict[bytes, list]] = {}      # principal -> connection -> [fd, bytes]

    def charge(self, principal: str, connection: bytes, fd: int | None, nbytes: int) -> bool:
        """Count a reply of nbytes; False (and nothing counted) if it would pass a bound."""
        if nbytes < BULK_REPLY_BYTES or fd is None:
            return True
        conns = self._unread.setdefault(principal, {})
        for conn, (conn_fd, _) in list(conns.items()):
            if self.unsent(conn_fd) == 0:
                del conns[conn]          # all of it left: read, or the connection is gone
        entry = conns.get(connection) or [fd, 0]
        if entry[1] + nbytes > self.per_connection or \
                sum(e[1] for e in conns.values()) + nbytes > self.per_principal:
            if not conns:
                del self._unread[principal]
            return False
        entry[0], entry[1] = fd, entry[1] + nbytes
        conns[connection] = entry
        return True


def unsent_bytes(fd: int) -> int:
    """Bytes an OS socket still holds to send (TIOCOUTQ); 0 for a closed one."""
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return 0


class InboundGuard:
    """Cuts tcp connections that make ZeroMQ hold too many bytes it has not delivered to the kernel.

    ZeroMQ keeps a frame until it has all of it (up to ZMQ_MAXMSGSIZE) and a multipart message
    until its last part (no limit at all), and neither counts towards RCVHWM. The OS counts what
    each tcp connection received (TCP_INFO); minus what ZeroMQ delivered from it, that is what it
    holds. Connections come from the socket's monitor; a cut is a shutdown of the OS socket, after
    which ZeroMQ drops the connection and what it held.
    """

    FRAME_OVERHEAD = 64            # a frame's ZMTP header and CurveZMQ box, over its body
    HANDSHAKE_BYTES = 64 * 1024    # greeting, handshake and heartbeats, which deliver nothing

    def __init__(self, sock: zmq.Socket, per_connection: int = INBOUND_HELD_PER_CONNECTION,
                 total: int = INBOUND_HELD_TOTAL, period_s: float = 0.25):
        self.per_connection = per_connection
        self.total = total
        self.period_s = period_s
        self._monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self._monitor_sync = zmq.Socket.shadow(self._monitor.underlying)
        self._delivered: dict[int, int] = {}    # fd of each accepted connection -> bytes delivered from it

    def delivered(self, fd: int, frames: list) -> None:
        # The connection's ACCEPTED event is queued before any of its messages: take it first, or a
        # new connection on a reused fd would credit the old one, and look as if it held what it sent.
        self.follow_connections()
        if fd in self._delivered:
            self._delivered[fd] += sum(len(f) + self.FRAME_OVERHEAD for f in frames)

    async def run(self) -> None:
        """Every period_s: follow the connections that came and went, then check what they hold."""
        try:
            while True:
                await asyncio.sleep(self.period_s)
                self.follow_connections()
                self.check()
        finally:
            self._monitor.close(0)

    def follow_connections(self) -> None:
        """Take the monitor's events so far (read without waiting, on a plain shadow of its socket)."""
        while self._monitor_sync.poll(0):
            event = parse_monitor_message(self._monitor_sync.recv_multipart(zmq.NOBLOCK))
            fd = int(event["value"])
            if event["event"] == zmq.EVENT_ACCEPTED:
                self._delivered[fd] = 0
            else:
                self._delivered.pop(fd, None)

    def check(self) -> list[int]:
        """Cut whoever holds too much; the fds cut."""
        held = {}
        for fd, delivered in list(self._delivered.items()):
            received = tcp_bytes_received(fd)
            if received is None:
                del self._delivered[fd]
            else:
                held[fd] = max(0, received - delivered - self.HANDSHAKE_BYTES)
        total, cut = sum(held.values()), []
        for fd, nbytes in sorted(held.items(), key=lambda item: -item[1]):
            if nbytes <= self.per_connection and total <= self.total:
                break
            log.warning("transport.inbound_cut", fd=fd, held=nbytes, held_total=total)
            shutdown(fd)
            del self._delivered[fd]
            total -= nbytes
            cut.append(fd)
        return cut


def tcp_bytes_received(fd: int) -> int | None:
    """Bytes a tcp socket has received in all (TCP_INFO's tcpi_bytes_received); None if fd is not one."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
                return None
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except OSError:
        return None
    return struct.unpack_from("<Q", info, 128)[0] if len(info) >= 136 else None


def shutdown(fd: int) -> None:
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
