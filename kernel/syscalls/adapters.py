"""Adapter syscalls: adapters (what the caller may use), adapter_share, and load_model of a `BASE:NAME`.

An adapter belongs to the principal that trained it; sharing it is its owner's call alone, and
another principal's unshared adapter is answered as one that does not exist.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from ..adapters import AdapterNotFound, BadAdapter, adapter_parts
from ..errors import einval, enoent
from .inference import model_and_adapter

if TYPE_CHECKING:
    from ..process import CallContext
    from ..kernel import Kernel


async def sys_adapters(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    principal = ctx.proc.principal
    infos = await asyncio.to_thread(k.models.adapters.store.usable, principal)
    loaded = k.models.adapters.entries()
    out = []
    for info in infos:
        row = info.describe()
        row["loaded"] = [{"device": e.device, "state": e.state, "bytes": e.bytes, "in_use": e.in_use}
                         for e in loaded if e.info.id == info.id]
        out.append(row)
    return {"adapters": out}


async def sys_adapter_share(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    parts = adapter_parts(args["model"])
    if parts is None:
        raise einval(f"adapter_share: '{args['model'][:200]}' is not an adapter's BASE:NAME")
    base, name = parts
    try:
        info = await asyncio.to_thread(k.models.adapters.store.set_shared, ctx.proc.principal, base, name,
                                       args["shared"])
    except AdapterNotFound as exc:
        raise enoent(str(exc)) from None
    except BadAdapter as exc:
        raise einval(str(exc)) from None
    k.models.adapters.shared_changed(info)
    k.audit.record("adapter_share", pid=ctx.proc.pid, principal=ctx.proc.principal, adapter=info.id,
                   shared=args["shared"])
    return info.describe()


async def load_adapter_model(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    """load_model of `BASE:NAME`: its base as any model (a reference for the caller), then the adapter
    over every ready copy of it."""
    started = time.monotonic()
    name = args["name"]
    if args["device"] != "auto" or args["replicas"] > 1 or args["quant"] is not None:
        raise einval("load_model of an adapter (BASE:NAME) takes no device, replicas or quant: it goes where "
                     "its base is; load the base with those first")
    ready_before = {e.info.id for e in k.models.adapters.entries() if e.state == "ready"}
    entry, adapter = await model_and_adapter(k, ctx, name, "generate")
    loaded = [e for e in k.models.adapters.entries() if e.info.id == adapter]
    return {"name": name, "device": entry.device, "bytes": sum(e.bytes for e in loaded),
            "load_s": round(time.monotonic() - started, 3), "already_loaded": adapter in ready_before,
            "replicas": [e.device for e in loaded], "quant": entry.quant or "none"}


HANDLERS = {"adapters": sys_adapters, "adapter_share": sys_adapter_share}
