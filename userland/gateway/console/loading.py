"""Load a model from the console and tell how far the load has got while the request waits.

`load_model` answers only when the model is ready; the `models` syscall shows a loading model's
stage and time meanwhile. So the console's load runs load_model on a connection of its own (closed
after: the model stays loaded, evictable, as after `llmos load`) and reads `models` every POLL_S
on the principal's console connection. A load the kernel refuses at once (an unknown model, a
path named by a non-admin) is that error's HTTP status; once the kernel says the model is
loading past `queued` (looked for every FIRST_POLL_S until then), or has been queued for
QUEUED_GRACE_S, the answer is server-sent events: `{"progress": {...}}` as the stage or time changes,
then `{"result": {...}}` or `{"error": {...}}`. A client that leaves closes the load's connection.
"""

from __future__ import annotations

import asyncio
import json

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from ...client import AsyncClient
from ...errors import LLMOSError
from ..errors import ApiError, from_syscall
from ..principals import Identity
from .headers import API_HEADERS, EVENT_HEADERS
from .routes import call, disconnected, field, identify, json_body, live_of

POLL_S = 0.25
FIRST_POLL_S = 0.05
QUEUED_GRACE_S = 1.0


async def load(request: Request):
    who = await identify(request)
    body = await json_body(request)
    model, device = field(body, "model", str), field(body, "device", str, required=False) or "auto"
    live = live_of(request)
    live.loads.take(who)
    handed_over = False
    try:
        try:
            client = await live.connections.open(who)       # first, so the load goes out before the first look
        except LLMOSError as exc:
            raise from_syscall(exc) from None
        loading = asyncio.ensure_future(_load(client, model, device))
        try:
            first = await _first_progress(request, who, model, loading)
        except BaseException:
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            await client.close()        # closed by _load too, unless it was cancelled before it began
            raise
        if first is None:           # done (or refused) before the kernel showed it loading
            return JSONResponse(await loading, headers=API_HEADERS)
        handed_over = True
        return LoadEvents(request, who, model, loading, first)
    finally:
        if not handed_over:
            live.loads.release(who)


async def _load(client: AsyncClient, model: str, device: str) -> dict:
    try:
        return await client.load_model(model, device=device)
    except LLMOSError as exc:
        raise from_syscall(exc, "model") from None
    finally:
        await client.close()


async def _progress(request: Request, who: Identity, model: str) -> dict | None:
    listing = await call(request, who, lambda c: c.models())
    entry = next((m for m in listing["loaded"] if m["name"] == model and m["state"] == "loading"), None)
    return None if entry is None else entry.get("progress") or {"model": model, "stage": "queued"}


async def _first_progress(request: Request, who: Identity, model: str, loading: asyncio.Future) -> dict | None:
    """The load's first progress past `queued` (the kernel still resolving the name: an unknown model is
    refused then, and keeps its 404), or `queued` after QUEUED_GRACE_S; None once the load ended first.
    A small model can load within a POLL_S, so the first looks come FIRST_POLL_S apart."""
    await asyncio.sleep(0)          # the load's frame goes out first
    started = asyncio.get_running_loop().time()
    while not loading.done():
        progress = await _progress(request, who, model)
        waited = asyncio.get_running_loop().time() - started
        if progress is not None and (progress["stage"] != "queued" or waited >= QUEUED_GRACE_S):
            return progress
        await asyncio.wait({loading}, timeout=FIRST_POLL_S if waited < QUEUED_GRACE_S else POLL_S)
    return None


class LoadEvents:
    """The load's progress as server-sent events, then its result; the load slot is given back however it ends."""

    def __init__(self, request: Request, who: Identity, model: str, loading: asyncio.Future, first: dict):
        self.request, self.who, self.model, self.loading, self.first = request, who, model, loading, first

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        gone = asyncio.ensure_future(disconnected(receive))
        try:
            await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, gone, self.loading):
                task.cancel()
            await asyncio.gather(pump, gone, self.loading, return_exceptions=True)
            live_of(self.request).loads.release(self.who)

    async def _pump(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": EVENT_HEADERS})
        progress = self.first
        while progress is not None:
            await send(_event({"progress": progress}))
            await asyncio.wait({self.loading}, timeout=POLL_S)
            progress = None if self.loading.done() else await self._progress_or_none()
        try:
            await send(_event({"result": await self.loading}))
        except ApiError as exc:
            await send(_event(exc.body()))
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _progress_or_none(self) -> dict | None:
        try:
            return await _progress(self.request, self.who, self.model) or {"model": self.model, "stage": "ready"}
        except ApiError:
            return {"model": self.model, "stage": "unknown (the kernel did not answer models)"}


def _event(data: dict) -> dict:
    return {"type": "http.response.body", "body": b"data: " + json.dumps(data).encode() + b"\n\n", "more_body": True}
