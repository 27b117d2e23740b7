"""The process table: who is connected and what each holds; and who made a call (CallContext).

A process's requests in flight are not here: the request table (requests.py) owns every request
and indexes them by process, so there is one place that says what a process has running.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .transport import Transport


@dataclass
class Process:
    pid: int
    name: str                        # the program's name for itself: a label, not an identity
    identity: bytes                  # its connection (Transport.connection: socket index + routing id)
    caps: frozenset[str]
    principal: str = "operator"      # whose rights and namespace it has
    authenticated_as: str = "operator"   # who the transport proved is at the other end
    transport: Any = None            # the socket it is reached through
    started: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)
    reservations: dict[int, tuple[str, int]] = field(default_factory=dict)  # handle -> (device, bytes)
    models: set[str] = field(default_factory=set)                  # model references held
    tokens: int = 0                  # tokens generated for it, ever (by services it called too)
    serves_calls: bool = False       # the kernel's service host: may infer for the callers of svc_call

    @property
    def reserved_bytes(self) -> int:
        return sum(b for _, b in self.reservations.values())

    def describe(self, requests: int) -> dict:
        """As `ps` shows it; requests: how many it has in flight (the request table knows)."""
        return {
            "pid": self.pid, "name": self.name, "principal": self.principal, "age_s": round(time.monotonic() - self.started, 3),
            "requests": requests, "tokens": self.tokens, "reserved_bytes": self.reserved_bytes,
            "models": sorted(self.models), "caps": sorted(self.caps),
        }


class CallContext:
    """Who made a call and how to answer it."""

    __slots__ = ("transport", "routing", "client_id", "proc", "principal", "fd", "call")

    def __init__(self, transport: "Transport", routing: list[bytes], client_id: int, proc: Process | None,
                 principal: str, fd: int | None = None, call: str = ""):
        self.transport = transport     # the socket it came in on, and goes back out of
        self.routing = routing
        self.client_id = client_id
        self.proc = proc
        self.principal = principal     # as the transport proved it
        self.fd = fd                   # the OS socket of its connection, to see whether it reads
        self.call = call               # the syscall's name, as the table spells it

    @property
    def connection(self) -> bytes:
        return self.transport.connection(self.routing[0])


MAX_CEILINGS = 4096    # connections remembered after exit; the oldest are forgotten first


class ProcessTable:
    """Processes by pid and by connection. Pids are never reused within one kernel's life."""

    def __init__(self) -> None:
        self._by_pid: dict[int, Process] = {}
        self._by_identity: dict[bytes, Process] = {}
        self._ceilings: OrderedDict[bytes, frozenset[str]] = OrderedDict()   # connection -> caps after exit
        self._next_pid = 1

    def ceiling(self, identity: bytes) -> frozenset[str] | None:
        """The most a process on this connection may hold, once one on it exited; None before."""
        return self._ceilings.get(identity)

    def lower_ceiling(self, identity: bytes, caps: frozenset[str]) -> None:
        held = self._ceilings.get(identity)
        self._ceilings[identity] = caps if held is None else held & caps
        self._ceilings.move_to_end(identity)
        while len(self._ceilings) > MAX_CEILINGS:
            self._ceilings.popitem(last=False)

    def register(self, identity: bytes, name: str, caps: frozenset[str], principal: str, authenticated_as: str,
                 transport: Any) -> Process:
        proc = Process(self._next_pid, name, identity, caps, principal, authenticated_as, transport)
        self._next_pid += 1
        self._by_pid[proc.pid] = proc
        self._by_identity[identity] = proc
        return proc

    def remove(self, pid: int) -> Process | None:
        proc = self._by_pid.pop(pid, None)
        if proc is not None:
            self._by_identity.pop(proc.identity, None)
        return proc

    def by_identity(self, identity: bytes) -> Process | None:
        return self._by_identity.get(identity)

    def get(self, pid: int) -> Process | None:
        return self._by_pid.get(pid)

    def __iter__(self):
        return iter(list(self._by_pid.values()))

    def __len__(self) -> int:
        return len(self._by_pid)
