"""Ollama's own API on the gateway (/api/...), for the clients and tools that speak it rather than OpenAI's.

The same syscalls, identity rules (with keys: `Authorization: Bearer KEY`), bounds and
disconnect handling as the OpenAI routes (generation.py); only the shapes differ: requests with
`options`, answers as NDJSON lines by default (`stream: false` for one object) ending with
`done: true`, `done_reason`, token counts and durations in nanoseconds, and errors as Ollama's
`{"error": "message"}`. Names are llmos's model names, as `/api/tags` lists them (no `:latest`).
"""

from __future__ import annotations

import functools
import json
import time
from datetime import datetime, timezone
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from llmos.specs import SYSCALLS
from llmos.specs.protocol import KERNEL_VERSION
from llmos.specs.modelspec import DEFAULT_EMBED_MODEL

from ..errors import LLMOSError
from .errors import ApiError, bad_param, from_syscall, unsupported
from .generation import ClientGone, Generation, merged
from .openai import _bool, _seed, _stop, _text, chat_messages, checked
from .structured import tools

NDJSON = b"application/x-ndjson"
ZERO_TIME = "0001-01-01T00:00:00Z"     # Go's zero time: what Ollama itself says for a time it does not know
_INFER = SYSCALLS["infer"].args


def _bounded(name: str, lo: float, hi: float, integer: bool = False):
    def check(v):
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if not ok or isinstance(v, bool) or not lo <= v <= hi:
            raise bad_param(f"options.{name}", f"option '{name}' must be a number from {lo:g} to {hi:g}")
        return v
    return check


def _num_predict(v):
    """Ollama's -1 (no limit) and -2 (fill the context) leave infer's default, 256 tokens."""
    if isinstance(v, int) and not isinstance(v, bool) and v in (-1, -2):
        return None
    return _bounded("num_predict", 1, _INFER["max_tokens"].max, integer=True)(v)


def _nothing(name: str, value: Any, empty: Any) -> Any:
    """A parameter accepted only when it asks for nothing (the value Ollama's clients send by default)."""
    if value != empty:
        raise unsupported(name, f"only {json.dumps(empty)} is accepted")
    return value


# options -> (infer's argument, check). Any other option is 400: llmos would not do what it asks.
OPTIONS = {"temperature": ("temperature", _bounded("temperature", 0.0, _INFER["temperature"].max)),
           "top_p": ("top_p", _bounded("top_p", 0.0, 1.0)),
           "top_k": ("top_k", _bounded("top_k", 0, _INFER["top_k"].max, integer=True)),
           "num_predict": ("max_tokens", _num_predict), "stop": ("stop", _stop), "seed": ("seed", _seed)}
COMMON = {"model": _text("model"), "stream": _bool("stream"), "options": lambda v: v,
          "keep_alive": lambda v: v}     # keep_alive: accepted, no effect (the kernel evicts idle models itself)
CHAT_PARAMS = {**COMMON, "messages": lambda v: v, "format": lambda v: v, "tools": tools,
               **{name: functools.partial(_nothing, name, empty=empty) for name, empty in (("think", False),)}}
GENERATE_PARAMS = {**COMMON, "prompt": _text("prompt"), "system": _text("system"), "raw": _bool("raw"),
                   "format": lambda v: v,
                   **{name: functools.partial(_nothing, name, empty=empty) for name, empty in
                      (("suffix", ""), ("template", ""), ("context", []), ("images", []), ("think", False))}}
EMBED_PARAMS = {"model": _text("model"), "input": lambda v: v, "truncate": functools.partial(_nothing, "truncate", empty=True),
                "options": lambda v: v, "keep_alive": lambda v: v}
LEGACY_EMBED_PARAMS = {"model": _text("model"), "prompt": _text("prompt"), "options": lambda v: v,
                       "keep_alive": lambda v: v}
MESSAGE_EXTRAS = ("images", "thinking")    # Ollama's message fields llmos has nothing for


def constraint_of(fmt: Any) -> dict:
    """Ollama's `format`: "json" (any JSON object) or a JSON schema, as infer's constraint."""
    if fmt in (None, ""):
        return {}
    if fmt == "json":
        return {"constraint": {"json": True}}
    if isinstance(fmt, dict):
        return {"constraint": {"json_schema": fmt}}
    raise bad_param("format", "'format' must be \"json\" or a JSON schema object")


def ollama_calls(calls: list[dict] | None) -> dict:
    """A message's tool calls in Ollama's shape: the arguments as an object, not a JSON string."""
    if not calls:
        return {}
    return {"tool_calls": [{"function": {"name": c["function"]["name"],
                                         "arguments": json.loads(c["function"]["arguments"] or "{}")}}
                           for c in calls]}


