"""Where a model's copy goes and what makes room for it: the KV-cache budget per device, the idle
models to evict (least recently used first), the devices for more replicas. Policy only; the model
table (models.py) acts on it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmos.specs.channel import device_kind

from .errors import einval

if TYPE_CHECKING:
    from .config import Settings
    from .kernel import Kernel
    from .models import ModelEntry

DEFAULT_KV_BYTES = {"cpu": 512 << 20, "cuda": 8 << 30}   # KV-cache pool of a generate model, by device kind


def kv_budget(settings: "Settings", device: str) -> int:
    """The KV-cache pool a generate model gets on `device`: the config's, else the kind's default."""
    configured = settings.kv_cache_bytes
    if device in configured:
        return configured[device]
    if "*" in configured:
        return configured["*"]
    return DEFAULT_KV_BYTES[device_kind(device)]


def eviction_victims(entries: list["ModelEntry"], device: str, need: int, free: int) -> list["ModelEntry"] | None:
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


def replica_devices(k: "Kernel", name: str, have: set[str], more: int) -> list[str]:
    """Devices for `more` new replicas of `name` (on `have` now): of the kind it is already on, most
    free memory first; EINVAL when there are not enough."""
    kind = device_kind(next(iter(have))) if have else None
    spare = [d for d in k.devices.names
             if d not in have and (kind is None or device_kind(d) == kind) and d in k.memory.devices]
    if len(spare) < more:
        raise einval(f"{len(have) + more} replicas of '{name}' asked for, but this kernel has "
                     f"{len(have) + len(spare)} {kind or ''} device(s) up for it")
    spare.sort(key=lambda d: -k.memory.devices[d].free_bytes)
    return spare[:more]


def gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"
