"""Which service call the host runs next: queued per caller, taken round robin, so one tenant's flood of
calls delays only that tenant.

The kernel bounds what a caller may have in flight (kernel/services.py) and charges the work the host
does for a call to its caller (for_call); the host decides what runs now. Every caller (a principal:
all the programs of one user together) has a queue of its own; a free slot goes to the caller served
least recently among those with a call waiting and fewer than `per_caller` running (round robin), so
of a caller with 60 calls queued and one with a single call, the single call waits one turn at most.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, deque
from contextlib import asynccontextmanager

from .hookspecs import ServiceError

MAX_RUNNING = 32              # calls running at once in the host, every caller's together
MAX_RUNNING_PER_CALLER = 4    # calls of one caller running at once; the rest of its calls wait their turn
MAX_HELD_PER_CALLER = 64      # calls of one caller running or waiting; past it EAGAIN (the kernel's bound too)


class CallQueue:
    def __init__(self, total: int = MAX_RUNNING, per_caller: int = MAX_RUNNING_PER_CALLER,
                 held: int = MAX_HELD_PER_CALLER):
        self.total = total
        self.per_caller = per_caller
        self.held = held
        self.waiting: dict[str, deque[asyncio.Future]] = {}
        self.running: Counter[str] = Counter()
        self.served: dict[str, int] = {}          # caller -> when it was last given a slot (while it has calls)
        self._clock = itertools.count(1)

    def describe(self) -> dict:
        return {"running": dict(self.running), "waiting": {c: len(q) for c, q in self.waiting.items()}}

    @asynccontextmanager
    async def slot(self, caller: str):
        """Wait for this caller's turn, run the body holding a slot, give it back. EAGAIN at once when
        the caller already holds its bound of calls (running and waiting)."""
        queue = self.waiting.get(caller, ())
        if self.running[caller] + len(queue) >= self.held:
            raise ServiceError("EAGAIN", f"{self.running[caller]} of your service calls are running and {len(queue)} "
                                         f"waiting (at most {self.held}); wait for some to finish")
        turn = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(caller, deque()).append(turn)
        self._grant()
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release(caller)           # granted just as the call was cancelled
            else:
                self._forget(caller, turn)
            raise
        try:
            yield
        finally:
            self._release(caller)

    def _release(self, caller: str) -> None:
        self.running[caller] -= 1
        if self.running[caller] <= 0:
            del self.running[caller]
        self._grant()

    def _forget(self, caller: str, turn: asyncio.Future) -> None:
        queue = self.waiting.get(caller)
        if queue is not None and turn in queue:
            queue.remove(turn)
        self._tidy()

    def _grant(self) -> None:
        """Free slots to the callers in turn: each to the least recently served of those with a call waiting
        and room under per_caller (a caller not served while it had calls counts as never served)."""
        while sum(self.running.values()) < self.total:
            for queue in self.waiting.values():
                while queue and queue[0].done():        # cancelled while waiting
                    queue.popleft()
            ready = [c for c, q in self.waiting.items() if q and self.running[c] < self.per_caller]
            if not ready:
                break
            caller = min(ready, key=lambda c: self.served.get(c, 0))
            self.waiting[caller].popleft().set_result(None)
            self.running[caller] += 1
            self.served[caller] = next(self._clock)
        self._tidy()

    def _tidy(self) -> None:
        for caller in [c for c, q in self.waiting.items() if not q]:
            del self.waiting[caller]
        for caller in [c for c in self.served if c not in self.waiting and not self.running[c]]:
            del self.served[caller]
