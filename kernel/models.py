"""The model table: which models are loaded where, who references them, which are idle.

One loaded copy serves every process. A model is *idle* when no process references it, no
request is using it and the operator did not pin it (boot-time models are pinned); idle models
are what the kernel evicts, least recently used first, to make room for a load.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from llmos.specs.registry import ModelSpec


@dataclass(eq=False)
class ModelEntry:
    name: str
    spec: ModelSpec
    device: str
    kind: str
    state: str = "loading"          # loading | ready
    weight_bytes: int = 0
    kv_bytes: int = 0
    refs: set[int] = field(default_factory=set)   # pids
    pinned: bool = False
    in_use: int = 0                 # requests in flight on it
    last_used: float = field(default_factory=time.monotonic)
    load_s: float = 0.0
    context_length: int = 0
    loaded: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes

    @property
    def idle(self) -> bool:
        return self.state == "ready" and not self.refs and not self.pinned and self.in_use == 0

    def describe(self) -> dict:
        return {"name": self.name, "device": self.device, "kind": self.kind, "state": self.state,
                "bytes": self.bytes, "refs": len(self.refs) + (1 if self.pinned else 0), "in_use": self.in_use,
                "context_length": self.context_length, "load_s": round(self.load_s, 3)}


def eviction_victims(entries: list[ModelEntry], device: str, need: int, free: int) -> list[ModelEntry] | None:
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
