"""Driver processes: start one per device, watch them, restart the ones that die or hang.

A driver talks to the kernel over a private ROUTER socket (its routing id is its device name).
The watchdog pings each driver every period; no answer within two periods (after a start-up
grace window) or a process exit counts as a crash: the kernel fails that driver's requests
with EIO, and the driver is restarted at once the first time, then with capped back-off.

A child that can never work is given up (state `down`) instead of restarted for ever: one that
says so before it was ever up (DriverFailed: no such CUDA device), or one that crashed
CRASH_LIMIT times within CRASH_WINDOW_S. The kernel then fails what waits on it, at once.

A child is a subprocess on the ipc socket, or what a Launcher starts elsewhere (a Ray actor on
tcp, kernel/raydrivers.py): a Child to wait on and kill either way. ChildGone: down at once.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import deque
from pathlib import Path
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

import zmq
import zmq.asyncio

from llmos.specs import channel
from llmos.specs.channel import ChannelError, DriverMessage, Message

from . import logs
from .auth import proved_key
from .tasks import TaskSet
from .transport import Router

log = logs.get("llmos.supervisor")

PING_PERIOD_S = 5.0         # one engine step or a GIL-heavy load can hold a driver for seconds
START_GRACE_S = 120.0      # importing torch and transformers is slow on a cold disk
MAX_BACKOFF_S = 30.0
# A child in a process group of its own: a terminal's Ctrl-C reaches the kernel, which stops its children
# itself. Not a session of its own (setsid): Linux schedules each session as one group (autogroup), so a
# driver there took an equal share against all of the operator's session, and a nice-19 job in it got
# half the cores from the driver: a two-thread step fell from ~100 to 4 tokens/s (benchmarks/README.md).
OWN_PROCESS_GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
CRASH_LIMIT, CRASH_WINDOW_S = 5, 60.0    # this many crashes within the window: the child is down


class Child(Protocol):
    """A running child as the supervisor handles it: asyncio's Process has this shape."""
    pid: int | None
    returncode: int | None      # None while it runs
    def kill(self) -> None: ...
    async def wait(self) -> int: ...


class ChildGone(Exception):
    """The child cannot be started again, ever (its machine left the cluster); says why."""


class Launcher(Protocol):
    """Starts a device's child somewhere other than this machine (see Supervisor.add)."""
    node: str                    # where its children run, as `devices` shows it
    async def launch(self, drv: "DriverHandle") -> Child: ...


@dataclass
class DriverHandle:
    device: str
    state: str = "starting"            # starting | up | restarting | down
    proc: Child | None = None          # asyncio's Process, or a remote child
    hello: Message | None = None       # what the child said when it came up
    started: float = 0.0
    last_heard: float = 0.0
    crashes: int = 0
    restarts: int = 0                  # spawned again after a crash, ever (crashes may be forgiven; this never is)
    crash_times: deque = field(default_factory=lambda: deque(maxlen=CRASH_LIMIT))
    ever_up: bool = False               # it said hello once: a failure to start again is a crash
    failure: str | None = None          # why it is down
    up: asyncio.Event = field(default_factory=asyncio.Event)
    gone: asyncio.Event = field(default_factory=asyncio.Event)   # set when it is down for good
    launcher: Launcher | None = None    # None: a subprocess on the ipc socket; else a remote child on tcp
    proof: str = ""                     # what the transport proves of the current child's messages (its key)


