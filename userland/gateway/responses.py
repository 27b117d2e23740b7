"""A minimal /v1/responses: OpenAI's newer text API, as one infer stream over chat messages.

Text in, text out: `input` (a string, or messages whose content is text), `instructions` (a
system message before them), sampling and `max_output_tokens`, whole or streamed as OpenAI's
typed events. Nothing is stored, so there is no `previous_response_id` and `store` must be false
or absent; tools, reasoning and other item types are refused by name, as the chat route does.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..errors import LLMOSError
from .errors import bad_param, from_syscall, unsupported
from .generation import ClientGone, Generation, merged
from .openai import _bool, _max_tokens, _number, _text, chat_messages, checked
from .shapes import usage

MAX_METADATA = 16         # OpenAI's bounds on metadata: 16 pairs, keys of 64 characters, values of 512
PARAMS = {"model": _text("model"), "input": lambda v: v, "instructions": _text("instructions"),
          "stream": _bool("stream"), "max_output_tokens": _max_tokens("max_output_tokens"),
          "temperature": _number("temperature", 0.0, 2.0), "top_p": _number("top_p", 0.0, 1.0),
          "user": _text("user"), "metadata": lambda v: _metadata(v)}
# Accepted only at the value that asks for nothing llmos lacks.
NEUTRAL = {"store": (False,), "tools": ([],), "tool_choice": ("none", "auto"), "parallel_tool_calls": (False,),
           "text": ({"format": {"type": "text"}},), "truncation": ("disabled",)}
TEXT_PARTS = ("input_text", "output_text", "text")


def _metadata(v: Any) -> dict:
    if not isinstance(v, dict) or len(v) > MAX_METADATA or not all(
            isinstance(k, str) and isinstance(x, str) and len(k) <= 64 and len(x) <= 512 for k, x in v.items()):
        raise bad_param("metadata", f"'metadata' must map at most {MAX_METADATA} keys (64 characters) to strings "
                                    f"(512 characters)")
    return v


def response_request(body: Any) -> tuple[dict, dict]:
    """(infer's arguments, the checked parameters) for /v1/responses."""
    if not isinstance(body, dict):
        raise bad_param(None, "the request body must be a JSON object")
    for name in NEUTRAL.keys() & body.keys():
        if body[name] is not None and body[name] not in NEUTRAL[name]:
            raise unsupported(name, f"only {NEUTRAL[name][0]!r} is accepted")
    p = checked({k: v for k, v in body.items() if k not in NEUTRAL}, PARAMS)
    if "input" not in p:
        raise bad_param("input", "'input' is required")
    messages = [{"role": "system", "content": p["instructions"]}] if p.get("instructions") else []
    messages += _input_messages(p["input"])
    args = {"messages": messages, "model": p.get("model"), "max_tokens": p.get("max_output_tokens"),
            "temperature": p.get("temperature"), "top_p": p.get("top_p")}
    return {k: v for k, v in args.items() if v is not None}, p


def _input_messages(value: Any) -> list[dict]:
    """`input` as chat messages: a string is one user message; a list holds messages (type message or none)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise bad_param("input", "'input' must be a string or a non-empty list of messages")
    plain = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict) or item.get("type", "message") != "message":
            raise unsupported(where, "only messages ({\"role\", \"content\"}) are accepted as input items")
        content = item.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") not in TEXT_PARTS:
                    raise unsupported(f"{where}.content[{j}]", "only text parts (input_text, output_text)")
            content = [{"type": "text", "text": part.get("text")} for part in content]
        plain.append({"role": item.get("role"), "content": content})
    return chat_messages(plain, "input")


class Answer:
    """One response's id, creation time and model, and its shape at each stage."""

    def __init__(self, model: str, params: dict):
        self.id = "resp_" + uuid.uuid4().hex
        self.item_id = "msg_" + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = model
        self.params = params
        self.sequence = 0

    def response(self, status: str, text: str | None = None, result: dict | None = None) -> dict:
        """The response object: in progress (no output yet), or completed/incomplete with its output."""
        p = self.params
        out = {"id": self.id, "object": "response", "created_at": self.created, "status": status, "error": None,
               "incomplete_details": None, "instructions": p.get("instructions"), "model": self.model,
               "max_output_tokens": p.get("max_output_tokens"), "metadata": p.get("metadata") or {},
               "parallel_tool_calls": False, "temperature": p.get("temperature"), "top_p": p.get("top_p"),
               "tool_choice": "none", "tools": [], "text": {"format": {"type": "text"}}, "store": False,
               "user": p.get("user"), "output": [], "usage": None}
        if result is not None:
            if result["finish_reason"] == "length":
                out["status"], out["incomplete_details"] = "incomplete", {"reason": "max_output_tokens"}
            out["model"] = result.get("model") or self.model
            out["output"] = [self.item("completed", text)]
            out["output_text"] = text
            u = usage([result])
            out["usage"] = {"input_tokens": u["prompt_tokens"], "output_tokens": u["completion_tokens"],
                            "total_tokens": u["total_tokens"], "input_tokens_details": {"cached_tokens": 0},
                            "output_tokens_details": {"reasoning_tokens": 0}}
        return out

    def item(self, status: str, text: str | None) -> dict:
        content = [] if text is None else [self.part(text)]
        return {"type": "message", "id": self.item_id, "status": status, "role": "assistant", "content": content}

    @staticmethod
    def part(text: str) -> dict:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def event(self, kind: str, **fields) -> bytes:
        """One SSE event of OpenAI's typed stream: `event: TYPE` and its data, numbered in order."""
        self.sequence += 1
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        return f"event: {kind}\ndata: ".encode() + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


async def _events(gen: Generation, answer: Answer, first: str | None, request: Request) -> AsyncIterator[bytes]:
    where = {"item_id": answer.item_id, "output_index": 0, "content_index": 0}
    yield answer.event("response.created", response=answer.response("in_progress"))
    yield answer.event("response.in_progress", response=answer.response("in_progress"))
    yield answer.event("response.output_item.added", output_index=0, item=answer.item("in_progress", None))
    yield answer.event("response.content_part.added", **where, part=answer.part(""))
    parts = []
    try:
        if first:
            parts.append(first)
            yield answer.event("response.output_text.delta", **where, delta=first, logprobs=[])
        async for _, delta, _ in merged(gen.streams, [first]):
            if delta:
                parts.append(delta)
                yield answer.event("response.output_text.delta", **where, delta=delta, logprobs=[])
    except LLMOSError as exc:
        error = from_syscall(exc)
        yield answer.event("error", code=error.code, message=error.message, param=error.param)
        return
    text, result = "".join(parts), gen.streams[0].result
    request.state.usage = usage([result])
    yield answer.event("response.output_text.done", **where, text=text, logprobs=[])
    yield answer.event("response.content_part.done", **where, part=answer.part(text))
    yield answer.event("response.output_item.done", output_index=0, item=answer.item("completed", text))
    done = answer.response("completed", text, result)
    yield answer.event("response.completed" if done["status"] == "completed" else "response.incomplete", response=done)


async def create(request: Request):
    g = request.app.state.gateway
    who = await g.identify(request)
    args, params = response_request(await g.body(request))
    request.state.user = params.get("user")
    answer = Answer(await g.model_used(request, who, params.get("model")), params)
    gen = Generation(g, request, who)
    try:
        [first] = await gen.open([args])
        if not params.get("stream"):
            [result] = await gen.collect()
            request.state.usage = usage([result])
            return JSONResponse(answer.response("completed", result["text"], result))
        return gen.respond(_events(gen, answer, first, request))
    except ClientGone:
        request.state.disconnected = True
        return JSONResponse({}, status_code=499)
    finally:
        await gen.close()


ROUTES = [Route("/v1/responses", create, methods=["POST"])]
