"""OpenAI's request bodies checked and turned into syscall arguments (shapes.py turns results into answers).

One table per endpoint says what each parameter becomes: passed to the syscall, accepted only at
the value that changes nothing (n=1, logprobs false, a zero penalty...), or refused with 400
naming it. A parameter in no table is refused too, never silently ignored: a client that asks for
something llmos does not do learns it at once rather than from odd output.
"""

from __future__ import annotations

from typing import Any, Callable

from llmos.specs import SYSCALLS
from llmos.specs.modelspec import DEFAULT_EMBED_MODEL

from . import structured
from .checks import boolean as _bool, is_int as _is_int, number as _number, text as _text
from .errors import bad_param, unsupported

_INFER = SYSCALLS["infer"].args
MAX_TOKENS_LIMIT = _INFER["max_tokens"].max       # the syscall table's bound
MAX_STOPS, MAX_STOP_LEN = _INFER["stop"].max_items, _INFER["stop"].max_len
MAX_PROMPTS = 16          # prompts in one /v1/completions request: each is a generation in flight, run at once
MAX_DIMENSIONS = 1 << 16  # past any model's width: a bound on the number before the model's own is known
ROLES = ("system", "developer", "user", "assistant", "tool")
AS_ROLE = {"developer": "system"}     # OpenAI's newer name for system instructions; chat templates know system
MESSAGE_FIELDS = {"role", "content", "name", "tool_call_id", "tool_calls"}    # name: accepted, not sent on




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
    """Checked here against infer's bounds, so that the 400 names `stop` (the kernel's EINVAL names no parameter)."""
    if not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v))):
        raise bad_param("stop", "'stop' must be a string or a list of strings")
    stops = [v] if isinstance(v, str) else v
    if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_LEN for s in stops):
        raise bad_param("stop", f"'stop' takes at most {MAX_STOPS} strings of at most {MAX_STOP_LEN} characters")
    return v




def _dimensions(v):
    if not _is_int(v) or not 1 <= v <= MAX_DIMENSIONS:
        raise bad_param("dimensions", "'dimensions' must be a positive integer, at most the model's own dimension")
    return v


def _stream_options(v):
    if not isinstance(v, dict) or not set(v) <= {"include_usage"} or not isinstance(v.get("include_usage", False), bool):
        raise bad_param("stream_options", "'stream_options' supports only {\"include_usage\": true|false}")
    return v


# Parameters that reach the syscall (or shape the answer): name -> check returning the value to use.
SAMPLING = {"model": _text("model"), "temperature": _number("temperature", 0.0, 2.0),
            "top_p": _number("top_p", 0.0, 1.0), "seed": _seed, "stop": _stop, "stream": _bool("stream"),
            "stream_options": _stream_options, "user": _text("user"), "max_tokens": _max_tokens("max_tokens")}
CHAT_PARAMS = {**SAMPLING, **structured.CHAT, "messages": lambda v: v,
               "max_completion_tokens": _max_tokens("max_completion_tokens")}
COMPLETION_PARAMS = {**SAMPLING, **structured.COMPLETION, "prompt": lambda v: v, "echo": _bool("echo")}
EMBED_PARAMS = {"model": _text("model"), "input": lambda v: v, "user": _text("user"),
                "encoding_format": lambda v: v, "dimensions": _dimensions}

# Parameters accepted only at the value that asks for nothing llmos lacks; any other value is 400.
NEUTRAL = {"functions": ([],), "function_call": ("none",), "best_of": (1,), "suffix": ("",), "store": (False,)}


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


def chat_request(body: Any) -> tuple[list[dict], dict]:
    """(infer's arguments for each of the n choices, the checked parameters) for /v1/chat/completions."""
    p = checked(body, CHAT_PARAMS, ("functions", "function_call", "store"))
    if "messages" not in p:
        raise bad_param("messages", "'messages' is required")
    args = {**_infer_args(p), **structured.infer_args(p, chat=True), "messages": chat_messages(p["messages"])}
    return choices(args, p.get("n", 1)), p


