"""Who is at the other end of each routing id of a client socket: replies go only to the connection
that sent the request.

ZeroMQ's ROUTER routes by routing id alone, and lets a peer choose its own (ZMQ_ROUTING_ID). So:
- a peer that took the id of a connection that had gone got what was still on its way there (the
  replies of its requests in flight, its heartbeats), and kept its process alive;
- a peer that took the id libzmq was about to give the next peer made libzmq abort the kernel (an
  assertion in libzmq 4.3's ROUTER); those ids count up from libc's rand(), the same in every
  process unless someone seeds it.

Hence: seed_routing_ids() before a ROUTER is made (the next id is then one guess in 2^32), and a
Peers on each client socket that
- serves only ids libzmq assigned (five bytes, the first zero): a connection showing any other is
  cut at its first message, unanswered;
- binds each id to the connection it first came in on: the message's SRCFD, and which accept on
  that fd the socket's monitor reported. A message whose id is bound to another connection, or
  belonged to one that closed, is refused and its connection cut;
- when a connection closes, reaps its process at once, and never routes to its id again (the last
  MAX_CLOSED_IDS are remembered; libzmq never gives its own ids out twice). Nothing is sent to an
  id the kernel did not hear from.
It also keeps the socket's bounds (kernel/bounds.py): every frame sent is counted as unread (its
bytes and what ZeroMQ spends to queue it, FRAME_OVERHEAD_BYTES), and the connections of a principal
that hold too much are cut.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import zmq
from zmq.utils.monitor import parse_monitor_message

from llmos.specs.protocol import FRAME_OVERHEAD_BYTES

from . import logs
from .bounds import InboundGuard, UnreadReplies, shutdown

log = logs.get("llmos.transport")

MAX_CLOSED_IDS = 65_536
ROUTING_ID_BYTES = 5        # libzmq's own: a zero byte, then a 32-bit count


def seed_routing_ids() -> None:
    """Make the ids libzmq will give a ROUTER's peers unpredictable: it starts counting them from two
    calls of libc's rand() when the socket is made."""
    try:
        srand = ctypes.CDLL(None).srand
    except (OSError, AttributeError):     # no C library to reach: nothing to seed
        return
    srand.argtypes = [ctypes.c_uint]
    srand(secrets.randbits(32))


@dataclass
class Peer:
    fd: int | None          # the OS socket its messages came in on (None: not a socket the OS can say)
    accept: int             # which accept on that fd
    principal: str
    connection: bytes       # its kernel-wide id
    cut: bool = False


