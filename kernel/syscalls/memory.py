"""Memory syscalls: memwrite, memread, memdel, memsearch (the store itself: kernel/memstore.py).

Each works in the namespace of the principal it is made for: the caller's, or, when the service
host passes `for_call`, that of the program whose svc_call it serves (a kb's chunks are its
caller's regions, charged to its caller's quota, invisible to every other tenant).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import einval, enomem
from .inference import embed_texts, on_behalf

if TYPE_CHECKING:
    from ..process import CallContext
    from ..kernel import Kernel


async def sys_memwrite(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    value = args["value"]
    if len(value) > k.settings.max_value_bytes:
        raise enomem(f"memwrite: value of {len(value)} bytes is over the limit of {k.settings.max_value_bytes}")
    payer = on_behalf(k, ctx, args["for_call"], "memwrite")
    owner = payer.principal
    limits = (k.quotas.limit(owner, "mem_bytes"), k.quotas.limit(owner, "mem_keys"))
    if not args["embed"]:
        return await k.memstore.write(owner, args["region"], args["key"], value, limits=limits)
    if not isinstance(value, str):
        raise einval("memwrite: embed=true needs a str value (only text has an embedding)")
    await k.memstore.check_access(owner, args["region"], must_exist=False)
    vector = (await embed_texts(k, ctx, [value], args["model"], share=payer.pid))["vectors"][0]
    return await k.memstore.write(owner, args["region"], args["key"], value, vector, args["model"], limits)


async def sys_memsearch(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    payer = on_behalf(k, ctx, args["for_call"], "memsearch")
    await k.memstore.check_access(payer.principal, args["region"], must_exist=True)
    query = (await embed_texts(k, ctx, [args["query"]], args["model"], share=payer.pid))["vectors"][0]
    return await k.memstore.search(payer.principal, args["region"], query, args["model"], args["k"])


async def sys_memread(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    owner = on_behalf(k, ctx, args["for_call"], "memread").principal
    return await k.memstore.read(owner, args["region"], args["key"], args["prefix"])


async def sys_memdel(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    owner = on_behalf(k, ctx, args["for_call"], "memdel").principal
    return await k.memstore.delete(owner, args["region"], args["key"])


HANDLERS = {"memwrite": sys_memwrite, "memread": sys_memread, "memdel": sys_memdel, "memsearch": sys_memsearch}
