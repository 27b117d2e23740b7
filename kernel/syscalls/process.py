"""Process syscalls: hello, exit, ping, ps, kill, sysinfo."""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING

from llmos.specs.protocol import ABI_VERSION, KERNEL_VERSION, MAX_FRAME_BYTES

from ..errors import ebusy, einval, enoent, eperm

if TYPE_CHECKING:
    from ..dispatch import CallContext
    from ..kernel import Kernel


def sys_hello(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
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
            raise eperm(f"capabilities not grantable here: {', '.join(denied)}; "
                        f"grantable: {', '.join(k.settings.grantable_caps)}")
        caps = frozenset(wanted)
    token = args["service_token"]
    if token is not None and not secrets.compare_digest(token, k.service_token):
        raise eperm("hello: wrong service_token (only the kernel's own service host has one)")
    proc = k.procs.register(ctx.routing[0], name, caps)
    proc.serves_calls = token is not None
    return {"pid": proc.pid, "name": name, "caps": sorted(caps), "abi": ABI_VERSION, "kernel": KERNEL_VERSION,
            "heartbeat_s": k.settings.heartbeat_s, "max_frame": MAX_FRAME_BYTES,
            "default_model": k.settings.default_model}


def sys_exit(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    k.reap(ctx.proc, "exited")
    return {"pid": ctx.proc.pid}


def sys_ping(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    return {"pong": True, "time": time.time(), "payload": args["payload"]}


def sys_ps(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    return {"processes": [p.describe() for p in k.procs]}


def sys_kill(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    target = k.procs.get(args["pid"])
    if target is None:
        raise enoent(f"no process with pid {args['pid']}")
    k.reap(target, f"killed by process {ctx.proc.pid}")
    return {"pid": target.pid}


def sys_sysinfo(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    return {"kernel": KERNEL_VERSION, "abi": ABI_VERSION, "uptime_s": round(time.time() - k.started, 3),
            "socket": k.settings.socket, "state_dir": str(k.settings.state_dir), "processes": len(k.procs),
            "devices": list(k.devices.names), "models": k.models.names(), "default_model": k.settings.default_model}


HANDLERS = {"hello": sys_hello, "exit": sys_exit, "ping": sys_ping, "ps": sys_ps, "kill": sys_kill,
            "sysinfo": sys_sysinfo}
