"""The driver's Engine stepped in this process: the same work as through the kernel, minus the kernel.

Built as drivers/torch_driver.py builds it, with the budget the kernel would give it, so the ratio
of the two runs is what the process boundary, the sockets, the fair scheduler and the clients cost.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from tqdm import tqdm

from cpu_meter import CpuMeter
from timings import Summary, Timing, summarize
from workload import BenchRequest


def default_kv_bytes(device: str, kv_cache: str | None) -> int:
    """The budget the kernel would give the driver's engine (its DEFAULT_KV_BYTES unless --kv-cache)."""
    from llmos.kernel.config import parse_bytes
    from llmos.kernel.placement import DEFAULT_KV_BYTES
    from llmos.specs.channel import device_kind
    if kv_cache:
        return parse_bytes(kv_cache, "--kv-cache")
    return DEFAULT_KV_BYTES[device_kind(device)]


@dataclass
class EngineProfile:
    steps: int = 0
    forward_s: float = 0.0
    step_s: float = 0.0
    preemptions: int = 0
    max_running: int = 0


def run_engine(lm, requests: list[BenchRequest], kv_bytes: int) -> tuple[Summary, EngineProfile]:
    """The driver's Engine, built as drivers/torch_driver.py builds it, stepped in this process on all requests."""
    from llmos.drivers.engine import Engine
    from llmos.drivers.sequence import GenRequest
    from llmos.drivers.torch_driver import ENGINE_SIZES

    engine = Engine(lm, kv_budget_bytes=kv_bytes, **ENGINE_SIZES[lm.device.type])
    prof = EngineProfile()
    forward_slices = engine.runner.forward_slices

    def timed_forward(chunks):   # where the step's time goes: the model, or everything around it
        t = time.perf_counter()
        try:
            return (yield from forward_slices(chunks))
        finally:
            prof.forward_s += time.perf_counter() - t

    engine.runner.forward_slices = timed_forward
    timings = {r.idx: Timing(r.idx, 0.0, 0.0) for r in requests}
    total = sum(r.max_tokens for r in requests)
    start = time.monotonic()
    for r in requests:
        timings[r.idx].submitted = start
        engine.add(GenRequest(rid=r.idx, prompt_ids=list(r.prompt_ids), max_tokens=r.max_tokens, temperature=0.0,
                              top_p=1.0, top_k=0, stop=[], seed=None))
    meter = CpuMeter().start()
    with tqdm(total=total, desc="engine in-process", unit="tok", file=sys.stderr, leave=False) as bar:
        while engine.has_work():
            t = time.perf_counter()
            events = engine.step()
            prof.step_s += time.perf_counter() - t
            prof.steps += 1
            prof.max_running = max(prof.max_running, len(engine.running))
            now = time.monotonic()
            for ev in events:
                tm = timings[ev.rid]
                tm.completion_tokens += ev.tokens
                bar.update(ev.tokens)
                if ev.delta:
                    tm.pieces.append(now)
                    tm.first = tm.first or now
                if ev.finish:
                    tm.end = now
                    tm.first = tm.first or now
                    if ev.finish == "error":
                        tm.error = f"{ev.errno}: {ev.message}"
    meter.stop()
    prof.preemptions = engine.num_preemptions
    summary = summarize("engine in-process", list(timings.values()), note="same Engine, no kernel")
    summary.cpu_line = "in-process engine: " + meter.line()
    summary.others = meter.others()
    return summary, prof
