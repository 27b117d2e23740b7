"""A request in flight: where it came from, where it runs, and what it has produced so far."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass(eq=False)
class Request:
    rid: int                      # kernel-wide id, used on the driver channel
    pid: int
    identity: bytes               # connection to stream to
    envelope: list[bytes]         # routing frames to echo in replies
    client_id: int                # the id of the client's request frame
    call: str                     # "infer" | "embed"
    model: str
    device: str
    payload: dict                 # what the driver needs
    future: asyncio.Future
    stream: bool = False
    priority: int = 0
    deadline: float | None = None  # monotonic seconds
    seq: int = 0                  # arrival order, for FIFO among equals
    share: int = 0                # pid it is scheduled and accounted as: pid, or the caller a service serves
    state: str = "queued"         # queued | running | done
    text: list[str] = field(default_factory=list)
    completion_tokens: int = 0
    timer: asyncio.TimerHandle | None = None
