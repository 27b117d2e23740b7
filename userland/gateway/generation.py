"""A generation through the gateway: an infer stream that ends the moment its HTTP client goes away.

Every completion runs as an infer stream, with or without `stream` in the request, because a
stream has a request id the gateway can `cancel`. Whatever the gateway is waiting on (a model
loading, the first token, the rest of the text), it also waits on the ASGI `http.disconnect`
message, and when that comes first the kernel request is cancelled at once: its batch slot is
free within one engine step, rather than generating for nobody until max_tokens (a known pain
with other servers, which notice only when the next write fails).

A stream's first frame is awaited before any byte is sent, so a request the kernel refuses
(unknown model, quota, bad argument) gets its HTTP status; a failure after that is an SSE error
event in OpenAI's shape, and the stream ends without [DONE].
"""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator, Awaitable, Callable

from starlette.types import Receive, Scope, Send

from ..client import Stream
from ..errors import LLMOSError
from .errors import from_syscall
from .openai import Shape

DONE = b"data: [DONE]\n\n"


class ClientGone(Exception):
    """The HTTP client disconnected before the answer was ready."""


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def cancel_quietly(stream: Stream) -> None:
    """Cancel the kernel request; one that already ended (ENOENT) or a lost kernel is no error here."""
    try:
        await stream.cancel()
    except (LLMOSError, asyncio.TimeoutError):
        pass


async def unless_gone(receive: Receive, work: Awaitable, on_gone: Callable[[], Awaitable[None]]):
    """work's result; if the client disconnects first, work is cancelled, on_gone runs, ClientGone is raised."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            await on_gone()
        gone.cancel()
    if task.cancelled():
        raise ClientGone()
    return task.result()


async def first_delta(stream: Stream) -> str | None:
    """The first text of a stream (None if it ended without any), or its errno as an ApiError."""
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None
    except LLMOSError as exc:
        raise from_syscall(exc, "model") from None


async def collect(stream: Stream) -> dict:
    """The final result of a stream read to its end."""
    try:
        async for _ in stream:
            pass
    except LLMOSError as exc:
        raise from_syscall(exc, "model") from None
    return stream.result


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def text_event(shape: Shape) -> Callable[[str], bytes]:
    """sse(shape.chunk(delta)) for any delta, by splicing the delta's JSON into the chunk's bytes built once:
    one small json.dumps per token instead of the whole chunk's (the hot path of a stream)."""
    marker = "\ue000delta\ue000"
    head, tail = sse(shape.chunk(marker)).split(json.dumps(marker).encode())
    return lambda delta: head + json.dumps(delta).encode() + tail


async def events(stream: Stream, shape: Shape, first: str | None, include_usage: bool,
                 finished: Callable[[dict], None]) -> AsyncIterator[bytes]:
    """The SSE events of one streamed completion: role and first text, the rest, finish_reason, usage, [DONE]."""
    yield sse(shape.chunk(first or "", first=True))
    text = text_event(shape)
    try:
        if first is not None:
            async for delta in stream:
                if delta:
                    yield text(delta)
    except LLMOSError as exc:
        yield from_syscall(exc).sse()
        return
    result = stream.result
    finished(result)
    shape.model = result.get("model") or shape.model
    yield sse(shape.chunk(None, result["finish_reason"]))
    if include_usage:
        yield sse(shape.usage_chunk(result))
    yield DONE


class EventStream:
    """An ASGI response writing server-sent events; a disconnect cancels the kernel request at once."""

    headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]

    def __init__(self, body: AsyncIterator[bytes], stream: Stream, release: Callable[[], None]):
        self.body = body
        self.stream = stream
        self.release = release       # gives back the principal's stream slot, however the stream ends

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not pump.done() or pump.exception() is not None:    # the client left (or a write to it failed)
                pump.cancel()
                scope.setdefault("state", {})["disconnected"] = True
                await cancel_quietly(self.stream)
        finally:
            pump.cancel()
            gone.cancel()
            await asyncio.gather(pump, gone, return_exceptions=True)
            self.release()
            await self.body.aclose()

    async def _pump(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        async for event in self.body:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