def infer_options(options: Any) -> dict:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise bad_param("options", "'options' must be an object")
    out = {}
    for name, value in options.items():
        if name not in OPTIONS:
            raise unsupported(f"options.{name}", f"the options are {', '.join(OPTIONS)}")
        if value is not None:
            arg, check = OPTIONS[name]
            out[arg] = check(value)
    return {k: v for k, v in out.items() if v is not None}


def ollama_errors(handler):
    """Errors in Ollama's shape, `{"error": "message"}` with the status, which its clients raise as ResponseError."""
    @functools.wraps(handler)
    async def answer(request: Request):
        try:
            return await handler(request)
        except ApiError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers())
    return answer


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _done(gen: Generation, result: dict, model: str) -> dict:
    """The fields of a last line: why it ended, tokens, and nanoseconds (load time is inside prompt_eval's)."""
    end = time.perf_counter()
    first = gen.first_at or end
    u = result.get("usage") or {}
    return {"model": result.get("model") or model, "created_at": now(), "done": True,
            "done_reason": result["finish_reason"], "total_duration": int((end - gen.started) * 1e9),
            "load_duration": 0, "prompt_eval_count": u.get("prompt_tokens", 0),
            "prompt_eval_duration": int((first - gen.started) * 1e9), "eval_count": u.get("completion_tokens", 0),
            "eval_duration": int((end - first) * 1e9)}


def _line(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


async def _lines(gen: Generation, first: str | None, model: str, text_of) -> AsyncIterator[bytes]:
    """NDJSON: a line per piece of text, then the done line; a failure on the way is an `{"error"}` line."""
    if first:
        yield _line({"model": model, "created_at": now(), **text_of(first), "done": False})
    try:
        async for _, delta, _ in merged(gen.streams, [first]):
            if delta:
                yield _line({"model": model, "created_at": now(), **text_of(delta), "done": False})
    except LLMOSError as exc:
        yield _line({"error": from_syscall(exc).message})
        return
    result = gen.streams[0].result
    gen.request.state.usage = result.get("usage")
    if result.get("tool_calls"):
        yield _line({"model": model, "created_at": now(), **text_of("", result), "done": False})
    yield _line({**text_of(""), **_done(gen, result, model)})


async def _generate(request: Request, who, args: dict, params: dict, text_of):
    g = request.app.state.gateway
    model = await g.model_used(request, who, params.get("model"))
    args = {**args, **infer_options(params.get("options")), **({"model": model} if model else {})}
    gen = Generation(g, request, who)
    try:
        [first] = await gen.open([args])
        if params.get("stream", True):
            return gen.respond(_lines(gen, first, model, text_of), NDJSON)
        [result] = await gen.collect()
        request.state.usage = result.get("usage")
        return JSONResponse({**text_of(result["text"], result), **_done(gen, result, model)})
    except ClientGone:
        request.state.disconnected = True
        return JSONResponse({}, status_code=499)
    finally:
        await gen.close()


@ollama_errors
async def chat(request: Request):
    g = request.app.state.gateway
    who = await g.identify(request)
    p = checked(await g.body(request), CHAT_PARAMS)
    messages = p.get("messages")
    if isinstance(messages, list):
        for i, m in enumerate(messages):
            for extra in MESSAGE_EXTRAS:
                if isinstance(m, dict) and m.get(extra) in ([], "", None):
                    m.pop(extra, None)
    args = {"messages": chat_messages(messages), **constraint_of(p.get("format")),
            **({"tools": p["tools"]} if p.get("tools") else {})}
    return await _generate(request, who, args, p, lambda text, result=None: {
        "message": {"role": "assistant", "content": text, **ollama_calls((result or {}).get("tool_calls"))}})


@ollama_errors
async def generate(request: Request):
    """raw: the prompt as is; else the model's chat template over `system` and the prompt, as Ollama does."""
    g = request.app.state.gateway
    who = await g.identify(request)
    p = checked(await g.body(request), GENERATE_PARAMS)
    if not p.get("prompt"):
        raise bad_param("prompt", "'prompt' is required (a model loads on its first request: there is no "
                                  "load-only generate)")
    if p.get("raw"):
        if p.get("system"):
            raise bad_param("system", "'system' with raw: true has no template to go in; put it in the prompt")
        args = {"prompt": p["prompt"]}
    else:
        args = {"messages": ([{"role": "system", "content": p["system"]}] if p.get("system") else [])
                + [{"role": "user", "content": p["prompt"]}]}
    args.update(constraint_of(p.get("format")))
    return await _generate(request, who, args, p, lambda text, result=None: {"response": text})


async def _embed(request: Request, who, params: dict, texts: Any) -> dict:
    g = request.app.state.gateway
    if params.get("options"):
        raise unsupported("options", "embeddings take no options")
    started = time.perf_counter()
    result = await g.call(request, who, "embed", input=texts, model=params.get("model") or DEFAULT_EMBED_MODEL)
    return {"model": result["model"], "vectors": result["vectors"],
            "total_duration": int((time.perf_counter() - started) * 1e9), "load_duration": 0,
            "prompt_eval_count": (result.get("usage") or {}).get("prompt_tokens", 0)}


@ollama_errors
async def embed(request: Request):
    g = request.app.state.gateway
    who = await g.identify(request)
    p = checked(await g.body(request), EMBED_PARAMS)
    texts = p.get("input")
    if not (isinstance(texts, str) or (isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts))):
        raise bad_param("input", "'input' must be a string or a non-empty list of strings")
    out = await _embed(request, who, p, texts)
    return JSONResponse({"embeddings": out.pop("vectors"), **out})


