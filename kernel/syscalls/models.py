"""Model syscalls: models, load_model, unload_model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmos.specs import registry

from ..errors import ebusy, enoent

if TYPE_CHECKING:
    from ..dispatch import CallContext
    from ..kernel import Kernel


def sys_models(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    return {"loaded": k.models.describe(), "available": registry.available(k.settings.models)}


async def sys_load_model(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    """A device this kernel lacks is ENOENT whether or not the model is loaded; one copy serves
    everyone, so asking for it on another device than its copy's is EBUSY, naming where it is."""
    name, wanted = args["name"], args["device"]
    device = k.devices.pick(wanted)
    loaded = k.models.get(name)
    if loaded is not None and wanted != "auto" and loaded.device != device:
        raise ebusy(f"model '{name}' is loaded on {loaded.device} (one copy serves every process); ask for it "
                    f"there or on auto, or unload it (unload_model evict=true) to load it on {device}")
    entry = await k.models.ensure(name, wanted, ctx.proc)
    return {"name": entry.name, "device": entry.device, "bytes": entry.bytes, "load_s": round(entry.load_s, 3),
            "already_loaded": loaded is not None}


def sys_unload_model(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
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
        k.models.evict(entry, f"evicted by process {ctx.proc.pid}")
        return {"name": name, "refs": 0, "unloaded": True}
    return {"name": name, "refs": len(entry.refs), "unloaded": False}


HANDLERS = {"models": sys_models, "load_model": sys_load_model, "unload_model": sys_unload_model}
