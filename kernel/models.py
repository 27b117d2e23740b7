"""The model table: which models are loaded where, who references them, loading and evicting.

One loaded copy serves every process. A model is *idle* when no process references it, no
request is using it and the operator did not pin it (boot-time models are pinned); idle models
are what the kernel evicts, least recently used first, to make room for a load or a reservation.
A load is admitted against the device's memory account before the driver is asked for it, so
the driver never runs out of memory half-way through loading.

A model name that is not a config or registry name is a filesystem path: only a principal
holding `admin` may name one, unless the operator named it (the default model, a preloaded one,
the services' embedding model), so that everyone may use it. It is resolved and sized on a worker thread (registry refuses FIFOs, devices and
oversized files) so the kernel's loop never waits on a disk. A load that takes longer than
`load_timeout_s` fails with ETIMEDOUT and gives its memory charge back.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from llmos.specs import channel
from llmos.specs.modelspec import SERVICES_EMBED_ENV, ModelSpec
from llmos.specs.units import format_size

from . import logs, registry
from .adapters import AdapterTable
from .errors import SyscallError, eio, einval, enoent, enomem, eperm
from .loadprogress import LoadTimes, progress_of
from .placement import eviction_victims, kv_budget, replica_devices

if TYPE_CHECKING:
    from .config import Settings
    from .devices import Devices
    from .devmem import DeviceMemory
    from .driverport import DriverPort
    from .principals import PrincipalTable
    from .process import Process, ProcessTable
    from .requests import RequestTable

log = logs.get("llmos.models")


@dataclass(eq=False)
class ModelEntry:
    name: str
    spec: ModelSpec | None          # None while the name is being resolved
    device: str
    kind: str
    quant: str | None = None        # registry.wanted_quant's: "int8" or None
    state: str = "loading"          # loading | ready
    weight_bytes: int = 0
    kv_bytes: int = 0
    refs: set[int] = field(default_factory=set)   # pids
    pinned: bool = False
    users: set[int] = field(default_factory=set)   # rids of the requests in flight on it (the request table's)
    last_used: float = field(default_factory=time.monotonic)
    load_s: float = 0.0
    context_length: int = 0
    backend: str = ""               # what the driver generates with: torch | llama.cpp
    stage: str = ""                 # while loading: the driver's last LoadProgress stage
    started: float = field(default_factory=time.monotonic)   # this load's start
    loaded: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes

    @property
    def in_use(self) -> int:
        return len(self.users)

    @property
    def idle(self) -> bool:
        return self.state == "ready" and not self.refs and not self.pinned and self.in_use == 0

    def load_message(self) -> channel.Load:
        return channel.Load(self.name, self.spec.to_wire(), self.kv_bytes)

    def describe(self, expected_s: float | None = None) -> dict:
        out = {"name": self.name, "device": self.device, "kind": self.kind, "state": self.state,
               "bytes": self.bytes, "refs": len(self.refs) + (1 if self.pinned else 0), "in_use": self.in_use,
               "context_length": self.context_length, "load_s": round(self.load_s, 3), "quant": self.quant or "none"}
        if self.backend:
            out["backend"] = self.backend
        if self.state == "loading":
            out["progress"] = progress_of(self.name, self.stage, self.started, expected_s)
        return out


class ModelTable:
    """name -> device -> entry: one copy per device, and a model may have copies (replicas) on
    several devices; each new request goes to the ready replica that can start it soonest."""

    def __init__(self, settings: "Settings", devices: "Devices", devmem: "DeviceMemory", drivers: "DriverPort",
                 procs: "ProcessTable", principals: "PrincipalTable", requests: "RequestTable",
                 audit: Callable[..., None]):
        """audit: records an event in the audit log (AuditLog.record), for loads from a path."""
        self.settings = settings
        self.devices = devices
        self.devmem = devmem
        self.drivers = drivers
        self.procs = procs
        self.principals = principals
        self.audit = audit
        self._replicas: dict[str, dict[str, ModelEntry]] = {}
        self.load_times = LoadTimes(settings.state_dir)
        # LoRA adapters over these models, evicted like them
        self.adapters = AdapterTable(self, devices, devmem, drivers, requests, settings.state_dir,
                                     settings.load_timeout_s)

    def get(self, name: str) -> ModelEntry | None:
        """The replica a new request on `name` should use: the ready one whose device can start it
        soonest; a loading one if none is ready; None if it has none."""
        copies = list(self._replicas.get(name, {}).values())
        ready = [e for e in copies if e.state == "ready"]
        if ready:
            return min(ready, key=lambda e: self.devices.backlog(e.device))
        return copies[0] if copies else None

    def replicas(self, name: str) -> list[ModelEntry]:
        return list(self._replicas.get(name, {}).values())

    def entry(self, name: str, device: str) -> ModelEntry | None:
        return self._replicas.get(name, {}).get(device)

    def __contains__(self, name: str) -> bool:
        return name in self._replicas

    def __iter__(self):
        return iter([e for copies in self._replicas.values() for e in copies.values()])

    def names(self) -> list[str]:
        return sorted(self._replicas)

    def describe(self) -> list[dict]:
        return [e.describe(self.load_times.get(e.name)) for e in self]

    def progress(self, name: str) -> dict | None:
        """How far the load of `name` has got; None once a replica is ready (or it has none)."""
        copies = self.replicas(name)
        if not copies or any(e.state == "ready" for e in copies):
            return None
        return progress_of(name, copies[0].stage, copies[0].started, self.load_times.get(name))

    def on_device(self, device: str) -> list[ModelEntry]:
        return [e for e in self if e.device == device]

    async def ensure(self, name: str, device: str, proc: "Process | None", replicas: int = 1,
                     quant: str | None = None) -> ModelEntry:
        """Load `name` (or reuse its loaded copies) on `replicas` devices and give `proc` a reference to it."""
        if registry.is_path(name, self.settings.models):
            self._check_may_name_path(name, proc)
        if name not in self._replicas:
            await self._load(name, device, quant)
        more = replicas - len(self.replicas(name))
        if more > 0:
            quant = self.replicas(name)[0].quant or "none"
            devices = replica_devices(self.devices.names, self.devmem, name, set(self._replicas.get(name, {})), more)
            await asyncio.gather(*(self._load(name, d, quant) for d in devices))
        entry = self.get(name)
        if entry is None:
            raise eio(f"model '{name}' was unloaded while it loaded")
        await asyncio.shield(entry.loaded)
        entry = self.get(name) or entry
        if proc is not None and self.procs.get(proc.pid) is proc:
            for copy in self.replicas(name):
                copy.refs.add(proc.pid)
            proc.models.add(name)
        entry.last_used = time.monotonic()
        return entry

    def _named_by_operator(self, name: str) -> bool:
        s = self.settings
        return (name == s.default_model or name in s.models_to_load()
                or name == os.environ.get(SERVICES_EMBED_ENV))

    def _check_may_name_path(self, name: str, proc: "Process | None") -> None:
        if proc is None or self._named_by_operator(name):
            return
        principal = self.principals.get(proc.principal)
        if principal is not None and "admin" in principal.caps:
            self.audit("load_path", pid=proc.pid, principal=proc.principal, model=name[:4096])
            return
        self.audit("denied", call="load", pid=proc.pid, principal=proc.principal, model=name[:200])
        raise eperm("only the operator (admin) may load a model from a path; use a registry or config name "
                    "(see `models`), or ask the operator to add it to the config's [models]")

    async def _load(self, name: str, wanted_device: str, quant: str | None = None) -> ModelEntry:
        settings = self.settings
        device = self.devices.pick(wanted_device)
        entry = ModelEntry(name, None, device, "", registry.wanted_quant(name, settings.models, quant))
        self._replicas.setdefault(name, {})[device] = entry   # visible at once: a second load of it waits
        sent = False

        async def load() -> None:
            nonlocal sent
            try:
                spec = await asyncio.to_thread(registry.resolve, name, settings.models, quant)
            except registry.ModelNotFound as exc:
                raise enoent(str(exc)) from None
            entry.spec, entry.kind = spec, spec.kind
            drv = await self.devices.wait_driver(device)
            dtype_bytes = 4 if drv.hello.dtype == "float32" else 2
            weights = await asyncio.to_thread(registry.estimate_bytes, spec, dtype_bytes)
            kv = kv_budget(settings, device) if spec.kind == "generate" else 0
            self.make_room(device, weights + kv, f"model '{name}' ({format_size(weights)} weights + {format_size(kv)} KV cache)",
                           exclude=entry)
            entry.weight_bytes, entry.kv_bytes = weights, kv
            self.devmem.charge_model(device, name, entry.bytes)
            log.info("model.loading", model=name, device=device, source=spec.source, estimate_bytes=entry.bytes)
            sent = self.drivers.send(device, entry.load_message())
            await asyncio.shield(entry.loaded)

        try:
            try:
                await asyncio.wait_for(load(), settings.load_timeout_s)
            except (registry.BadModelPath, registry.UnsupportedQuant) as exc:
                raise einval(str(exc)) from None
            except asyncio.TimeoutError:
                raise SyscallError("ETIMEDOUT", f"loading {name[:200]} took over {settings.load_timeout_s:g}s "
                                                f"(load_timeout_s); its memory is released") from None
            return entry
        except BaseException as exc:
            if self.entry(name, device) is entry:
                self._forget(entry)
                self.devmem.release_model(device, name)
                if sent:       # the driver may still be loading it: it drops it
                    self.drivers.send(device, channel.Unload(name))
            if not entry.loaded.done():
                entry.loaded.set_exception(exc if isinstance(exc, SyscallError) else eio(f"load of {name} failed: {exc}"))
                entry.loaded.exception()  # mark retrieved
            raise

    def make_room(self, device: str, need: int, what: str, exclude: ModelEntry | None = None) -> None:
        """Evict idle models on `device` until `need` bytes are free; ENOMEM (saying why) if they cannot be."""
        account = self.devmem.devices[device]
        if need > account.total_bytes:
            raise enomem(f"{what} needs {format_size(need)} but {device} has {format_size(account.total_bytes)} in all; "
                         f"it can never fit here")
        victims = eviction_victims([*self, *self.adapters.entries()], device, need, account.free_bytes)
        if victims is None:
            held = ", ".join(f"{e.name} {format_size(e.bytes)}" for e in self.on_device(device) if e is not exclude)
            raise enomem(f"{what} needs {format_size(need)} but {device} has {format_size(account.free_bytes)} free; "
                         f"in use: {held or 'nothing'}, reservations {format_size(account.reserved_bytes)}; "
                         f"unload a model or free reservations")
        for victim in victims:
            (self.adapters.evict if victim.kind == "adapter" else self.evict)(victim, f"making room for {what}")

    def _forget(self, entry: ModelEntry) -> None:
        copies = self._replicas.get(entry.name, {})
        if copies.get(entry.device) is entry:
            del copies[entry.device]
        if not copies:
            self._replicas.pop(entry.name, None)

    def evict(self, entry: ModelEntry, why: str) -> None:
        self._forget(entry)
        self.adapters.base_gone(entry.name, entry.device)
        self.devmem.release_model(entry.device, entry.name)
        self.drivers.send(entry.device, channel.Unload(entry.name))
        log.info("model.unloaded", model=entry.name, device=entry.device, reason=why)

    def drop_refs(self, proc: "Process") -> None:
        for name in proc.models:
            for entry in self.replicas(name):
                entry.refs.discard(proc.pid)

    # -- what the device's driver says ------------------------------------------------------------

    def loaded(self, device: str, msg: channel.Loaded) -> None:
        entry = self.entry(msg.model, device)
        if entry is None:
            return
        entry.weight_bytes, entry.kv_bytes = msg.bytes, msg.kv_bytes
        entry.context_length, entry.load_s, entry.backend = msg.context_length, msg.load_s, msg.backend
        entry.state, entry.stage = "ready", ""
        self.load_times.record(entry.name, msg.load_s)
        self.devmem.charge_model(entry.device, entry.name, entry.bytes)
        log.info("model.loaded", model=entry.name, device=entry.device, bytes=entry.bytes, duration_s=round(entry.load_s, 2))
        if not entry.loaded.done():
            entry.loaded.set_result(entry)

    def load_progress(self, device: str, msg: channel.LoadProgress) -> None:
        entry = self.entry(msg.model, device)
        if entry is not None and entry.state == "loading":
            entry.stage = msg.stage[:64]

    def load_failed(self, device: str, msg: channel.LoadFailed) -> None:
        entry = self.entry(msg.model, device)
        if entry and not entry.loaded.done():
            entry.loaded.set_exception(eio(f"loading {msg.model} failed: {msg.message}"))

    def driver_down(self, device: str) -> None:
        """Its driver crashed: what was loaded there is loading again once a new driver is up
        (adapters, when next asked for)."""
        self.adapters.driver_down(device)
        for entry in self.on_device(device):
            if entry.state == "ready":
                entry.state, entry.stage, entry.started = "loading", "", time.monotonic()
                entry.loaded = asyncio.get_running_loop().create_future()

    def reload_after_crash(self, device: str) -> None:
        for entry in self.on_device(device):
            if entry.state == "loading" and entry.weight_bytes:
                self.drivers.send(device, entry.load_message())
