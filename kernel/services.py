"""The kernel's side of the service host: start and supervise it, route svc_call to it.

The service host (llmos.services.host) is a child process supervised exactly like a driver
(the same Supervisor: pinged every period, restarted at once after a crash, then with capped
back-off), on a private channel of its own. A svc_call becomes a Request of the caller's, like
an infer: counted against its limit, cancelled by `cancel`, its deadline, reaping or shutdown
(the host is then told to cancel the task); a host that dies fails the calls it held with EIO
and nobody else notices. The catalog the host sends when it comes up is kept here, so svc_list
answers even while the host restarts. A program's svc_calls hold at most half its request slots (the
host's work for them takes the rest), a user's MAX_CALLS_PER_PRINCIPAL in all: past that, EAGAIN at once.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Callable

from llmos.specs import channel
from llmos.specs.channel import Message, ServiceMessage
from llmos.specs.protocol import runtime_dir

from . import logs
from .errors import SyscallError, eagain, ecanceled, eio, enoent
from .requests import Request
from .supervisor import DriverHandle, Supervisor

if TYPE_CHECKING:
    import zmq.asyncio

    from .config import Settings
    from .process import CallContext
    from .requests import RequestTable

log = logs.get("llmos.services")

HOST_ID = "services"          # the host's routing id on the channel, and its Request.device
UP_TIMEOUT_S = 60.0           # how long a call or a reload waits for the host to come up
STABLE_S = 60.0               # a host that ran this long before crashing is restarted at once again
STOP_TIMEOUT_S = 5.0          # a host told to shut down for a reload is killed after this
DISABLE_ENV = "LLMOS_NO_SERVICES"
MAX_CALLS_PER_PRINCIPAL = 64  # svc_calls of one user in flight (the host's queue for them holds as many)


class ServiceSupervisor(Supervisor):
    """The driver supervisor, spawning the service host instead of a driver. The host proves itself with a
    token it reads from an inherited pipe at start (and closes): not from its environment, which any
    process of the same uid can read in /proc/PID/environ. Only the host gets the pipe."""

    role = "services"
    speaks = ServiceMessage
    hello = channel.HostHello

    def __init__(self, ctx, endpoint: str, kernel_socket: str, service_token: str, read_dirs: list[str],
                 on_message, on_down, on_up):
        super().__init__(ctx, endpoint, on_message, on_down, on_up)
        self.kernel_socket = kernel_socket
        self.service_token = service_token
        self.read_dirs = list(read_dirs)
        self._token_fd: int | None = None      # the pipe's read end, while a host is being spawned
        self.reloading = False      # the next exit is a restart asked for by svc_reload, not a crash
        self.restarts = 0

    def ping(self, t: float) -> Message:
        return channel.Ping(t)

    def shutdown(self) -> Message:
        return channel.Shutdown()

    def _command(self, drv: DriverHandle) -> list[str]:
        dirs = [arg for d in self.read_dirs for arg in ("--read-dir", d)]
        return [sys.executable, "-m", "llmos.services.host", "--channel", self.endpoint, "--kernel", self.kernel_socket,
                "--token-fd", str(self._token_fd), *dirs]

    def _inherited_fds(self, drv: DriverHandle) -> tuple[int, ...]:
        return (self._token_fd,)

    async def _spawn(self, drv: DriverHandle) -> None:
        """Spawn the host with the token waiting in a pipe: written and closed before the child
        exists (a token fits the pipe's buffer, so nothing blocks), the read end closed here after."""
        read_end, write_end = os.pipe()
        try:
            os.write(write_end, self.service_token.encode())
        finally:
            os.close(write_end)
        self._token_fd = read_end
        try:
            await super()._spawn(drv)
        finally:
            self._token_fd = None
            os.close(read_end)

    def _exit_reason(self, drv: DriverHandle, code: int) -> str:
        return f"the service host exited with code {code} (a plugin crashed it, or it was killed)"

    async def _crashed(self, drv: DriverHandle, why: str) -> None:
        if drv.state in ("restarting", "down"):
            return
        self.restarts += 1
        if self.reloading:
            self.reloading = False
            drv.state = "restarting"
            drv.up.clear()
            if drv.proc and drv.proc.returncode is None:
                drv.proc.kill()
            await self.on_down(drv, "the service host was restarted by svc_reload")
            if not self._closing:
                drv.state = "starting"
                await self._spawn(drv)
            return
        if time.monotonic() - drv.started > STABLE_S:
            drv.crashes = 0       # it ran well for a while: this crash restarts at once, as a first one
        await super()._crashed(drv, why)


class ServiceManager:
    """The kernel's side of the service host: its supervision, its catalog, and the calls it runs."""

    def __init__(self, settings: "Settings", requests: "RequestTable", ctx: "zmq.asyncio.Context", token: str,
                 audit: Callable[..., None]):
        """token: given to the service host alone, at its start (it proves the host on the operator socket);
        audit: records an event in the audit log (AuditLog.record), for the host's file reads."""
        self.settings = settings
        self.requests = requests
        self.ctx = ctx
        self.token = token
        self.audit = audit
        self.catalog: dict = {"services": [], "failed": []}
        self.calls: dict[int, Request] = {}        # rid -> call the host is running
        self.per_principal: Counter[str] = Counter()   # svc_calls in flight (waiting for the host too)
        self.supervisor: ServiceSupervisor | None = None
        self.reload_lock = asyncio.Lock()
        self.enabled = os.environ.get(DISABLE_ENV, "") in ("", "0")
        self._idle = asyncio.Event()               # set while the host runs no call
        self._idle.set()
        self._next_up: asyncio.Future | None = None  # resolved when a host (re)started by reload is up

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if not self.enabled:
            log.info("services.disabled", env=DISABLE_ENV)
            return
        endpoint = f"ipc://{runtime_dir()}/services-{os.getpid()}.sock"
        self.supervisor = ServiceSupervisor(self.ctx, endpoint, self.settings.operator_socket,
                                            self.token, self.settings.service_read_dirs,
                                            self._message, self._down, self._up)
        await self.supervisor.start([HOST_ID])

    def begin_close(self) -> None:
        if self.supervisor:
            self.supervisor.begin_close()
        if self._next_up and not self._next_up.done():
            self._next_up.set_exception(ecanceled("the kernel is shutting down"))
            self._next_up.exception()

    async def close(self) -> None:
        if self.supervisor:
            await self.supervisor.close()   # also removes its socket file

    @property
    def handle(self) -> DriverHandle | None:
        return self.supervisor.drivers.get(HOST_ID) if self.supervisor else None

    def describe(self) -> dict:
        drv, hello = self.handle, self.handle.hello if self.handle else None
        return {"state": drv.state if drv else "down", "os_pid": hello.pid if hello else None,
                "restarts": self.supervisor.restarts if self.supervisor else 0, "in_flight": len(self.calls)}

    def _disabled(self) -> SyscallError:
        return enoent(f"services are disabled on this kernel ({DISABLE_ENV} is set)")

    # -- calls -----------------------------------------------------------------------------------

    async def call(self, ctx: "CallContext", args: dict) -> dict:
        proc = ctx.proc
        mine = sum(r.call == "svc_call" for r in self.requests.of(proc.pid).values())
        cap, theirs = max(1, self.settings.max_requests_per_process // 2), self.per_principal[proc.principal]
        if mine >= cap or theirs >= MAX_CALLS_PER_PRINCIPAL:
            raise eagain(f"svc_call: {mine} service calls of this program and {theirs} of user '{proc.principal}' are "
                         f"in flight (at most {cap} and {MAX_CALLS_PER_PRINCIPAL}); wait for some to finish")
        req = self.requests.new(ctx, "svc_call", None, {"service": args["service"], "task": args["task"]},
                                  stream=args["stream"], deadline_s=args["deadline"], device=HOST_ID)
        self.per_principal[req.principal] += 1
        self.requests.at_service(req)
        req.future.add_done_callback(lambda _f: self._finished(req))
        if not await self._wait_up(req):
            return await req.future
        self.calls[req.rid] = req
        self._idle.clear()
        sent = self.supervisor.send(HOST_ID, channel.Call(
            rid=req.rid, service=args["service"], task=args["task"], args=args["args"] or {}, stream=args["stream"],
            deadline=None if req.deadline is None else max(0.0, req.deadline - time.monotonic()),
            caller={"pid": proc.pid, "name": proc.name, "principal": proc.principal}))
        if not sent:
            self.requests.end(req, eio("the service host went away before the call reached it; retry"))
        return await req.future

    async def _wait_up(self, req: Request) -> bool:
        """Wait (within the call's deadline) for a host that is starting, restarting or reloading."""
        if self.supervisor is None:
            self.requests.end(req, self._disabled())
            return False
        ready = asyncio.ensure_future(self._until_ready())
        try:
            await asyncio.wait({ready, req.future}, timeout=UP_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if req.future.done():
            return False
        if ready.done() and not ready.cancelled() and ready.exception() is None:
            return True
        state = self.handle.state
        if state == "down":
            self.requests.end(req, ecanceled("the kernel is shutting down"))
        else:
            self.requests.end(req, eagain(f"the service host is not up (state: {state}) after "
                                            f"{UP_TIMEOUT_S:.0f}s; retry later"))
        return False

    async def _until_ready(self) -> None:
        drv = self.handle
        while True:
            if self.reload_lock.locked():
                async with self.reload_lock:   # new calls wait for the new host
                    pass
            elif drv.state == "up" and drv.up.is_set():
                return
            else:
                await drv.up.wait()
                await asyncio.sleep(0)         # let a reload that is starting take its lock first

    def _finished(self, req: Request) -> None:
        """The call ended (result, error, deadline, cancel, reaping): make sure the host stops working on it."""
        failed = req.future.cancelled() or req.future.exception() is not None
        self.per_principal -= Counter({req.principal: 1})      # (drops a user at 0)
        if self.calls.pop(req.rid, None) is not None and failed:
            self.supervisor.send(HOST_ID, channel.Cancel(req.rid))
        if not self.calls:
            self._idle.set()

    async def reload(self, drain: float) -> dict:
        if self.supervisor is None:
            raise self._disabled()
        if self.reload_lock.locked():
            raise eagain("a reload is already in progress")
        started = time.monotonic()
        async with self.reload_lock:          # new calls wait for the new host from here on
            drv = self.handle
            try:
                await asyncio.wait_for(self._idle.wait(), drain)
            except asyncio.TimeoutError:
                pass                           # the calls still running fail when the host stops
            self._next_up = asyncio.get_running_loop().create_future()
            old = drv.proc
            if drv.state == "up" and old is not None and old.returncode is None:
                self.supervisor.reloading = True
                self.supervisor.send(HOST_ID, channel.Shutdown(reload=True))
                try:
                    await asyncio.wait_for(asyncio.shield(old.wait()), STOP_TIMEOUT_S)
                except asyncio.TimeoutError:
                    old.kill()
            try:
                await asyncio.wait_for(asyncio.shield(self._next_up), UP_TIMEOUT_S)
            except asyncio.TimeoutError:
                raise eio(f"the service host did not come back within {UP_TIMEOUT_S:.0f}s (state: {drv.state}); "
                          f"see the kernel log") from None
            finally:
                self._next_up = None
        return {"services": len(self.catalog["services"]), "failed": len(self.catalog["failed"]),
                "os_pid": drv.hello.pid if drv.hello else None, "reload_s": round(time.monotonic() - started, 3)}

    # -- the host's messages ---------------------------------------------------------------------

    def _message(self, drv: DriverHandle, msg: ServiceMessage) -> None:
        """Hand a host's message about a call to its handler in ON_MESSAGE (the host's Hello is the supervisor's)."""
        handler = self.ON_MESSAGE.get(type(msg))
        if handler is None:
            log.warning("services.unexpected_message", op=msg.op)
            return
        req = self.calls.get(getattr(msg, "rid", None))
        if req is not None:      # else finished already (deadline, cancel, reaped)
            handler(self, req, msg)

    def _file_read(self, req: Request, msg: channel.FileRead) -> None:
        """Who read it is the kernel's to say, from the call, never the host's."""
        self.audit("file_read", principal=req.principal, pid=req.pid, service=req.payload["service"],
                            path=msg.path, bytes=msg.bytes)

    def _delta(self, req: Request, msg: channel.CallDelta) -> None:
        req.text.append(msg.delta)
        if req.stream and msg.delta:
            req.stream_part({"delta": msg.delta})

    def _result(self, req: Request, msg: channel.Result) -> None:
        result = msg.result
        self.requests.end(req, result=result if isinstance(result, dict) else {"value": result})

    def _error(self, req: Request, msg: channel.Error) -> None:
        self.requests.end(req, SyscallError(msg.errno, str(msg.message)))

    ON_MESSAGE = {channel.Pong: lambda self, req, msg: None, channel.FileRead: _file_read,
                  channel.CallDelta: _delta, channel.Result: _result, channel.Error: _error}

    async def _down(self, drv: DriverHandle, why: str) -> None:
        for req in list(self.calls.values()):
            self.requests.end(req, eio(f"{why}; the service host is being restarted, retry the call"))

    async def _up(self, drv: DriverHandle) -> None:
        catalog = drv.hello.catalog or {}
        self.catalog = {"services": list(catalog.get("services", [])), "failed": list(catalog.get("failed", []))}
        log.info("services.ready", services=[s["name"] for s in self.catalog["services"]],
                 failed=[f["plugin"] for f in self.catalog["failed"]])
        if self._next_up is not None and not self._next_up.done():
            self._next_up.set_result(None)

