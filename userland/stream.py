"""A streaming call's frames, as its caller reads them: text deltas, progress, then the final reply."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Callable

from .errors import LLMOSError, raise_error

if TYPE_CHECKING:
    from .connection import Connection


class Stream:
    """A streaming call (infer or svc_call with stream=true): iterate for text deltas; `.result` holds
    the final reply after. Progress frames (infer's progress=true) are not deltas: each one updates
    `.progress` and is passed to `on_progress`, if set, as iteration reaches it."""

    def __init__(self, connection: "Connection", req_id: int, queue: asyncio.Queue):
        self.connection = connection
        self.id = req_id
        self._queue = queue
        self.result: dict | None = None
        self.progress: dict | None = None
        self.logprobs: list | None = None     # the logprobs of the delta iteration returned last (infer's logprobs)
        self.on_progress: Callable[[dict], None] | None = None
        self._error: BaseException | None = None     # how it ended, if it failed

    def __aiter__(self):
        return self

    async def __anext__(self) -> str:
        if self.result is not None:
            raise StopAsyncIteration
        if self._error is not None:
            raise self._error
        msg = await self._queue.get()
        while _is_progress(msg):
            self.progress = msg["result"]["progress"]
            if self.on_progress is not None:
                self.on_progress(self.progress)
            msg = await self._queue.get()
        if isinstance(msg, BaseException):
            self._error = msg
            raise msg
        if not msg.get("ok"):
            self.connection._pending.pop(self.id, None)
            try:
                raise_error(msg.get("error", {}))
            except LLMOSError as exc:
                self._error = exc
                raise
        if msg.get("more"):
            self.logprobs = msg["result"].get("logprobs")
            return msg["result"].get("delta", "")
        self.connection._pending.pop(self.id, None)
        self.result = msg["result"]
        raise StopAsyncIteration

    @property
    def ended(self) -> bool:
        """The kernel's final reply (a result or an errno) has been read: there is nothing left to cancel."""
        return self.result is not None or self._error is not None

    async def cancel(self) -> None:
        """Ask the kernel to end this call; the stream then ends with ECANCELED."""
        await self.connection._call("cancel", {"id": self.id}, self.connection.timeout)


def _is_progress(msg) -> bool:
    return (isinstance(msg, dict) and msg.get("more") and isinstance(msg.get("result"), dict)
            and "progress" in msg["result"] and "delta" not in msg["result"])
