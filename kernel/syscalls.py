"""The syscall table: one handler per syscall in specs/syscalls.toml.

Arguments arrive already validated against the table (types, ranges, defaults) and the
caller's capability checked; handlers check what the table cannot express (cross-argument
rules, ownership, existence). Plain functions answer at once on the transport loop;
coroutines run as their own task, for calls that wait on a driver or the disk.
"""

from __future__ import annotations

import secrets
import time

from llmos.specs import registry
from llmos.specs.protocol import ABI_VERSION, KERNEL_VERSION, MAX_FRAME_BYTES

from . import services
from .errors import SyscallError, ebusy, einval, enoent, enomem
from .kernel import CallContext, Kernel
from .models import ModelEntry

_ROLES = ("system", "user", "assistant", "tool")


# -- process ------------------------------------------------------------------------------------

def sys_hello(k: Kernel, ctx: CallContext, args: dict) -> dict:
    if ctx.proc is not None:
        raise ebusy(f"this connection is already process {ctx.proc.pid}; call exit before hello again")
    name = args["name"].strip()
    if not name:
        raise einval("hello: 'name' must not be empty")
    wanted = args["caps"]
    if wanted is None:
        caps = frozenset(k.settings.default_caps)
    else:
        if not all(isinstance(c, str) for c in wanted):
            raise einval("hello: 'caps' must be a list of strings")
        denied = sorted(set(wanted) - set(k.settings.grantable_caps))
        if denied:
            raise SyscallError("EPERM", f"capabilities not grantable here: {', '.join(denied)}; "
                                        f"grantable: {', '.join(k.settings.grantable_caps)}")
        caps = frozenset(wanted)
    token = args["service_token"]
    if token is not None and not secrets.compare_digest(token, k.service_token):
        raise SyscallError("EPERM", "hello: wrong service_token (only the kernel's own service host has one)")
    proc = k.procs.register(ctx.routing[0], name, caps)
    proc.serves_calls = token is not None
    return {"pid": proc.pid, "name": name, "caps": sorted(caps), "abi": ABI_VERSION, "kernel": KERNEL_VERSION,
            "heartbeat_s": k.settings.heartbeat_s, "max_frame": MAX_FRAME_BYTES,
            "default_model": k.settings.default_model}


def sys_exit(k: Kernel, ctx: CallContext, args: dict) -> dict:
    k.reap(ctx.proc, "exited")
    return {"pid": ctx.proc.pid}


def sys_ping(k: Kernel, ctx: CallContext, args: dict) -> dict:
    return {"pong": True, "time": time.time(), "payload": args["payload"]}


def sys_ps(k: Kernel, ctx: CallContext, args: dict) -> dict:
    return {"processes": [p.describe() for p in k.procs]}


def sys_kill(k: Kernel, ctx: CallContext, args: dict) -> dict:
    target = k.procs.get(args["pid"])
    if target is None:
        raise enoent(f"no process with pid {args['pid']}")
    k.reap(target, f"killed by process {ctx.proc.pid}")
    return {"pid": target.pid}


def sys_sysinfo(k: Kernel, ctx: CallContext, args: dict) -> dict:
    return {"kernel": KERNEL_VERSION, "abi": ABI_VERSION, "uptime_s": round(time.time() - k.started, 3),
            "socket": k.settings.socket, "state_dir": str(k.settings.state_dir), "processes": len(k.procs),
            "devices": list(k.schedulers), "models": sorted(k.models), "default_model": k.settings.default_model}


# -- devices ------------------------------------------------------------------------------------

def sys_devices(k: Kernel, ctx: CallContext, args: dict) -> dict:
    out = []
    for name in k.schedulers:
        drv = k.driver(name)
        acct = k.memory.devices.get(name)
        row = {"name": name, "kind": "cpu" if name == "cpu" else "cuda", "driver": drv.state,
               "total_bytes": 0, "used_bytes": 0, "free_bytes": 0, "models_bytes": 0, "reserved_bytes": 0,
               "kv_bytes": sum(e.kv_bytes for e in k.models.values() if e.device == name),
               "queued": len(k.schedulers[name]), "running": len(k.running[name])}
        if acct is not None:
            row.update(total_bytes=acct.total_bytes, used_bytes=acct.used_bytes, free_bytes=acct.free_bytes,
                       models_bytes=acct.models_bytes, reserved_bytes=acct.reserved_bytes)
        out.append(row)
    return {"devices": out}


