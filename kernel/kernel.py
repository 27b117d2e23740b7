"""The kernel: the tables it owns, composed; starting and stopping them; reaping processes that die.

Everything runs on one asyncio loop, so the tables need no locks. Each concern has a room:
the syscall path in dispatch.py, syscall bodies by family in syscalls/, requests (and every
change of their state) in requests.py, loading and evicting models in models.py, admission to
the devices in devices.py, what drivers say in driverevents.py, the service host in services.py.
Each table is handed what it uses when it is built here (the driver port, the tables below it,
the clock and config values) and none imports this module, not even for its types: the syscalls
alone see the whole kernel, and boot.py hands them in.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from pathlib import Path

import zmq.asyncio

from llmos.specs.modelspec import CACHE_DIR_ENV
from llmos.specs.protocol import ABI_VERSION, NOTICE_ID, pack, runtime_dir

from . import logs
from .audit import AuditLog
from .auth import DriverKeys, PrincipalAuthenticator
from .config import Settings
from .devices import Devices
from .devmem import DeviceMemory
from .dispatch import Dispatcher
from .driverevents import DriverEvents
from .driverport import DriverPort
from .errors import ecanceled
from .health import Readiness
from .httpserve import MetricsServer
from .jobs import JobTable
from .memstore import MemoryStore
from .metrics import Metrics, TableCollector
from .models import ModelTable
from .placement import resolve_devices
from .principals import PrincipalTable
from .process import Process, ProcessTable
from .quotas import Quotas
from .requests import RequestTable
from .sealing import ValueSeal
from .services import ServiceManager
from .supervisor import Supervisor
from .tasks import TaskSet
from .transport import Transport

log = logs.get("llmos.kernel")


class Kernel:
    def __init__(self, settings: Settings, handlers: dict):
        """handlers: the syscalls by name (kernel/syscalls), each called as handler(kernel, ctx, args)."""
        s = self.settings = settings
        self.started = time.time()
        self.stopping = asyncio.Event()
        self.stop_reason = "kernel shutting down"   # what cancelled requests are told; `shutdown` sets it
        self.boot_failure: str | None = None    # why boot failed: `llmos boot` then exits non-zero
        self._tasks = TaskSet(log)
        self.ctx = zmq.asyncio.Context()
        self.audit: AuditLog | None = None      # opened at start, in the state directory
        self.service_token = secrets.token_urlsafe(24)    # given to the service host alone, at its start
        # The tables, each built from the ones below it.
        self.drivers = DriverPort()          # the one way to the drivers; the supervisor plugs in at start
        self.procs = ProcessTable()
        self.devmem = DeviceMemory()   # device memory: what each device holds for models, KV and reservations
        self.principals = PrincipalTable(s.state_dir, s.grantable_caps, s.default_caps)
        self.quotas = Quotas(s, self.principals)
        self.metrics = Metrics()
        self.requests = RequestTable(self.procs, self.quotas, self.drivers, s.max_requests_per_process)
        self.devices = Devices(resolve_devices(s.devices), self.drivers, self.requests, self.procs,
                               s.max_running_per_process)
        self.models = ModelTable(s, self.devices, self.devmem, self.drivers, self.procs, self.principals,
                                 self.requests, self.record)
        self.jobs = JobTable(s.state_dir, self.models, self.devices, self.devmem, self.drivers, self.quotas,
                             self.procs, self.spawn)           # fine-tune jobs
        self.devices.train_turn = self.jobs.admitted
        self.driver_events = DriverEvents(s, self.devices, self.requests, self.models, self.jobs, self.procs,
                                          self.quotas, self.devmem, self.metrics, self.fail_boot)
        self.services = ServiceManager(s, self.requests, self.ctx, self.service_token, self.record)
        self.health = Readiness(s, self.models, self.stopping, self.spawn, self.ctx)
        TableCollector(self.metrics, self.devices, self.devmem, self.models, self.drivers, self.procs,
                       self.services, self.health)
        # What the request table tells of each request that ends, in this order.
        self.requests.on_end += [self.devices.request_ended, self.metrics.request_ended]
        self.dispatch = Dispatcher(handlers, self, self.procs, self.spawn, self.metrics.reply)
        self.metrics_server = (MetricsServer(s.metrics_listen, self.metrics.exposition, self.health.check)
                               if s.metrics_listen else None)
        self.authenticator: PrincipalAuthenticator | None = None
        self.transports: list[Transport] = []     # the clients' socket, then the operator's if that is tcp
        self.supervisor: Supervisor | None = None
        self.ray = None                     # RayDrivers, when booted with --ray (kernel/raydrivers.py)
        self.memstore: MemoryStore | None = None

    def record(self, event: str, **fields) -> None:
        """An event in the audit log (opened at start: the tables are built before it)."""
        self.audit.record(event, **fields)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        if self.metrics_server is not None:     # first: a port it cannot have refuses the boot before anything opens
            await self.metrics_server.start()
        s.state_dir.mkdir(parents=True, exist_ok=True)
        self.principals.load()
        self.audit = AuditLog(s.state_dir, syslog=s.audit_syslog, facility=s.audit_syslog_facility)
        seal = ValueSeal.from_key_file(s.state_dir / "keys" / "memory.key") if s.memory_encrypt else None
        self.memstore = MemoryStore(s.state_dir / "memory.sqlite3", seal=seal)
        driver_keys = DriverKeys(self._driver_refused) if s.ray.address else None
        if s.socket.startswith("tcp://") or driver_keys:   # the ZAP handler answers before a socket is bound
            self.authenticator = PrincipalAuthenticator(self.ctx, self.principals, self._refused, driver_keys)
            self.authenticator.start()
        for url in dict.fromkeys([s.socket, s.operator_socket]):
            self.transports.append(Transport(self.ctx, url, self.principals, self._unreachable, len(self.transports),
                                             on_revoked=self._revoked))
        self.audit.record("boot", socket=s.socket, pid=os.getpid(), users=len(self.principals.users()))
        Path(runtime_dir()).mkdir(parents=True, exist_ok=True, mode=0o700)
        events = self.driver_events
        self.supervisor = Supervisor(self.ctx, f"ipc://{runtime_dir()}/drivers-{os.getpid()}.sock",
                                     events.on_message, events.on_down, events.on_up, dtype=s.dtype,
                                     on_failed=events.on_failed, child_env={CACHE_DIR_ENV: str(s.state_dir / "cache")})
        self.drivers.attach(self.supervisor)
        await self.supervisor.start(self.devices.names)
        if driver_keys:
            await self._join_ray(driver_keys)
        for transport in self.transports:
            self.spawn(self.dispatch.serve(transport), f"serve-{transport.url}")
        await self.services.start()
        self.spawn(self._probe_loop(), "probe")
        self.spawn(self._audit_windows(), "audit-windows")
        log.info("kernel.listening", socket=s.socket, operator_socket=s.operator_socket, devices=self.devices.names,
                 state_dir=str(s.state_dir), abi=ABI_VERSION)
        for name in s.models_to_load():
            self.spawn(self._preload(name), f"preload-{name}")
        self.jobs.resume()      # jobs a stopped or killed kernel left unfinished

    async def _join_ray(self, keys: DriverKeys) -> None:
        """Drivers on the Ray cluster too; a kernel that cannot reach it does not run."""
        try:
            from .raydrivers import RayDrivers    # here only: a kernel without --ray never imports ray
        except ImportError as exc:
            self.fail_boot(f"--ray needs Ray: pip install 'llmos[ray]' ({exc})")
            return
        self.ray = RayDrivers(self.settings, self.supervisor, self.devices, keys, self.spawn)
        try:
            await self.ray.join()
            await self.ray.start()
        except Exception as exc:
            log.exception("ray.failed")
            self.fail_boot(f"cannot run drivers on the Ray cluster at {self.settings.ray.address}: {exc}")

    async def _preload(self, name: str) -> None:
        """The operator asked for this model at boot: a kernel that cannot load it does not run."""
        try:
            await self.models.ensure(name, "auto", None, replicas=self.settings.replicas.get(name, 1))
            for entry in self.models.replicas(name):
                entry.pinned = True
        except Exception as exc:
            self.fail_boot(f"the boot model '{name}' could not be loaded: {exc}")

    def fail_boot(self, why: str) -> None:
        """Stop the kernel because what the operator asked for at boot cannot work; the first reason wins."""
        if self.boot_failure is None:
            self.boot_failure = why
            log.error("boot.failed", reason=why)
        self.stopping.set()

    async def shutdown(self, why: str = "kernel shutting down") -> None:
        log.info("kernel.stopping", reason=why)
        if self.supervisor:
            self.supervisor.begin_close()
        self.services.begin_close()
        for req in self.requests:
            self.requests.end(req, ecanceled(why))
        await asyncio.sleep(0.05)   # let the ECANCELED replies reach the socket
        self._tasks.cancel_all()
        if self.supervisor:
            await self.supervisor.close()
        if self.ray:
            self.ray.close()
        await self.services.close()
        for transport in self.transports:
            transport.close()
        if self.metrics_server is not None:
            await self.metrics_server.close()
        if self.memstore:
            self.memstore.close()
        if self.authenticator:
            self.authenticator.stop()
        if self.audit:
            self.audit.record("shutdown", reason=why)
            self.audit.close()
        self.ctx.term()
        log.info("kernel.stopped")

    def spawn(self, coro, name: str) -> asyncio.Task:
        """A task the kernel owns: kept alive while it runs, its exception logged, cancelled at shutdown."""
        return self._tasks.spawn(coro, name)

    # -- processes -------------------------------------------------------------------------------

    def _refused(self, public_key: str) -> None:
        """The transport turned a connection away: its key is no principal's."""
        self.audit.record("auth_failed", public_key=public_key)
        self.metrics.auth_failure("bad_key")
        log.warning("auth.refused", public_key=public_key)

    def _revoked(self, connection: bytes, public_key: str) -> None:
        """A connection opened before its key was rotated or removed sent a frame (refused); once per connection."""
        name = self.principals.retired(public_key)
        self.audit.record("revoked_key", public_key=public_key, name=name)
        log.warning("auth.revoked_key", public_key=public_key, name=name)

    def _driver_refused(self, public_key: str) -> None:
        """Something knocked on the drivers' tcp socket with a key the kernel did not issue."""
        self.audit.record("auth_failed", public_key=public_key, socket="drivers")
        log.warning("auth.driver_refused", public_key=public_key)

    def _unreachable(self, identity: bytes, why: str) -> None:
        proc = self.procs.by_identity(identity)
        if proc is not None:
            self.reap(proc, why)

    def reap(self, proc: Process, why: str) -> None:
        """Free everything a process holds: requests, reservations, model references."""
        if self.procs.remove(proc.pid) is None:
            return
        for req in self.requests.of(proc.pid).values():
            self.requests.end(req, ecanceled(f"process {proc.pid} was reaped: {why}"), notify=False)
        for handle, (device, _) in list(proc.reservations.items()):
            self.devmem.release(device, handle)
        self.models.drop_refs(proc)
        self.devices.forget(proc.pid, f"process {proc.pid}, whom it served, was reaped: {why}")
        log.info("process.reaped", pid=proc.pid, name=proc.name, reason=why)

    async def _audit_windows(self) -> None:
        """A window of denials that ends while nothing else is written still gets its summary lines."""
        while True:
            await asyncio.sleep(5)
            self.audit.tick()

    async def _probe_loop(self) -> None:
        """Probe quiet clients with a notice frame: a dead one is unroutable, and gets reaped."""
        notice = pack({"id": NOTICE_ID, "ok": True, "result": {"notice": "heartbeat"}})
        period = self.settings.heartbeat_s
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for proc in self.procs:
                if now - proc.last_seen >= period:
                    proc.transport.send([proc.identity[1:]], notice)
