"""The console's HTTP routes: its static page, and small JSON routes over the syscalls the CLI makes.

Every API route runs as the request's principal, as the OpenAI routes do (app.Gateway.identify:
with keys, 401 before anything else), on that principal's console connection (live.py). The
kernel decides what it may see and do: a kill or any admin act by a non-admin is the kernel's
EPERM, answered 403. The page holds the API key in sessionStorage and sends it in the
Authorization header, never a cookie, so another site cannot make a request carry it.

Without keys the gateway listens on loopback only and every request is the gateway's own
identity, so a page of another site must not reach these routes either: an API request whose
Host is not a loopback name (DNS rebinding) or whose Origin is another origin is 403, and a POST
must be JSON (a cross-site form cannot send that without a CORS preflight, which is never granted).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from typing import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from ...client import AsyncClient
from ...errors import KeyRefused, LLMOSError
from ..errors import ApiError, bad_param, from_syscall
from ..principals import Identity, is_lost
from .headers import API_HEADERS, EVENT_HEADERS
from .live import EVENT_INTERVAL_S, Live, take_snapshot

LOOPBACK_NAMES = {"localhost", "localhost."}


def live_of(request: Request) -> Live:
    """The console's state, made on first use from the gateway's settings."""
    state = request.app.state
    if getattr(state, "console", None) is None:
        settings = state.gateway.settings
        state.console = Live(settings.socket, settings.key)
    return state.console


async def identify(request: Request) -> Identity:
    """Who the request runs as (the gateway's own rule), after the checks against other sites."""
    g = request.app.state.gateway
    if g.keys is None:
        _require_loopback_host(request)
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
        raise ApiError(403, f"a request from another origin ({origin[:100]}) may not use the console's API",
                       "permission_error", code="cross_origin")
    who = await g.identify(request)
    if g.keys is not None:          # a key removed from the table loses its console connection too
        await _keep_only_keys(request)
    return who


async def _keep_only_keys(request: Request) -> set[Identity]:
    g = request.app.state.gateway
    live = live_of(request)
    keep = {Identity(e) for e in g.keys.entries()}
    await live.connections.keep_only(keep)
    live.forget_snapshots(keep | {g.own})
    return keep


async def still_holds_key(request: Request, who: Identity) -> bool:
    """For a request that outlives its start (an event stream): is its API key still in the table?"""
    g = request.app.state.gateway
    if g.keys is None:
        return True
    if g.keys.reload_if_changed():          # as identify() does, so the gateway's own connections are pruned too
        await g.principals.keep_only({Identity(e) for e in g.keys.entries()})
    return who in await _keep_only_keys(request)


def _require_loopback_host(request: Request) -> None:
    host = request.headers.get("host", "")
    name = host[1:].partition("]")[0] if host.startswith("[") else host.rpartition(":")[0] or host
    try:
        loopback = ipaddress.ip_address(name).is_loopback
    except ValueError:
        loopback = name.lower() in LOOPBACK_NAMES
    if not loopback:
        raise ApiError(403, f"without API keys the console answers only to a loopback Host, not {host[:100]!r}",
                       "permission_error", code="host_not_loopback")


async def call(request: Request, who: Identity, work: Callable[[AsyncClient], Awaitable], retry: bool = True):
    """work(client) on the identity's console connection; errnos become HTTP errors (errors.py)."""
    live = live_of(request)
    try:
        client = await live.connections.client(who)
    except LLMOSError as exc:
        raise from_syscall(exc) from None
    request.state.principal = client.info.get("principal", who.label)
    try:
        return await work(client)
    except LLMOSError as exc:
        if is_lost(exc):
            await live.connections.forget(who, client)
        if retry and isinstance(exc, KeyRefused):
            return await call(request, who, work, retry=False)
        raise from_syscall(exc) from None


async def json_body(request: Request) -> dict:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "send the body as JSON, with 'Content-Type: application/json'", code="unsupported_media_type")
    body = await request.app.state.gateway.body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    return body


def field(body: dict, name: str, kind: type | tuple[type, ...], required: bool = True):
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise bad_param(name, f"'{name}' must be a {names}" + ("" if required else " or null"))
    return value


def answer(result) -> JSONResponse:
    return JSONResponse(result, headers=API_HEADERS)


