"""The llmos client library: one method per syscall, failures raised as exceptions with an errno.

`AsyncClient` is the real client: a Connection (one DEALER socket, one reader task routing every
reply to the caller waiting on its id) with a method per syscall, streams as async iterators.
`Client` is the same thing for synchronous code: it runs an AsyncClient on a private event-loop
thread. Both take their methods from the syscall table (methods.py), so they cannot drift from it.

    with Client(name="myapp") as c:
        print(c.infer(prompt="Hello")["text"])
        for delta in c.stream(messages=[{"role": "user", "content": "Hi"}]):
            print(delta, end="")

Userland talks to the kernel only through syscalls: nothing here imports kernel or drivers.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Iterator

from .connection import Connection, Stream
from .errors import ERRORS, KernelUnavailable, LLMOSError, raise_error
from .methods import METHODS, SyscallMethod

__all__ = ["AsyncClient", "Client", "ERRORS", "KernelUnavailable", "LLMOSError", "Stream", "SyncStream",
           "raise_error"]


class AsyncClient(Connection):
    """`async with AsyncClient(name="myapp") as c: await c.infer(prompt="Hi")`; one method per syscall."""

    async def call(self, call: str, **args: Any) -> Any:
        """Any syscall by name, for calls newer than this library."""
        return await self._call(call, {k: v for k, v in args.items() if v is not None}, None)


def _async_method(m: SyscallMethod):
    syscall = m.syscall.name

    async def method(self: AsyncClient, *args, **kwargs):
        bound = m.bind(args, kwargs)
        if m.stream:
            return await self._open_stream(syscall, bound)
        result = await self._call(syscall, bound, m.timeout(bound, self.timeout))
        return result[m.unwrap] if m.unwrap else result

    return _named(method, m, AsyncClient, Stream)


def _named(fn, m: SyscallMethod, owner: type, stream_type: type):
    fn.__name__ = m.name
    fn.__qualname__ = f"{owner.__name__}.{m.name}"
    fn.__doc__ = m.doc
    fn.__signature__ = m.signature.replace(
        return_annotation=stream_type if m.stream else list[dict] if m.unwrap else dict)
    return fn


class Client:
    """Synchronous client: the AsyncClient's methods, run on a private event-loop thread."""

    def __init__(self, socket: str | None = None, name: str | None = None, caps: list[str] | None = None,
                 timeout: float | None = 60.0, key: str | None = None):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="llmos-client")
        self._thread.start()
        self._async = AsyncClient(socket, name, caps, timeout, key=key)
        try:
            self._run(self._async.connect())
        except BaseException:
            self._stop_loop()
            raise

    @property
    def pid(self) -> int | None:
        return self._async.pid

    @property
    def info(self) -> dict:
        return self._async.info

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._async.close())
        self._stop_loop()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, call: str, **args: Any) -> Any:
        """Any syscall by name, for calls newer than this library."""
        return self._run(self._async.call(call, **args))


class SyncStream:
    """A Stream for synchronous code: iterate for text deltas; `.result` holds the final reply after."""

    def __init__(self, client: Client, stream: Stream):
        self._client = client
        self._stream = stream
        self.id = stream.id

    @property
    def result(self) -> dict | None:
        return self._stream.result

    @property
    def progress(self) -> dict | None:
        return self._stream.progress

    @property
    def logprobs(self) -> list | None:
        """The logprobs of the delta iteration returned last (infer's logprobs=true)."""
        return self._stream.logprobs

    @property
    def on_progress(self):
        return self._stream.on_progress

    @on_progress.setter
    def on_progress(self, callback) -> None:
        """Called with each progress frame (infer's progress=true) as iteration reaches it."""
        self._stream.on_progress = callback

    def __iter__(self) -> Iterator[str]:
        while True:
            try:
                yield self._client._run(self._stream.__anext__())
            except StopAsyncIteration:
                return

    def cancel(self) -> None:
        self._client._run(self._stream.cancel())


def _sync_method(m: SyscallMethod):
    def method(self: Client, *args, **kwargs):
        result = self._run(getattr(self._async, m.name)(*args, **kwargs))
        return SyncStream(self, result) if m.stream else result

    return _named(method, m, Client, SyncStream)


for _m in METHODS:
    setattr(AsyncClient, _m.name, _async_method(_m))
    setattr(Client, _m.name, _sync_method(_m))
del _m
