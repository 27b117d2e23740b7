"""Where things go: the devices a kernel manages (from the operator's list), where a model's copy
goes and what makes room for it (the KV-cache budget per device, the idle models to evict, least
recently used first, the devices for more replicas). Policy only; the tables act on it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from llmos.specs.channel import device_kind

from .errors import einval

if TYPE_CHECKING:
    from .config import Settings
    from .devmem import DeviceMemory


class Evictable(Protocol):
    """A loaded thing that holds device memory: a model's copy (models.ModelEntry) or an adapter."""
    device: str
    idle: bool
    last_used: float
    bytes: int


E = TypeVar("E", bound=Evictable)

DEFAULT_KV_BYTES = {"cpu": 512 << 20, "cuda": 8 << 30}   # KV-cache pool of a generate model, by device kind


def kv_budget(settings: "Settings", device: str) -> int:
    """The KV-cache pool a generate model gets on `device`: the config's, else the kind's default."""
    configured = settings.kv_cache_bytes
    if device in configured:
        return configured[device]
    if "*" in configured:
        return configured["*"]
    return DEFAULT_KV_BYTES[device_kind(device)]


def eviction_victims(entries: list[E], device: str, need: int, free: int) -> list[E] | None:
    """Idle models on `device` to unload, least recently used first, so `need` bytes fit; None if they cannot."""
    if need <= free:
        return []
    victims = []
    for entry in sorted((e for e in entries if e.device == device and e.idle), key=lambda e: e.last_used):
        victims.append(entry)
        free += entry.bytes
        if need <= free:
            return victims
    return None


def replica_devices(devices: list[str], devmem: "DeviceMemory", name: str, have: set[str], more: int) -> list[str]:
    """Devices (of `devices`) for `more` new replicas of `name` (on `have` now): of the kind it is
    already on, most free memory first; EINVAL when there are not enough."""
    kind = device_kind(next(iter(have))) if have else None
    spare = [d for d in devices
             if d not in have and (kind is None or device_kind(d) == kind) and d in devmem.devices]
    if len(spare) < more:
        raise einval(f"{len(have) + more} replicas of '{name}' asked for, but this kernel has "
                     f"{len(have) + len(spare)} {kind or ''} device(s) up for it")
    spare.sort(key=lambda d: -devmem.devices[d].free_bytes)
    return spare[:more]


def resolve_devices(wanted: list[str]) -> list[str]:
    """'auto' means every CUDA device if there are any, else the CPU."""
    out: list[str] = []
    for d in wanted:
        if d == "auto":
            out += _cuda_devices() or ["cpu"]
        elif d == "cpu" or d.startswith("cuda:") or _is_cpu_n(d):
            out.append(d)
        elif d == "cuda":
            out += _cuda_devices() or []
        else:
            raise ValueError(f"unknown device '{d}': use cpu, cpu:N (drivers sharing the CPU), cuda:N or auto")
    if not out:
        raise ValueError("no devices to manage: CUDA was asked for but none is visible")
    return list(dict.fromkeys(out))


def _is_cpu_n(device: str) -> bool:
    return device.startswith("cpu:") and device[4:].isdigit() and int(device[4:]) < 64


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
