"""The adapter table: which LoRA adapters are loaded over which copy of their base, and their memory.

An adapter is served from the driver that holds its base (on every replica of it), so requests
for different adapters of one base share its weights and its batch. Each loaded adapter is charged
to its device like a model, and is one of the things `make_room` may evict, least recently used
first, when no request in flight (queued or running) uses it. Unloading a base drops its adapters
with it: the driver forgets them together. The adapters on disk, and who may use which, are
adapters.py's; this table only loads what that store found.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Protocol

from llmos.specs import channel
from llmos.specs.units import format_size

from .. import logs
from .store import AdapterInfo, AdapterNotFound, AdapterStore, BadAdapter
from ..errors import SyscallError, eio, einval, enoent

if TYPE_CHECKING:
    from ..devices import Devices
    from ..devmem import DeviceMemory
    from ..driverport import DriverPort
    from ..requests import Request


class BaseCopy(Protocol):
    """A loaded copy of an adapter's base model (models.ModelEntry)."""
    device: str
    state: str


class Bases(Protocol):
    """What the adapters need of the model table their bases are in (models.ModelTable)."""
    def replicas(self, name: str) -> list[BaseCopy]: ...
    def make_room(self, device: str, need: int, what: str) -> None: ...

log = logs.get("llmos.adapters")


@dataclass(eq=False)
class AdapterEntry:
    """One adapter loaded (or loading) over the copy of its base on one device."""
    info: AdapterInfo
    device: str
    state: str = "loading"          # loading | ready
    bytes: int = 0                  # charged: the file's size while loading, the driver's count once loaded
    in_use: int = 0                 # requests in flight on it, counted by AdapterTable.entries
    last_used: float = field(default_factory=time.monotonic)
    loaded: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    kind = "adapter"

    @property
    def name(self) -> str:
        return self.info.id

    @property
    def idle(self) -> bool:
        return self.state == "ready" and self.in_use == 0

    @property
    def account_key(self) -> str:
        """Its line in the device's memory account (beside the models')."""
        return f"adapter {self.info.id}"

    def describe(self) -> dict:
        return {"name": f"{self.info.base}:{self.info.name}", "kind": "adapter", "base": self.info.base,
                "owner": self.info.owner, "shared": self.info.shared, "device": self.device, "state": self.state,
                "bytes": self.bytes, "in_use": self.in_use}


