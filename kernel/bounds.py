"""What clients can make the kernel hold on its sockets, and how much: the ABI's Bounds, in bytes.

Outbound, UnreadReplies counts what each connection was sent and may not have read, against its
connection and its principal (a principal with many connections adds them up). Inbound,
InboundGuard counts what ZeroMQ holds from each tcp peer without having delivered it. Both learn
which OS sockets exist from a socket's monitor, through kernel/peers.py. The limits are in
specs/protocol.py.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios
import time
from typing import Callable

from llmos.specs.protocol import (INBOUND_HELD_PER_CONNECTION, INBOUND_HELD_PER_PRINCIPAL, INBOUND_HELD_TOTAL,
                                  UNREAD_BYTES_PER_CONNECTION,
                                  UNREAD_BYTES_PER_PRINCIPAL)

from . import logs

log = logs.get("llmos.transport")

Cut = Callable[[bytes, str], None]      # (connection, why): close a connection that holds too much


class UnreadReplies:
    """Bytes each connection was sent and may not have read yet, so that no client that never reads,
    nor a principal opening many such connections, can make the kernel queue without end.

    ZeroMQ bounds a peer's queue in frames (SNDHWM), not bytes, and a ROUTER cannot say how much of
    it a peer has read. The OS can: a connection whose socket has nothing left to send (TIOCOUTQ 0)
    has been sent everything queued for it, since ZeroMQ's I/O thread moves a queue to the socket
    as fast as the socket takes it. So every frame is counted against its connection and its
    principal; when a frame would pass a bound, the principal's connections seen empty are forgotten
    first, and only what is still over counts.
    """

    def __init__(self, per_connection: int = UNREAD_BYTES_PER_CONNECTION,
                 per_principal: int = UNREAD_BYTES_PER_PRINCIPAL, unsent=None):
        self.per_connection = per_connection
        self.per_principal = per_principal
        self.unsent = unsent or unsent_bytes
        self._unread: dict[str, dict[bytes, list]] = {}     # principal -> connection -> [fd, bytes, cut]
        self._held: dict[str, int] = {}                     # principal -> bytes over its connections
        self._principal_of: dict[bytes, str] = {}

    def held(self, principal: str) -> int:
        return self._held.get(principal, 0)

    def fits(self, principal: str, connection: bytes, fd: int | None, nbytes: int) -> bool:
        """Whether nbytes more to this connection stay within both bounds (counting nothing)."""
        if fd is None or self._within(principal, connection, nbytes):
            return True
        self._sweep(principal)
        return self._within(principal, connection, nbytes)

    def charge(self, principal: str, connection: bytes, fd: int | None, nbytes: int, cut: Cut | None = None) -> bool:
        """Count a frame of nbytes. Past a bound, without `cut`: False, and nothing counted. With it, the
        connection is cut if it alone is past its own bound (False), else the principal's connections
        holding most unread are cut until the frame fits: they are not reading."""
        if fd is None:
            return True             # not a socket the OS can be asked about
        if not self.fits(principal, connection, fd, nbytes):
            if cut is None:
                return False
            conns = self._unread.get(principal, {})
            if conns.get(connection, (0, 0))[1] + nbytes > self.per_connection:
                self._cut(connection, cut, f"not reading: over {self.per_connection} unread bytes")
                return False
            for other, entry in sorted(conns.items(), key=lambda item: -item[1][1]):
                if self._within(principal, connection, nbytes):
                    break
                self._cut(other, entry[2], f"not reading: its principal's connections hold over "
                                           f"{self.per_principal} unread bytes")
                if other == connection:
                    return False
            if not self._within(principal, connection, nbytes):
                return False
        entry = self._unread.setdefault(principal, {}).setdefault(connection, [fd, 0, cut])
        entry[0], entry[1], entry[2] = fd, entry[1] + nbytes, cut or entry[2]
        self._held[principal] = self._held.get(principal, 0) + nbytes
        self._principal_of[connection] = principal
        return True

    def forget(self, connection: bytes) -> None:
        """The connection is gone (or has read everything): it holds nothing any more."""
        principal = self._principal_of.pop(connection, None)
        conns = self._unread.get(principal)
        if conns is None or connection not in conns:
            return
        self._held[principal] -= conns.pop(connection)[1]
        if not conns:
            del self._unread[principal], self._held[principal]

    def _within(self, principal: str, connection: bytes, nbytes: int) -> bool:
        own = self._unread.get(principal, {}).get(connection, (0, 0))[1]
        return own + nbytes <= self.per_connection and self.held(principal) + nbytes <= self.per_principal

    def _sweep(self, principal: str) -> None:
        for connection, entry in list(self._unread.get(principal, {}).items()):
            if self.unsent(entry[0]) == 0:
                self.forget(connection)        # all of it left: read, or the connection is gone

    def _cut(self, connection: bytes, cut: Cut | None, why: str) -> None:
        self.forget(connection)
        if cut is not None:
            cut(connection, why)


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
    holds. Connections come and go as the socket's monitor says (Peers tells it); a cut is a
    shutdown of the OS socket, after which ZeroMQ drops the connection and what it held.
    """

    FRAME_OVERHEAD = 64            # a frame's ZMTP header and CurveZMQ box, over its body
    HANDSHAKE_BYTES = 64 * 1024    # greeting and handshake, which deliver nothing
    # ZMTP heartbeats deliver nothing either and come for as long as a connection lives (a client's
    # PING every few seconds, ~60 bytes with CurveZMQ): each connection is allowed this many bytes a
    # second of its age, or a day-old idle connection would look as if it held a few MiB.
    HEARTBEAT_BYTES_PER_S = 128

    def __init__(self, per_connection: int = INBOUND_HELD_PER_CONNECTION, total: int = INBOUND_HELD_TOTAL,
                 per_principal: int = INBOUND_HELD_PER_PRINCIPAL, clock=time.monotonic):
        self.clock = clock
        self.per_connection = per_connection
        self.total = total
        self.per_principal = per_principal
        self._delivered: dict[int, int] = {}    # fd of each accepted connection -> bytes delivered from it
        self._principal: dict[int, str] = {}    # fd -> whose it is, once a message of it was admitted
        self._since: dict[int, float] = {}      # fd -> when it was accepted

    def accepted(self, fd: int) -> None:
        self._delivered[fd] = 0
        self._since[fd] = self.clock()
        self._principal.pop(fd, None)

    def owned_by(self, fd: int, principal: str) -> None:
        if fd in self._delivered:
            self._principal[fd] = principal

    def closed(self, fd: int) -> None:
        self._delivered.pop(fd, None)
        self._principal.pop(fd, None)
        self._since.pop(fd, None)

    def delivered(self, fd: int, frames: list) -> None:
        """Credit what a message brought; call it after the monitor's events so far were taken (Peers
        does): a new connection on a reused fd would otherwise credit the old one."""
        if fd in self._delivered:
            self._delivered[fd] += sum(len(f) + self.FRAME_OVERHEAD for f in frames)

    def check(self) -> list[int]:
        """Cut whoever holds too much; the fds cut."""
        held, now = {}, self.clock()
        for fd, delivered in list(self._delivered.items()):
            received = tcp_bytes_received(fd)
            if received is None:
                self.closed(fd)
            else:
                heartbeats = int((now - self._since.get(fd, now)) * self.HEARTBEAT_BYTES_PER_S)
                held[fd] = max(0, received - delivered - self.HANDSHAKE_BYTES - heartbeats)
        total, cut = sum(held.values()), []
        by_principal: dict[str, int] = {}
        for fd, nbytes in held.items():
            who = self._principal.get(fd)
            if who is not None:
                by_principal[who] = by_principal.get(who, 0) + nbytes
        for fd, nbytes in sorted(held.items(), key=lambda item: -item[1]):
            who = self._principal.get(fd)
            over_principal = who is not None and by_principal[who] > self.per_principal
            if nbytes <= self.per_connection and total <= self.total and not over_principal:
                continue
            log.warning("transport.inbound_cut", fd=fd, held=nbytes, held_total=total, principal=who)
            shutdown(fd)
            self.closed(fd)
            total -= nbytes
            if who is not None:
                by_principal[who] -= nbytes
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
    """Close a connection under ZeroMQ's feet: it sees the error and drops the connection and its queues."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
