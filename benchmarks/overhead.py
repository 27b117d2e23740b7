"""What the kernel costs: a syscall's round trip, and generation through the kernel versus in-process.

1. `ping` round trips through a real kernel beside a bare asyncio ZeroMQ ROUTER echo server (a
   subprocess on its own ipc socket), both driven by the same raw DEALER loop, so the difference
   is the kernel's own work per call (decode, validate, dispatch, encode). Ping through the client
   library (`Client`, `AsyncClient`) is reported too. The kernel serves two sockets, as a kernel
   open to other machines does: tcp on loopback with CurveZMQ (a user made with `user_add`, its
   key file) and the operator's private ipc socket (NULL mechanism); the ping rows run on both,
   and each curve row is compared with its ipc NULL twin (the goal: curve p50 <= 1.5x NULL).
2. The same batch of greedy requests through the kernel (client processes, sockets, the driver
   process) over ipc NULL and over tcp CurveZMQ, and through the driver's Engine stepped in this
   process: the throughput ratios are what the kernel, its sockets and the encryption cost generation.

    python benchmarks/overhead.py            # smollm2-135m-instruct on the CPU, a few minutes
    python benchmarks/overhead.py --quick    # tiny random model, well under a minute
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import options
from llmos.userland import Client
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


def curve_keys(key_file: str) -> tuple[bytes, bytes, bytes]:
    """(secret, public, kernel's public) from a user's key file, for a raw DEALER."""
    from llmos.specs.keys import KERNEL_KEY_META, read_key_file
    meta = read_key_file(key_file)
    return meta["secret-key"].encode(), meta["public-key"].encode(), meta[KERNEL_KEY_META].encode()


def raw_round_trips(url: str, n: int, warmup: int, key_file: str | None = None) -> list[float]:
    """Seconds per round trip of a ping frame, from one DEALER in a tight loop (no client library);
    with key_file, over CurveZMQ as that user."""
    import zmq

    from llmos.specs.protocol import pack, unpack
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if key_file:
        sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = curve_keys(key_file)
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


def client_round_trips(url: str, n: int, warmup: int, key_file: str | None = None) -> list[float]:
    out = []
    with Client(socket=url, name="overhead-sync", key=key_file) as c:
        for i in range(warmup + n):
            t = time.perf_counter()
            c.ping()
            if i >= warmup:
                out.append(time.perf_counter() - t)
    return out


def async_client_round_trips(url: str, n: int, warmup: int, key_file: str | None = None) -> list[float]:
    from llmos.userland import AsyncClient

    async def run():
        out = []
        async with AsyncClient(socket=url, name="overhead-async", key=key_file) as c:
            for i in range(warmup + n):
                t = time.perf_counter()
                await c.ping()
                if i >= warmup:
                    out.append(time.perf_counter() - t)
        return out

    return asyncio.run(run())


def ping_row(name: str, times: list[float], reference: list[float] | None,
             null: list[float] | None = None) -> list[str]:
    p50, p99 = percentile(times, 50), percentile(times, 99)
    ratio = f"{p50 / percentile(reference, 50):.1f}x" if reference else "1.0x"
    vs_null = f"{p50 / percentile(null, 50):.2f}x" if null else "-"
    mean = sum(times) / len(times)
    return [name, len(times), f"{p50 * 1e6:.0f}", f"{p99 * 1e6:.0f}", f"{mean * 1e6:.0f}", f"{1 / mean:.0f}", ratio,
            vs_null]


def ping_rows(k, key_file: str, echo_times: list[float], n: int, warmup: int) -> tuple[list[list[str]], list[str]]:
    """Each way of pinging over ipc NULL (the operator's socket), then over tcp CurveZMQ as a user."""
    rows, notes = [], []
    for label, measure in [("raw DEALER", raw_round_trips), ("Client", client_round_trips),
                           ("AsyncClient", async_client_round_trips)]:
        null = measure(k.operator_socket, n, warmup)
        curve = measure(k.socket, n, warmup, key_file)
        rows.append(ping_row(f"kernel ping, ipc NULL, {label}", null, echo_times))
        rows.append(ping_row(f"kernel ping, tcp CurveZMQ, {label}", curve, echo_times, null))
        if label == "raw DEALER":
            extra = (percentile(null, 50) - percentile(echo_times, 50)) * 1e6
            notes.append(f"the kernel's own work per ping (p50 difference from the echo server): {extra:.0f} us")
        notes.append(f"curve / NULL p50 ({label}): {percentile(curve, 50) / percentile(null, 50):.2f}x (goal <= 1.5x)")
    return rows, notes


def bench_user(k) -> str:
    """A user for the curve rows, made by the operator as `llmos user add` would; its key file. It holds
    admin because the benchmark's model is named by its path, which only admin may name."""
    with Client(socket=k.operator_socket, name="overhead-admin", caps=["admin"]) as admin:
        return admin.user_add("bench", caps=["admin", "infer", "models", "load"])["key_file"]


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
            with kernel(model, device, args.kv_cache, args.dtype, tcp=True) as k:
                key_file = bench_user(k)
                log(f"{args.pings} round trips per row, after {args.warmup} warm-up")
                echo_times = raw_round_trips(echo_url, args.pings, args.warmup)
                rows, notes = ping_rows(k, key_file, echo_times, args.pings, args.warmup)
                print_table("syscall round trip (same machine: ipc NULL and loopback tcp CurveZMQ)",
                            ["server / client", "round trips", "p50 us", "p99 us", "mean us", "calls/s",
                             "p50 vs echo", "p50 vs NULL"],
                            [ping_row("asyncio zmq ROUTER echo (raw DEALER, ipc)", echo_times, None)] + rows,
                            notes + ["echo: the frame comes back unchanged; kernel: decoded, checked against the "
                                     "syscall table, dispatched, answered with a new frame"])
                if args.skip_generation:
                    return 0
                reqs = make_requests(tok, args.requests, tuple(args.prompt_tokens), tuple(args.max_tokens),
                                     args.seed)
                log(f"generation: {len(reqs)} requests through the kernel from {args.clients} client processes")
                warm = [BenchRequest(-1, reqs[0].prompt, reqs[0].prompt_ids, 2)]
                run_through_kernel(k, model, warm, 1, socket=k.operator_socket)
                through = run_through_kernel(k, model, reqs, args.clients, socket=k.operator_socket,
                                             label="llmos kernel, ipc NULL")
                os.environ["LLMOS_KEY"] = key_file      # the spawned clients connect as the user
                try:
                    run_through_kernel(k, model, warm, 1)
                    curve = run_through_kernel(k, model, reqs, args.clients, label="llmos kernel, tcp CurveZMQ")
                finally:
                    del os.environ["LLMOS_KEY"]
            log("generation: the same requests, Engine in this process")
            lm = load_model(model, device, args.dtype)
            kv = default_kv_bytes(device, args.kv_cache)
            run_engine(lm, reqs[:1], kv)   # warm-up
            inproc, prof = run_engine(lm, reqs, kv)
            ratio = through.tok_s / max(inproc.tok_s, 1e-9)
            curve_ratio = curve.tok_s / max(through.tok_s, 1e-9)
            throughput_table(
                f"generation through the kernel vs in-process: {model} on {device} ({args.dtype}), {len(reqs)} requests, prompts "
                f"{args.prompt_tokens[0]}-{args.prompt_tokens[1]} tokens, max_tokens {args.max_tokens[0]}-"
                f"{args.max_tokens[1]}, greedy", [through, curve, inproc], through,
                [f"through the kernel (ipc NULL) / in-process: {ratio:.2f}x the throughput "
                 f"({100 * (1 - ratio):.0f}% lost to the kernel, sockets and client processes)",
                 f"tcp CurveZMQ / ipc NULL: {curve_ratio:.2f}x the throughput (goal >= 0.95x)",
                 f"in-process: {prof.steps} steps, {100 * prof.forward_s / max(prof.step_s, 1e-9):.0f}% of stepping "
                 f"time in the model's forward, {prof.preemptions} preemptions",
                 through.cpu_line, curve.cpu_line, inproc.cpu_line,
                 f"after the runs: {machine_line()}"])
    finally:
        echo.kill()
        echo.join()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
