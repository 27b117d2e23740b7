"""The stats syscall: the kernel's figures for userland, the same ones the Prometheus metrics carry.

Totals come back from the metrics' counters, recent figures from their 60-s window, state from
the tables, so `llmos top`, the gateway and a Prometheus scrape never disagree.

An admin sees the whole kernel. Anyone else sees its own principal's activity and no other
tenant's: its replies by syscall, its tokens, its latencies and tokens per second (a service's
generation counts as its caller's), its processes. The machine's figures stay whole: devices
(memory, queue and batch, as `devices` shows them), models, the service host, auth failures,
readiness.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from llmos.specs.channel import device_kind

from ..metrics import LATENCIES

if TYPE_CHECKING:
    from ..process import CallContext
    from ..kernel import Kernel


async def sys_stats(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    ready, why = await k.health.check(args["wait_ready"])
    metrics = k.metrics
    now = time.monotonic()
    uptime = time.time() - k.started
    everyone = "admin" in ctx.proc.caps
    whose = None if everyone else ctx.proc.principal
    tokens_per_s, by_pid = metrics.window.tokens_per_s(now, uptime, whose)
    return {
        "uptime_s": round(uptime, 3),
        "requests": metrics.replies(whose),
        "tokens": metrics.token_totals(whose),
        "latency": {kind: metrics.window.percentiles(kind, now, whose) for kind in LATENCIES},
        "throughput": {"tokens_per_s": round(tokens_per_s, 3)},
        "devices": [device_row(k, name) for name in k.devices.names],
        "models": [{"name": e.name, "device": e.device, "state": e.state} for e in k.models],
        "processes": [{"pid": p.pid, "name": p.name, "principal": p.principal, "requests": k.requests.in_flight(p.pid),
                       "tokens": p.tokens, "tokens_per_s": round(by_pid.get(p.pid, 0.0), 3)}
                      for p in k.procs if everyone or p.principal == ctx.proc.principal],
        "services": {key: value for key, value in k.services.describe().items() if key in ("state", "restarts")},
        "auth_failures": metrics.auth_failure_total(),
        "ready": ready,
        "ready_reason": why,
    }


def device_row(k: "Kernel", name: str) -> dict:
    drv = k.drivers.get(name)
    acct = k.devmem.devices.get(name)
    return {"name": name, "kind": device_kind(name), "driver": drv.state if drv else "starting",
            **k.devices.describe(name), "kv_usage": k.metrics.kv_usage.get(name),
            "used_bytes": acct.used_bytes if acct else 0, "reserved_bytes": acct.reserved_bytes if acct else 0,
            "total_bytes": acct.total_bytes if acct else 0, "restarts": drv.restarts if drv else 0}


HANDLERS = {"stats": sys_stats}