def sys_alloc_gpu(k: Kernel, ctx: CallContext, args: dict) -> dict:
    device = k.pick_device(args["device"])
    acct = k.memory.devices.get(device)
    if acct is None:
        raise SyscallError("EAGAIN", f"the driver for {device} is still starting; retry in a few seconds")
    nbytes = args["bytes"]
    quota = k.settings.reserve_quota_bytes
    if quota is not None and ctx.proc.reserved_bytes + nbytes > quota:
        raise enomem(f"reserving {nbytes} bytes would take process {ctx.proc.pid} past its quota of {quota} bytes "
                     f"(it holds {ctx.proc.reserved_bytes})")
    if not acct.can_fit(nbytes):
        from .models import eviction_victims
        victims = eviction_victims(list(k.models.values()), device, nbytes, acct.free_bytes)
        if victims is None:
            raise enomem(f"{device} has {acct.free_bytes} bytes free, {nbytes} asked; models hold {acct.models_bytes}, "
                         f"reservations {acct.reserved_bytes}")
        for victim in victims:
            k.evict(victim, f"making room for a reservation of process {ctx.proc.pid}")
    handle = k.memory.reserve(device, ctx.proc.pid, nbytes)
    ctx.proc.reservations[handle] = (device, nbytes)
    return {"handle": handle, "device": device, "bytes": nbytes}


def sys_free(k: Kernel, ctx: CallContext, args: dict) -> dict:
    held = ctx.proc.reservations.pop(args["handle"], None)
    if held is None:
        raise enoent(f"process {ctx.proc.pid} holds no reservation {args['handle']}")
    device, _ = held
    return {"handle": args["handle"], "bytes": k.memory.release(device, args["handle"])}


# -- models -------------------------------------------------------------------------------------

def sys_models(k: Kernel, ctx: CallContext, args: dict) -> dict:
    return {"loaded": [e.describe() for e in k.models.values()],
            "available": registry.available(k.settings.models)}


async def sys_load_model(k: Kernel, ctx: CallContext, args: dict) -> dict:
    already = args["name"] in k.models
    entry = await k.ensure_model(args["name"], args["device"], ctx.proc)
    return {"name": entry.name, "device": entry.device, "bytes": entry.bytes, "load_s": round(entry.load_s, 3),
            "already_loaded": already}


def sys_unload_model(k: Kernel, ctx: CallContext, args: dict) -> dict:
    name = args["name"]
    entry = k.models.get(name)
    if entry is None:
        raise enoent(f"model '{name}' is not loaded")
    if args["evict"]:
        others = entry.refs - {ctx.proc.pid}
        if others or entry.in_use or entry.pinned or entry.state != "ready":
            why = (f"{len(others)} other process(es) reference it" if others else
                   f"{entry.in_use} request(s) are using it" if entry.in_use else
                   "the operator pinned it at boot" if entry.pinned else "it is still loading")
            raise ebusy(f"cannot evict '{name}': {why}")
    entry.refs.discard(ctx.proc.pid)
    ctx.proc.models.discard(name)
    if args["evict"]:
        k.evict(entry, f"evicted by process {ctx.proc.pid}")
        return {"name": name, "refs": 0, "unloaded": True}
    return {"name": name, "refs": len(entry.refs), "unloaded": False}


# -- inference ----------------------------------------------------------------------------------

async def model_for(k: Kernel, ctx: CallContext, name: str | None, kind: str) -> ModelEntry:
    if name is None:
        name = k.settings.default_model
        if name is None:
            raise einval("no model given and this kernel has no default model; pass 'model'")
    entry = k.models.get(name)
    if entry is None or entry.state != "ready" or ctx.proc.pid not in entry.refs:
        entry = await k.ensure_model(name, "auto", ctx.proc)
    if entry.kind != kind:
        use = "infer" if entry.kind == "generate" else "embed"
        raise einval(f"model '{name}' is a {entry.kind} model; use {use} with it")
    return entry


def _check_messages(messages: list) -> list[dict]:
    if not messages:
        raise einval("infer: 'messages' must not be empty")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise einval(f"infer: messages[{i}] must be a map with string 'role' and 'content'")
        if m["role"] not in _ROLES:
            raise einval(f"infer: messages[{i}].role must be one of {', '.join(_ROLES)}, got '{m['role'][:32]}'")
        out.append({"role": m["role"], "content": m["content"]})
    return out


async def sys_infer(k: Kernel, ctx: CallContext, args: dict) -> dict:
    if (args["prompt"] is None) == (args["messages"] is None):
        raise einval("infer: give exactly one of 'prompt' and 'messages'")
    messages = _check_messages(args["messages"]) if args["messages"] is not None else None
    stop = args["stop"]
    if isinstance(stop, str):
        stop = [stop]
    stop = stop or []
    if len(stop) > 16 or not all(isinstance(s, str) and 0 < len(s) <= 256 for s in stop):
        raise einval("infer: 'stop' must be up to 16 non-empty strings of at most 256 characters")
    share = _caller_served(k, ctx, args["for_call"])
    entry = await model_for(k, ctx, args["model"], "generate")
    payload = {"prompt": args["prompt"], "messages": messages, "max_tokens": args["max_tokens"],
               "temperature": args["temperature"], "top_p": args["top_p"], "top_k": args["top_k"],
               "stop": stop, "seed": args["seed"], "priority": args["priority"]}
    req = k.new_request(ctx, "infer", entry, payload, stream=args["stream"], priority=args["priority"],
                        deadline_s=args["deadline"], share=share)
    k.submit(req)
    return await req.future


