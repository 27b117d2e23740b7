"""The kernel: owns processes, device memory, models and requests, and routes work to drivers.

Everything here runs on one asyncio loop, so the tables need no locks. Syscall bodies live in
syscalls.py; this module holds the state they share and the paths every syscall relies on:
loading models with admission and eviction, dispatching requests fairly to each device,
fanning driver events out to clients, and reaping processes that die.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import time
from pathlib import Path

import zmq
import zmq.asyncio

from llmos.specs import registry
from llmos.specs import SYSCALLS, ArgError
from llmos.specs.protocol import (ABI_VERSION, NOTICE_ID, FrameError, pack, reply_error, reply_ok, runtime_dir,
                                  unpack)

from . import logs
from .config import Settings
from .devmem import DeviceMemory
from .errors import SyscallError, ecanceled, eio, enoent, enomem
from .memstore import MemoryStore
from .models import ModelEntry, eviction_victims
from .process import Process, ProcessTable
from .requests import Request
from .scheduler import FairScheduler
from .services import ServiceHost
from .supervisor import DriverHandle, Supervisor
from .transport import Transport

log = logs.get("llmos.kernel")

DEVICE_WINDOW = {"cpu": 64, "cuda": 512}   # requests a device's engine holds at once
DEFAULT_KV_BYTES = {"cpu": 512 << 20, "cuda": 8 << 30}
DRIVER_UP_TIMEOUT_S = 180.0


class CallContext:
    """Who made a call and how to answer it."""

    __slots__ = ("routing", "client_id", "proc")

    def __init__(self, routing: list[bytes], client_id: int, proc: Process | None):
        self.routing = routing
        self.client_id = client_id
        self.proc = proc


class Kernel:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.started = time.time()
        self.procs = ProcessTable()
        self.memory = DeviceMemory()
        self.models: dict[str, ModelEntry] = {}
        self.schedulers: dict[str, FairScheduler] = {}
        self.running: dict[str, dict[int, Request]] = {}   # device -> rid -> request at the driver
        self.requests: dict[int, Request] = {}             # rid -> every request in flight
        self._rids = itertools.count(1)
        self._seq = itertools.count()
        self.ctx = zmq.asyncio.Context()
        self.service_token = secrets.token_urlsafe(24)    # given to the service host alone, at its start
        self.transport: Transport | None = None
        self.supervisor: Supervisor | None = None
        self.memstore: MemoryStore | None = None
        self.services = ServiceHost(self)
        self.stopping = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        from . import syscalls  # the handler table; imported here to keep the module graph one-way
        self.handlers = syscalls.HANDLERS

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        s.state_dir.mkdir(parents=True, exist_ok=True)
        self.memstore = MemoryStore(s.state_dir / "memory.sqlite3")
        self.transport = Transport(self.ctx, s.socket, self._unreachable)
        devices = resolve_devices(s.devices)
        for device in devices:
            self.schedulers[device] = FairScheduler(s.max_running_per_process)
            self.running[device] = {}
        driver_sock = f"ipc://{runtime_dir()}/drivers-{os.getpid()}.sock"
        Path(runtime_dir()).mkdir(parents=True, exist_ok=True, mode=0o700)
        self.supervisor = Supervisor(self.ctx, driver_sock, self._driver_message, self._driver_down, self._driver_up,
                                     dtype=s.dtype)
        await self.supervisor.start(devices)
        self._spawn(self._serve(), "serve")
        await self.services.start()
        self._spawn(self._probe_loop(), "probe")
        log.info("kernel.listening", socket=s.socket, devices=devices, state_dir=str(s.state_dir), abi=ABI_VERSION)
        for name in s.models_to_load():
            self._spawn(self._preload(name), f"preload-{name}")

    async def _preload(self, name: str) -> None:
        try:
            entry = await self.ensure_model(name, "auto", None)
            entry.pinned = True
        except SyscallError as exc:
            log.error("model.preload_failed", model=name, errno=exc.errno, error=exc.message)
        except Exception:
            log.exception("model.preload_failed", model=name)

    async def shutdown(self, why: str = "kernel shutting down") -> None:
        log.info("kernel.stopping", reason=why)
        if self.supervisor:
            self.supervisor.begin_close()
        self.services.begin_close()
        for req in list(self.requests.values()):
            self.end_request(req, ecanceled(why))
        await asyncio.sleep(0.05)   # let the ECANCELED replies reach the socket
        for task in list(self._tasks):
            task.cancel()
        if self.supervisor:
            await self.supervisor.close()
        await self.services.close()
        if self.transport:
            self.transport.close()
        if self.memstore:
            self.memstore.close()
        self.ctx.term()
        log.info("kernel.stopped")

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- the syscall path ------------------------------------------------------------------------

    async def _serve(self) -> None:
        while True:
            try:
                parts = await self.transport.recv()
            except zmq.ZMQError:
                return
            if len(parts) >= 2:
                self._on_frame(parts[:-1], parts[-1])

    def _on_frame(self, routing: list[bytes], frame: bytes) -> None:
        """Decode, check, and run one request; every failure becomes an errno reply to its sender."""
        client_id = None
        try:
            msg = unpack(frame)
            if not isinstance(msg, dict):
                raise FrameError("a request must be a msgpack map")
            client_id = msg.get("id")
            if not isinstance(client_id, int) or isinstance(client_id, bool) or client_id <= 0:
                client_id = None
                raise FrameError("'id' must be a positive integer")
            if msg.get("v") != ABI_VERSION:
                raise FrameError(f"protocol version {msg.get('v')!r} is not supported; this kernel speaks v{ABI_VERSION}")
            call = msg.get("call")
            if not isinstance(call, str):
                raise FrameError("'call' must be a string naming a syscall")
            spec = SYSCALLS.get(call)
            handler = self.handlers.get(call)
            if spec is None or handler is None:
                raise SyscallError("ENOSYS", f"no syscall '{call[:64]}'; see specs/syscalls.md for the list")
            args = spec.validate(msg.get("args"))
            proc = self.procs.by_identity(routing[0])
            if proc is not None:
                proc.last_seen = time.monotonic()
            elif call not in ("hello", "ping", "sysinfo"):
                raise SyscallError("EPERM", f"'{call}' needs a process: call hello first")
            if spec.cap and spec.cap not in proc.caps:
                raise SyscallError("EPERM", f"'{call}' needs the '{spec.cap}' capability, which this process does not hold")
        except (FrameError, ArgError) as exc:
            self.transport.send(routing, reply_error(client_id, "EINVAL", str(exc)))
            return
        except SyscallError as exc:
            self.transport.send(routing, reply_error(client_id, exc.errno, exc.message))
            return
        ctx = CallContext(routing, client_id, proc)
        if asyncio.iscoroutinefunction(handler):
            self._spawn(self._run_async(handler, ctx, args), call)
        else:
            self._reply(ctx, handler, args)

    def _reply(self, ctx: CallContext, handler, args: dict) -> None:
        try:
            result = handler(self, ctx, args)
        except SyscallError as exc:
            self.transport.send(ctx.routing, reply_error(ctx.client_id, exc.errno, exc.message))
        except Exception as exc:  # a kernel bug must cost one reply, never the kernel
            log.exception("syscall.crashed", client_id=ctx.client_id)
            self.transport.send(ctx.routing, reply_error(ctx.client_id, "EIO", f"kernel error: {exc}"))
        else:
            self.transport.send(ctx.routing, reply_ok(ctx.client_id, result))

    async def _run_async(self, handler, ctx: CallContext, args: dict) -> None:
        try:
            result = await handler(self, ctx, args)
        except SyscallError as exc:
            self.transport.send(ctx.routing, reply_error(ctx.client_id, exc.errno, exc.message))
        except asyncio.CancelledError:
            self.transport.send(ctx.routing, reply_error(ctx.client_id, "ECANCELED", "kernel shutting down"))
            raise
        except Exception as exc:
            log.exception("syscall.crashed", client_id=ctx.client_id)
            self.transport.send(ctx.routing, reply_error(ctx.client_id, "EIO", f"kernel error: {exc}"))
        else:
            self.transport.send(ctx.routing, reply_ok(ctx.client_id, result))

    def send_more(self, req: Request, result: dict) -> None:
        self.transport.send(req.envelope, reply_ok(req.client_id, result, more=True))

    # -- processes -------------------------------------------------------------------------------

    def _unreachable(self, identity: bytes, why: str) -> None:
        proc = self.procs.by_identity(identity)
        if proc is not None:
            self.reap(proc, why)

    def reap(self, proc: Process, why: str) -> None:
        """Free everything a process holds: requests, reservations, model references."""
        if self.procs.remove(proc.pid) is None:
            return
        for req in list(proc.requests.values()):
            self.end_request(req, ecanceled(f"process {proc.pid} was reaped: {why}"), notify=False)
        for handle, (device, _) in list(proc.reservations.items()):
            self.memory.release(device, handle)
        for name in proc.models:
            entry = self.models.get(name)
            if entry:
                entry.refs.discard(proc.pid)
        for sched in self.schedulers.values():
            for req in sched.forget(proc.pid):   # what a service had queued for it
                self.end_request(req, ecanceled(f"process {proc.pid}, whom it served, was reaped: {why}"))
        log.info("process.reaped", pid=proc.pid, name=proc.name, reason=why)

    async def _probe_loop(self) -> None:
        """Probe quiet clients with a notice frame: a dead one is unroutable, and gets reaped."""
        notice = pack({"id": NOTICE_ID, "ok": True, "result": {"notice": "heartbeat"}})
        period = self.settings.heartbeat_s
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for proc in self.procs:
                if now - proc.last_seen >= period:
                    self.transport.send([proc.identity], notice)

    # -- models ----------------------------------------------------------------------------------

    def pick_device(self, wanted: str) -> str:
        devices = list(self.schedulers)
        if wanted == "auto":
            gpus = [d for d in devices if d.startswith("cuda")]
            return gpus[0] if gpus else devices[0]
        if wanted not in self.schedulers:
            raise enoent(f"no device '{wanted}'; this kernel manages {', '.join(devices)}")
        return wanted

    def driver(self, device: str) -> DriverHandle:
        return self.supervisor.drivers[device]

    async def wait_driver(self, device: str) -> DriverHandle:
        drv = self.driver(device)
        if drv.state != "up":
            try:
                await asyncio.wait_for(drv.up.wait(), DRIVER_UP_TIMEOUT_S)
            except asyncio.TimeoutError:
                raise eio(f"the driver for {device} is not up (state: {drv.state})") from None
        return drv

    async def ensure_model(self, name: str, device: str, proc: Process | None) -> ModelEntry:
        """Load `name` (or reuse the loaded copy) and give `proc` a reference to it."""
        entry = self.models.get(name)
        if entry is None:
            entry = await self._load(name, device)
        else:
            await asyncio.shield(entry.loaded)
        if proc is not None and self.procs.get(proc.pid) is proc:
            entry.refs.add(proc.pid)
            proc.models.add(name)
        entry.last_used = time.monotonic()
        return entry

    async def _load(self, name: str, wanted_device: str) -> ModelEntry:
        try:
            spec = registry.resolve(name, self.settings.models)
        except registry.ModelNotFound as exc:
            raise enoent(str(exc)) from None
        device = self.pick_device(wanted_device)
        entry = ModelEntry(name, spec, device, spec.kind)
        self.models[name] = entry     # visible at once, so a second load of it waits instead of racing
        try:
            await self.wait_driver(device)
            account = self.memory.devices[device]
            dtype_bytes = 4 if self.driver(device).info.get("dtype", "float32") == "float32" else 2
            weights = await asyncio.to_thread(registry.estimate_bytes, spec, dtype_bytes)
            kv = self.kv_budget(device) if spec.kind == "generate" else 0
            need = weights + kv
            if need > account.total_bytes:
                raise enomem(f"model '{name}' needs {_gib(need)} ({_gib(weights)} weights + {_gib(kv)} KV cache) "
                             f"but {device} has {_gib(account.total_bytes)} in all; it can never fit here")
            victims = eviction_victims(list(self.models.values()), device, need, account.free_bytes)
            if victims is None:
                held = ", ".join(f"{e.name} {_gib(e.bytes)}" for e in self.models.values() if e.device == device and e is not entry)
                raise enomem(f"model '{name}' needs {_gib(need)} but {device} has {_gib(account.free_bytes)} free; "
                             f"in use: {held or 'nothing'}, reservations {_gib(account.reserved_bytes)}; "
                             f"unload a model or free reservations")
            for victim in victims:
                self.evict(victim, f"making room for {name}")
            entry.weight_bytes, entry.kv_bytes = weights, kv
            self.memory.charge_model(device, name, need)
            log.info("model.loading", model=name, device=device, source=spec.source, estimate_bytes=need)
            self.supervisor.send(device, {"op": "load", "model": name, "spec": spec.to_wire(), "kv_bytes": kv})
            await asyncio.shield(entry.loaded)
            return entry
        except BaseException as exc:
            if self.models.get(name) is entry:
                del self.models[name]
                self.memory.release_model(device, name)
            if not entry.loaded.done():
                entry.loaded.set_exception(exc if isinstance(exc, SyscallError) else eio(f"load of {name} failed: {exc}"))
                entry.loaded.exception()  # mark retrieved
            raise

    def kv_budget(self, device: str) -> int:
        s = self.settings
        if device in s.kv_cache_bytes:
            return s.kv_cache_bytes[device]
        if "*" in s.kv_cache_bytes:
            return s.kv_cache_bytes["*"]
        return DEFAULT_KV_BYTES["cpu" if device == "cpu" else "cuda"]

    def evict(self, entry: ModelEntry, why: str) -> None:
        self.models.pop(entry.name, None)
        self.memory.release_model(entry.device, entry.name)
        self.supervisor.send(entry.device, {"op": "unload", "model": entry.name})
        log.info("model.unloaded", model=entry.name, device=entry.device, reason=why)

    # -- requests --------------------------------------------------------------------------------

    def new_request(self, ctx: CallContext, call: str, entry: ModelEntry | None, payload: dict, *, stream=False,
                    priority=0, deadline_s: float | None = None, share: int | None = None,
                    device: str | None = None) -> Request:
        """A request of ctx's process, on entry's model and device (or, without a model, on device);
        share: the pid it is scheduled and accounted as (default: its own)."""
        proc = ctx.proc
        if len(proc.requests) >= self.settings.max_requests_per_process:
            raise SyscallError("EAGAIN", f"process {proc.pid} already has {len(proc.requests)} requests in flight "
                                         f"(limit {self.settings.max_requests_per_process}); wait for some to finish")
        if ctx.client_id in proc.requests:
            raise SyscallError("EINVAL", f"request id {ctx.client_id} is already in flight; use a new id per request")
        loop = asyncio.get_running_loop()
        req = Request(next(self._rids), proc.pid, proc.identity, ctx.routing, ctx.client_id, call,
                      entry.name if entry else "", entry.device if entry else device, payload, loop.create_future(),
                      stream, priority, None if deadline_s is None else time.monotonic() + deadline_s, next(self._seq),
                      share=proc.pid if share is None else share)
        proc.requests[ctx.client_id] = req
        self.requests[req.rid] = req
        if entry is not None:
            entry.in_use += 1
            entry.last_used = time.monotonic()
        if deadline_s is not None:
            req.timer = loop.call_later(deadline_s, self._deadline_passed, req)
        return req

    def _deadline_passed(self, req: Request) -> None:
        self.end_request(req, SyscallError("ETIMEDOUT", f"deadline passed after {len(req.text)} deltas"))

    def submit(self, req: Request) -> None:
        """Queue a generation for fair admission to its device's batch."""
        self.schedulers[req.device].enqueue(req)
        self.pump(req.device)

    def pump(self, device: str) -> None:
        """Admit queued requests to the device while its engine has room."""
        drv = self.supervisor.drivers.get(device)
        if drv is None or drv.state != "up":
            return
        running = self.running[device]
        sched = self.schedulers[device]
        window = DEVICE_WINDOW["cpu" if device == "cpu" else "cuda"]
        while len(running) < window:
            req = sched.pop_next()
            if req is None:
                return
            req.state = "running"
            running[req.rid] = req
            self.supervisor.send(device, {"op": "submit", "rid": req.rid, "model": req.model, **req.payload,
                                          "cut_in": sched.may_cut_in(req.share)})

    def end_request(self, req: Request, error: SyscallError | None = None, result: dict | None = None,
                    notify: bool = True) -> None:
        """Finish a request exactly once: free its slot, drop its bookkeeping, resolve its caller."""
        if self.requests.pop(req.rid, None) is None:
            return
        if req.timer:
            req.timer.cancel()
        sched = self.schedulers.get(req.device)
        if req.state == "queued" and sched is not None:
            sched.remove(req)
        elif req.state == "running":
            self.running[req.device].pop(req.rid, None)
            if sched is not None:
                sched.finished(req)
            if error is not None and req.call == "infer":
                self.supervisor.send(req.device, {"op": "cancel", "rid": req.rid})
        req.state = "done"
        proc = self.procs.get(req.pid)
        if proc is not None:
            proc.requests.pop(req.client_id, None)
        entry = self.models.get(req.model)
        if entry is not None:
            entry.in_use = max(0, entry.in_use - 1)
            entry.last_used = time.monotonic()
        if not req.future.done():
            if error is not None:
                req.future.set_exception(error)
                if not notify:
                    req.future.exception()
            else:
                req.future.set_result(result)
        self.pump(req.device)

    # -- driver events ---------------------------------------------------------------------------

    def _driver_message(self, drv: DriverHandle, msg: dict) -> None:
        op = msg.get("op")
        if op == "events":
            self._on_events(msg["events"])
        elif op == "result":
            req = self.requests.get(msg["rid"])
            if req:
                self.end_request(req, result=msg["result"])
        elif op == "error":
            req = self.requests.get(msg["rid"])
            if req:
                self.end_request(req, SyscallError(msg.get("errno", "EIO"), msg.get("message", "driver error")))
        elif op == "loaded":
            self._on_loaded(drv, msg)
        elif op == "load_failed":
            entry = self.models.get(msg["model"])
            if entry and not entry.loaded.done():
                entry.loaded.set_exception(eio(f"loading {msg['model']} failed: {msg.get('message')}"))
        elif op == "pong":
            pass
        else:
            log.warning("driver.unknown_op", device=drv.device, op=op)

    def _on_loaded(self, drv: DriverHandle, msg: dict) -> None:
        entry = self.models.get(msg["model"])
        if entry is None:
            return
        entry.weight_bytes = msg["bytes"]
        entry.kv_bytes = msg.get("kv_bytes", entry.kv_bytes)
        entry.context_length = msg.get("context_length", 0)
        entry.load_s = msg.get("load_s", 0.0)
        entry.state = "ready"
        self.memory.charge_model(entry.device, entry.name, entry.bytes)
        log.info("model.loaded", model=entry.name, device=entry.device, bytes=entry.bytes, duration_s=round(entry.load_s, 2))
        if not entry.loaded.done():
            entry.loaded.set_result(entry)
        self.pump(entry.device)

    def _on_events(self, events: list) -> None:
        """One message per engine step: every sequence's delta, fanned out to its client."""
        for rid, delta, tokens, finish, usage, error in events:
            req = self.requests.get(rid)
            if req is None:
                continue   # cancelled or reaped while the step ran
            if tokens:
                req.completion_tokens += tokens
                proc = self.procs.get(req.share)
                if proc is not None:
                    proc.tokens += tokens
                self.schedulers[req.device].charge(req.share, tokens)
            if delta:
                req.text.append(delta)
                if req.stream:
                    self.send_more(req, {"delta": delta})
            if finish is None:
                continue
            if error is not None:
                self.end_request(req, SyscallError(error[0], error[1]))
                continue
            if usage:
                self.schedulers[req.device].charge(req.share, usage.get("prompt_tokens", 0))
            self.end_request(req, result={"text": "".join(req.text), "finish_reason": finish, "model": req.model,
                                          "usage": usage or {"prompt_tokens": 0, "completion_tokens": req.completion_tokens}})

    async def _driver_down(self, drv: DriverHandle, why: str) -> None:
        for req in list(self.requests.values()):
            if req.device == drv.device and req.state == "running":
                self.end_request(req, eio(f"{why}; the driver is being restarted, retry the request"))
        for entry in self.models.values():
            if entry.device == drv.device and entry.state == "ready":
                entry.state = "loading"
                entry.loaded = asyncio.get_running_loop().create_future()

    async def _driver_up(self, drv: DriverHandle) -> None:
        device = drv.device
        s = self.settings
        kind = "cpu" if device == "cpu" else "cuda"
        total = s.device_memory.get(device) or int(drv.info.get("total_bytes", 0))
        self.memory.add_device(device, kind, total)
        for entry in list(self.models.values()):   # after a crash: reload what was loaded
            if entry.device == device and entry.state == "loading" and entry.weight_bytes:
                self.supervisor.send(device, {"op": "load", "model": entry.name, "spec": entry.spec.to_wire(),
                                              "kv_bytes": entry.kv_bytes})
        self.pump(device)


def resolve_devices(wanted: list[str]) -> list[str]:
    """'auto' means every CUDA device if there are any, else the CPU; asks nvidia-smi-free torch-less probes."""
    out: list[str] = []
    for d in wanted:
        if d == "auto":
            out += _cuda_devices() or ["cpu"]
        elif d == "cpu" or d.startswith("cuda:"):
            out.append(d)
        elif d == "cuda":
            out += _cuda_devices() or []
        else:
            raise ValueError(f"unknown device '{d}': use cpu, cuda:N or auto")
    if not out:
        raise ValueError("no devices to manage: CUDA was asked for but none is visible")
    return list(dict.fromkeys(out))


def _cuda_devices() -> list[str]:
    """CUDA devices visible, found without importing torch into the kernel."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return []
    try:
        names = sorted(p.name for p in Path("/proc/driver/nvidia/gpus").iterdir())
    except OSError:
        return []
    count = len(names) if visible is None else len([v for v in visible.split(",") if v.strip()])
    return [f"cuda:{i}" for i in range(count)]


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"
