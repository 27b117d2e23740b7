"""The gateway's HTTP side: routes, who a request runs as, body limits, the access log, start and stop.

The gateway is a userland program: every answer comes from syscalls (models, infer, embed,
cancel, stats) made on the connection of the principal the request runs as (principals.py).
With API keys, a request without a known `Authorization: Bearer KEY` is 401 before its body is
read, and never falls back to the gateway's own identity. Without keys, everyone runs as the
gateway's own identity, which is why `llmos serve` then binds loopback only.
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..errors import KeyRefused, LLMOSError
from . import audio, console, ollama, responses
from .errors import ApiError, bad_param, from_syscall
from .generation import ClientGone, Generation, events
from .http import read_bounded
from .keys import KeyTable
from .observe import GatewayMetrics, Observed, metrics_route
from .openai import chat_request, completion_request, embedding_request
from .principals import Identity, Principals, is_lost
from .shapes import Shape, embeddings_answer, model_answer, models_answer, usage

MAX_BODY_BYTES = 4 << 20        # 4 MiB: a request body past it is 413, whatever Content-Length claims
READY_WAIT_S = 5.0           # how long /health/ready waits for the kernel's readiness probe
DEFAULT_MAX_STREAMS = 64        # generations in flight per key; the kernel's own limit per process is 64 too
log = structlog.get_logger("llmos.gateway")


@dataclass
class Settings:
    socket: str | None = None           # the gateway's own kernel socket (default: the client's)
    key: str | None = None              # the gateway's own key file (LLMOS_KEY)
    keys: KeyTable | None = None        # None: no API keys, everyone is the gateway's own identity
    max_streams: int = DEFAULT_MAX_STREAMS
    max_body: int = MAX_BODY_BYTES
    open_metrics: bool = False          # GET /metrics without a key, for a scraper


class Gateway:
    """The state behind the routes: the key table and the principals' connections."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.keys = settings.keys
        self.principals = Principals(settings.socket, settings.key, settings.max_streams)
        self.own = Identity(None)
        self.default_model: str | None = None     # the kernel's, from sysinfo on first need (fixed at its boot)

    async def identify(self, request: Request) -> Identity:
        """Who the request runs as; 401 in keyed mode for a missing or unknown key."""
        if self.keys is None:
            return self.own
        scheme, _, api_key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not api_key.strip():
            raise ApiError(401, "no API key: send 'Authorization: Bearer KEY' with a key from `llmos serve keys add`",
                           code="invalid_api_key")
        if self.keys.reload_if_changed():
            await self.principals.keep_only({Identity(e) for e in self.keys.entries()})
        entry = self.keys.lookup(api_key.strip())
        if entry is None:
            raise ApiError(401, "unknown API key", code="invalid_api_key")
        request.state.principal = entry.name
        return Identity(entry)

    async def body(self, request: Request):
        """The JSON body: 413 past max_body (declared or streamed), 400 when it is not JSON."""
        limit = self.settings.max_body
        too_large = ApiError(413, f"the request body is over the gateway's limit of {limit} bytes ({limit >> 20} MiB)",
                             code="request_too_large")
        data = await read_bounded(request, limit, too_large)
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:     # RecursionError: nesting too deep
            raise ApiError(400, f"the request body is not valid JSON: {str(exc)[:200]}", code="invalid_json") from None

    async def call(self, request: Request | None, who: Identity, method: str, retry: bool = True, **args):
        """One syscall as the identity; a lost connection is dropped so the next request connects again,
        and one whose key the kernel refused is tried once more on a new connection (the key file may
        hold the user's new key; the kernel ran nothing of a refused call)."""
        try:
            client = await self.principals.client(who)
        except LLMOSError as exc:
            raise from_syscall(exc) from None
        if request is not None:      # for the access log: the principal as the kernel named it at hello
            request.state.principal = client.info.get("principal", who.label)
        try:
            return await getattr(client, method)(**args)
        except LLMOSError as exc:
            if is_lost(exc):
                await self.principals.forget(who, client)
            if retry and isinstance(exc, KeyRefused):
                return await self.call(request, who, method, retry=False, **args)
            raise from_syscall(exc, "model" if method in ("stream", "embed") else None) from None

    async def model_used(self, request: Request, who: Identity, named: str | None) -> str:
        """The model a generation runs on: the one named, else the kernel's default, asked once (sysinfo needs
        no capability), so that even the first streamed chunk names it."""
        if named:
            return named
        if self.default_model is None:
            self.default_model = (await self.call(request, who, "sysinfo")).get("default_model") or ""
        return self.default_model

    async def ready(self) -> tuple[bool, str]:
        """The `stats` syscall's readiness (the default model loaded and a recent one-token probe through the
        scheduler), waiting up to READY_WAIT_S for a probe that is running, as a load balancer's check wants."""
        try:
            stats = await self.call(None, self.own, "stats", wait_ready=READY_WAIT_S)
        except ApiError as exc:
            return False, exc.message
        return bool(stats["ready"]), stats.get("ready_reason") or ""


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def models(request: Request):
    g = _gateway(request)
    who = await g.identify(request)
    return JSONResponse(models_answer(await g.call(request, who, "models")))


