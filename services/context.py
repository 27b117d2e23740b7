"""What a task gets besides its arguments (ctx in hookspecs.py): the kernel as the caller's agent,
who called, its private regions and files, a way to stream text back, and worker threads for its
CPU-heavy work (services/workers.py: the host's event loop must stay free to answer pings).

A task runs in the service host, which is a process of the kernel like any program; `ctx.kernel`
passes `for_call` so a generation counts against the caller, not the host, and `ctx.files` reads
only where the operator allows (services/files.py), telling the kernel what it read.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import TYPE_CHECKING, Any

from llmos.specs import channel
from llmos.specs.channel import ServiceMessage
from llmos.userland.client import AsyncClient
from llmos.userland.methods import METHODS

from .files import AllowedFiles

if TYPE_CHECKING:
    from .host import ServiceHost


class TaskContext:
    """What a task gets besides its args: the kernel, who called, streaming (see hookspecs.py)."""

    def __init__(self, host: "ServiceHost", cid: int, service: str, caller: dict, stream: bool,
                 deadline: float | None):
        self._host = host
        self._cid = cid
        self._loop = asyncio.get_running_loop()
        self._deadline_at = None if deadline is None else time.monotonic() + deadline
        self.kernel = ForCaller(host.client, cid) if host.client.service_token else host.client
        self.service = service
        self.caller = caller
        self.key = str(caller.get("principal") or caller.get("pid") or "?")   # whose queue and threads
        self.stream = stream
        self.emitted: list[str] = []
        self.files = AllowedFiles(host.read_dirs, caller,   # the only way a task should read a file
                                  on_read=lambda path, nbytes: self._send(channel.FileRead(cid, path, nbytes)))

    @property
    def deadline(self) -> float | None:
        return None if self._deadline_at is None else max(0.0, self._deadline_at - time.monotonic())

    def region(self, name: str) -> str:
        """A memory region of this service's, private to the calling principal: `ctx.kernel`'s memory calls
        run in the caller's namespace (`for_call`), so every program of one principal sees it and no
        other principal's does, and what it holds counts against the caller's memory quota."""
        return f"svc/{self.service}/{name}"

    def emit(self, delta: str) -> None:
        """Send text to a streaming caller now (thread-safe; a no-op when the caller does not stream)."""
        if not delta:
            return
        self.emitted.append(delta)
        if self.stream:
            self._send(channel.CallDelta(self._cid, delta))

    def _send(self, msg: ServiceMessage) -> None:
        """To the kernel, from the loop or from a plain task's worker thread."""
        if _on_loop(self._loop):
            self._host.send(msg)
        else:
            self._loop.call_soon_threadsafe(self._host.send, msg)

    async def cpu(self, fn, /, *args, **kwargs) -> Any:
        """fn(*args, **kwargs) on a worker thread: an async task's CPU-heavy work (text processing, big
        loops), so the host's event loop answers every other call and the kernel's pings meanwhile. Long
        loops in fn may call `llmos.services.workers.checkpoint()` to stop once the call is over."""
        return await self._host.workers.run(self.key, fn, *args, **kwargs)

    def run(self, awaitable) -> Any:
        """From a plain (threaded) task: run a coroutine such as a kernel call on the host's loop."""
        if _on_loop(self._loop):
            raise RuntimeError("ctx.run is for plain tasks on a worker thread; an async task awaits instead")
        return asyncio.run_coroutine_threadsafe(awaitable, self._loop).result()


class ForCaller:
    """The host's kernel client as one task sees it: every syscall that takes `for_call` (infer, embed,
    the memory calls; the table says which) carries the call's id, so the kernel runs it as the program
    that called the task: in its principal's namespace, against its quotas and fair share, never as the
    service host that every tenant's calls share."""

    def __init__(self, client: AsyncClient, cid: int):
        self._client = client
        self._cid = cid

    def __getattr__(self, name: str):
        method = getattr(self._client, name)
        if name not in _FOR_CALL_METHODS:
            return method
        return functools.partial(_with_call, method, self._cid)


async def _with_call(method, cid: int, *args, **kwargs):
    return await method(*args, **{"for_call": cid, **kwargs})


_FOR_CALL_METHODS = frozenset(m.name for m in METHODS if "for_call" in m.param_names)


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
