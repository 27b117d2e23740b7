"""Scale: one model on one CPU driver against the same model on two (replicas), and what a driver's
death costs a request that resumes.

Throughput: the same requests, from the same client processes, through a kernel serving the model
on `cpu` and through one serving it on `cpu:0,cpu:1` with two replicas (each a driver process with a
copy; the kernel sends each request to the copy that can start it soonest). On a machine with few
cores the two drivers share them, so the figure shows the cost or gain of splitting the same cores
between two batches, not what two devices would give; on a GPU server each copy has a device of its own.

Resume cost: one greedy streaming request, undisturbed, against the same request whose driver is
SIGKILLed after its first tokens: on one device it waits for the driver's restart and the model's
reload; with two replicas it moves at once to the other copy and recomputes its prompt plus what it
had generated. The texts are compared: equal in float32 (`--dtype float32`); in bf16 the one-pass
prefill of the resumed prompt rounds differently, so the continuation may differ.

    python benchmarks/scale.py            # smollm2-135m-instruct on the CPU, several minutes
    python benchmarks/scale.py --quick    # tiny random model, about a minute
"""

from __future__ import annotations

import os
import signal
import sys
import time

import options
from bench_models import load_tokenizer, model_source
from kernel_clients import kernel, run_through_kernel
from report import fmt, log, machine_line, print_table
from timings import percentile
from workload import make_requests

LAYOUTS = [("one driver (cpu)", "cpu", ()), ("two replicas (cpu:0, cpu:1)", "cpu:0,cpu:1", ("--replicas", "2"))]
STORY = "Write a long story about a lighthouse keeper and a storm."


def parser():
    p = options.parser(__doc__)
    p.add_argument("--clients", type=int, help="client processes (default 8; 4 with --quick)")
    p.add_argument("--requests", type=int, help="requests in all, sent at once (default 48; 16 with --quick)")
    p.add_argument("--resume-tokens", type=int, help="max_tokens of the resumed request (default 128; 64 with --quick)")
    return p


def timed_stream(c, max_tokens: int, kill_after: int | None = None) -> tuple[str, float]:
    """A greedy stream's text and seconds; with kill_after, its driver is killed after that many pieces."""
    started = time.monotonic()
    stream = c.stream(prompt=STORY, max_tokens=max_tokens, temperature=0)
    text, pieces = "", 0
    for delta in stream:
        text += delta
        pieces += 1
        if pieces == kill_after:
            running = next(d for d in c.devices() if d["running"])
            os.kill(running["os_pid"], signal.SIGKILL)
    return text, time.monotonic() - started


def main(argv=None) -> int:
    options.exit_cleanly_on_sigterm()
    args = parser().parse_args(argv)
    clients = args.clients or (4 if args.quick else 8)
    n = args.requests or (16 if args.quick else 48)
    resume_tokens = args.resume_tokens or (64 if args.quick else 128)
    throughput, resume = [], []
    with model_source(args) as (model, _):
        tok = load_tokenizer(model)
        requests = make_requests(tok, n, (20, 120) if args.quick else (20, 300), (16, 64), args.seed)
        log(machine_line())
        for label, devices, extra in LAYOUTS:
            with kernel(model, devices, args.kv_cache, args.dtype, extra=extra) as k:
                with k.client("warm-up") as c:
                    for d in devices.split(","):    # every copy answers once before the clock starts
                        c.infer(prompt="hello", max_tokens=2)
                summary = run_through_kernel(k, model, requests, clients, label=label)
                throughput.append(summary)
                with k.client("resume") as c:
                    undisturbed, calm_s = timed_stream(c, resume_tokens)
                    resumed, killed_s = timed_stream(c, resume_tokens, kill_after=3)
                    resume.append((label, calm_s, killed_s, resumed == undisturbed))
    base = throughput[0].tok_s
    rows = [[s.method, s.requests, s.errors, s.tokens, fmt(s.wall_s), fmt(s.tok_s),
             f"{s.tok_s / base:.2f}x" if base else "-", fmt(percentile(s.ttft, 50), "ms", 0),
             fmt(percentile(s.ttft, 95), "ms", 0)] for s in throughput]
    print_table(f"throughput: {model}, {n} requests from {clients} client processes, all at once",
                ["layout", "requests", "errors", "out tokens", "wall s", "out tok/s", "vs one driver",
                 "TTFT p50 ms", "TTFT p95 ms"], rows,
                [f"{os.cpu_count()} cores: two CPU drivers split the same cores (see the docstring)",
                 *(s.cpu_line for s in throughput if getattr(s, "cpu_line", None))])
    print_table(f"resume: one greedy stream of {resume_tokens} tokens, its driver SIGKILLed after 3 pieces",
                ["layout", "undisturbed s", "driver killed s", "extra s", "ratio", "same text"],
                [[label, fmt(calm, digits=2), fmt(killed, digits=2), fmt(killed - calm, digits=2),
                  f"{killed / calm:.2f}x", "yes" if same else "NO"] for label, calm, killed, same in resume],
                [f"after the runs: {machine_line()}"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