def _caller_served(k: Kernel, ctx: CallContext, for_call: int | None) -> int | None:
    """The pid a generation counts against when the service host runs it for an svc_call."""
    if for_call is None:
        return None
    if not ctx.proc.serves_calls:
        raise SyscallError("EPERM", "infer: only the kernel's service host may pass 'for_call'")
    call = k.services.calls.get(for_call)
    if call is None:
        raise enoent(f"infer: no svc_call {for_call} is in flight (it ended, or never was)")
    return call.pid


async def sys_embed(k: Kernel, ctx: CallContext, args: dict) -> dict:
    texts = args["input"]
    if isinstance(texts, str):
        texts = [texts]
    if not texts or len(texts) > 1024 or not all(isinstance(t, str) for t in texts):
        raise einval("embed: 'input' must be a string or a list of 1 to 1024 strings")
    return await embed_texts(k, ctx, texts, args["model"], args["normalize"])


async def embed_texts(k: Kernel, ctx: CallContext, texts: list[str], model: str, normalize: bool = True) -> dict:
    """Embeddings through the model's driver, as a request of the caller's (counted, cancellable, reaped)."""
    entry = await model_for(k, ctx, model, "embed")
    req = k.new_request(ctx, "embed", entry, {})
    req.state = "running"
    k.supervisor.send(entry.device, {"op": "embed", "rid": req.rid, "model": entry.name, "input": texts,
                                     "normalize": normalize})
    return await req.future


def sys_cancel(k: Kernel, ctx: CallContext, args: dict) -> dict:
    req = ctx.proc.requests.get(args["id"])
    if req is None:
        raise enoent(f"no request with id {args['id']} is in flight for process {ctx.proc.pid}")
    k.end_request(req, SyscallError("ECANCELED", f"cancelled by the caller (request {args['id']})"))
    return {"cancelled": True}


# -- memory -------------------------------------------------------------------------------------

async def sys_memwrite(k: Kernel, ctx: CallContext, args: dict) -> dict:
    value = args["value"]
    if len(value) > k.settings.max_value_bytes:
        raise enomem(f"memwrite: value of {len(value)} bytes is over the limit of {k.settings.max_value_bytes}")
    if not args["embed"]:
        return await k.memstore.write(ctx.proc.name, args["region"], args["key"], value)
    if not isinstance(value, str):
        raise einval("memwrite: embed=true needs a str value (only text has an embedding)")
    await k.memstore.check_access(ctx.proc.name, args["region"], must_exist=False)
    vector = (await embed_texts(k, ctx, [value], args["model"]))["vectors"][0]
    return await k.memstore.write(ctx.proc.name, args["region"], args["key"], value, vector, args["model"])


async def sys_memsearch(k: Kernel, ctx: CallContext, args: dict) -> dict:
    await k.memstore.check_access(ctx.proc.name, args["region"], must_exist=True)
    query = (await embed_texts(k, ctx, [args["query"]], args["model"]))["vectors"][0]
    return await k.memstore.search(ctx.proc.name, args["region"], query, args["model"], args["k"])


async def sys_memread(k: Kernel, ctx: CallContext, args: dict) -> dict:
    return await k.memstore.read(ctx.proc.name, args["region"], args["key"], args["prefix"])


async def sys_memdel(k: Kernel, ctx: CallContext, args: dict) -> dict:
    return await k.memstore.delete(ctx.proc.name, args["region"], args["key"])


HANDLERS = {
    "hello": sys_hello, "exit": sys_exit, "ping": sys_ping, "ps": sys_ps, "kill": sys_kill,
    "sysinfo": sys_sysinfo, "devices": sys_devices, "alloc_gpu": sys_alloc_gpu, "free": sys_free,
    "models": sys_models, "load_model": sys_load_model, "unload_model": sys_unload_model,
    "infer": sys_infer, "embed": sys_embed, "cancel": sys_cancel,
    "memwrite": sys_memwrite, "memread": sys_memread, "memdel": sys_memdel, "memsearch": sys_memsearch,
    "svc_list": services.sys_svc_list, "svc_call": services.sys_svc_call, "svc_reload": services.sys_svc_reload,
}
