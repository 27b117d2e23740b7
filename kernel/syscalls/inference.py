"""Inference syscalls: infer, embed, cancel."""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING

from llmos.specs import SYSCALLS
from llmos.specs.protocol import reply_ok

from .. import registry
from ..adapters import adapter_parts
from ..errors import SyscallError, eio, einval, enoent, eperm
from ..loadprogress import wait_telling
from .structured import MAX_CALLS_PER_MESSAGE, MAX_TOKEN_ID, TOOL_NAME, structured_payload

if TYPE_CHECKING:
    from ..process import CallContext
    from ..kernel import Kernel
    from ..models import ModelEntry
    from ..process import Process

ROLES = ("system", "user", "assistant", "tool")
_INFER = SYSCALLS["infer"].args          # the bounds are the table's; the validator has checked them
MAX_STOPS, MAX_STOP_CHARS = _INFER["stop"].max_items, _INFER["stop"].max_len
MAX_MESSAGE_CHARS = _INFER["prompt"].max_len     # all contents together: a chat is no longer than a prompt
MAX_EMBED_INPUTS = SYSCALLS["embed"].args["input"].max_items


async def model_for(k: "Kernel", ctx: "CallContext", name: str | None, kind: str) -> "ModelEntry":
    """The loaded model a call runs on (the default if none is named), loading it if need be."""
    if name is None:
        name = k.settings.default_model
        if name is None:
            raise einval("no model given and this kernel has no default model; pass 'model'")
    if adapter_parts(name) is not None:
        raise einval(f"'{name[:200]}' names a LoRA adapter (BASE:NAME); only infer and load_model take one")
    entry = k.models.get(name)
    if entry is None or entry.state != "ready" or ctx.proc.pid not in entry.refs:
        entry = await k.models.ensure(name, "auto", ctx.proc)
    if entry.kind != kind:
        use = "infer" if entry.kind == "generate" else "embed"
        raise einval(f"model '{name}' is a {entry.kind} model; use {use} with it")
    return entry


async def model_and_adapter(k: "Kernel", ctx: "CallContext", name: str | None, kind: str) -> tuple["ModelEntry", str]:
    """The loaded base a call runs on and the id of its LoRA adapter ("" for none): for `BASE:NAME`,
    the adapter the caller may use (ENOENT otherwise), loaded over every ready copy of the base."""
    parts = adapter_parts(name) if name is not None else None
    if parts is None:
        return await model_for(k, ctx, name, kind), ""
    base, adapter = parts
    if registry.is_path(base, k.settings.models):
        raise einval(f"'{base}' is not a registry or config model name; an adapter's base must be one (see `models`)")
    info = await k.models.adapters.find(ctx.proc.principal, base, adapter)
    await model_for(k, ctx, base, kind)
    await k.models.adapters.ensure(info)
    entry = k.models.adapters.replica_for(info)
    if entry is None:
        raise eio(f"model '{base}' or its adapter was unloaded while the adapter loaded; retry")
    return entry, info.id


def checked_messages(messages: list) -> list[dict]:
    """Chat messages as the driver gets them: role and content strings; an assistant's tool_calls
    and a tool result's tool_call_id, so a tool loop renders back into the template."""
    if not messages:
        raise einval("infer: 'messages' must not be empty")
    out, chars = [], 0
    for i, m in enumerate(messages):
        calls = m.get("tool_calls") if isinstance(m, dict) and m.get("role") == "assistant" else None
        content = m.get("content") if isinstance(m, dict) else None
        if calls is not None and content is None:
            content = ""
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(content, str):
            raise einval(f"infer: messages[{i}] must be a map with string 'role' and 'content'")
        if m["role"] not in ROLES:
            raise einval(f"infer: messages[{i}].role must be one of {', '.join(ROLES)}, got '{m['role'][:32]}'")
        message = {"role": m["role"], "content": content}
        if calls is not None:
            message["tool_calls"] = _checked_calls(i, calls)
            chars += sum(len(c["function"]["arguments"]) for c in message["tool_calls"])
        if m["role"] == "tool" and m.get("tool_call_id") is not None:
            if not isinstance(m["tool_call_id"], str) or len(m["tool_call_id"]) > 256:
                raise einval(f"infer: messages[{i}].tool_call_id must be a string of at most 256 characters")
            message["tool_call_id"] = m["tool_call_id"]
        chars += len(content)
        if chars > MAX_MESSAGE_CHARS:
            raise einval(f"infer: the contents of 'messages' hold more than {MAX_MESSAGE_CHARS} characters "
                         f"(by messages[{i}]), as a prompt may")
        out.append(message)
    return out


