"""Model syscalls: models, load_model, unload_model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import registry

from ..errors import ebusy, einval, enoent, eperm
from .adapters import load_adapter_model
from ..adapters import adapter_parts

if TYPE_CHECKING:
    from ..process import CallContext
    from ..kernel import Kernel


def sys_models(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    """Adapters loaded show among the models (kind adapter, with their base), only those the caller may use."""
    return {"loaded": k.models.describe() + k.models.adapters.describe(ctx.proc.principal),
            "available": registry.available(k.settings.models)}


async def sys_load_model(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    """A device this kernel lacks is ENOENT whether or not the model is loaded; one copy per device
    serves everyone, so asking for it on a device without a copy, or quantized otherwise than it
    is loaded, is EBUSY, naming where and how it is."""
    name, wanted, replicas, quant = args["name"], args["device"], args["replicas"], args["quant"]
    if adapter_parts(name) is not None:
        return await load_adapter_model(k, ctx, args)
    device = k.devices.pick(wanted)
    if replicas > 1:
        if "admin" not in ctx.proc.caps:
            raise eperm("load_model: replicas over 1 need admin (placing copies on devices is the operator's call)")
        if wanted != "auto":
            raise einval("load_model: replicas over 1 are placed by the kernel: pass device auto")
    copies = k.models.replicas(name)
    if copies and wanted != "auto" and device not in {e.device for e in copies}:
        where = ", ".join(e.device for e in copies)
        raise ebusy(f"model '{name}' is loaded on {where} (one copy serves every process); ask for it "
                    f"there or on auto, or unload it (unload_model evict=true) to load it on {device}")
    loaded_as = (copies[0].quant or "none") if copies else None
    if copies and quant not in (None, loaded_as):
        raise ebusy(f"model '{name}' is loaded with quant {loaded_as} (one copy serves every process); ask for "
                    f"quant {loaded_as} or leave quant out, or unload it (unload_model evict=true) to load it as {quant}")
    entry = await k.models.ensure(name, wanted, ctx.proc, replicas=replicas, quant=quant)
    return {"name": entry.name, "device": entry.device, "bytes": entry.bytes, "load_s": round(entry.load_s, 3),
            "already_loaded": bool(copies) and len(copies) >= replicas,
            "replicas": [e.device for e in k.models.replicas(name)], "quant": entry.quant or "none"}


def sys_unload_model(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    name = args["name"]
    copies = k.models.replicas(name)
    if not copies:
        raise enoent(f"model '{name}' is not loaded")
    if args["evict"]:
        for entry in copies:
            others = entry.refs - {ctx.proc.pid}
            if others or entry.in_use or entry.pinned or entry.state != "ready":
                why = (f"{len(others)} other process(es) reference it" if others else
                       f"{entry.in_use} request(s) are using it" if entry.in_use else
                       "the operator pinned it at boot" if entry.pinned else "it is still loading")
                raise ebusy(f"cannot evict '{name}': {why}")
    for entry in copies:
        entry.refs.discard(ctx.proc.pid)
    ctx.proc.models.discard(name)
    if args["evict"]:
        for entry in copies:
            k.models.evict(entry, f"evicted by process {ctx.proc.pid}")
        return {"name": name, "refs": 0, "unloaded": True}
    return {"name": name, "refs": len(copies[0].refs), "unloaded": False}


HANDLERS = {"models": sys_models, "load_model": sys_load_model, "unload_model": sys_unload_model}