def choices(args: dict, n: int) -> list[dict]:
    """n generations of one prompt: each its own seed (the request's seed + i, when it gave one), so
    they differ when sampled and each is reproducible."""
    if n == 1:
        return [args]
    seed = args.get("seed")
    limit = _INFER["seed"].max + 1
    return [{**args, **({"seed": (seed + i) % limit} if seed is not None else {})} for i in range(n)]


def chat_messages(messages: Any, name: str = "messages") -> list[dict]:
    """Checked messages as infer takes them; errors name the list as the request did (`input` in /v1/responses)."""
    if not isinstance(messages, list) or not messages:
        raise bad_param(name, f"'{name}' must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        where = f"{name}[{i}]"
        if not isinstance(m, dict):
            raise bad_param(where, f"{where} must be an object with 'role' and 'content'")
        extra = set(m) - MESSAGE_FIELDS
        if extra:
            raise unsupported(f"{where}.{min(extra)}")
        if m.get("role") not in ROLES:
            raise bad_param(f"{where}.role", f"{where}.role must be one of {', '.join(ROLES)}")
        message = {"role": AS_ROLE.get(m["role"], m["role"])}
        if m.get("tool_calls") is not None and m["role"] == "assistant":
            if not isinstance(m["tool_calls"], list):
                raise bad_param(f"{where}.tool_calls", f"{where}.tool_calls must be a list of calls")
            message["tool_calls"] = m["tool_calls"]
            message["content"] = _content(m["content"], where) if m.get("content") else ""
        else:
            message["content"] = _content(m.get("content"), where)
        if m["role"] == "tool" and isinstance(m.get("tool_call_id"), str):
            message["tool_call_id"] = m["tool_call_id"]
        out.append(message)
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


def completion_request(body: Any) -> tuple[list[dict], dict]:
    """(infer's arguments for each prompt, in order; the checked parameters) for /v1/completions."""
    p = checked(body, COMPLETION_PARAMS, ("best_of", "suffix"))
    args = {**_infer_args(p), **structured.infer_args(p, chat=False)}
    every = [{**args, **prompt} for prompt in prompts(p.get("prompt"))]
    if len(every) * p.get("n", 1) > MAX_PROMPTS:
        raise bad_param("n", f"prompts x n is {len(every) * p.get('n', 1)}; at most {MAX_PROMPTS} in one request")
    return [choice for one in every for choice in choices(one, p.get("n", 1))], p


def prompts(prompt: Any) -> list[dict]:
    """infer's prompt argument for each prompt: a string, a list of 1 to MAX_PROMPTS strings, a token array
    (a list of ints: infer's prompt_ids) or a list of token arrays."""
    if isinstance(prompt, str):
        return [{"prompt": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise bad_param("prompt", "'prompt' must be a string, a list of strings, or token ids")
    if all(_is_int(t) for t in prompt):
        return [{"prompt_ids": prompt}]
    if all(isinstance(t, str) for t in prompt):
        many = [{"prompt": t} for t in prompt]
    elif all(isinstance(t, list) and t and all(_is_int(i) for i in t) for t in prompt):
        many = [{"prompt_ids": t} for t in prompt]
    else:
        raise bad_param("prompt", "'prompt' must be a string, a list of strings, or token ids")
    if len(many) > MAX_PROMPTS:
        raise bad_param("prompt", f"'prompt' holds {len(many)} prompts; at most {MAX_PROMPTS} in one request")
    return many


def embedding_request(body: Any) -> tuple[dict, str, int | None]:
    """(embed's arguments, the encoding format: float or base64, the dimensions asked) for /v1/embeddings."""
    p = checked(body, EMBED_PARAMS, ())
    texts = p.get("input")
    if not (isinstance(texts, str) or (isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts))):
        raise bad_param("input", "'input' must be a string or a non-empty list of strings (token arrays are not supported)")
    encoding = p.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise bad_param("encoding_format", "'encoding_format' must be float or base64")
    return {"input": texts, "model": p.get("model") or DEFAULT_EMBED_MODEL}, encoding, p.get("dimensions")