class Supervisor:
    role = "driver"                               # what it supervises, as its log events name it
    speaks: type[Message] = DriverMessage         # the channel of messages its children speak
    hello: type[Message] = channel.Hello          # the first one, which says a child is up

    def ping(self, t: float) -> Message:
        return channel.Ping(t)

    def shutdown(self) -> Message:
        return channel.Shutdown()

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str,
                 on_message: Callable[[DriverHandle, Message], None],
                 on_down: Callable[[DriverHandle, str], Awaitable[None]],
                 on_up: Callable[[DriverHandle], Awaitable[None]],
                 child_env: dict[str, str] | None = None, dtype: str = "auto",
                 on_failed: Callable[[DriverHandle, str], Awaitable[None]] | None = None):
        """on_failed: called when a child is given up (down for good); without it, children are
        restarted however often they crash."""
        self.endpoint = endpoint
        self.on_message = on_message
        self.on_down = on_down
        self.on_up = on_up
        self.on_failed = on_failed
        self.child_env = child_env or {}
        self.dtype = dtype
        self.drivers: dict[str, DriverHandle] = {}
        self.router = Router(ctx, endpoint)
        self._loops: list[asyncio.Task] = []     # the reader and the watchdog, cancelled at close
        self._tasks = TaskSet(log)               # the rest: exits awaited, crashes handled, ups announced
        self._closing = False

    async def start(self, devices: list[str]) -> None:
        for device in devices:
            await self.add(device)
        self._loops.append(self._tasks.spawn(self._read_loop(), f"{self.role}-reader"))
        self._loops.append(self._tasks.spawn(self._watchdog(), f"{self.role}-watchdog"))

    async def add(self, device: str, launcher: Launcher | None = None) -> None:
        """Supervise one more device's child, at boot or after (a node joined the cluster)."""
        drv = self.drivers[device] = DriverHandle(device, launcher=launcher)
        await self._spawn(drv)

    def listen_tcp(self, url: str, secure: Callable[[zmq.Socket], None]) -> str:
        """Also bind `url` (tcp) for remote children, CurveZMQ by `secure`; returns the endpoint bound."""
        sock = self.router.sock
        secure(sock)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)        # a peer whose machine vanished is let go
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 10000)
        sock.bind(url)
        return sock.getsockopt(zmq.LAST_ENDPOINT).decode()

    async def lost(self, device: str, why: str) -> None:
        """A remote child's machine is gone: a crash (what ran there resumes elsewhere), then down."""
        drv = self.drivers[device]
        if drv.state == "restarting":     # its crash was seen already: no restart
            await self._give_up(drv, why)
        elif drv.state != "down":
            await self._crashed(drv, why, for_good=True)

    def send(self, device: str, msg: Message) -> bool:
        """Send without waiting; False if the child is not there to take it (it is being restarted)."""
        try:
            self.router.send([device.encode(), channel.encode(msg)])
            return True
        except zmq.ZMQError:
            return False

    def _command(self, drv: DriverHandle) -> list[str]:
        return [sys.executable, "-m", "llmos.drivers.host", "--connect", self.endpoint, "--device", drv.device,
                "--dtype", self.dtype, "--parent", str(os.getpid())]

    def _exit_reason(self, drv: DriverHandle, code: int) -> str:
        where = f"actor on node {drv.launcher.node}" if drv.launcher else "process"
        return f"driver {where} for {drv.device} exited with code {code}"

    def _inherited_fds(self, drv: DriverHandle) -> tuple[int, ...]:
        """File descriptors the child inherits (none for a driver; the service host's token pipe)."""
        return ()

    async def _spawn(self, drv: DriverHandle) -> None:
        drv.up.clear()
        drv.hello = None
        drv.started = drv.last_heard = time.monotonic()
        try:
            drv.proc = await (drv.launcher.launch(drv) if drv.launcher else asyncio.create_subprocess_exec(
                *self._command(drv), env=dict(os.environ, **self.child_env), stdin=asyncio.subprocess.DEVNULL,
                pass_fds=self._inherited_fds(drv), **OWN_PROCESS_GROUP))
        except ChildGone as exc:
            await self._give_up(drv, str(exc))
            return
        if self._closing:     # close() ran while the child was being made: it found nothing to stop
            drv.proc.kill()
            await drv.proc.wait()
            return
        log.info(f"{self.role}.spawned", device=drv.device, os_pid=drv.proc.pid)
        self._tasks.spawn(self._wait_exit(drv, drv.proc), f"{self.role}-exit-{drv.device}")

    async def _wait_exit(self, drv: DriverHandle, proc: Child) -> None:
        code = await proc.wait()
        if self._closing or drv.proc is not proc:
            return
        await self._crashed(drv, self._exit_reason(drv, code))

    async def _crashed(self, drv: DriverHandle, why: str, for_good: bool = False) -> None:
        if drv.state in ("restarting", "down"):
            return
        drv.state = "restarting"
        drv.up.clear()
        drv.crashes += 1
        now = time.monotonic()
        drv.crash_times.append(now)
        log.error(f"{self.role}.crashed", device=drv.device, reason=why, crashes=drv.crashes)
        if drv.proc and drv.proc.returncode is None:
            drv.proc.kill()
        await self.on_down(drv, why)
        if for_good and self.on_failed is not None:
            await self._give_up(drv, why)
            return
        if (self.on_failed is not None and len(drv.crash_times) == CRASH_LIMIT
                and now - drv.crash_times[0] <= CRASH_WINDOW_S):
            await self._give_up(drv, f"{why}; it crashed {CRASH_LIMIT} times in {now - drv.crash_times[0]:.0f} s")
            return
        delay = 0.0 if drv.crashes == 1 else min(MAX_BACKOFF_S, 2.0 ** (drv.crashes - 2))
        await asyncio.sleep(delay)
        if not self._closing and drv.state == "restarting":     # not given up meanwhile
            drv.state = "starting"
            drv.restarts += 1
            await self._spawn(drv)

    async def _read_loop(self) -> None:
        while True:
            try:
                ident, frame = await self.router.recv_frames()
            except (ValueError, zmq.ZMQError):
                if self._closing:
                    return
                continue
            drv = self.drivers.get(ident.bytes.decode(errors="replace"))
            if drv is None or drv.state in ("restarting", "down"):
                continue    # a child that crashed has said its last: its requests are requeued already
            if proved_key(frame) != drv.proof:     # another device's driver, or this device's previous one
                log.warning(f"{self.role}.not_its_child", device=drv.device)
                continue
            try:
                msg = channel.decode(frame.bytes, self.speaks)
            except ChannelError as exc:
                log.error(f"{self.role}.bad_message", device=drv.device, error=str(exc))
                continue
            drv.last_heard = time.monotonic()
            if isinstance(msg, channel.DriverFailed):
                self._tasks.spawn(self._failed_to_start(drv, msg.message), f"{self.role}-failed-{drv.device}")
                continue
            if isinstance(msg, self.hello):
                drv.hello = msg
                drv.state = "up"
                drv.ever_up = True
                log.info(f"{self.role}.up", device=drv.device, os_pid=drv.proc.pid if drv.proc else None)
                self._tasks.spawn(self._announce_up(drv), f"{self.role}-up-{drv.device}")
                continue
            try:
                self.on_message(drv, msg)
            except Exception:
                log.exception(f"{self.role}.message_failed", device=drv.device, op=msg.op)

    async def _failed_to_start(self, drv: DriverHandle, why: str) -> None:
        """The child says it cannot serve. Before it was ever up nothing will change that (the
        device is missing); after, it may be passing, so it counts as a crash."""
        if drv.ever_up or self.on_failed is None:
            await self._crashed(drv, why)
        else:
            await self._give_up(drv, why)

    async def _give_up(self, drv: DriverHandle, why: str) -> None:
        drv.state = "down"
        drv.failure = why
        drv.up.clear()
        drv.gone.set()
        log.error(f"{self.role}.down", device=drv.device, reason=why)
        if drv.proc and drv.proc.returncode is None:
            drv.proc.kill()
        await self.on_failed(drv, why)

    async def _announce_up(self, drv: DriverHandle) -> None:
        """Let the kernel account for the device before anyone waiting on it resumes."""
        try:
            await self.on_up(drv)
        finally:
            drv.up.set()

    async def _watchdog(self) -> None:
        while not self._closing:
            await asyncio.sleep(PING_PERIOD_S)
            now = time.monotonic()
            for drv in list(self.drivers.values()):
                if drv.state == "up":
                    self.send(drv.device, self.ping(now))
                    if now - drv.last_heard > 2 * PING_PERIOD_S:
                        self._tasks.spawn(self._crashed(drv, f"driver for {drv.device} stopped answering pings"),
                                          f"{self.role}-crashed-{drv.device}")
                elif drv.state == "starting" and now - drv.started > START_GRACE_S:
                    self._tasks.spawn(self._crashed(drv, f"driver for {drv.device} did not start in {START_GRACE_S:.0f}s"),
                                      f"{self.role}-crashed-{drv.device}")

    def begin_close(self) -> None:
        """From now on a driver that exits is stopping, not crashing."""
        self._closing = True

    async def close(self) -> None:
        self._closing = True
        for t in self._loops:
            t.cancel()
        for drv in self.drivers.values():
            if not self.send(drv.device, self.shutdown()) and drv.proc and drv.proc.returncode is None:
                drv.proc.kill()     # not connected yet (still starting): it holds nothing to put away
        for drv in self.drivers.values():
            if drv.proc and drv.proc.returncode is None:
                try:
                    await asyncio.wait_for(drv.proc.wait(), 5.0)
                except asyncio.TimeoutError:
                    drv.proc.kill()
                    await drv.proc.wait()
            drv.state = "down"
        self.router.close()
        if self.endpoint.startswith("ipc://"):   # ZeroMQ leaves a bound ipc file behind
            Path(self.endpoint[len("ipc://"):]).unlink(missing_ok=True)