@ollama_errors
async def embeddings(request: Request):
    """The legacy route: one `prompt`, one `embedding`."""
    g = request.app.state.gateway
    who = await g.identify(request)
    p = checked(await g.body(request), LEGACY_EMBED_PARAMS)
    if "prompt" not in p:
        raise bad_param("prompt", "'prompt' is required")
    return JSONResponse({"embedding": (await _embed(request, who, p, p["prompt"]))["vectors"][0]})


def _details(m: dict) -> dict:
    quant = m.get("quant")
    return {"parent_model": m.get("base") or "", "format": "", "family": m.get("kind", ""), "families": None,
            "parameter_size": "", "quantization_level": "" if quant in (None, "none") else quant}


async def _models(request: Request, who=None) -> dict:
    g = request.app.state.gateway
    who = who or await g.identify(request)
    return await g.call(request, who, "models")


@ollama_errors
async def tags(request: Request):
    result = await _models(request)
    seen: dict[str, dict] = {}
    for m in result.get("loaded", []) + result.get("available", []):
        seen.setdefault(m["name"], {"name": m["name"], "model": m["name"], "modified_at": ZERO_TIME,
                                    "size": m.get("bytes", 0), "digest": "", "details": _details(m)})
    return JSONResponse({"models": list(seen.values())})


@ollama_errors
async def ps(request: Request):
    """The models loaded now, one line per copy (a replicated model has one per device)."""
    loaded = (await _models(request)).get("loaded", [])
    return JSONResponse({"models": [
        {"name": m["name"], "model": m["name"], "size": m.get("bytes", 0), "digest": "", "details": _details(m),
         "expires_at": ZERO_TIME, "size_vram": m.get("bytes", 0) if str(m.get("device", "")).startswith("cuda") else 0,
         "context_length": m.get("context_length")} for m in loaded]})


@ollama_errors
async def show(request: Request):
    g = request.app.state.gateway
    who = await g.identify(request)
    p = checked(await g.body(request), {"model": _text("model"), "name": _text("name"), "verbose": _bool("verbose")})
    name = p.get("model") or p.get("name")
    if not name:
        raise bad_param("model", "'model' is required")
    result = await _models(request, who)
    loaded = [m for m in result.get("loaded", []) if m["name"] == name]
    known = loaded or [m for m in result.get("available", []) if m["name"] == name]
    if not known:
        raise ApiError(404, f"model '{name}' not found", "not_found_error", param="model", code="model_not_found")
    m = known[0]
    info = {"llmos.kind": m.get("kind"), "llmos.context_length": m.get("context_length"),
            "llmos.device": m.get("device"), "llmos.state": m.get("state", "not loaded"), "llmos.bytes": m.get("bytes")}
    return JSONResponse({"modelfile": "", "parameters": "", "template": "", "details": _details(m),
                         "model_info": {k: v for k, v in info.items() if v is not None}, "modified_at": ZERO_TIME,
                         "capabilities": ["embedding"] if m.get("kind") == "embed" else ["completion"]})


@ollama_errors
async def version(request: Request):
    await request.app.state.gateway.identify(request)
    return JSONResponse({"version": KERNEL_VERSION})


ROUTES = [
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/generate", generate, methods=["POST"]),
    Route("/api/embed", embed, methods=["POST"]),
    Route("/api/embeddings", embeddings, methods=["POST"]),
    Route("/api/tags", tags, methods=["GET"]),
    Route("/api/ps", ps, methods=["GET"]),
    Route("/api/show", show, methods=["POST"]),
    Route("/api/version", version, methods=["GET"]),
]
