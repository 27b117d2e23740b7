"""Device syscalls: devices, alloc_gpu, free."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmos.specs.channel import device_kind

from ..errors import eagain, enoent, enomem
from ..quotas import reservations_of

if TYPE_CHECKING:
    from ..process import CallContext
    from ..kernel import Kernel


def sys_devices(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    out = []
    for name in k.devices.names:
        drv = k.devices.driver(name)
        acct = k.devmem.devices.get(name)
        row = {"name": name, "kind": device_kind(name), "driver": drv.state,
               "os_pid": drv.hello.pid if drv.hello else None,
               "total_bytes": 0, "used_bytes": 0, "free_bytes": 0, "models_bytes": 0, "reserved_bytes": 0,
               "kv_bytes": sum(e.kv_bytes for e in k.models.on_device(name)), **k.devices.describe(name)}
        if acct is not None:
            row.update(total_bytes=acct.total_bytes, used_bytes=acct.used_bytes, free_bytes=acct.free_bytes,
                       models_bytes=acct.models_bytes, reserved_bytes=acct.reserved_bytes)
        out.append(row)
    return {"devices": out}


def sys_alloc_gpu(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    device = k.devices.pick(args["device"])
    acct = k.devmem.devices.get(device)
    if acct is None:
        raise eagain(f"the driver for {device} is still starting; retry in a few seconds")
    nbytes = args["bytes"]
    principal = ctx.proc.principal
    k.quotas.check_reserve(principal, device, acct.total_bytes, reservations_of(k.procs, k.jobs, principal), nbytes, "alloc_gpu")
    quota = k.settings.reserve_quota_bytes
    if quota is not None and ctx.proc.reserved_bytes + nbytes > quota:
        raise enomem(f"reserving {nbytes} bytes would take process {ctx.proc.pid} past its quota of {quota} bytes "
                     f"(it holds {ctx.proc.reserved_bytes})")
    if not acct.can_fit(nbytes):
        k.models.make_room(device, nbytes, f"a reservation of process {ctx.proc.pid}")
    handle = k.devmem.reserve(device, ctx.proc.pid, nbytes)
    ctx.proc.reservations[handle] = (device, nbytes)
    return {"handle": handle, "device": device, "bytes": nbytes}


def sys_free(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    held = ctx.proc.reservations.pop(args["handle"], None)
    if held is None:
        raise enoent(f"process {ctx.proc.pid} holds no reservation {args['handle']}")
    device, _ = held
    return {"handle": args["handle"], "bytes": k.devmem.release(device, args["handle"])}


HANDLERS = {"devices": sys_devices, "alloc_gpu": sys_alloc_gpu, "free": sys_free}
