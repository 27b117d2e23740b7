"""Where a task's work runs, so that the host's event loop only moves messages and always answers pings.

The kernel restarts a host that misses two pings (10 s), failing every tenant's calls in flight; so no
caller's work may hold the loop. Three rules:

- CPU-heavy work runs on a worker thread: a plain task whole, an async task's heavy parts through
  `await ctx.cpu(fn, *args)`. A thread doing pure-Python work hands the GIL back every 5 ms
  (sys.getswitchinterval), so the loop still runs; the built-in algorithms are linear in their input,
  and no regex or C call of theirs holds the GIL for long. Each job gets a thread of its own, not a slot
  in a shared pool: a plain task blocked for ever (abandoned at its deadline) costs its own thread, never
  one that another tenant's task waits for. A caller holds at most MAX_THREADS_PER_CALLER of them,
  running or abandoned; past that its work is EAGAIN.
- Each call has a Budget: its task's `cost_limit_s` and the caller's deadline, whichever ends first. At
  its end the call is ETIMEDOUT; its jobs see it at their next `checkpoint()` and stop.
- LoopWatch interrupts a call that holds the loop anyway (an async plugin computing, or calling
  time.sleep, between awaits) after STALL_S: a signal raises LoopHeld inside that task, and only its
  caller gets ETIMEDOUT. What it cannot stop is C code that keeps the GIL (a runaway regex, on the loop
  or on a thread): that stops every thread, the watch too, and the kernel restarts the host, as it did
  before. The built-ins' patterns are linear, so none of theirs runs long.
"""

from __future__ import annotations

import asyncio
import contextvars
import signal
import threading
import time
from collections import Counter

from .hookspecs import ServiceError

MAX_THREADS_PER_CALLER = 16    # worker threads of one caller (principal): running, or left by calls that ended
STALL_S = 2.0                  # a call holding the loop this long is interrupted (pings come every 5 s)
WATCH_PERIOD_S = 0.25
STARVED_S = 0.5                # the watch itself woke this late: C code held the GIL, so a stall proves nothing
_SIGNAL = signal.SIGUSR1

_budget: contextvars.ContextVar["Budget | None"] = contextvars.ContextVar("llmos_budget", default=None)


class LoopHeld(BaseException):
    """Raised inside a task that held the event loop past STALL_S. A BaseException, as CancelledError is,
    so that a plugin's `except Exception` does not swallow it; asyncio sets it on the task, and the
    host answers that call alone."""


class Budget:
    """How long one call may still run: its task's cost limit or the caller's deadline, whichever is
    sooner; and whether it ended already (then its jobs' work is for nobody)."""

    def __init__(self, what: str, cost_limit_s: float, deadline_s: float | None):
        self.what = what
        self.seconds = cost_limit_s if deadline_s is None else min(cost_limit_s, deadline_s)
        self.why = "its deadline" if deadline_s is not None and deadline_s < cost_limit_s \
            else f"its task's cost limit of {cost_limit_s:g} s (cost_limit_s)"
        self.expires = time.monotonic() + self.seconds
        self.ended = False

    def error(self) -> ServiceError:
        return ServiceError("ETIMEDOUT", f"{self.what} ran past {self.why}; send less, or a smaller task")

    def check(self) -> None:
        if self.ended or time.monotonic() > self.expires:
            raise self.error()

    def __enter__(self) -> "Budget":
        self._token = _budget.set(self)
        return self

    def __exit__(self, *exc) -> None:
        self.ended = True
        _budget.reset(self._token)


def checkpoint() -> None:
    """Call between steps of a long computation on a worker thread: ETIMEDOUT once the call is over its
    budget or has ended, so the thread stops instead of working on for a caller that is gone."""
    budget = _budget.get()
    if budget is not None:
        budget.check()


class Workers:
    """Worker threads, counted per caller: a job's thread is the caller's until the job returns, even
    after its call ended (abandoned at a deadline)."""

    def __init__(self, per_caller: int = MAX_THREADS_PER_CALLER):
        self.per_caller = per_caller
        self.threads: Counter[str] = Counter()      # caller -> its threads still running

    async def run(self, caller: str, fn, /, *args, **kwargs):
        """fn(*args, **kwargs) on a thread of its own, with the calling task's context (its Budget)."""
        if self.threads[caller] >= self.per_caller:
            raise ServiceError("EAGAIN", f"{self.threads[caller]} worker threads are still busy with your earlier "
                                         f"calls (some may have ended at a deadline and not stopped yet); retry later")
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        context = contextvars.copy_context()
        self.threads[caller] += 1

        def settle(result, error) -> None:
            self.threads[caller] -= 1
            if not self.threads[caller]:
                del self.threads[caller]
            if done.done():
                return                          # its call ended; the thread ran on until now
            if error is None:
                done.set_result(result)
            else:
                done.set_exception(RuntimeError(repr(error)) if isinstance(error, StopIteration) else error)

        def body() -> None:
            result = error = None
            try:
                result = context.run(fn, *args, **kwargs)
            except BaseException as exc:        # handed to the task that waits, as asyncio.to_thread does
                error = exc
            try:
                loop.call_soon_threadsafe(settle, result, error)
            except RuntimeError:
                pass                            # the loop is closed: the host is exiting

        threading.Thread(target=body, name=f"llmos-task-{caller}"[:60], daemon=True).start()
        return await done


class LoopWatch:
    """A thread that sees the loop turn every WATCH_PERIOD_S; when it has not for STALL_S while a call's
    task runs on it, that task is interrupted (see LoopHeld). Other stalls are left to the kernel's pings."""

    def __init__(self, loop: asyncio.AbstractEventLoop, is_call, stall_s: float = STALL_S):
        self.loop = loop
        self.is_call = is_call            # task -> whether it runs a caller's task (only those are interrupted)
        self.stall_s = stall_s
        self.turned = time.monotonic()
        self.target: asyncio.Task | None = None
        self.stopped = threading.Event()

    def start(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return                        # signals reach the main thread only: nothing to interrupt here
        signal.signal(_SIGNAL, self._interrupt)
        threading.Thread(target=self._watch, name="llmos-loop-watch", daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()

    def _turn(self) -> None:
        self.turned = time.monotonic()

    def _stalled(self) -> bool:
        return time.monotonic() - self.turned > self.stall_s

    def _watch(self) -> None:
        woke = time.monotonic()
        while not self.stopped.wait(WATCH_PERIOD_S):
            now = time.monotonic()
            if now - woke > WATCH_PERIOD_S + STARVED_S:   # a C call starved us and the loop alike: no evidence
                self.turned = now
            woke = now
            try:
                self.loop.call_soon_threadsafe(self._turn)
            except RuntimeError:
                return                    # the loop closed
            if not self._stalled():
                continue
            task = asyncio.current_task(self.loop)     # whose step holds the loop (a dict read)
            if task is not None and self.is_call(task):
                self.target = task
                signal.pthread_kill(threading.main_thread().ident, _SIGNAL)
                self.turned = time.monotonic()         # the next try, if it holds on, after another STALL_S

    def _interrupt(self, signum, frame) -> None:
        task = asyncio.current_task(self.loop) if self.loop.is_running() else None
        if task is not None and task is self.target:
            self.target = None
            raise LoopHeld(f"it held the service host's event loop for over {self.stall_s:g} s")
