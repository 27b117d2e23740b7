"""What the kernel costs: a syscall's round trip, and generation through the kernel versus in-process.

1. `ping` round trips through a real kernel beside a bare asyncio ZeroMQ ROUTER echo server (a
   subprocess on its own ipc socket), both driven by the same raw DEALER loop, so the difference
   is the kernel's own work per call (decode, validate, dispatch, encode). Ping through the client
   library (`Client`, `AsyncClient`) is reported too.
2. The same batch of greedy requests through the kernel (client processes, sockets, the driver
   process) and through the driver's Engine stepped in this process: the throughput ratio is
   what the kernel and its sockets cost generation.

    python benchmarks/overhead.py            # smollm2-135m-instruct on the CPU, a few minutes
    python benchmarks/overhead.py --quick    # tiny random model, well under a minute
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path

import options
from bench_models import load_model, load_tokenizer, model_source
from in_process import default_kv_bytes, run_engine
from kernel_clients import kernel, run_through_kernel
from report import log, machine_line, print_table, throughput_table
from timings import percentile
from workload import BenchRequest, make_requests


def parser() -> argparse.ArgumentParser:
    p = options.parser(__doc__)
    p.add_argument("--pings", type=int, help="timed round trips per row (default 5000; 1000 with --quick)")
    p.add_argument("--warmup", type=int, default=500, help="untimed round trips before each row (default 500)")
    p.add_argument("--requests", type=int, help="requests in the generation comparison (default 64; 16 with --quick)")
    p.add_argument("--clients", type=int, help="client processes in the generation comparison (default 16; 4 with --quick)")
    p.add_argument("--prompt-tokens", type=int, nargs=2, metavar=("MIN", "MAX"),
                   help="prompt length range in tokens (default 20 200; 20 120 with --quick)")
    p.add_argument("--max-tokens", type=int, nargs=2, metavar=("MIN", "MAX"),
                   help="max_tokens range (default 16 64; 8 32 with --quick)")
    p.add_argument("--skip-generation", action="store_true", help="measure the round trips only")
    return p


# --- the echo server and the raw client ------------------------------------------------------------


def echo_server(url: str, ready) -> None:
    """A bare asyncio ROUTER that sends every message back to its sender, unchanged (a spawned process)."""
    import zmq
    import zmq.asyncio

    async def serve():
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(url)
        ready.set()
        while True:
            await sock.send_multipart(await sock.recv_multipart())

    asyncio.run(serve())


def raw_round_trips(url: str, n: int, warmup: int) -> list[float]:
    """Seconds per round trip of a ping frame, from one DEALER in a tight loop (no client library)."""
    import zmq

    from llmos.specs.protocol import pack, unpack
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    out = []
    try:
        for i in range(1, warmup + n + 1):
            frame = pack({"v": 1, "id": i, "call": "ping", "args": {}})
            t = time.perf_counter()
            sock.send(frame)
            while unpack(sock.recv()).get("id") != i:   # the echo and the kernel both answer with id i
                pass
            if i > warmup:
                out.append(time.perf_counter() - t)
    finally:
        sock.close(0)
        ctx.term()
    return out


def client_round_trips(url: str, n: int, warmup: int) -> list[float]:
    from llmos.userland import Client
    out = []
    with Client(socket=url, name="overhead-sync") as c:
        for i in range(warmup + n):
            t = time.perf_counter()
            c.ping()
            if i >= warmup:
                out.append(time.perf_counter() - t)
    return out


def async_client_round_trips(url: str, n: int, warmup: int) -> list[float]:
    from llmos.userland import AsyncClient

    async def run():
        out = []
        async with AsyncClient(socket=url, name="overhead-async") as c:
            for i in range(warmup + n):
                t = time.perf_counter()
                await c.ping()
                if i >= warmup:
                    out.append(time.perf_counter() - t)
        return out

    return asyncio.run(run())


def ping_row(name: str, times: list[float], reference: list[float] | None) -> list[str]:
    p50, p99 = percentile(times, 50), percentile(times, 99)
    ratio = f"{p50 / percentile(reference, 50):.1f}x" if reference else "1.0x"
    mean = sum(times) / len(times)
    return [name, len(times), f"{p50 * 1e6:.0f}", f"{p99 * 1e6:.0f}", f"{mean * 1e6:.0f}", f"{1 / mean:.0f}", ratio]


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    options.exit_cleanly_on_sigterm()
    args.pings = args.pings or (1000 if args.quick else 5000)
    args.requests = args.requests or (16 if args.quick else 64)
    args.clients = args.clients or (4 if args.quick else 16)
    args.prompt_tokens = args.prompt_tokens or ([20, 120] if args.quick else [20, 200])
    args.max_tokens = args.max_tokens or ([8, 32] if args.quick else [16, 64])
    log(machine_line())

    ctx = mp.get_context("spawn")
    tmp = Path(tempfile.mkdtemp(prefix="llmos-bench-echo-"))
    echo_url = f"ipc://{tmp}/echo.sock"
    ready = ctx.Event()
    echo = ctx.Process(target=echo_server, args=(echo_url, ready), daemon=True)
    echo.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the echo server did not start")
        with model_source(args) as (model, device):
            tok = None if args.skip_generation else load_tokenizer(model)
            with kernel(model, device, args.kv_cache, args.dtype) as k:
                log(f"{args.pings} round trips per row, after {args.warmup} warm-up")
                rows = []
                echo_times = raw_round_trips(echo_url, args.pings, args.warmup)
                rows.append(ping_row("asyncio zmq ROUTER echo (raw DEALER)", echo_times, None))
                kernel_times = raw_round_trips(k.socket, args.pings, args.warmup)
                rows.append(ping_row("kernel ping (raw DEALER)", kernel_times, echo_times))
                rows.append(ping_row("kernel ping via Client", client_round_trips(k.socket, args.pings, args.warmup),
                                     echo_times))
                rows.append(ping_row("kernel ping via AsyncClient",
                                     async_client_round_trips(k.socket, args.pings, args.warmup), echo_times))
                extra = (percentile(kernel_times, 50) - percentile(echo_times, 50)) * 1e6
                print_table("syscall round trip (ipc, same machine)",
                            ["server / client", "round trips", "p50 us", "p99 us", "mean us", "calls/s",
                             "p50 vs echo"], rows,
                            [f"the kernel's own work per ping (p50 difference from the echo server): {extra:.0f} us",
                             "echo: the frame comes back unchanged; kernel: decoded, checked against the "
                             "syscall table, dispatched, answered with a new frame"])
                if args.skip_generation:
                    return 0
                reqs = make_requests(tok, args.requests, tuple(args.prompt_tokens), tuple(args.max_tokens),
                                     args.seed)
                log(f"generation: {len(reqs)} requests through the kernel from {args.clients} client processes")
                run_through_kernel(k, model, [BenchRequest(-1, reqs[0].prompt, reqs[0].prompt_ids, 2)], 1)
                through = run_through_kernel(k, model, reqs, args.clients)
            log("generation: the same requests, Engine in this process")
            lm = load_model(model, device, args.dtype)
            kv = default_kv_bytes(device, args.kv_cache)
            run_engine(lm, reqs[:1], kv)   # warm-up
            inproc, prof = run_engine(lm, reqs, kv)
            ratio = through.tok_s / max(inproc.tok_s, 1e-9)
            throughput_table(
                f"generation through the kernel vs in-process: {model} on {device} ({args.dtype}), {len(reqs)} requests, prompts "
                f"{args.prompt_tokens[0]}-{args.prompt_tokens[1]} tokens, max_tokens {args.max_tokens[0]}-"
                f"{args.max_tokens[1]}, greedy", [through, inproc], through,
                [f"through the kernel / in-process: {ratio:.2f}x the throughput "
                 f"({100 * (1 - ratio):.0f}% lost to the kernel, sockets and client processes)",
                 f"in-process: {prof.steps} steps, {100 * prof.forward_s / max(prof.step_s, 1e-9):.0f}% of stepping "
                 f"time in the model's forward, {prof.preemptions} preemptions",
                 through.cpu_line, inproc.cpu_line,
                 f"after the runs: {machine_line()}"])
    finally:
        echo.kill()
        echo.join()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
