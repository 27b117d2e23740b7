"""Readiness: the default model is loaded and a one-token probe through the scheduler succeeded lately.

A loaded model is not proof that the kernel serves: a driver stuck in a step, a full queue or a
broken engine all leave the table saying "ready". So the probe is a real client of the kernel:
it connects to the operator's socket, says hello, generates one token on the default model and
exits, through the same dispatch, fair scheduler and driver as everyone's requests (and is counted
in the metrics like them). It runs only while someone asks (/health/ready, `stats`), at most once
every PROBE_EVERY_S; a success counts for FRESH_S.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import TYPE_CHECKING, Callable

import zmq

from llmos.specs.protocol import ABI_VERSION, NOTICE_ID, pack, unpack

from . import logs

if TYPE_CHECKING:
    import zmq.asyncio

    from .config import Settings
    from .models import ModelTable

log = logs.get("llmos.health")

PROBE_EVERY_S = 10.0       # the most often a probe runs, however often readiness is asked
FRESH_S = 30.0             # how long a probe's success keeps the kernel ready
PROBE_TIMEOUT_S = 10.0     # a probe that has no token by then fails: the kernel is not serving in time


class Readiness:
    def __init__(self, settings: "Settings", models: "ModelTable", stopping: asyncio.Event,
                 spawn: Callable[..., asyncio.Task], ctx: "zmq.asyncio.Context"):
        """stopping: set when the kernel is shutting down; spawn: runs a probe as a task the kernel owns;
        ctx: the kernel's ZeroMQ context, whose operator socket the probe connects to."""
        self.settings = settings
        self.models = models
        self.stopping = stopping
        self.spawn = spawn
        self.ctx = ctx
        self.last_ok: float | None = None        # monotonic time of the last successful probe
        self.last_started: float | None = None
        self.last_failure: str | None = None     # why the latest probe failed; None once one succeeds
        self.probe: asyncio.Task | None = None

    def state(self) -> tuple[bool, str]:
        """(ready, why) from what is known now; starts nothing."""
        if self.stopping.is_set():
            return False, "the kernel is shutting down"
        name = self.settings.default_model
        if name is None:
            return False, "this kernel has no default model"
        entry = self.models.get(name)
        if entry is None or entry.state != "ready":
            return False, f"the default model {name} is {'not loaded' if entry is None else entry.state}"
        if self.last_failure is not None:
            return False, f"the probe of {name} failed: {self.last_failure}"
        if self.last_ok is None:
            return False, f"no probe of {name} has run yet" if self.probe is None else f"probing {name}"
        age = time.monotonic() - self.last_ok
        if age > FRESH_S:
            return False, f"no probe of {name} succeeded in the last {FRESH_S:g} s"
        return True, f"{name} answered a one-token probe {age:.1f} s ago"

    async def check(self, wait: float) -> tuple[bool, str]:
        """Ask for readiness: start a probe if one is due, wait up to `wait` s for a running one."""
        self.ask()
        if self.probe is not None and wait > 0:
            try:
                await asyncio.wait_for(asyncio.shield(self.probe), wait)
            except asyncio.TimeoutError:
                pass
        return self.state()

    def ask(self) -> None:
        """Start a probe unless one runs, one started less than PROBE_EVERY_S ago, or the model is not there."""
        now = time.monotonic()
        name = self.settings.default_model
        entry = self.models.get(name) if name else None
        if self.probe is not None or entry is None or entry.state != "ready" or self.stopping.is_set():
            return
        if self.last_started is not None and now - self.last_started < PROBE_EVERY_S:
            return
        self.last_started = now
        self.probe = self.spawn(self._probe(name), "readiness-probe")

    async def _probe(self, model: str) -> None:
        try:
            failure = await asyncio.wait_for(probe_once(self.ctx, self.settings.operator_socket, model),
                                             PROBE_TIMEOUT_S + 2)
        except asyncio.TimeoutError:
            failure = f"no token within {PROBE_TIMEOUT_S:g} s"
        except Exception as exc:   # the probe's own failure is a finding, never the kernel's
            failure = f"{type(exc).__name__}: {exc}"
        finally:
            self.probe = None
        if failure is None:
            self.last_ok, self.last_failure = time.monotonic(), None
        else:
            self.last_failure = failure
            log.warning("health.probe_failed", model=model, reason=failure)


async def probe_once(ctx: zmq.asyncio.Context, socket: str, model: str) -> str | None:
    """hello, a one-token infer on `model`, exit, as a client on `socket`; None, or why it failed."""
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(socket)
    ids = itertools.count(1)
    try:
        calls = [("hello", {"name": "health-probe", "caps": ["infer"]}),
                 ("infer", {"prompt": "ping", "model": model, "max_tokens": 1, "temperature": 0.0,
                            "deadline": PROBE_TIMEOUT_S}),
                 ("exit", {})]
        for call, args in calls:
            req_id = next(ids)
            await sock.send(pack({"v": ABI_VERSION, "id": req_id, "call": call, "args": args}))
            reply = await _reply(sock, req_id)
            if not reply.get("ok"):
                error = reply.get("error") or {}
                return f"{call}: {error.get('errno')}: {error.get('message')}"
        return None
    finally:
        sock.close()


async def _reply(sock: zmq.asyncio.Socket, req_id: int) -> dict:
    """The final reply to req_id, past notices (heartbeats)."""
    while True:
        reply = unpack(await sock.recv())
        if isinstance(reply, dict) and reply.get("id") == req_id and not reply.get("more"):
            return reply
        if not isinstance(reply, dict) or reply.get("id") not in (req_id, NOTICE_ID):
            raise RuntimeError(f"unexpected reply {str(reply)[:200]}")
