"""Service syscalls: svc_list, svc_call, svc_reload (the service host's side: kernel/services.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..process import CallContext
    from ..kernel import Kernel


def sys_svc_list(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    return {"host": k.services.describe(), **k.services.catalog}


async def sys_svc_call(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    return await k.services.call(ctx, args)


async def sys_svc_reload(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    return await k.services.reload(args["drain"])


HANDLERS = {"svc_list": sys_svc_list, "svc_call": sys_svc_call, "svc_reload": sys_svc_reload}
