"""Process syscalls: hello, exit, ping, ps, kill, sysinfo."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import TYPE_CHECKING

from llmos.specs.protocol import ABI_MINOR, ABI_VERSION, KERNEL_VERSION, MAX_FRAME_BYTES

from ..errors import ebusy, einval, enoent, eperm
from ..principals import OPERATOR, SERVICES

if TYPE_CHECKING:
    from ..process import CallContext
    from ..kernel import Kernel


def sys_hello(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    if ctx.proc is not None:
        raise ebusy(f"this connection is already process {ctx.proc.pid}; call exit before hello again")
    name = args["name"].strip()
    if not name:
        raise einval("hello: 'name' must not be empty")
    principal = k.principals.get(ctx.principal)
    if principal is None:
        raise eperm("hello: this connection's key belongs to no user (removed, or rotated); ask the operator")
    token = args["service_token"]
    if token is not None:
        # The token is a second proof, never the first: only the operator's own connection (the
        # private ipc socket the host is started on) may present it, so a leaked token is no key.
        if ctx.principal != OPERATOR or not secrets.compare_digest(token, k.service_token):
            k.audit.record("denied", call="hello", principal=ctx.principal, why="wrong service_token")
            raise eperm("hello: wrong service_token (only the kernel's own service host has one)")
        principal = k.principals.services
    lowered = k.procs.ceiling(ctx.connection)
    ceiling = principal.caps if lowered is None else principal.caps & lowered
    wanted = args["caps"]
    if wanted is None:
        caps = frozenset(k.settings.default_caps) & ceiling
    else:
        if not all(isinstance(c, str) for c in wanted):
            raise einval("hello: 'caps' must be a list of strings")
        denied = sorted(set(wanted) - ceiling)
        if denied:
            k.audit.record("denied", call="hello", principal=principal.name, program=name, caps=denied)
            named = ", ".join(c[:32] for c in denied[:8]) + (f" and {len(denied) - 8} more" if len(denied) > 8 else "")
            raise eperm(f"capabilities not yours to hold: {named}; "       # a reply as bounded as the audit line
                        f"this connection may hold: {', '.join(sorted(ceiling)) or 'none'}")
        caps = frozenset(wanted)
    k.quotas.check(principal.name, "processes", sum(1 for p in k.procs if p.principal == principal.name),
                   what="hello")
    proc = k.procs.register(ctx.connection, name, caps, principal.name, ctx.principal, ctx.transport)
    proc.serves_calls = token is not None
    k.audit.record("hello", pid=proc.pid, principal=principal.name, program=name, caps=sorted(caps))
    return {"pid": proc.pid, "name": name, "principal": principal.name, "caps": sorted(caps), "abi": ABI_VERSION, "abi_minor": ABI_MINOR,
            "kernel": KERNEL_VERSION, "heartbeat_s": k.settings.heartbeat_s, "max_frame": MAX_FRAME_BYTES,
            "default_model": k.settings.default_model}


def sys_exit(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    k.procs.lower_ceiling(ctx.connection, ctx.proc.caps)    # a later hello here cannot regain what it dropped
    k.reap(ctx.proc, "exited")
    return {"pid": ctx.proc.pid}


def sys_ping(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    return {"pong": True, "time": time.time(), "payload": args["payload"]}


def sys_ps(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    """Every process to an admin; to anyone else, its own principal's and the kernel's service host."""
    everyone = "admin" in ctx.proc.caps
    return {"processes": [p.describe(k.requests.in_flight(p.pid)) for p in k.procs
                          if everyone or p.principal in (ctx.proc.principal, SERVICES)]}


def sys_kill(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    target = k.procs.get(args["pid"])
    if target is None:
        raise enoent(f"no process with pid {args['pid']}")
    if target.serves_calls:
        raise eperm(f"process {target.pid} is the kernel's service host; restart it with svc_reload")
    k.audit.record("kill", by=ctx.proc.pid, principal=ctx.proc.principal, pid=target.pid,
                   target_principal=target.principal)
    k.reap(target, f"killed by process {ctx.proc.pid}")
    return {"pid": target.pid}


def sys_shutdown(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    """Stop after this reply goes out: the boot loop is waiting on k.stopping."""
    k.audit.record("shutdown_requested", by=ctx.proc.principal, pid=ctx.proc.pid, reason=args["reason"])
    k.stop_reason = f"{args['reason']} (process {ctx.proc.pid})"
    asyncio.get_running_loop().call_soon(k.stopping.set)
    return {"stopping": True}


def sys_sysinfo(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    return {"kernel": KERNEL_VERSION, "abi": ABI_VERSION, "abi_minor": ABI_MINOR, "uptime_s": round(time.time() - k.started, 3),
            "socket": k.settings.socket, "state_dir": str(k.settings.state_dir), "processes": len(k.procs),
            "devices": list(k.devices.names), "models": k.models.names(), "default_model": k.settings.default_model}


HANDLERS = {"hello": sys_hello, "exit": sys_exit, "ping": sys_ping, "ps": sys_ps, "kill": sys_kill,
            "sysinfo": sys_sysinfo, "shutdown": sys_shutdown}