async def model(request: Request):
    g = _gateway(request)
    who = await g.identify(request)
    return JSONResponse(model_answer(await g.call(request, who, "models"), request.path_params["model_id"]))


async def chat_completions(request: Request):
    return await _complete(request, chat=True)


async def completions(request: Request):
    return await _complete(request, chat=False)


async def _complete(request: Request, chat: bool):
    g = _gateway(request)
    who = await g.identify(request)
    body = await g.body(request)
    calls, params = chat_request(body) if chat else completion_request(body)
    request.state.user = params.get("user")
    shape = Shape(chat, await g.model_used(request, who, params.get("model")))
    if params.get("echo") and any("prompt" not in c for c in calls):
        raise bad_param("echo", "'echo' needs the prompt as text: the gateway cannot write token ids back as text")
    prefixes = [c["prompt"] for c in calls] if params.get("echo") else None
    gen = Generation(g, request, who)
    try:
        firsts = await gen.open(calls)
        if not params.get("stream"):
            results = await gen.collect()
            note_usage(request, results)
            return JSONResponse(shape.full(results, prefixes))
        include_usage = bool((params.get("stream_options") or {}).get("include_usage"))
        return gen.respond(events(gen, shape, firsts, include_usage, lambda rs: note_usage(request, rs), prefixes))
    except ClientGone:
        return client_gone(request)
    finally:
        await gen.close()


def client_gone(request: Request) -> JSONResponse:
    request.state.disconnected = True
    return JSONResponse({}, status_code=499)     # nobody reads it: nginx's "client closed request"


def note_usage(request: Request, results: list[dict]) -> None:
    """The tokens of a request's generations, for its access-log line."""
    request.state.usage = usage(results)


async def embeddings(request: Request):
    g = _gateway(request)
    who = await g.identify(request)
    args, encoding, dimensions = embedding_request(await g.body(request))
    return JSONResponse(embeddings_answer(await g.call(request, who, "embed", **args), encoding, dimensions))


async def live(request: Request):
    return JSONResponse({"status": "live"})


async def ready(request: Request):
    ok, reason = await _gateway(request).ready()
    if ok:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)


async def api_error(request: Request, exc: ApiError):
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


async def http_error(request: Request, exc: HTTPException):
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse({"error": {"message": f"{request.method} {request.url.path}: {exc.detail}", "type": kind,
                                   "param": None, "code": None}}, status_code=exc.status_code)


async def internal_error(request: Request, exc: Exception):
    log.exception("gateway.internal_error", path=request.url.path)
    return JSONResponse({"error": {"message": f"internal error in the gateway: {type(exc).__name__}",
                                   "type": "server_error", "param": None, "code": None}}, status_code=500)


ROUTES = [
    Route("/v1/models", models, methods=["GET"]),
    Route("/v1/models/{model_id:path}", model, methods=["GET"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/health/live", live, methods=["GET"]),
    Route("/health/ready", ready, methods=["GET"]),
    Route("/metrics", metrics_route, methods=["GET"]),
]


def make_app(settings: Settings) -> Starlette:
    gateway = Gateway(settings)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await gateway.principals.close()
        await console.close(app)

    app = Starlette(routes=[*ROUTES, *responses.ROUTES, *ollama.ROUTES, *audio.ROUTES, *console.ROUTES],
                    lifespan=lifespan,
                    exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: internal_error})
    app.state.gateway = gateway
    app.state.metrics = GatewayMetrics()
    app.add_middleware(Observed, metrics=app.state.metrics, routes=app.routes)
    return app


def configure_logging() -> None:
    """JSON lines on stderr, keyed as the kernel's are (event, level, timestamp)."""
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr))
