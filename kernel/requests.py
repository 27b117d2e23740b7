"""The request table: every request in flight, and the only code that changes a request's state.

A request is one infer, embed or svc_call of a process. Its life is short and one-way:

    QUEUED (in its device's fair scheduler) -> RUNNING (at the driver) -> DONE
    RUNNING (an embed goes straight to its driver)                     -> DONE
    AT_SERVICE (an svc_call, at the service host)                      -> DONE

`end` is the one way out: a result, an error, a cancel, a deadline, a reaped process or a
crashed driver all finish a request through it, exactly once. What the table owns it frees there
itself (its caller's counts, its hold on its model's copy, its place in its process's index);
the tables that keep views of requests (the device's scheduler and window, the metrics) are told
through one event path, `on_end`, which the kernel wires up. This module imports no other
table's type: what it is given (processes, quotas, the driver port) sits below it.

A request the service host makes for an svc_call (for_call: `share` is the caller's pid) is in the
host's table, which cancels it and reaps it with the host, but counts against the caller: its
process's requests in flight and its principal's quota, never the host's, which every tenant shares.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

from llmos.specs import channel
from llmos.specs.protocol import reply_ok

from .errors import DoubleRelease, SyscallError, eagain, einval

if TYPE_CHECKING:
    from .driverport import DriverPort
    from .process import CallContext, Process, ProcessTable
    from .quotas import Quotas
    from .transport import Transport


class RequestState(enum.Enum):
    QUEUED = "queued"            # waiting in its device's fair scheduler
    RUNNING = "running"          # at its driver (a generation in the batch, or an embed)
    AT_SERVICE = "at_service"    # an svc_call the service host is running
    DONE = "done"


class ModelCopy(Protocol):
    """What a request holds while it runs: one loaded copy of its model (models.ModelEntry)."""
    name: str
    device: str
    users: set[int]        # the rids holding it: a copy with users is not idle (eviction skips it)
    last_used: float


RELEASED = object()   # Request.holds after its release


@dataclass(eq=False)
class Request:
    rid: int                      # kernel-wide id, used on the driver and service channels
    pid: int
    transport: "Transport"        # the socket its caller is on
    envelope: list[bytes]         # routing frames to echo in replies
    client_id: int                # the id of the client's request frame
    call: str                     # "infer" | "embed" | "svc_call"
    model: str                    # "" for an svc_call
    device: str                   # its device, or the service host's channel id
    payload: dict                 # the Submit fields of an infer; the service and task of an svc_call
    future: asyncio.Future
    stream: bool = False
    priority: int = 0
    deadline: float | None = None  # monotonic seconds
    seq: int = 0                  # arrival order, for FIFO among equals
    share: int = 0                # pid it is scheduled and accounted as: pid, or the caller a service serves
    principal: str = ""           # whose quota of requests in flight it counts against
    payer: str = ""               # whose tokens and figures it counts as: share's principal (a service's caller)
    state: RequestState = RequestState.QUEUED
    text: list[str] = field(default_factory=list)
    completion_tokens: int = 0
    generated: list[int] = field(default_factory=list)   # token ids so far: where to resume if its driver dies
    logprobs: list = field(default_factory=list)   # with infer's logprobs: an entry per token (bounded by the kernel)
    resumes: int = 0              # times it was re-admitted after its driver died
    timer: asyncio.TimerHandle | None = None
    holds: object = None          # the ModelCopy it runs on, then RELEASED
    created: float = field(default_factory=time.monotonic)   # accepted: where its latencies start
    first_token_at: float | None = None
    last_token_at: float | None = None

    def stream_part(self, part: dict) -> None:
        """One streamed part of its answer, to its caller; the final reply comes when it ends."""
        self.transport.send(self.envelope, reply_ok(self.client_id, part, more=True))


# Told of every request that ends, after the table has let go of it and before its caller hears:
# (request, the state it left, its error or None, its result or None).
EndListener = Callable[[Request, RequestState, "SyscallError | None", "dict | None"], None]


class RequestTable:
    def __init__(self, procs: "ProcessTable", quotas: "Quotas", drivers: "DriverPort", max_per_process: int):
        self.procs = procs
        self.quotas = quotas
        self.drivers = drivers
        self.max_per_process = max_per_process
        self.on_end: list[EndListener] = []          # the views kept of requests, told as each ends
        self._by_rid: dict[int, Request] = {}
        self._by_process: dict[int, dict[int, Request]] = {}    # pid -> the client's frame id -> its request
        self._rids = itertools.count(1)
        self._seq = itertools.count()
        self._served: Counter[int] = Counter()       # pid -> requests the service host has in flight for it
        self._for_others: Counter[int] = Counter()   # pid -> requests in its table that count against another
        self._counted_for: dict[int, int] = {}       # rid -> the pid it counts against, when not its own

    def held(self, proc: "Process") -> int:
        """The requests in flight that count against a process: its own, and those made for it."""
        return self.in_flight(proc.pid) - self._for_others[proc.pid] + self._served[proc.pid]

    def of(self, pid: int) -> dict[int, Request]:
        """A process's requests in flight, by the id of the client's frame (a copy)."""
        return dict(self._by_process.get(pid, {}))

    def in_flight(self, pid: int) -> int:
        """How many requests are in a process's table (its own, and those it makes for others)."""
        return len(self._by_process.get(pid, ()))

    def by_client(self, pid: int, client_id: int) -> Request | None:
        """The process's request in flight that its frame `client_id` made, if any."""
        return self._by_process.get(pid, {}).get(client_id)

    def get(self, rid: int) -> Request | None:
        return self._by_rid.get(rid)

    def __iter__(self):
        return iter(list(self._by_rid.values()))

    def __len__(self) -> int:
        return len(self._by_rid)

    def at_driver(self, device: str) -> list[Request]:
        return [r for r in self._by_rid.values() if r.device == device and r.state is RequestState.RUNNING]

    def new(self, ctx: "CallContext", call: str, entry: ModelCopy | None, payload: dict, *, stream=False,
            priority=0, deadline_s: float | None = None, share: int | None = None, device: str | None = None) -> Request:
        """A request of ctx's process, on entry's model and device (or, without a model, on device);
        share: the pid it is scheduled and accounted as (default: its own). It holds entry until it ends."""
        proc = ctx.proc
        served = self.procs.get(share) if share is not None and share != proc.pid else None
        owner = served or proc         # whose limits it counts against
        limit = self.max_per_process
        if self.held(owner) >= limit:
            raise eagain(f"process {owner.pid} already has {self.held(owner)} requests in flight "
                         f"(limit {limit}{', with those services make for it' if served else ''}); "
                         f"wait for some to finish")
        if ctx.client_id in self._by_process.get(proc.pid, ()):
            raise einval(f"request id {ctx.client_id} is already in flight; use a new id per request")
        quotas = self.quotas
        quotas.check(owner.principal, "requests", quotas.requests[owner.principal], what=call)
        loop = asyncio.get_running_loop()
        req = Request(next(self._rids), proc.pid, ctx.transport, ctx.routing, ctx.client_id, call,
                      entry.name if entry else "", entry.device if entry else device, payload, loop.create_future(),
                      stream, priority, None if deadline_s is None else time.monotonic() + deadline_s, next(self._seq),
                      share=proc.pid if share is None else share)
        self._by_process.setdefault(proc.pid, {})[ctx.client_id] = req
        self._by_rid[req.rid] = req
        req.principal = owner.principal
        quotas.requests[req.principal] += 1
        if served is not None:
            self._counted_for[req.rid] = served.pid
            self._served[served.pid] += 1
            self._for_others[proc.pid] += 1
        payer = self.procs.get(req.share)
        req.payer = payer.principal if payer is not None else proc.principal
        if entry is not None:
            self._hold(entry, req)
        if deadline_s is not None:
            req.timer = loop.call_later(deadline_s, self._deadline_passed, req)
        return req

    def _deadline_passed(self, req: Request) -> None:
        self.end(req, SyscallError("ETIMEDOUT", f"deadline passed after {len(req.text)} deltas"))

    # -- state changes: only here ----------------------------------------------------------------

    def running(self, req: Request) -> None:
        """It left its scheduler for its driver."""
        req.state = RequestState.RUNNING

    def produced(self, req: Request, ev: channel.TokenEvent, now: float) -> None:
        """What its driver made of it in one engine step: tokens and their ids, logprobs, a piece of text."""
        if ev.tokens:
            req.completion_tokens += ev.tokens
            if req.first_token_at is None:
                req.first_token_at = now
            req.last_token_at = now
        if ev.ids:
            req.generated += ev.ids
        if ev.logprobs:
            req.logprobs += ev.logprobs
        if ev.delta or ev.logprobs:
            req.text.append(ev.delta)

    def requeued(self, req: Request, replica: ModelCopy | None = None) -> None:
        """Its driver died under it: queued again, to resume after what it generated; on `replica`'s
        device (a ready copy of its model elsewhere), or on its own (None) once its driver is back."""
        if replica is not None and replica.device != req.device:
            self._release(req)
            req.holds = None
            self._hold(replica, req)
            req.device = replica.device
        req.state = RequestState.QUEUED
        req.resumes += 1
        req.payload["resume"] = list(req.generated)

    def at_service(self, req: Request) -> None:
        """It is the service host's to run; no device scheduler or driver holds it."""
        req.state = RequestState.AT_SERVICE

    def end(self, req: Request, error: SyscallError | None = None, result: dict | None = None,
            notify: bool = True) -> None:
        """Finish a request exactly once: free its slot, drop its bookkeeping, resolve its caller.

        notify=False: nobody waits for the answer (its process was reaped), so an error is not
        left as an unretrieved exception.
        """
        if self._by_rid.pop(req.rid, None) is None:
            return
        if req.timer:
            req.timer.cancel()
        was, req.state = req.state, RequestState.DONE
        self.quotas.requests[req.principal] -= 1
        if not self.quotas.requests[req.principal]:
            del self.quotas.requests[req.principal]
        served = self._counted_for.pop(req.rid, None)
        if served is not None:
            for counts, pid in ((self._served, served), (self._for_others, req.pid)):
                counts[pid] -= 1
                if not counts[pid]:
                    del counts[pid]
        mine = self._by_process.get(req.pid, {})
        mine.pop(req.client_id, None)
        if not mine:
            self._by_process.pop(req.pid, None)
        self._release(req)
        if was is RequestState.RUNNING and error is not None and req.call == "infer":
            self.drivers.send(req.device, channel.Cancel(req.rid))    # stop generating what nobody will read
        for listener in self.on_end:
            listener(req, was, error, result)
        if not req.future.done():
            if error is not None:
                req.future.set_exception(error)
                if not notify:
                    req.future.exception()
            else:
                req.future.set_result(result)

    # -- a request's hold on its model's copy: taken when it is made, given back when it ends --------

    @staticmethod
    def _hold(entry: ModelCopy, req: Request) -> None:
        """req runs on this copy of its model until it ends: the copy is not idle meanwhile."""
        if req.holds is not None:
            raise DoubleRelease(f"request {req.rid} already holds {req.model} on {req.holds.device}")
        entry.users.add(req.rid)
        entry.last_used = time.monotonic()
        req.holds = entry

    @staticmethod
    def _release(req: Request) -> None:
        """req no longer runs on the copy it held. Exactly once: a second release is a kernel bug, raised
        here rather than absorbed (a count kept from going negative would hide it). The copy it held
        may have been unloaded and loaded again since: what it held is that object, not the name."""
        entry = req.holds
        if entry is RELEASED:
            raise DoubleRelease(f"request {req.rid} released {req.model} twice")
        req.holds = RELEASED
        if entry is not None:
            entry.users.discard(req.rid)
            entry.last_used = time.monotonic()
