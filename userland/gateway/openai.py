"""OpenAI's request bodies checked and turned into syscall arguments, and llmos's results into OpenAI's shapes.

One table per endpoint says what each parameter becomes: passed to the syscall, accepted only at
the value that changes nothing (n=1, logprobs false, a zero penalty...), or refused with 400
naming it. A parameter in no table is refused too, never silently ignored: a client that asks for
something llmos does not do learns it at once rather than from odd output.
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from typing import Any, Callable

from llmos.specs import SYSCALLS
from llmos.specs.registry import DEFAULT_EMBED_MODEL

from .errors import bad_param, unsupported

_INFER = SYSCALLS["infer"].args
MAX_TOKENS_LIMIT = _INFER["max_tokens"].max       # the syscall table's bound
ROLES = ("system", "user", "assistant", "tool")
MESSAGE_FIELDS = {"role", "content", "name", "tool_call_id"}    # name and tool_call_id: accepted, not sent on


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(param: str, lo: float, hi: float) -> Callable[[Any], float]:
    def check(v):
        if not (_is_int(v) or isinstance(v, float)) or not lo <= v <= hi:
            raise bad_param(param, f"'{param}' must be a number from {lo:g} to {hi:g}")
        return float(v)
    return check


def _max_tokens(param: str) -> Callable[[Any], int]:
    def check(v):
        if not _is_int(v) or not 1 <= v <= MAX_TOKENS_LIMIT:
            raise bad_param(param, f"'{param}' must be an integer from 1 to {MAX_TOKENS_LIMIT}")
        return v
    return check


def _seed(v):
    """OpenAI's seed is any 64-bit integer; infer's is a non-negative int64, and the engine used to fold
    every seed into that range itself: folded here the same way, a seed keeps the text it gave."""
    if not _is_int(v) or not -2**63 <= v < 2**64:
        raise bad_param("seed", "'seed' must be an integer")
    return v % (_INFER["seed"].max + 1)


def _stop(v):
    if isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v)):
        return v
    raise bad_param("stop", "'stop' must be a string or a list of strings")


def _text(param: str) -> Callable[[Any], str]:
    def check(v):
        if not isinstance(v, str):
            raise bad_param(param, f"'{param}' must be a string")
        return v
    return check


def _bool(param: str) -> Callable[[Any], bool]:
    def check(v):
        if not isinstance(v, bool):
            raise bad_param(param, f"'{param}' must be true or false")
        return v
    return check


def _stream_options(v):
    if not isinstance(v, dict) or not set(v) <= {"include_usage"} or not isinstance(v.get("include_usage", False), bool):
        raise bad_param("stream_options", "'stream_options' supports only {\"include_usage\": true|false}")
    return v


# Parameters that reach the syscall (or shape the answer): name -> check returning the value to use.
SAMPLING = {"model": _text("model"), "temperature": _number("temperature", 0.0, 2.0),
            "top_p": _number("top_p", 0.0, 1.0), "seed": _seed, "stop": _stop, "stream": _bool("stream"),
            "stream_options": _stream_options, "user": _text("user"), "max_tokens": _max_tokens("max_tokens")}
CHAT_PARAMS = {**SAMPLING, "messages": lambda v: v, "max_completion_tokens": _max_tokens("max_completion_tokens")}
COMPLETION_PARAMS = {**SAMPLING, "prompt": lambda v: v}
EMBED_PARAMS = {"model": _text("model"), "input": lambda v: v, "user": _text("user"),
                "encoding_format": lambda v: v}

# Parameters accepted only at the value that asks for nothing llmos lacks; any other value is 400.
NEUTRAL = {"n": (1,), "logprobs": (False, 0), "top_logprobs": (0,), "presence_penalty": (0, 0.0),
           "frequency_penalty": (0, 0.0), "logit_bias": ({},), "tools": ([],), "functions": ([],),
           "tool_choice": ("none",), "function_call": ("none",), "parallel_tool_calls": (False,),
           "response_format": ({"type": "text"},), "echo": (False,), "best_of": (1,), "suffix": ("",),
           "store": (False,)}


def checked(body: Any, params: dict[str, Callable], neutral: tuple[str, ...] = ()) -> dict:
    """The body's parameters, each checked; 400 naming the first that is unknown, unsupported or malformed.

    A null value means "the default", as in OpenAI's API."""
    if not isinstance(body, dict):
        raise bad_param(None, "the request body must be a JSON object")
    out = {}
    for name, value in body.items():
        if value is None:
            continue
        if name in params:
            out[name] = params[name](value)
        elif name in neutral:
            if value not in NEUTRAL[name]:
                raise unsupported(name, f"only {NEUTRAL[name][0]!r} is accepted")
        else:
            raise bad_param(name, f"unknown parameter '{name}'")
    return out


def _max_tokens_of(p: dict) -> int | None:
    a, b = p.get("max_tokens"), p.get("max_completion_tokens")
    if a is not None and b is not None and a != b:
        raise bad_param("max_completion_tokens", "'max_tokens' and 'max_completion_tokens' differ; give one")
    return a if a is not None else b


