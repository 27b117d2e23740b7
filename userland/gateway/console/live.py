"""What the console shows, live: one snapshot of the kernel per principal per second, shared by its pages.

The console's reads and actions go out on a connection of the request's own principal, as the
chat does, but one that asks the kernel for the capabilities a console needs (ps, devices,
models, load, svc, tune) and for admin where the principal may hold it: an operator or admin
user then sees every principal's processes and may kill them, as `llmos top` and `llmos kill`
do; anyone else sees what the kernel shows its principal. The kernel decides at hello; a
denied try is audited by the kernel and the next, smaller set is asked for.

However many pages a principal has open, the kernel is asked at most once per SNAPSHOT_TTL_S
for them all (one in-flight snapshot, awaited by every subscriber), and at most MAX_SUBSCRIBERS
event streams are open at once (MAX_SUBSCRIBERS_PER_PRINCIPAL of one principal): past either,
a new one is 429. A page gets one event per EVENT_INTERVAL_S. Loads started from the console
(which tell their progress more often, loading.py) are bounded the same way.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

from ...client import AsyncClient
from ...errors import ERRORS
from ..errors import ApiError
from ..principals import PROGRAM_NAME, Identity, Principals, principal_socket

VIEW_CAPS = ("ps", "devices", "models", "load", "svc")
# Most first; None, the last, asks for the kernel's default set. Each try the kernel denies is an audit line:
# up to three for a plain user, once when its console connection is made (not per request).
CAPS_TRIES = ((*VIEW_CAPS, "tune", "admin"), (*VIEW_CAPS, "admin"), (*VIEW_CAPS, "tune"), VIEW_CAPS, None)
EVENT_INTERVAL_S = 1.0
SNAPSHOT_TTL_S = 0.9
MAX_SUBSCRIBERS = 32
MAX_SUBSCRIBERS_PER_PRINCIPAL = 8
MAX_LOADS = 16                  # loads a console request waits on, telling their progress
MAX_LOADS_PER_PRINCIPAL = 2
CONSOLE_NAME = "llmos-console"


class ConsoleConnections(Principals):
    """Principals' connections as the gateway keeps them, opened with the console's capabilities."""

    async def _connect(self, who: Identity) -> AsyncClient:
        return await self.open(who)

    async def open(self, who: Identity) -> AsyncClient:
        """A new connection of the identity's, not kept: for a call whose references should end with it."""
        for caps in CAPS_TRIES:
            if who.entry is None:
                client = AsyncClient(self.socket, CONSOLE_NAME, caps=list(caps) if caps else None, timeout=30.0,
                                     key=self.key)
            else:
                client = AsyncClient(principal_socket(who.entry), f"{PROGRAM_NAME}:{who.entry.name}:console",
                                     caps=list(caps) if caps else None, timeout=30.0, key=who.entry.key_file)
            try:
                await client.connect()
                return client
            except ERRORS["EPERM"]:
                if caps is None:
                    raise
        raise AssertionError("unreachable: the last try asks for the kernel's default caps")


def merge_processes(stats: list[dict], ps: list[dict]) -> list[dict]:
    """`ps` (age, reservation, models) joined by pid with `stats` (principal, tokens per second)."""
    rates = {p["pid"]: p for p in stats}
    rows = []
    for p in ps:
        seen = rates.get(p["pid"], {})
        rows.append({"pid": p["pid"], "name": p["name"], "principal": p.get("principal") or seen.get("principal"),
                     "age_s": p["age_s"], "requests": p["requests"], "tokens": p["tokens"],
                     "tokens_per_s": seen.get("tokens_per_s", 0.0), "reserved_bytes": p["reserved_bytes"],
                     "models": p.get("models", [])})
    return rows


def in_flight_by_principal(processes: list[dict]) -> dict[str, int]:
    """The scheduler's queue as a principal sees it: requests in flight (queued or running) per principal."""
    queues: dict[str, int] = {}
    for p in processes:
        queues[p["principal"]] = queues.get(p["principal"], 0) + p["requests"]
    return queues


async def take_snapshot(client: AsyncClient) -> dict:
    """Everything the system views draw, from the syscalls the CLI's ps, devices, models, top and jobs use."""
    stats = await client.stats()
    ps = await client.ps()
    devices = await client.devices()
    models = await client.models()
    jobs = (await client.jobs())["jobs"]
    rates = {d["name"]: d for d in stats["devices"]}
    processes = merge_processes(stats["processes"], ps)
    return {
        "time": time.time(),
        "principal": client.info.get("principal"),
        "admin": "admin" in client.info.get("caps", ()),
        "ready": stats["ready"], "ready_reason": stats.get("ready_reason") or "",
        "uptime_s": stats["uptime_s"],
        "throughput": stats["throughput"],
        "ttft_s": stats["latency"]["ttft_s"],
        "services": stats["services"],
        "requests": {"total": stats["requests"]["total"], "errors": stats["requests"]["errors"]},
        "processes": processes,
        "queues": in_flight_by_principal(processes),
        "devices": [{**d, "kv_usage": rates.get(d["name"], {}).get("kv_usage")} for d in devices],
        "models": models,
        "jobs": jobs,
    }


class Slots:
    """A bounded count of things held open, in all and per identity: 429 past either, given back by release()."""

    def __init__(self, what: str, most: int, most_each: int, advice: str, code: str):
        self.what, self.most, self.most_each, self.advice, self.code = what, most, most_each, advice, code
        self._held: dict[Identity, int] = {}

    def take(self, who: Identity) -> None:
        mine = self._held.get(who, 0)
        if sum(self._held.values()) >= self.most or mine >= self.most_each:
            raise ApiError(429, f"too many open {self.what} ({self.most} in all, {self.most_each} per principal); "
                                f"{self.advice}", "rate_limit_error", code=self.code, retry_after=5)
        self._held[who] = mine + 1

    def release(self, who: Identity) -> None:
        left = self._held.pop(who, 0) - 1
        if left > 0:
            self._held[who] = left


class Live:
    """The console's connections, its shared snapshots and its bounded event subscribers."""

    def __init__(self, socket: str | None, key: str | None):
        self.connections = ConsoleConnections(socket, key, max_streams=0)
        self._snapshots: dict[Identity, tuple[float, asyncio.Future]] = {}
        self.subscribers = Slots("console event streams", MAX_SUBSCRIBERS, MAX_SUBSCRIBERS_PER_PRINCIPAL,
                                 "close a console page", "too_many_event_streams")
        self.loads = Slots("model loads from the console", MAX_LOADS, MAX_LOADS_PER_PRINCIPAL,
                           "wait for one to finish", "too_many_loads")

    async def snapshot(self, who: Identity, fetch: Callable[[], Awaitable[dict]]) -> dict:
        """The identity's snapshot, at most SNAPSHOT_TTL_S old; one kernel round (fetch) for all who ask meanwhile."""
        now = time.monotonic()
        held = self._snapshots.get(who)
        if held is None or now - held[0] > SNAPSHOT_TTL_S or (held[1].done() and held[1].exception()):
            held = (now, asyncio.ensure_future(fetch()))
            self._snapshots[who] = held
        return await asyncio.shield(held[1])

    def forget_snapshots(self, keep: set[Identity]) -> None:
        for who in [w for w in self._snapshots if w not in keep]:
            del self._snapshots[who]

    async def close(self) -> None:
        for _, fut in self._snapshots.values():
            fut.cancel()
        await self.connections.close()

