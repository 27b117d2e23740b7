"""Generation through a real kernel: the kernel booted in a temp dir, and client processes that stream.

Each client is a spawned process with its own connection (`AsyncClient`); all connect and say
hello first, then start on one signal, so connecting is not measured. Times are taken in the
clients, on the machine's one monotonic clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass

from tqdm import tqdm

from cpu_meter import CpuMeter, own_cpu_seconds
from report import log
from timings import Summary, Timing, error_notes, summarize
from workload import BenchRequest


@contextlib.contextmanager
def kernel(model: str, device: str, kv_cache: str | None = None, dtype: str | None = None, timeout: float = 300.0,
           tcp: bool = False, extra: tuple[str, ...] = ()):
    """A real kernel (llmos.userland.testing's KernelProcess) with the model loaded; stopped and removed after.
    With tcp, its socket is CurveZMQ on loopback and operator_socket the private ipc one; `extra`: more
    `llmos boot` flags."""
    from llmos.userland.testing import KernelProcess

    extra = (["--device", device] + (["--kv-cache", kv_cache] if kv_cache else [])
             + (["--dtype", dtype] if dtype else []) + list(extra))
    k = KernelProcess(model=model, extra=extra, tcp=tcp)
    try:
        started = time.monotonic()
        log(f"booting kernel on {device} with {model}")
        k.start(wait_model=False, timeout=timeout)   # if it fails, its error ends with the kernel's log
        try:
            _wait_model(k, model, device, time.monotonic() + timeout)
        except BaseException:
            log(f"the model did not become ready; the end of the kernel's log:\n{k.log_tail()}")
            raise
        log(f"kernel ready in {time.monotonic() - started:.1f}s")
        yield k
    finally:
        k.stop()


def _wait_model(k, model: str, device: str, deadline: float) -> None:
    """Wait for the model the kernel preloads; ask for it with load_model if the preload gave up.

    (load_model waits for a load in progress, and starts one if there is none.)
    """
    from llmos.userland import LLMOSError
    with k.client("bench-loader", deadline=deadline) as c:
        while True:
            loaded = {m["name"]: m for m in c.models()["loaded"]}
            if loaded.get(model, {}).get("state") == "ready":
                return
            if model not in loaded:
                try:
                    c.load_model(model, device)
                except LLMOSError as exc:
                    if time.monotonic() > deadline:
                        raise
                    log(f"load_model: {exc}; retrying")
            if time.monotonic() > deadline:
                raise TimeoutError(f"model {model} not ready on {device}")
            time.sleep(0.2)


@dataclass
class Job:
    """A request for a client process: what to send and when (seconds after the start signal)."""

    idx: int
    prompt: str
    max_tokens: int
    at: float = 0.0
    timeout: float | None = None   # give up (and cancel) if the request has not ended this long after it was sent


@dataclass
class ClientRun:
    """What run_clients measured."""

    groups: list[list[Timing]]   # one list per group of jobs (per client process), in order of completion
    start: float                 # monotonic time of the start signal
    client_cpu: float            # CPU seconds the client processes used after the start signal


def client_process(socket: str, name: str, model: str, jobs: list[Job], ready, go, results) -> None:
    """A client program (spawned): one connection, its jobs streamed concurrently, one Timing each."""
    asyncio.run(_client_main(socket, name, model, jobs, ready, go, results))


async def _client_main(socket, name, model, jobs, ready, go, results) -> None:
    from llmos.userland import AsyncClient

    async with AsyncClient(socket=socket, name=name) as client:
        ready.put(name)
        await asyncio.to_thread(go.wait)
        start, cpu_at_start = time.monotonic(), own_cpu_seconds()
        await asyncio.gather(*(_stream_one(client, model, job, start, results) for job in jobs))
    results.put(("done", own_cpu_seconds() - cpu_at_start))   # this process is done, and its CPU


async def _stream_one(client, model: str, job: Job, start: float, results) -> None:
    delay = start + job.at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    t = Timing(job.idx, time.monotonic(), 0.0)
    stream = None
    try:
        stream = await client.stream(prompt=job.prompt, model=model, max_tokens=job.max_tokens, temperature=0.0,
                                     stop=None)
        await asyncio.wait_for(_consume(stream, t), job.timeout)
        t.end = time.monotonic()
        t.first = t.first or t.end
        t.completion_tokens = stream.result["usage"]["completion_tokens"]
    except asyncio.TimeoutError:
        t.end = time.monotonic()
        t.error = f"no answer within {job.timeout:g}s ({len(t.pieces)} pieces of text had come)"
        with contextlib.suppress(Exception):
            await stream.cancel()
    except Exception as exc:   # reported in the table's errors column
        t.end = time.monotonic()
        t.error = f"{exc.__class__.__name__}: {exc}"
    results.put(t)


async def _consume(stream, t: Timing) -> None:
    async for delta in stream:
        now = time.monotonic()
        if delta:
            t.pieces.append(now)
            if t.first is None:
                t.first = now


def run_clients(socket: str, model: str, groups: list[list[Job]], desc: str, names: list[str] | None = None,
                on_start=None, on_done=None) -> ClientRun:
    """Spawn one process per group of jobs and start them together; their Timings per group."""
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    owner = {job.idx: g for g, jobs in enumerate(groups) for job in jobs}
    procs = [ctx.Process(target=client_process, daemon=True,
                         args=(socket, (names[g] if names else f"bench-{g}"), model, jobs, ready, go, results))
             for g, jobs in enumerate(groups)]
    out: list[list[Timing]] = [[] for _ in groups]
    try:
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=120)
        start = time.monotonic()
        go.set()
        if on_start:
            on_start()
        done, client_cpu = 0, 0.0
        with tqdm(total=sum(map(len, groups)), desc=desc, unit="req", file=sys.stderr, leave=False) as bar:
            while done < len(procs):
                item = results.get(timeout=1800)
                if isinstance(item, tuple):   # ("done", CPU seconds the client used)
                    done += 1
                    client_cpu += item[1]
                    continue
                out[owner[item.idx]].append(item)
                bar.update(1)
        if on_done:
            on_done()
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    return ClientRun(out, start, client_cpu)


def split_jobs(requests: list[BenchRequest], n_groups: int) -> list[list[Job]]:
    """Requests dealt round-robin to n_groups clients, all to be sent at once."""
    groups: list[list[Job]] = [[] for _ in range(min(n_groups, len(requests)))]
    for r in requests:
        groups[r.idx % len(groups)].append(Job(r.idx, r.prompt, r.max_tokens))
    return groups


def run_through_kernel(k, model: str, requests: list[BenchRequest], n_clients: int, socket: str | None = None,
                       label: str = "llmos kernel") -> Summary:
    """The requests from n_clients client processes (on k.socket unless told); the Summary's cpu_line says
    where the cores went."""
    meter = CpuMeter(k.proc.pid)
    run = run_clients(socket or k.socket, model, split_jobs(requests, n_clients), "kernel", on_start=meter.start,
                      on_done=meter.stop)
    timings = [t for g in run.groups for t in g]
    for line in error_notes(label, timings):
        log(line)
    summary = summarize(label, timings, note=f"{len(run.groups)} client processes")
    summary.cpu_line = "through the kernel: " + meter.line(run.client_cpu)
    summary.others = meter.others(run.client_cpu)
    return summary