def secured(handler: Callable[[Request], Awaitable]) -> Callable[[Request], Awaitable]:
    """The handler, its errors answered with the console's headers too (a 401 is not cached either)."""
    async def route(request: Request):
        try:
            return await handler(request)
        except ApiError as exc:
            return JSONResponse(exc.body(), status_code=exc.status, headers={**exc.headers(), **API_HEADERS})

    route.__name__ = handler.__name__
    return route


async def whoami(request: Request):
    who = await identify(request)
    info = await call(request, who, _info)
    return answer({**info, "keyed": request.app.state.gateway.keys is not None})


async def _info(client: AsyncClient) -> dict:
    i = client.info
    return {"principal": i.get("principal"), "pid": i.get("pid"), "caps": i.get("caps", []),
            "admin": "admin" in i.get("caps", []), "kernel": i.get("kernel"), "default_model": i.get("default_model")}


async def snapshot(request: Request):
    who = await identify(request)
    return answer(await live_of(request).snapshot(who, lambda: call(request, who, take_snapshot)))


async def events(request: Request):
    """One server-sent event per second with the principal's snapshot, while the page stays."""
    who = await identify(request)
    live = live_of(request)
    live.subscribers.take(who)
    return SnapshotEvents(live, who, lambda: call(request, who, take_snapshot), lambda: still_holds_key(request, who))


class SnapshotEvents:
    """An ASGI response: a snapshot event each EVENT_INTERVAL_S, while the request's API key stays in the
    table (a removed key's stream ends with a 401 event); the subscriber slot is given back however it ends."""

    def __init__(self, live: Live, who: Identity, fetch: Callable[[], Awaitable[dict]],
                 allowed: Callable[[], Awaitable[bool]]):
        self.live, self.who, self.fetch, self.allowed = live, who, fetch, allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        gone = asyncio.ensure_future(disconnected(receive))
        try:
            await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            pump.cancel()
            gone.cancel()
            await asyncio.gather(pump, gone, return_exceptions=True)
            self.live.subscribers.release(self.who)

    async def _pump(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": EVENT_HEADERS})
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            if not await self.allowed():
                gone = ApiError(401, "this API key was removed from the gateway's table", code="invalid_api_key")
                await send({"type": "http.response.body", "body": b"event: failure\ndata: " +
                            json.dumps(gone.body()).encode() + b"\n\n", "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            try:
                event = b"data: " + json.dumps(await self.live.snapshot(self.who, self.fetch)).encode() + b"\n\n"
            except ApiError as exc:        # the kernel away, say: the page says so and hears again next second
                event = b"event: failure\ndata: " + json.dumps(exc.body()).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": event, "more_body": True})
            await asyncio.sleep(max(0.0, EVENT_INTERVAL_S - (loop.time() - started)))


async def disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def kill(request: Request):
    who = await identify(request)
    pid = field(await json_body(request), "pid", int)
    return answer(await call(request, who, lambda c: c.kill(pid)))


async def unload(request: Request):
    who = await identify(request)
    model = field(await json_body(request), "model", str)
    return answer(await call(request, who, lambda c: c.unload_model(model, evict=True)))


async def cancel_job(request: Request):
    who = await identify(request)
    job = field(await json_body(request), "job", str)
    return answer(await call(request, who, lambda c: c.job_cancel(job)))


async def services(request: Request):
    who = await identify(request)
    return answer(await call(request, who, lambda c: c.svc_list()))


async def call_service(request: Request):
    who = await identify(request)
    body = await json_body(request)
    service, task = field(body, "service", str), field(body, "task", str)
    args = field(body, "args", dict, required=False)
    return answer(await call(request, who, lambda c: c.svc_call(service, task, args)))


async def audit(request: Request):
    """The audit log's newest lines (?lines=N, default 100): the kernel answers only an admin."""
    who = await identify(request)
    raw = request.query_params.get("lines", "100")
    if not raw.isdigit():
        raise bad_param("lines", "'lines' must be a whole number of lines, 0 to 1000")
    lines = int(raw[:6])
    return answer(await call(request, who, lambda c: c.audit(lines=lines)))


async def verify_audit(request: Request):
    who = await identify(request)
    await json_body(request)
    return answer((await call(request, who, lambda c: c.audit(lines=0, verify=True)))["verdict"])
