"""How far a model load has got, for whoever waits on it: its stage, how long it has run, and how
long the last load of the same model took.

A GGUF model dequantizes for most of its load and transformers reports nothing meanwhile, so
"how far" is told as time against the last load's time, which the state dir keeps across boots
(the first load ever has no estimate). A stream that asked for progress gets a frame when the
stage changes and once a second; a `models` call sees the same map on each loading entry.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Awaitable, Callable

from . import logs

log = logs.get("llmos.models")

LOAD_TIMES_FILE = "load_times.json"
MAX_LOAD_TIMES = 256           # models remembered; the least recently loaded is forgotten first
PROGRESS_INTERVAL_S = 1.0      # a waiting stream hears at least this often
STAGE_POLL_S = 0.2             # ... and of a new stage within this


class LoadTimes:
    """The last load time of each model, persisted in the state dir (0600 by the kernel's umask)."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / LOAD_TIMES_FILE
        self._times: dict[str, float] = {}
        try:
            data = json.loads(self.path.read_text())
            self._times = {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float))}
        except (OSError, ValueError, AttributeError):
            pass          # no file yet, or a damaged one: loads are only slower to estimate

    def get(self, model: str) -> float | None:
        return self._times.get(model)

    def record(self, model: str, seconds: float) -> None:
        self._times.pop(model, None)
        self._times[model] = round(seconds, 2)
        while len(self._times) > MAX_LOAD_TIMES:
            self._times.pop(next(iter(self._times)))
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(self._times))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("model.load_times_unwritable", path=str(self.path), error=str(exc))


def progress_of(model: str, stage: str, started: float, expected_s: float | None) -> dict:
    """The `progress` map of a model loading since `started` (monotonic): {model, stage, elapsed_s, expected_s}."""
    return {"model": model, "stage": stage or "queued", "elapsed_s": round(time.monotonic() - started, 1),
            "expected_s": expected_s}


async def wait_telling(load: Awaitable, progress: Callable[[], dict | None], tell: Callable[[dict], None]):
    """Await `load`, calling tell(progress()) at once, when the stage changes, and every interval."""
    task = asyncio.ensure_future(load)
    told_stage, told_at = None, float("-inf")
    try:
        while True:
            now = progress()
            if now is not None and (now["stage"] != told_stage or time.monotonic() - told_at >= PROGRESS_INTERVAL_S):
                tell(now)
                told_stage, told_at = now["stage"], time.monotonic()
            done, _ = await asyncio.wait({task}, timeout=STAGE_POLL_S)
            if done:
                return task.result()
    finally:
        if not task.done():
            task.cancel()
