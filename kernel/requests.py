"""The request table: every request in flight, and the only code that changes a request's state.

A request is one infer, embed or svc_call of a process. Its life is short and one-way:

    QUEUED (in its device's fair scheduler) -> RUNNING (at the driver) -> DONE
    RUNNING (an embed goes straight to its driver)                     -> DONE
    AT_SERVICE (an svc_call, at the service host)                      -> DONE

`end` is the one way out: a result, an error, a cancel, a deadline, a reaped process or a
crashed driver all finish a request through it, exactly once, and it frees what the request
held (its scheduler slot, its place at the driver, its model's in-use count).

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
from typing import TYPE_CHECKING

from llmos.specs import channel

from .errors import SyscallError, eagain, einval

if TYPE_CHECKING:
    from .dispatch import CallContext
    from .kernel import Kernel
    from .models import ModelEntry
    from .transport import Transport


class RequestState(enum.Enum):
    QUEUED = "queued"            # waiting in its device's fair scheduler
    RUNNING = "running"          # at its driver (a generation in the batch, or an embed)
    AT_SERVICE = "at_service"    # an svc_call the service host is running
    DONE = "done"


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
    holds: object = None          # the ModelEntry it runs on (ModelTable.hold), then models.RELEASED
    created: float = field(default_factory=time.monotonic)   # accepted: where its latencies start
    first_token_at: float | None = None
    last_token_at: float | None = None


class RequestTable:
    def __init__(self, kernel: "Kernel"):
        self.k = kernel
        self._by_rid: dict[int, Request] = {}
        self._rids = itertools.count(1)
        self._seq = itertools.count()
        self._served: Counter[int] = Counter()       # pid -> requests the service host has in flight for it
        self._for_others: Counter[int] = Counter()   # pid -> requests in its table that count against another
        self._counted_for: dict[int, int] = {}       # rid -> the pid it counts against, when not its own

    def held(self, proc) -> int:
        """The requests in flight that count against a process: its own, and those made for it."""
        return len(proc.requests) - self._for_others[proc.pid] + self._served[proc.pid]

    def get(self, rid: int) -> Request | None:
        return self._by_rid.get(rid)

    def __iter__(self):
        return iter(list(self._by_rid.values()))

    def __len__(self) -> int:
        return len(self._by_rid)

    def at_driver(self, device: str) -> list[Request]:
        return [r for r in self._by_rid.values() if r.device == device and r.state is RequestState.RUNNING]

    def new(self, ctx: "CallContext", call: str, entry: "ModelEntry | None", payload: dict, *, stream=False,
            priority=0, deadline_s: float | None = None, share: int | None = None, device: str | None = None) -> Request:
        """A request of ctx's process, on entry's model and device (or, without a model, on device);
        share: the pid it is scheduled and accounted as (default: its own)."""
        proc = ctx.proc
        served = self.k.procs.get(share) if share is not None and share != proc.pid else None
        owner = served or proc         # whose limits it counts against
        limit = self.k.settings.max_requests_per_process
        if self.held(owner) >= limit:
            raise eagain(f"process {owner.pid} already has {self.held(owner)} requests in flight "
                         f"(limit {limit}{', with those services make for it' if served else ''}); "
                         f"wait for some to finish")
        if ctx.client_id in proc.requests:
            raise einval(f"request id {ctx.client_id} is already in flight; use a new id per request")
        quotas = self.k.quotas
        quotas.check(owner.principal, "requests", quotas.requests[owner.principal], what=call)
        loop = asyncio.get_running_loop()
        req = Request(next(self._rids), proc.pid, ctx.transport, ctx.routing, ctx.client_id, call,
                      entry.name if entry else "", entry.device if entry else device, payload, loop.create_future(),
                      stream, priority, None if deadline_s is None else time.monotonic() + deadline_s, next(self._seq),
                      share=proc.pid if share is None else share)
        proc.requests[ctx.client_id] = req
        self._by_rid[req.rid] = req
        req.principal = owner.principal
        quotas.requests[req.principal] += 1
        if served is not None:
            self._counted_for[req.rid] = served.pid
            self._served[served.pid] += 1
            self._for_others[proc.pid] += 1
        payer = self.k.procs.get(req.share)
        req.payer = payer.principal if payer is not None else proc.principal
        if entry is not None:
            self.k.models.hold(entry, req)
        if deadline_s is not None:
            req.timer = loop.call_later(deadline_s, self._deadline_passed, req)
        return req

    def _deadline_passed(self, req: Request) -> None:
        self.end(req, SyscallError("ETIMEDOUT", f"deadline passed after {len(req.text)} deltas"))

    # -- state changes: only here ----------------------------------------------------------------

    def running(self, req: Request) -> None:
        """It left its scheduler for its driver."""
        req.state = RequestState.RUNNING

    def requeued(self, req: Request, device: str) -> None:
        """Its driver died under it: queued on `device` (a replica's, or its own again), to resume after
        what it generated."""
        if device != req.device:
            self.k.models.release(req)
            replica = self.k.models.entry(req.model, device)
            if replica is not None:
                req.holds = None
                self.k.models.hold(replica, req)
            req.device = device
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
        k = self.k
        was, req.state = req.state, RequestState.DONE
        k.quotas.requests[req.principal] -= 1
        if not k.quotas.requests[req.principal]:
            del k.quotas.requests[req.principal]
        served = self._counted_for.pop(req.rid, None)
        if served is not None:
            for counts, pid in ((self._served, served), (self._for_others, req.pid)):
                counts[pid] -= 1
                if not counts[pid]:
                    del counts[pid]
        if was is RequestState.QUEUED:
            k.devices.dequeue(req)
        elif was is RequestState.RUNNING:
            k.devices.finished(req)
            if error is not None and req.call == "infer":
                k.supervisor.send(req.device, channel.Cancel(req.rid))
        proc = k.procs.get(req.pid)
        if proc is not None:
            proc.requests.pop(req.client_id, None)
        k.models.release(req)
        if not req.future.done():
            if error is not None:
                req.future.set_exception(error)
                if not notify:
                    req.future.exception()
            else:
                req.future.set_result(result)
        if error is None and result is not None and req.call == "infer":
            k.metrics.generation_finished(req, result)
        if was is not RequestState.AT_SERVICE:
            k.devices.pump(req.device)