def _checked_calls(i: int, calls) -> list[dict]:
    """An assistant turn's tool calls, in OpenAI's shape: {id, type, function: {name, arguments}}."""
    if not isinstance(calls, list) or len(calls) > MAX_CALLS_PER_MESSAGE:
        raise einval(f"infer: messages[{i}].tool_calls must be a list of at most {MAX_CALLS_PER_MESSAGE} calls")
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if (not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not TOOL_NAME.fullmatch(fn["name"])
                or not isinstance(fn.get("arguments", ""), (str, dict))):
            raise einval(f"infer: messages[{i}].tool_calls[{j}] must be {{id, type: function, "
                         "function: {name, arguments}}")
        arguments = fn.get("arguments", "")
        call_id = call.get("id") if isinstance(call.get("id"), str) else ""
        out.append({"id": call_id[:256], "type": "function",
                    "function": {"name": fn["name"],
                                 "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}})
    return out


def checked_stops(stop) -> list[str]:
    stops = [stop] if isinstance(stop, str) else (stop or [])
    if len(stops) > MAX_STOPS or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stops):
        raise einval(f"infer: 'stop' must be up to {MAX_STOPS} non-empty strings of at most {MAX_STOP_CHARS} characters")
    return stops


async def sys_infer(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    if sum(args[name] is not None for name in ("prompt", "messages", "prompt_ids")) != 1:
        raise einval("infer: give exactly one of 'prompt', 'messages' and 'prompt_ids'")
    if args["prompt_ids"] is not None and not all(type(t) is int and 0 <= t <= MAX_TOKEN_ID
                                                  for t in args["prompt_ids"]):
        raise einval(f"infer: 'prompt_ids' must be token ids, integers from 0 to {MAX_TOKEN_ID}")
    messages = checked_messages(args["messages"]) if args["messages"] is not None else None
    stop = checked_stops(args["stop"])
    structured = structured_payload(args, chat=messages is not None)
    share = caller_served(k, ctx, args["for_call"], "infer")
    payer = k.procs.get(share) if share is not None else ctx.proc
    k.quotas.check_token_rate(payer.principal if payer else ctx.proc.principal)
    progress = args["stream"] and args["progress"]
    if progress:
        named = args["model"] or k.settings.default_model
        base = (adapter_parts(named) or (named,))[0] if named else None
        entry, adapter = await wait_telling(model_and_adapter(k, ctx, args["model"], "generate"),
                                            lambda: k.models.progress(base) if base else None,
                                            lambda p: tell_progress(ctx, p))
    else:
        entry, adapter = await model_and_adapter(k, ctx, args["model"], "generate")
    payload = {"adapter": adapter, "prompt": args["prompt"], "messages": messages, "prompt_ids": args["prompt_ids"],
               "max_tokens": args["max_tokens"],
               "temperature": args["temperature"], "top_p": args["top_p"], "top_k": args["top_k"],
               "stop": stop, "seed": _seed(args["seed"]), "priority": args["priority"], "progress": progress,
               **structured}
    req = k.requests.new(ctx, "infer", entry, payload, stream=args["stream"], priority=args["priority"],
                         deadline_s=args["deadline"], share=share)
    k.devices.submit(req)
    return await req.future


def _seed(given: int | None) -> int:
    """The caller's seed, or one drawn here: a generation resumed on a restarted driver then samples
    what the first driver would have (the sampler is keyed by seed and position)."""
    return given if given is not None else secrets.randbits(32)


def tell_progress(ctx: "CallContext", progress: dict) -> None:
    """A stream frame saying how far the model it waits for has loaded (asked for with progress=true)."""
    ctx.transport.send(ctx.routing, reply_ok(ctx.client_id, {"progress": {"phase": "loading", **progress}}, more=True))


def caller_served(k: "Kernel", ctx: "CallContext", for_call: int | None, call: str) -> int | None:
    """The pid a syscall counts against when the service host makes it for an svc_call."""
    if for_call is None:
        return None
    if not ctx.proc.serves_calls:
        raise eperm(f"{call}: only the kernel's service host may pass 'for_call'")
    served = k.services.calls.get(for_call)
    if served is None or k.procs.get(served.pid) is None:
        raise enoent(f"{call}: no svc_call {for_call} is in flight (it ended, or never was)")
    return served.pid


def on_behalf(k: "Kernel", ctx: "CallContext", for_call: int | None, call: str) -> "Process":
    """Whose call this is: the caller's own process, or, when the service host passes `for_call`, the
    program whose svc_call it serves. What the host keeps or reads for a caller lives in that caller's
    principal's namespace and counts against its quotas, never in the host's, shared by every tenant."""
    served = caller_served(k, ctx, for_call, call)
    return ctx.proc if served is None else k.procs.get(served)


async def sys_embed(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    texts = args["input"]
    if isinstance(texts, str):
        texts = [texts]
    if not texts or len(texts) > MAX_EMBED_INPUTS or not all(isinstance(t, str) for t in texts):
        raise einval(f"embed: 'input' must be a string or a list of 1 to {MAX_EMBED_INPUTS} strings")
    share = caller_served(k, ctx, args["for_call"], "embed")
    return await embed_texts(k, ctx, texts, args["model"], args["normalize"], share)


async def embed_texts(k: "Kernel", ctx: "CallContext", texts: list[str], model: str, normalize: bool = True,
                      share: int | None = None) -> dict:
    """Embeddings through the model's driver, as a request of the caller's (counted, cancellable, reaped);
    share: the pid it is accounted as, when the service host embeds for an svc_call."""
    entry = await model_for(k, ctx, model, "embed")
    req = k.requests.new(ctx, "embed", entry, {}, share=share)
    k.devices.send_embed(req, texts, normalize)
    return await req.future


def sys_cancel(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    req = k.requests.by_client(ctx.proc.pid, args["id"])
    if req is None:
        raise enoent(f"no request with id {args['id']} is in flight for process {ctx.proc.pid}")
    k.requests.end(req, SyscallError("ECANCELED", f"cancelled by the caller (request {args['id']})"))
    return {"cancelled": True}


HANDLERS = {"infer": sys_infer, "embed": sys_embed, "cancel": sys_cancel}
