"""The process table: who is connected, what each holds, and reaping what the dead leave behind."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .requests import Request


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
    requests: dict[int, "Request"] = field(default_factory=dict)   # by the client's frame id
    reservations: dict[int, tuple[str, int]] = field(default_factory=dict)  # handle -> (device, bytes)
    models: set[str] = field(default_factory=set)                  # model references held
    tokens: int = 0                  # tokens generated for it, ever (by services it called too)
    serves_calls: bool = False       # the kernel's service host: may infer for the callers of svc_call

    @property
    def reserved_bytes(self) -> int:
        return sum(b for _, b in self.reservations.values())

    def describe(self) -> dict:
        return {
            "pid": self.pid, "name": self.name, "principal": self.principal, "age_s": round(time.monotonic() - self.started, 3),
            "requests": len(self.requests), "tokens": self.tokens, "reserved_bytes": self.reserved_bytes,
            "models": sorted(self.models), "caps": sorted(self.caps),
        }


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
