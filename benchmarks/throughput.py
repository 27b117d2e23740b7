"""Throughput and latency of generation through the kernel, beside the same work done other ways.

N client processes stream greedy `infer` requests (mixed prompt lengths and max_tokens) through a
real kernel; then, in this process, the same requests go through the driver's Engine directly
(no kernel, no sockets) and through transformers: generate() one at a time, generate() on static
padded batches, and transformers' continuous batching. All runs count the completion tokens
actually produced (temperature 0, no stop strings; a request may end early at EOS), so the rate
compares like with like.

    python benchmarks/throughput.py                 # smollm2-135m-instruct on the CPU, ~10 min
    python benchmarks/throughput.py --quick         # tiny random model, ~1 min
    python benchmarks/throughput.py --gpu --shape smollm2-1.7b
"""

from __future__ import annotations

import argparse
import sys

import options
from bench_models import load_model, model_source
from cpu_meter import metered
from hf_baselines import run_hf_continuous, run_hf_sequential, run_hf_static
from in_process import default_kv_bytes, run_engine
from kernel_clients import kernel, run_through_kernel
from report import log, machine_line, throughput_table
from workload import BenchRequest, make_requests

METHODS = ("kernel", "engine", "cb", "static", "hf")


def parser() -> argparse.ArgumentParser:
    p = options.parser(__doc__)
    p.add_argument("--clients", type=int, help="client processes (default 16; 4 with --quick)")
    p.add_argument("--requests", type=int, help="requests in all, dealt round-robin to the clients and all sent at "
                                                "once (default 64; 16 with --quick; 256 with --gpu)")
    p.add_argument("--prompt-tokens", type=int, nargs=2, metavar=("MIN", "MAX"),
                   help="prompt length range in tokens (default 20 400; 20 120 with --quick)")
    p.add_argument("--max-tokens", type=int, nargs=2, metavar=("MIN", "MAX"),
                   help="max_tokens range (default 16 128; 8 32 with --quick; 128 128 with --gpu)")
    p.add_argument("--static-batch", type=int, help="batch size of the static-batch baseline (default 8; 64 with --gpu)")
    p.add_argument("--baseline-requests", type=int,
                   help="how many of the requests (the first ones) the one-at-a-time and static-batch baselines "
                        "run; their rate is what matters (default 16; 8 with --quick; 64 with --gpu)")
    p.add_argument("--cb-requests", type=int,
                   help="how many requests transformers' continuous batching runs (default: all)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    return p


def defaults(args) -> None:
    gpu, quick = args.gpu, args.quick
    args.clients = args.clients or (4 if quick else 16)
    args.requests = args.requests or (16 if quick else 256 if gpu else 64)
    args.prompt_tokens = args.prompt_tokens or ([20, 120] if quick else [20, 400])
    args.max_tokens = args.max_tokens or ([8, 32] if quick else [128, 128] if gpu else [16, 128])
    args.static_batch = args.static_batch or (64 if gpu else 8)
    args.baseline_requests = args.baseline_requests or (8 if quick else 64 if gpu else 16)
    args.cb_requests = args.cb_requests or args.requests
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {', '.join(sorted(unknown))}; choose from {', '.join(METHODS)}")


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    options.exit_cleanly_on_sigterm()
    defaults(args)
    with model_source(args) as (model, device):
        log(f"loading {model} on {device} in this process")
        lm = load_model(model, device, args.dtype)
        reqs = make_requests(lm.tokenizer, args.requests, tuple(args.prompt_tokens), tuple(args.max_tokens),
                             args.seed, lm.context_length)
        kv = default_kv_bytes(device, args.kv_cache)
        prompt_tokens = sum(len(r.prompt_ids) for r in reqs)
        header = (f"model {lm.name} on {device} ({lm.dtype}); {len(reqs)} requests, prompts "
                  f"{min(len(r.prompt_ids) for r in reqs)}-{max(len(r.prompt_ids) for r in reqs)} tokens "
                  f"({prompt_tokens} in all), max_tokens {args.max_tokens[0]}-{args.max_tokens[1]} "
                  f"({sum(r.max_tokens for r in reqs)} at most), greedy, seed {args.seed}")
        log(header)
        log(machine_line())
        rows, notes = [], []

        if "kernel" in args.methods:
            with kernel(model, device, args.kv_cache, args.dtype) as k:
                warm = [BenchRequest(-1, reqs[0].prompt, reqs[0].prompt_ids, 2)]
                run_through_kernel(k, model, warm, 1)
                rows.append(run_through_kernel(k, model, reqs, args.clients))
            log(f"kernel: {rows[-1].tok_s:.1f} tok/s")

        if "engine" in args.methods:
            run_engine(lm, reqs[:1], kv)    # warm-up
            summary, prof = run_engine(lm, reqs, kv)
            rows.append(summary)
            notes.append(f"engine in-process: {prof.steps} steps, {prof.step_s:.1f}s stepping of which "
                         f"{prof.forward_s:.1f}s ({100 * prof.forward_s / max(prof.step_s, 1e-9):.0f}%) in the "
                         f"model's forward; the rest is scheduling, sampling and detokenizing; "
                         f"{prof.max_running} sequences running at most, {prof.preemptions} preemptions "
                         f"(KV budget {kv >> 20} MiB)")
            log(f"engine in-process: {summary.tok_s:.1f} tok/s")

        if "cb" in args.methods:
            subset = reqs[:args.cb_requests]
            try:
                summary = metered(run_hf_continuous, lm, subset)
                if len(subset) < len(reqs):
                    summary.note = f"first {len(subset)} requests"
                rows.append(summary)
                log(f"hf continuous batching: {summary.tok_s:.1f} tok/s")
            except Exception as exc:   # an optional transformers feature: report it, keep the other rows
                log(f"hf continuous batching failed: {exc.__class__.__name__}: {exc}")
                notes.append(f"hf continuous batching failed: {exc.__class__.__name__}: {str(exc)[:200]}")

        subset = reqs[:args.baseline_requests]
        if "static" in args.methods:
            run_hf_static(lm, subset[:1], 1)   # warm-up
            summary = metered(run_hf_static, lm, subset, args.static_batch)
            summary.note = f"first {len(subset)} requests" if len(subset) < len(reqs) else ""
            rows.append(summary)
            log(f"hf static batches: {summary.tok_s:.1f} tok/s")

        if "hf" in args.methods:
            summary = metered(run_hf_sequential, lm, subset)
            summary.note = f"first {len(subset)} requests" if len(subset) < len(reqs) else ""
            rows.append(summary)
            log(f"hf generate one at a time: {summary.tok_s:.1f} tok/s")

        if not rows:
            return 0
        by_name = {r.method: r for r in rows}
        reference = by_name.get("llmos kernel", rows[0])
        if "llmos kernel" in by_name and "engine in-process" in by_name:
            ratio = by_name["llmos kernel"].tok_s / max(by_name["engine in-process"].tok_s, 1e-9)
            notes.insert(0, f"through the kernel / in-process engine: {ratio:.2f}x the throughput")
        notes += [r.cpu_line for r in rows if r.cpu_line]
        notes += [
            "TTFT: from handing the request to the method to its first text; the kernel and the engines get every "
            "request at once (so TTFT includes queueing behind other prompts), generate() gets each batch or "
            "request when the previous one is done.",
            "ITL: gaps between successive pieces of streamed text (one per token, rarely more).",
            "out tokens: completion tokens produced (usage for the kernel; EOS counts; nothing past a request's "
            "max_tokens for static batches, whose batch runs to its longest max_tokens).",
            f"after the runs: {machine_line()}",
        ]
        throughput_table(f"throughput: {header}", rows, reference, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
