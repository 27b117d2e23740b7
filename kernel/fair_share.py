"""Fair admission to a device: fair queuing by tokens served, not by requests.

Policy only: no sockets, no torch, no clock (deadlines are the kernel's timers; here a
deadline only orders a process's own requests). Each process has a virtual time that grows
with the tokens served to it; the next request admitted to the device belongs to the
backlogged process with the least virtual time, so a process that floods the queue gets its
share and no more. A process that was idle rejoins at the least virtual time of those still
busy, so idling earns no credit. Within one process, higher priority first, then earlier
deadline, then arrival. A process may hold at most `max_running_per_process` requests in the
device's batch.

Admission order alone cannot help a request that arrives while a long engine step runs, so
the scheduler also says which admitted requests may cut into a running step (`may_cut_in`):
those of the process that has had the least service of all those running on the device,
when there are others. An interactive program qualifies; a flood soon does not.
"""

from __future__ import annotations

import heapq
import itertools
from collections import defaultdict
from typing import Protocol

from .errors import DoubleRelease


class Schedulable(Protocol):
    share: int      # the pid whose fair share it counts against (a service's caller, not the host)
    priority: int
    deadline: float | None
    seq: int


class FairScheduler:
    def __init__(self, max_running_per_process: int = 16):
        self.max_running_per_process = max_running_per_process
        self._queues: dict[int, list] = defaultdict(list)   # pid -> heap of (key, tiebreak, request)
        self._vtime: dict[int, int] = defaultdict(int)      # pid -> virtual time, in tokens
        self._running: dict[int, int] = defaultdict(int)
        self._tiebreak = itertools.count()

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def enqueue(self, req: Schedulable) -> None:
        if not self._queues[req.share] and not self._running[req.share]:
            self._rejoin(req.share)
        deadline = req.deadline if req.deadline is not None else float("inf")
        heapq.heappush(self._queues[req.share], ((-req.priority, deadline, req.seq), next(self._tiebreak), req))

    def remove(self, req: Schedulable) -> bool:
        queue = self._queues.get(req.share)
        if not queue:
            return False
        for i, entry in enumerate(queue):
            if entry[2] is req:
                queue.pop(i)
                heapq.heapify(queue)
                return True
        return False

    def pop_next(self) -> Schedulable | None:
        """The next request to admit to the device, or None if nobody may run now."""
        best_pid, best_key = None, None
        for pid, queue in self._queues.items():
            if not queue or self._running[pid] >= self.max_running_per_process:
                continue
            # Ties (a process rejoining at the current virtual time) go to the lighter user.
            key = (self._vtime[pid], self._running[pid], len(queue))
            if best_key is None or key < best_key:
                best_pid, best_key = pid, key
        if best_pid is None:
            return None
        req = heapq.heappop(self._queues[best_pid])[2]
        self._running[best_pid] += 1
        return req

    def may_cut_in(self, pid: int) -> bool:
        """Whether other processes run on the device and pid has had no more service than any
        of them (on a tie, no more requests running there). Alone, it has nobody to wait for."""
        others = [(self._vtime[p], n) for p, n in self._running.items() if n and p != pid]
        return bool(others) and (self._vtime.get(pid, 0), self._running.get(pid, 0)) <= min(others)

    def finished(self, req: Schedulable) -> None:
        """A request admitted by pop_next left the device. Exactly once: a second finish is DoubleRelease.
        A process forgotten (reaped) while its requests ran has nothing left here to count down."""
        running = self._running.get(req.share)
        if running is None:
            return
        if running <= 0:
            raise DoubleRelease(f"a request of process {req.share} left the device twice: "
                                f"none of that process's requests runs here")
        self._running[req.share] = running - 1

    def charge(self, pid: int, tokens: int) -> None:
        self._vtime[pid] += tokens

    def forget(self, pid: int) -> list[Schedulable]:
        """Drop a process (reaped): returns its queued requests."""
        queue = self._queues.pop(pid, [])
        self._vtime.pop(pid, None)
        self._running.pop(pid, None)
        return [e[2] for e in queue]

    def _rejoin(self, pid: int) -> None:
        """A process that was idle rejoins at the current virtual time: idling earns no credit.

        When the whole device was idle, history is forgotten: everyone starts again from zero.
        """
        active = [self._vtime[p] for p in set(self._queues) | set(self._running)
                  if p != pid and (self._queues.get(p) or self._running.get(p))]
        if not active:
            for p in self._vtime:
                self._vtime[p] = 0
            return
        self._vtime[pid] = max(self._vtime[pid], min(active))