class Peers:
    """The connections of one ROUTER socket (see the module's docstring)."""

    def __init__(self, sock: zmq.Socket, connection: Callable[[bytes], bytes] = lambda routing_id: routing_id,
                 on_gone: Callable[[bytes, str], None] = lambda connection, why: None,
                 unread: UnreadReplies | None = None, inbound: InboundGuard | None = None, period_s: float = 0.25):
        self.connection = connection
        self.on_gone = on_gone          # (connection, why): its process is to be reaped
        self.unread = unread or UnreadReplies()
        self.inbound = inbound
        self.period_s = period_s
        self._monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self._monitor_sync = zmq.Socket.shadow(self._monitor.underlying)   # read without waiting
        self._accepts: dict[int, int] = {}          # fd of each live connection -> which accept it is
        self._count = itertools.count(1)
        self._peers: dict[bytes, Peer] = {}         # routing id -> the connection it is bound to
        self._ids_on: dict[int, list[bytes]] = {}   # fd -> the routing ids bound to it
        self._closed: OrderedDict[bytes, None] = OrderedDict()

    def admit(self, routing_id: bytes, fd: int | None, principal: str) -> str | None:
        """None if a message with this routing id, from this OS socket, may be served; else why not
        (and the caller cuts that socket: refuse())."""
        self.follow()
        if len(routing_id) != ROUTING_ID_BYTES or routing_id[0] != 0:
            return "its peer chose its routing id; the kernel serves only ids ZeroMQ assigns"
        if routing_id in self._closed:
            return "its routing id belonged to a connection that has closed"
        accept = 0 if fd is None else self._accepts.get(fd) or self._accepted(fd)
        peer = self._peers.get(routing_id)
        if peer is None:
            self._peers[routing_id] = Peer(fd, accept, principal, self.connection(routing_id))
            if fd is not None:
                self._ids_on.setdefault(fd, []).append(routing_id)
                if self.inbound is not None:
                    self.inbound.owned_by(fd, principal)     # what it holds counts towards its principal's bound
        elif (peer.fd, peer.accept) != (fd, accept):
            return "its routing id belongs to another connection"
        return None

    def refuse(self, routing_id: bytes, fd: int | None, why: str) -> None:
        log.warning("transport.refused", routing_id=routing_id.hex()[:64], reason=why)
        if fd is not None:
            shutdown(fd)

    def fits(self, routing_id: bytes, nbytes: int) -> bool:
        """Whether a frame of nbytes to this peer stays within its connection's and principal's bounds."""
        peer = self._peers.get(routing_id)
        return peer is None or self.unread.fits(peer.principal, peer.connection, peer.fd,
                                                nbytes + FRAME_OVERHEAD_BYTES)

    def deliverable(self, routing_id: bytes, nbytes: int) -> bool:
        """Count a frame of nbytes to this peer; False if it must not be sent: the kernel never heard
        from that id, its connection has gone, or it was cut for holding too much."""
        self.follow()
        peer = self._peers.get(routing_id)
        if peer is None or peer.cut:
            return False
        return self.unread.charge(peer.principal, peer.connection, peer.fd, nbytes + FRAME_OVERHEAD_BYTES,
                                  cut=lambda connection, why: self._cut(routing_id, why))

    def _cut(self, routing_id: bytes, why: str) -> None:
        peer = self._peers.get(routing_id)
        if peer is None or peer.cut:
            return
        peer.cut = True
        log.warning("transport.cut", principal=peer.principal, reason=why)
        if peer.fd is not None and self._accepts.get(peer.fd) == peer.accept:   # not a newer connection's fd
            shutdown(peer.fd)
        self._gone(peer.connection, why)

    def follow(self) -> None:
        """Take the monitor's events so far: connections accepted, connections closed."""
        gone: list[Peer] = []
        while self._monitor_sync.get(zmq.EVENTS) & zmq.POLLIN:
            event = parse_monitor_message(self._monitor_sync.recv_multipart(zmq.NOBLOCK))
            fd = int(event["value"])
            gone += self._close(fd)        # a disconnect; or an accept on an fd whose disconnect was missed
            if event["event"] == zmq.EVENT_ACCEPTED:
                self._accepted(fd)
        for peer in gone:
            self.unread.forget(peer.connection)
            if not peer.cut:
                self._gone(peer.connection, "disconnected")

    def _gone(self, connection: bytes, why: str) -> None:
        """Have the connection's process reaped, soon: not inside the send or receive that noticed (its
        caller may be walking the very requests a reap ends). Its id is unroutable already."""
        try:
            asyncio.get_running_loop().call_soon(self.on_gone, connection, why)
        except RuntimeError:        # no loop running: now, then
            self.on_gone(connection, why)

    def _accepted(self, fd: int) -> int:
        self._accepts[fd] = accept = next(self._count)
        if self.inbound is not None:
            self.inbound.accepted(fd)
        return accept

    def _close(self, fd: int) -> list[Peer]:
        if self._accepts.pop(fd, None) is None:
            return []
        if self.inbound is not None:
            self.inbound.closed(fd)
        gone = []
        for routing_id in self._ids_on.pop(fd, ()):
            gone.append(self._peers.pop(routing_id))
            self._closed[routing_id] = None
        while len(self._closed) > MAX_CLOSED_IDS:
            self._closed.popitem(last=False)
        return gone

    async def run(self) -> None:
        """Every period_s: follow the connections that came and went, and cut those holding too much inbound."""
        try:
            while True:
                await asyncio.sleep(self.period_s)
                self.follow()
                if self.inbound is not None:
                    self.inbound.check()
        finally:
            self.close()

    def close(self) -> None:
        self._monitor.close(0)
