"""llmos's results in OpenAI's answer shapes: completions (whole or as chunks), embeddings, models.

openai.py checks what comes in; this module shapes what goes out, so the two tables of one
endpoint (its parameters, its answer) each have one place.
"""

from __future__ import annotations

import base64
import math
import struct
import time
import uuid

from .errors import ApiError, bad_param
from .structured import chat_logprobs, completion_logprobs, tool_call_deltas

OWNER = "llmos"      # owned_by of a model the kernel serves to everyone; an adapter's is its owner principal


class Shape:
    """The id, creation time, model and object names shared by one answer's body or chunks.

    `model` is the model actually used: the one the request named, else the kernel's default
    (app.py resolves it before the first chunk, which goes out before the kernel's final reply
    says which model ran)."""

    def __init__(self, chat: bool, model: str | None):
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = model or ""

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def full(self, results: list[dict], prefixes: list[str] | None = None) -> dict:
        """The whole answer of a call without stream: one choice per result, in order; a prefix (echo's
        prompt) goes before a choice's text."""
        self.model = results[0].get("model") or self.model
        prefixes = prefixes or [""] * len(results)
        if self.chat:
            choices = [{"index": i, "message": message(r), "finish_reason": r["finish_reason"],
                        "logprobs": chat_logprobs(r.get("logprobs"))} for i, r in enumerate(results)]
            return {**self._head("chat.completion"), "choices": choices, "usage": usage(results)}
        choices = [{"index": i, "text": pre + r["text"], "finish_reason": r["finish_reason"],
                    "logprobs": completion_logprobs(r.get("logprobs"), len(pre))}
                   for i, (r, pre) in enumerate(zip(results, prefixes))]
        return {**self._head("text_completion"), "choices": choices, "usage": usage(results)}

    def chunk(self, delta: str | None, finish_reason: str | None = None, first: bool = False, index: int = 0,
              logprobs: list | None = None, tool_calls: list | None = None) -> dict:
        """One streamed chunk of choice `index`: text (the first carries the role) with its tokens' logprobs
        if asked, the tool calls, or the last with finish_reason."""
        if self.chat:
            body: dict = {} if delta is None else {"content": delta}
            if first:
                body = {"role": "assistant", **body}
            if tool_calls:
                body["tool_calls"] = tool_call_deltas(tool_calls)
            choice = {"index": index, "delta": body, "finish_reason": finish_reason,
                      "logprobs": chat_logprobs(logprobs)}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": index, "text": delta or "", "finish_reason": finish_reason,
                  "logprobs": completion_logprobs(logprobs)}
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_chunk(self, results: list[dict]) -> dict:
        """stream_options.include_usage: a last chunk with no choices and the usage of all of them."""
        return {**self._head("chat.completion.chunk" if self.chat else "text_completion"), "choices": [],
                "usage": usage(results)}


def message(result: dict) -> dict:
    """A chat choice's message: its text, or its tool calls (content null when it is only calls)."""
    calls = result.get("tool_calls")
    if not calls:
        return {"role": "assistant", "content": result["text"]}
    return {"role": "assistant", "content": result["text"] or None, "tool_calls": calls}


def usage(results: list[dict]) -> dict:
    prompt = sum((r.get("usage") or {}).get("prompt_tokens", 0) for r in results)
    completion = sum((r.get("usage") or {}).get("completion_tokens", 0) for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def shortened(vectors: list[list[float]], dim: int, dimensions: int | None) -> list[list[float]]:
    """`dimensions`: each vector's first `dimensions` values, scaled back to unit length, as OpenAI's v3
    embedding models do (their leading dimensions carry the most; a model not trained so loses more)."""
    if dimensions is None or dimensions == dim:
        return vectors
    if dimensions > dim:
        raise bad_param("dimensions", f"'dimensions' is {dimensions}, more than the model's {dim}")
    out = []
    for v in vectors:
        head = v[:dimensions]
        norm = math.sqrt(sum(x * x for x in head))
        out.append([x / norm for x in head] if norm > 0 else head)
    return out


def embeddings_answer(result: dict, encoding: str, dimensions: int | None = None) -> dict:
    def vector(v: list[float]):
        if encoding == "base64":
            return base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
        return v
    vectors = shortened(result["vectors"], result.get("dim") or len(result["vectors"][0]), dimensions)
    data = [{"object": "embedding", "index": i, "embedding": vector(v)} for i, v in enumerate(vectors)]
    tokens = (result.get("usage") or {}).get("prompt_tokens", 0)
    return {"object": "list", "data": data, "model": result["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def model_objects(result: dict) -> dict[str, dict]:
    """The `models` syscall's loaded and available models, once each, as OpenAI's model objects by id.

    context_length is the loaded copy's (an adapter's is its base's); a model not loaded has null:
    the kernel knows a model's context only once its config is read, at load."""
    context = {m["name"]: m.get("context_length") for m in result.get("loaded", []) if m.get("kind") != "adapter"}
    out: dict[str, dict] = {}
    for m in result.get("loaded", []) + result.get("available", []):
        name = m["name"]
        if name in out:
            continue
        adapter = m.get("kind") == "adapter"
        out[name] = {"id": name, "object": "model", "created": 0, "owned_by": m.get("owner") if adapter else OWNER,
                     "context_length": context.get(m.get("base") if adapter else name)}
    return out


def models_answer(result: dict) -> dict:
    """loaded + available, once each, in OpenAI's list shape."""
    return {"object": "list", "data": list(model_objects(result).values())}


def model_answer(result: dict, model_id: str) -> dict:
    """One model object; 404 in OpenAI's shape for an id the kernel neither holds nor can load."""
    found = model_objects(result).get(model_id)
    if found is None:
        raise ApiError(404, f"the model '{model_id}' does not exist", "not_found_error", param="model",
                       code="model_not_found")
    return found