def _infer_args(p: dict) -> dict:
    if p.get("stream_options") and not p.get("stream"):
        raise bad_param("stream_options", "'stream_options' needs stream: true")
    args = {"model": p.get("model"), "max_tokens": _max_tokens_of(p), "temperature": p.get("temperature"),
            "top_p": p.get("top_p"), "seed": p.get("seed"), "stop": p.get("stop")}
    return {k: v for k, v in args.items() if v is not None}


def chat_request(body: Any) -> tuple[dict, dict]:
    """(infer's arguments, the checked parameters) for /v1/chat/completions."""
    p = checked(body, CHAT_PARAMS, ("n", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty",
                                    "logit_bias", "tools", "functions", "tool_choice", "function_call",
                                    "parallel_tool_calls", "response_format", "store"))
    if "messages" not in p:
        raise bad_param("messages", "'messages' is required")
    return {**_infer_args(p), "messages": chat_messages(p["messages"])}, p


def chat_messages(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise bad_param("messages", "'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_param(where, f"{where} must be an object with 'role' and 'content'")
        extra = set(m) - MESSAGE_FIELDS
        if extra:
            raise unsupported(f"{where}.{min(extra)}")
        if m.get("role") not in ROLES:
            raise bad_param(f"{where}.role", f"{where}.role must be one of {', '.join(ROLES)}")
        out.append({"role": m["role"], "content": _content(m.get("content"), where)})
    return out


def _content(content: Any, where: str) -> str:
    """A message's text: a string, or a list of text parts (joined); other parts (images, audio) are 400."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise unsupported(f"{where}.content[{j}]", "only text parts ({\"type\": \"text\", \"text\": ...})")
            texts.append(part["text"])
        return "".join(texts)
    raise bad_param(f"{where}.content", f"{where}.content must be a string or a list of text parts")


def completion_request(body: Any) -> tuple[dict, dict]:
    """(infer's arguments, the checked parameters) for /v1/completions."""
    p = checked(body, COMPLETION_PARAMS, ("n", "logprobs", "presence_penalty", "frequency_penalty", "logit_bias",
                                          "echo", "best_of", "suffix"))
    prompt = p.get("prompt")
    if not isinstance(prompt, str):
        raise bad_param("prompt", "'prompt' must be one string (lists of prompts and token arrays are not supported)")
    return {**_infer_args(p), "prompt": prompt}, p


def embedding_request(body: Any) -> tuple[dict, str]:
    """(embed's arguments, the encoding format: float or base64) for /v1/embeddings."""
    p = checked(body, EMBED_PARAMS, ())
    texts = p.get("input")
    if not (isinstance(texts, str) or (isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts))):
        raise bad_param("input", "'input' must be a string or a non-empty list of strings (token arrays are not supported)")
    encoding = p.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise bad_param("encoding_format", "'encoding_format' must be float or base64")
    return {"input": texts, "model": p.get("model") or DEFAULT_EMBED_MODEL}, encoding


# --- answers --------------------------------------------------------------------------------------

class Shape:
    """The id, creation time and object names shared by one answer's body or chunks."""

    def __init__(self, chat: bool, model: str | None):
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = model or ""

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def full(self, result: dict) -> dict:
        """The whole answer of a call without stream."""
        self.model = result.get("model") or self.model
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": result["text"]},
                      "finish_reason": result["finish_reason"], "logprobs": None}
            return {**self._head("chat.completion"), "choices": [choice], "usage": usage(result)}
        choice = {"index": 0, "text": result["text"], "finish_reason": result["finish_reason"], "logprobs": None}
        return {**self._head("text_completion"), "choices": [choice], "usage": usage(result)}

    def chunk(self, delta: str | None, finish_reason: str | None = None, first: bool = False) -> dict:
        """One streamed chunk: text (the first carries the role), or the last with finish_reason."""
        if self.chat:
            body: dict = {} if delta is None else {"content": delta}
            if first:
                body = {"role": "assistant", **body}
            choice = {"index": 0, "delta": body, "finish_reason": finish_reason, "logprobs": None}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": delta or "", "finish_reason": finish_reason, "logprobs": None}
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_chunk(self, result: dict) -> dict:
        """stream_options.include_usage: a last chunk with no choices and the usage."""
        return {**self._head("chat.completion.chunk" if self.chat else "text_completion"), "choices": [],
                "usage": usage(result)}


def usage(result: dict) -> dict:
    u = result.get("usage") or {}
    prompt, completion = u.get("prompt_tokens", 0), u.get("completion_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def embeddings_answer(result: dict, encoding: str) -> dict:
    def vector(v: list[float]):
        if encoding == "base64":
            return base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
        return v
    data = [{"object": "embedding", "index": i, "embedding": vector(v)} for i, v in enumerate(result["vectors"])]
    tokens = (result.get("usage") or {}).get("prompt_tokens", 0)
    return {"object": "list", "data": data, "model": result["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def models_answer(result: dict) -> dict:
    """loaded + available, once each, in OpenAI's list shape."""
    names: dict[str, None] = {}
    for m in result.get("loaded", []) + result.get("available", []):
        names.setdefault(m["name"])
    return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "llmos"} for n in names]}
