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
import time
from typing import AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from ..client import Stream
from ..errors import LLMOSError
from .errors import from_syscall
from .structured import param_of
from .shapes import Shape

DONE = b"data: [DONE]\n\n"
SSE_TYPE = b"text/event-stream; charset=utf-8"


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
        raise from_syscall(exc, "model", param_of(exc.message)) from None


async def collect(stream: Stream) -> dict:
    """The final result of a stream read to its end."""
    try:
        async for _ in stream:
            pass
    except LLMOSError as exc:
        raise from_syscall(exc, "model", param_of(exc.message)) from None
    return stream.result


def same_prompt(calls: list[dict]) -> bool:
    """Whether the calls generate from one prompt (n choices), differing at most in their seeds."""
    def key(args: dict) -> dict:
        return {k: v for k, v in args.items() if k != "seed"}
    return all(key(c) == key(calls[0]) for c in calls[1:])


async def all_of(work) -> list:
    """Each awaitable's result, in order; the first failure cancels the others (gather would leave them running)."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Generation:
    """The infer streams of one HTTP request (one per prompt), holding as many of its principal's stream
    slots: opened together, read together, and cancelled together unless they all ended.

    The timestamps are for answers that report durations (Ollama's, in ns)."""

    def __init__(self, gateway, request: Request, who):
        self.gateway = gateway
        self.request = request
        self.who = who
        self.streams: list[Stream] = []
        self.slots = 0
        self.handed_over = False
        self.cancelled = False
        self.started = time.perf_counter()
        self.first_at: float | None = None

    async def open(self, calls: list[dict]) -> list[str | None]:
        """Start one infer stream per argument set and wait for each one's first text, so a request the
        kernel refuses gets its HTTP status; ClientGone if the client leaves meanwhile.

        n choices of one prompt (calls alike but for their seeds) start one after the first's first
        token: its prompt is then in the prefix cache, and the others read it there instead of
        computing it again (the kernel shares cached prompt blocks within a principal)."""
        head = calls[:1] if len(calls) > 1 and same_prompt(calls) else calls
        firsts = await self._start(head)
        if head is not calls:
            firsts += await self._start(calls[1:])
        self.first_at = time.perf_counter()
        return firsts

    async def _start(self, calls: list[dict]) -> list[str | None]:
        streams = []
        for args in calls:
            self.gateway.principals.take_stream(self.who)
            self.slots += 1
            streams.append(await self.gateway.call(self.request, self.who, "stream", **args))
            self.streams.append(streams[-1])
        # Every first frame is awaited, failed or not, so that a stream the kernel refused is known to have
        # ended (the same refusal usually ends them all: nothing is then cancelled in vain).
        firsts = await self.unless_gone(asyncio.gather(*map(first_delta, streams), return_exceptions=True))
        for first in firsts:
            if isinstance(first, BaseException):
                raise first
        return firsts

    async def collect(self) -> list[dict]:
        """Every stream's final result, in order."""
        return await self.unless_gone(all_of(map(collect, self.streams)))

    async def unless_gone(self, work: Awaitable):
        return await unless_gone(self.request.receive, work, self.cancel)

    async def cancel(self) -> None:
        """Cancel, once, the streams that have not ended (a cancel of an ended one would be an ENOENT in the
        kernel's error counts for every refused request)."""
        if not self.cancelled:
            self.cancelled = True
            await asyncio.gather(*(cancel_quietly(s) for s in self.streams if not s.ended))

    def release(self) -> None:
        for _ in range(self.slots):
            self.gateway.principals.give_stream(self.who)
        self.slots = 0

    def respond(self, body: AsyncIterator[bytes], media_type: bytes = SSE_TYPE) -> "EventStream":
        """The streamed answer, which from now on cancels and releases the streams itself."""
        self.handed_over = True
        return EventStream(body, self.cancel, self.release, media_type)

    async def close(self) -> None:
        """After the handler: unless the answer streams on, cancel what still runs and give the slots back."""
        if not self.handed_over:
            try:
                await self.cancel()
            finally:
                self.release()


async def merged(streams: list[Stream], firsts: list[str | None]) -> AsyncIterator[tuple[int, str, list | None]]:
    """(index, text, its logprobs if asked) from several streams as it comes, past each one's first text;
    an errno is raised."""
    if len(streams) == 1:          # the common case, and the hot path of a stream: no queue between
        if firsts[0] is not None:
            async for delta in streams[0]:
                yield 0, delta, streams[0].logprobs
        return
    queue: asyncio.Queue = asyncio.Queue(maxsize=64)

    async def pump(i: int, stream: Stream) -> None:
        try:
            if firsts[i] is not None:
                async for delta in stream:
                    await queue.put((i, delta, stream.logprobs, None))
        except LLMOSError as exc:
            await queue.put((i, None, None, exc))
        else:
            await queue.put((i, None, None, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        for _ in range(len(streams)):
            while True:
                i, delta, logprobs, exc = await queue.get()
                if exc is not None:
                    raise exc
                if delta is None:
                    break
                yield i, delta, logprobs
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def text_event(shape: Shape, index: int = 0) -> Callable[[str], bytes]:
    """sse(shape.chunk(delta)) for any delta, by splicing the delta's JSON into the chunk's bytes built once:
    one small json.dumps per token instead of the whole chunk's (the hot path of a stream)."""
    marker = "\ue000delta\ue000"
    head, tail = sse(shape.chunk(marker, index=index)).split(json.dumps(marker).encode())
    return lambda delta: head + json.dumps(delta).encode() + tail


async def events(gen: Generation, shape: Shape, firsts: list[str | None], include_usage: bool,
                 finished: Callable[[list[dict]], None], prefixes: list[str] | None = None) -> AsyncIterator[bytes]:
    """The SSE events of one streamed completion: for each choice its role and first text (after its prefix:
    echo's prompt), the rest as it comes, each finish_reason, the usage if asked, [DONE]."""
    prefixes = prefixes or [""] * len(firsts)
    for i, first in enumerate(firsts):
        yield sse(shape.chunk(prefixes[i] + (first or ""), first=True, index=i, logprobs=gen.streams[i].logprobs))
    texts = [text_event(shape, i) for i in range(len(firsts))]
    try:
        async for i, delta, logprobs in merged(gen.streams, firsts):
            if logprobs:
                yield sse(shape.chunk(delta, index=i, logprobs=logprobs))
            elif delta:
                yield texts[i](delta)
    except LLMOSError as exc:
        await gen.cancel()          # the other choices' requests: nobody will read them
        yield from_syscall(exc).sse()
        return
    results = [s.result for s in gen.streams]
    finished(results)
    for i, result in enumerate(results):
        if result.get("tool_calls"):
            yield sse(shape.chunk(None, index=i, tool_calls=result["tool_calls"]))
        yield sse(shape.chunk(None, result["finish_reason"], index=i))
    if include_usage:
        yield sse(shape.usage_chunk(results))
    yield DONE


class EventStream:
    """An ASGI response writing a stream of events (SSE, or Ollama's NDJSON); a disconnect cancels the kernel
    requests at once. Counted in the gateway's open-streams gauge while it runs."""

    def __init__(self, body: AsyncIterator[bytes], cancel: Callable[[], Awaitable[None]], release: Callable[[], None],
                 media_type: bytes = SSE_TYPE):
        self.body = body
        self.cancel = cancel
        self.release = release       # gives back the principal's stream slots, however the stream ends
        self.headers = [(b"content-type", media_type), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        gone = asyncio.ensure_future(_disconnected(receive))
        metrics = getattr(scope["app"].state, "metrics", None) if "app" in scope else None
        if metrics is not None:
            metrics.open_streams.inc()
        try:
            await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not pump.done() or pump.exception() is not None:    # the client left (or a write to it failed)
                pump.cancel()
                scope.setdefault("state", {})["disconnected"] = True
                await self.cancel()
        finally:
            if metrics is not None:
                metrics.open_streams.dec()
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

