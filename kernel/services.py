"""The kernel's side of the service host: start and supervise it, route svc_call to it.

The service host (llmos.services.host) is a child process supervised exactly like a driver
(the same Supervisor: pinged every period, restarted at once after a crash, then with capped
back-off), on a private channel of its own. A svc_call becomes a Request of the caller's, like
an infer: counted against its limit, cancelled by `cancel`, its deadline, reaping or shutdown
(the host is then told to cancel the task); a host that dies fails the calls it held with EIO
and nobody else notices. The catalog the host sends when it comes up is kept here, so svc_list
answers even while the host restarts.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import TYPE_CHECKING

from llmos.specs.protocol import ERRNOS, SERVICE_TOKEN_ENV, runtime_dir

from . import logs
from .errors import SyscallError, ecanceled, eio
from .requests import Request
from .supervisor import DriverHandle, Supervisor

if TYPE_CHECKING:
    from .kernel import CallContext, Kernel

log = logs.get("llmos.services")

HOST_ID = "services"          # the host's routing id on the channel, and its Request.device
UP_TIMEOUT_S = 60.0           # how long a call or a reload waits for the host to come up
STABLE_S = 60.0               # a host that ran this long before crashing is restarted at once again
STOP_TIMEOUT_S = 5.0          # a host told to shut down for a reload is killed after this
DISABLE_ENV = "LLMOS_NO_SERVICES"


class ServiceSupervisor(Supervisor):
    """The driver supervisor, spawning the service host instead of a driver."""

    role = "services"

    def __init__(self, ctx, endpoint: str, kernel_socket: str, service_token: str, on_message, on_down, on_up):
        super().__init__(ctx, endpoint, on_message, on_down, on_up, child_env={SERVICE_TOKEN_ENV: service_token})
        self.kernel_socket = kernel_socket
        self.reloading = False      # the next exit is a restart asked for by svc_reload, not a crash
        self.restarts = 0

    def _command(self, drv: DriverHandle) -> list[str]:
        return [sys.executable, "-m", "llmos.services.host", "--channel", self.endpoint, "--kernel", self.kernel_socket]

    def _exit_reason(self, drv: DriverHandle, code: int) -> str:
        return f"the service host exited with code {code} (a plugin crashed it, or it was killed)"

    async def _crashed(self, drv: DriverHandle, why: str) -> None:
        if drv.state in ("restarting", "down"):
            return
        self.restarts += 1
        if self.reloading:
            self.reloading = False
            drv.state = "restarting"
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


class ServiceHost:
    def __init__(self, kernel: "Kernel"):
        self.k = kernel
        self.catalog: dict = {"services": [], "failed": []}
        self.calls: dict[int, Request] = {}        # rid -> call the host is running
        self.supervisor: ServiceSupervisor | None = None
        self.reload_lock = asyncio.Lock()
        self.enabled = os.environ.get(DISABLE_ENV, "") in ("", "0")

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if not self.enabled:
            log.info("services.disabled", env=DISABLE_ENV)
            return
        endpoint = f"ipc://{runtime_dir()}/services-{os.getpid()}.sock"
        self.supervisor = ServiceSupervisor(self.k.ctx, endpoint, _local_url(self.k.settings.socket),
                                            self.k.service_token, self._message, self._down, self._up)
        await self.supervisor.start([HOST_ID])

    def begin_close(self) -> None:
        if self.supervisor:
            self.supervisor.begin_close()

    async def close(self) -> None:
        if self.supervisor:
            await self.supervisor.close()   # also removes its socket file

    @property
    def handle(self) -> DriverHandle | None:
        return self.supervisor.drivers.get(HOST_ID) if self.supervisor else None

    def describe(self) -> dict:
        drv = self.handle
        return {"state": drv.state if drv else "down", "os_pid": drv.info.get("pid") if drv else None,
                "restarts": self.supervisor.restarts if self.supervisor else 0, "in_flight": len(self.calls)}

    # -- calls -----------------------------------------------------------------------------------

    async def call(self, ctx: "CallContext", args: dict) -> dict:
        proc = ctx.proc
        req = self.k.new_request(ctx, "svc_call", None, {"service": args["service"], "task": args["task"]},
                                 stream=args["stream"], deadline_s=args["deadline"], device=HOST_ID)
        req.state = "service"        # neither queued at nor running on a device: end_request leaves those alone
        req.future.add_done_callback(lambda _f: self._finished(req))
        if not await self._wait_up(req):
            return await req.future
        self.calls[req.rid] = req
        sent = self.supervisor.send(HOST_ID, {
            "op": "call", "cid": req.rid, "service": args["service"], "task": args["task"], "args": args["args"] or {},
            "stream": args["stream"],
            "deadline": None if req.deadline is None else max(0.0, req.deadline - time.monotonic()),
            "caller": {"pid": proc.pid, "name": proc.name}})
        if not sent:
            self.k.end_request(req, eio("the service host went away before the call reached it; retry"))
        return await req.future

    async def _wait_up(self, req: Request) -> bool:
        """Wait (within the call's deadline) for a host that is starting, restarting or reloading."""
        if self.supervisor is None:
            self.k.end_request(req, SyscallError("ENOENT", f"services are disabled on this kernel ({DISABLE_ENV} is set)"))
            return False
        waited_until = time.monotonic() + UP_TIMEOUT_S
        while not req.future.done():
            drv = self.handle
            if drv.state == "up" and drv.up.is_set() and not self.reload_lock.locked():
                return True
            if drv.state == "down":
                self.k.end_request(req, ecanceled("the kernel is shutting down"))
            elif time.monotonic() > waited_until:
                self.k.end_request(req, SyscallError("EAGAIN", f"the service host is not up (state: {drv.state}) "
                                                               f"after {UP_TIMEOUT_S:.0f}s; retry later"))
            else:
                await asyncio.sleep(0.05)
        return False

    def _finished(self, req: Request) -> None:
        """The call ended (result, error, deadline, cancel, reaping): make sure the host stops working on it."""
        failed = req.future.cancelled() or req.future.exception() is not None
        if self.calls.pop(req.rid, None) is not None and failed:
            self.supervisor.send(HOST_ID, {"op": "cancel", "cid": req.rid})

    async def reload(self, drain: float) -> dict:
        if self.supervisor is None:
            raise SyscallError("ENOENT", f"services are disabled on this kernel ({DISABLE_ENV} is set)")
        if self.reload_lock.locked():
            raise SyscallError("EAGAIN", "a reload is already in progress")
        started = time.monotonic()
        async with self.reload_lock:          # new calls wait for the new host from here on
            drv = self.handle
            until = time.monotonic() + drain
            while self.calls and time.monotonic() < until:
                await asyncio.sleep(0.05)
            old = drv.proc
            if drv.state == "up" and old is not None and old.returncode is None:
                self.supervisor.reloading = True
                self.supervisor.send(HOST_ID, {"op": "shutdown", "reload": True})
                try:
                    await asyncio.wait_for(asyncio.shield(old.wait()), STOP_TIMEOUT_S)
                except asyncio.TimeoutError:
                    old.kill()
            until = time.monotonic() + UP_TIMEOUT_S
            while not (drv.state == "up" and drv.up.is_set() and drv.proc is not old):
                if time.monotonic() > until or drv.state == "down":
                    raise eio(f"the service host did not come back within {UP_TIMEOUT_S:.0f}s (state: {drv.state}); "
                              f"see the kernel log")
                await asyncio.sleep(0.05)
        return {"services": len(self.catalog["services"]), "failed": len(self.catalog["failed"]),
                "os_pid": drv.info.get("pid"), "reload_s": round(time.monotonic() - started, 3)}

    # -- the host's messages ---------------------------------------------------------------------

    def _message(self, drv: DriverHandle, msg: dict) -> None:
        op = msg.get("op")
        if op == "pong":
            return
        req = self.calls.get(msg.get("cid"))
        if req is None:
            return       # finished already (deadline, cancel, reaped)
        if op == "delta":
            delta = msg.get("delta") or ""
            req.text.append(delta)
            if req.stream and delta:
                self.k.send_more(req, {"delta": delta})
        elif op == "result":
            result = msg.get("result")
            self.k.end_request(req, result=result if isinstance(result, dict) else {"value": result})
        elif op == "error":
            errno = msg.get("errno", "EIO")
            self.k.end_request(req, SyscallError(errno if errno in ERRNOS else "EIO", str(msg.get("message", ""))))
        else:
            log.warning("services.unknown_op", op=op)

    async def _down(self, drv: DriverHandle, why: str) -> None:
        for req in list(self.calls.values()):
            self.k.end_request(req, eio(f"{why}; the service host is being restarted, retry the call"))

    async def _up(self, drv: DriverHandle) -> None:
        catalog = drv.info.get("catalog") or {}
        self.catalog = {"services": list(catalog.get("services", [])), "failed": list(catalog.get("failed", []))}
        log.info("services.ready", services=[s["name"] for s in self.catalog["services"]],
                 failed=[f["plugin"] for f in self.catalog["failed"]])


def _local_url(url: str) -> str:
    """Where the host, on this machine, reaches a kernel bound to `url` (a wildcard bind is not an address)."""
    for wildcard in ("tcp://*:", "tcp://0.0.0.0:"):
        if url.startswith(wildcard):
            return "tcp://127.0.0.1:" + url[len(wildcard):]
    return url


# -- syscalls -----------------------------------------------------------------------------------

def sys_svc_list(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    return {"host": k.services.describe(), **k.services.catalog}


async def sys_svc_call(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    return await k.services.call(ctx, args)


async def sys_svc_reload(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    return await k.services.reload(args["drain"])