class AdapterTable:
    def __init__(self, bases: Bases, devices: "Devices", devmem: "DeviceMemory", drivers: "DriverPort",
                 requests: Iterable["Request"], state_dir: Path, load_timeout_s: float):
        """requests: every request in flight (the request table), to count who is using an adapter."""
        self.bases = bases
        self.devices = devices
        self.devmem = devmem
        self.drivers = drivers
        self.requests = requests
        self.load_timeout_s = load_timeout_s
        self.store = AdapterStore(state_dir)
        self._entries: dict[tuple[str, str], AdapterEntry] = {}   # (adapter id, device) -> entry

    async def find(self, principal: str, base: str, name: str) -> AdapterInfo:
        """The adapter `base:name` the principal may use (ENOENT if none; EINVAL if it is broken)."""
        try:
            return await asyncio.to_thread(self.store.find, principal, base, name)
        except AdapterNotFound as exc:
            raise enoent(str(exc)) from None
        except BadAdapter as exc:
            raise einval(str(exc)) from None

    def entries(self) -> list[AdapterEntry]:
        """Every loaded adapter, its in-use count fresh (requests queued or running with it)."""
        using: dict[tuple[str, str], int] = {}
        for req in self.requests:
            adapter = req.payload.get("adapter") if isinstance(req.payload, dict) else None
            if adapter:
                using[(adapter, req.device)] = using.get((adapter, req.device), 0) + 1
        for key, entry in self._entries.items():
            entry.in_use = using.get(key, 0)
        return list(self._entries.values())

    def describe(self, principal: str) -> list[dict]:
        """The loaded adapters `principal` may use (another's unshared ones are not shown)."""
        return [e.describe() for e in self.entries() if e.info.owner == principal or e.info.shared]

    def replica_for(self, info: AdapterInfo) -> BaseCopy | None:
        """The ready copy of the adapter's base that holds it ready and can start a request soonest."""
        copies = [e for e in self.bases.replicas(info.base) if e.state == "ready"
                  and getattr(self._entries.get((info.id, e.device)), "state", None) == "ready"]
        return min(copies, key=lambda e: self.devices.backlog(e.device), default=None)

    def on_device(self, device: str) -> list[AdapterEntry]:
        return [e for e in self._entries.values() if e.device == device]

    async def ensure(self, info: AdapterInfo) -> None:
        """Load the adapter over every ready copy of its base (which the caller ensured), or wait for
        the loads under way; EINVAL if a driver refuses it, ETIMEDOUT past load_timeout_s."""
        devices = [e.device for e in self.bases.replicas(info.base) if e.state == "ready"]
        if not devices:
            raise eio(f"model '{info.base}' was unloaded while its adapter was asked for")
        files: asyncio.Future | None = None
        waits = []
        self.entries()      # fresh in-use counts
        for device in devices:
            entry = self._entries.get((info.id, device))
            if entry is not None and entry.idle and entry.info.meta.get("version") != info.meta.get("version"):
                self.evict(entry, "a newer version of it was trained")    # a busy one serves on until idle
                entry = None
            if entry is None:
                entry = self._entries[(info.id, device)] = AdapterEntry(info, device)
                if files is None:
                    files = asyncio.ensure_future(asyncio.to_thread(self.store.read_files, info))
                waits.append(self._load(entry, files))
            else:
                entry.info = info          # its metadata as now (shared or not)
                waits.append(asyncio.shield(entry.loaded))
        await asyncio.gather(*waits)
        for device in devices:
            entry = self._entries.get((info.id, device))
            if entry is not None:
                entry.last_used = time.monotonic()

    async def _load(self, entry: AdapterEntry, files: asyncio.Future) -> None:
        info, sent = entry.info, False
        what = f"adapter '{info.base}:{info.name}'"

        async def load() -> None:
            nonlocal sent
            try:
                data = await asyncio.shield(files)
            except BadAdapter as exc:
                raise einval(str(exc)) from None
            estimate = sum(len(b) for b in data.values())
            self.bases.make_room(entry.device, estimate, f"{what} ({format_size(estimate)})")
            entry.bytes = estimate
            self.devmem.charge_model(entry.device, entry.account_key, estimate)
            sent = self.drivers.send(entry.device, channel.LoadAdapter(info.base, info.id, data))
            await asyncio.shield(entry.loaded)

        try:
            try:
                await asyncio.wait_for(load(), self.load_timeout_s)
            except asyncio.TimeoutError:
                raise SyscallError("ETIMEDOUT", f"loading {what} took over {self.load_timeout_s:g}s "
                                                f"(load_timeout_s); its memory is released") from None
        except BaseException as exc:
            self._forget(entry)
            if sent:
                self.drivers.send(entry.device, channel.UnloadAdapter(info.base, info.id))
            if not entry.loaded.done():
                entry.loaded.set_exception(exc if isinstance(exc, SyscallError) else eio(f"loading {what} failed: {exc}"))
                entry.loaded.exception()   # mark retrieved
            raise

    def _forget(self, entry: AdapterEntry) -> None:
        if self._entries.get((entry.info.id, entry.device)) is entry:
            del self._entries[(entry.info.id, entry.device)]
        self.devmem.release_model(entry.device, entry.account_key)

    def evict(self, entry: AdapterEntry, why: str) -> None:
        self._forget(entry)
        self.drivers.send(entry.device, channel.UnloadAdapter(entry.info.base, entry.info.id))
        log.info("adapter.unloaded", adapter=entry.info.id, device=entry.device, reason=why)

    def shared_changed(self, info: AdapterInfo) -> None:
        for entry in self._entries.values():
            if entry.info.id == info.id:
                entry.info = info

    # -- what happens to the base and its driver --------------------------------------------------

    def base_gone(self, base: str, device: str) -> None:
        """The base's copy on `device` was unloaded: the driver dropped its adapters with it."""
        for entry in [e for e in self.on_device(device) if e.info.base == base]:
            self._fail(entry, eio(f"model '{base}' was unloaded from {device} while its adapter loaded"))

    def driver_down(self, device: str) -> None:
        """The driver died with its adapters: they are loaded again when next asked for."""
        for entry in self.on_device(device):
            self._fail(entry, eio(f"the driver for {device} died while the adapter loaded"))

    def _fail(self, entry: AdapterEntry, error: SyscallError) -> None:
        self._forget(entry)
        if not entry.loaded.done():
            entry.loaded.set_exception(error)
            entry.loaded.exception()

    def loaded(self, device: str, msg: channel.AdapterLoaded) -> None:
        entry = self._entries.get((msg.adapter, device))
        if entry is None or entry.loaded.done():
            return
        entry.state, entry.bytes = "ready", msg.bytes
        self.devmem.charge_model(device, entry.account_key, msg.bytes)
        log.info("adapter.loaded", adapter=msg.adapter, device=device, bytes=msg.bytes)
        entry.loaded.set_result(entry)

    def failed(self, device: str, msg: channel.AdapterFailed) -> None:
        entry = self._entries.get((msg.adapter, device))
        if entry is not None and not entry.loaded.done():
            entry.loaded.set_exception(einval(f"adapter '{entry.info.base}:{entry.info.name}' cannot be served over "
                                              f"'{entry.info.base}': {msg.message[:1000]}"))
