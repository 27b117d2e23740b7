"""OpenAI's structured-generation parameters as infer's (ABI 1.1), and their parts of the answer.

response_format, tools and tool_choice, logprobs and top_logprobs, n, the penalties and logit_bias
are checked here for their shape (a 400 names the parameter) and passed to infer, which the kernel
and the driver check again against the model (a schema that does not compile, a token id past
the vocabulary): their EINVAL is mapped back to the parameter the client sent (`param_of`).
"""

from __future__ import annotations

import re
from .checks import boolean, integer, number
from .errors import bad_param

MAX_N = 8                 # choices of one request: each is a generation in flight, holding a stream slot
MAX_TOP_LOGPROBS = 20
MAX_LEGACY_LOGPROBS = 5   # /v1/completions' logprobs is the number of alternatives, at most 5 in OpenAI's API
MAX_TOOLS = 64
MAX_LOGIT_BIAS = 300


def response_format(v) -> dict | None:
    """{"type": text | json_object | json_schema} as infer's constraint (None: free text)."""
    kind = v.get("type") if isinstance(v, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json": True}
    if kind == "json_schema":
        spec = v.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise bad_param("response_format", "'response_format.json_schema' must be {name, schema: {...}, strict?}")
        strict = spec.get("strict")
        return {"json_schema": spec.get("schema", {}),
                "strict": True if strict is None else boolean("response_format.json_schema.strict")(strict)}
    raise bad_param("response_format", "'response_format.type' must be text, json_object or json_schema")


def tools(v) -> list:
    if not isinstance(v, list) or len(v) > MAX_TOOLS or not all(isinstance(t, dict) for t in v):
        raise bad_param("tools", f"'tools' must be a list of at most {MAX_TOOLS} function objects")
    return v


def tool_choice(v):
    if v in ("auto", "none", "required"):
        return v
    name = v.get("function", {}).get("name") if isinstance(v, dict) and isinstance(v.get("function"), dict) else None
    if not isinstance(name, str):
        raise bad_param("tool_choice", "'tool_choice' must be auto, none, required or "
                                       "{\"type\": \"function\", \"function\": {\"name\": ...}}")
    return {"type": "function", "function": {"name": name}}


def logit_bias(v) -> dict:
    if not isinstance(v, dict) or len(v) > MAX_LOGIT_BIAS:
        raise bad_param("logit_bias", f"'logit_bias' must map at most {MAX_LOGIT_BIAS} token ids to biases")
    for key, bias in v.items():
        if not str(key).isdigit() or isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
            raise bad_param("logit_bias", "'logit_bias' maps token ids to numbers from -100 to 100")
    return v


# Parameters of both endpoints that reach infer under the same name.
SHARED = {"n": integer("n", 1, MAX_N), "presence_penalty": number("presence_penalty", -2.0, 2.0),
          "frequency_penalty": number("frequency_penalty", -2.0, 2.0), "logit_bias": logit_bias,
          "repetition_penalty": number("repetition_penalty", 0.01, 10.0), "min_tokens": integer("min_tokens", 0, 32768)}
CHAT = {**SHARED, "response_format": lambda v: v, "tools": tools, "tool_choice": tool_choice,
        "parallel_tool_calls": boolean("parallel_tool_calls"), "logprobs": boolean("logprobs"),
        "top_logprobs": integer("top_logprobs", 0, MAX_TOP_LOGPROBS)}
COMPLETION = {**SHARED, "logprobs": integer("logprobs", 0, MAX_LEGACY_LOGPROBS)}
INFER_NAMES = ("presence_penalty", "frequency_penalty", "logit_bias", "repetition_penalty", "min_tokens", "tools",
               "tool_choice")


def infer_args(p: dict, chat: bool) -> dict:
    """infer's structured-generation arguments from the checked parameters."""
    args = {name: p[name] for name in INFER_NAMES if name in p}
    if chat:
        constraint = response_format(p["response_format"]) if "response_format" in p else None
        if constraint is not None:
            args["constraint"] = constraint
        if p.get("top_logprobs") and not p.get("logprobs"):
            raise bad_param("top_logprobs", "'top_logprobs' needs 'logprobs': true")
        if p.get("logprobs"):
            args.update(logprobs=True, top_logprobs=p.get("top_logprobs", 0))
    elif p.get("logprobs") is not None:       # legacy: the number of alternatives; 0 is the token's own only
        args.update(logprobs=True, top_logprobs=p["logprobs"])
    return args


# infer's argument in an EINVAL message -> the request parameter it came from.
_PARAM_OF_ARG = {"constraint": "response_format", "tools": "tools", "tool_choice": "tool_choice",
                 "logprobs": "logprobs", "top_logprobs": "top_logprobs", "logit_bias": "logit_bias",
                 "min_tokens": "min_tokens", "prompt_ids": "prompt", "messages": "messages", "stop": "stop",
                 "max_tokens": "max_tokens"}
_ARG = re.compile(r"'([a-z_]+)[.'\[]")


def param_of(message: str) -> str | None:
    """The request parameter an EINVAL from infer is about, where its message names one."""
    if "constraint does not compile" in message:
        return "response_format"
    for arg in ("logit_bias", "prompt"):      # the driver's own refusals (drivers/faults.py) start with the argument
        if message.startswith(f"{arg} holds") or message.startswith(f"{arg} takes"):
            return arg
    found = _ARG.search(message)
    return _PARAM_OF_ARG.get(found.group(1)) if found else None


# --- the answer -------------------------------------------------------------------------------


def chat_logprobs(entries: list | None) -> dict | None:
    """A chat choice's logprobs: infer's entries are already OpenAI's {token, logprob, bytes, top_logprobs}."""
    return None if entries is None else {"content": entries, "refusal": None}


def completion_logprobs(entries: list | None, offset: int = 0) -> dict | None:
    """/v1/completions' older shape: parallel lists, the alternatives as {token: logprob}."""
    if entries is None:
        return None
    offsets, at = [], offset
    for e in entries:
        offsets.append(at)
        at += len(e["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
            "text_offset": offsets}


def tool_call_deltas(calls: list[dict]) -> list[dict]:
    """Streamed tool calls: each whole, with its index (OpenAI's clients join the pieces of each index)."""
    return [{"index": j, **call} for j, call in enumerate(calls)]
