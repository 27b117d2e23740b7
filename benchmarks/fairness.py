"""Fairness: does a light interactive program stay responsive while a heavy one floods the kernel?

A real kernel serves two client processes: a heavy one that submits many long requests at once,
and a light one that sends a short request every 0.5 s. The light one's time to first token
(TTFT) is measured twice in the same run: alone on the idle kernel, then while the heavy one
runs. The kernel admits requests by fair queuing over tokens served and caps how many
of one process's requests share the batch, so the light one should wait roughly one engine
step, not behind the heavy one's queue.

    python benchmarks/fairness.py             # smollm2-135m-instruct on the CPU, a few minutes
    python benchmarks/fairness.py --quick     # tiny random model, well under a minute
"""

from __future__ import annotations

import argparse
import random
import sys

import options
from bench_models import load_tokenizer, model_source
from kernel_clients import Job, kernel, run_clients
from report import fmt, log, machine_line, print_table
from timings import Timing, error_notes, percentile, summarize
from workload import make_requests, prompt_of_length


def parser() -> argparse.ArgumentParser:
    p = options.parser(__doc__)
    p.add_argument("--heavy-requests", type=int, help="requests the heavy process submits at once (default 64)")
    p.add_argument("--heavy-prompt-tokens", type=int, nargs=2, metavar=("MIN", "MAX"),
                   help="heavy prompt lengths in tokens (default 20 400; 20 120 with --quick)")
    p.add_argument("--heavy-max-tokens", type=int, nargs=2, metavar=("MIN", "MAX"),
                   help="heavy max_tokens range (default 64 128; 16 32 with --quick)")
    p.add_argument("--light-requests", type=int, default=20, help="requests the light process sends (default 20)")
    p.add_argument("--light-interval", type=float, default=0.5, help="seconds between light requests (default 0.5)")
    p.add_argument("--light-prompt-tokens", type=int, default=20, help="light prompt length in tokens (default 20)")
    p.add_argument("--light-max-tokens", type=int, default=16, help="light max_tokens (default 16)")
    p.add_argument("--light-timeout", type=float, default=30.0,
                   help="a light request not finished this long after it was sent counts as an error and is "
                        "cancelled (default 30)")
    p.add_argument("--heavy-timeout", type=float,
                   help="a heavy request not finished this long after it was sent counts as an error and is "
                        "cancelled (default 900; 60 with --quick)")
    p.add_argument("--light-delay", type=float,
                   help="seconds after the heavy burst before the light one starts (default 2.0; 0 with --quick)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    options.exit_cleanly_on_sigterm()
    args.heavy_requests = args.heavy_requests or 64
    args.heavy_prompt_tokens = args.heavy_prompt_tokens or ([20, 120] if args.quick else [20, 400])
    args.heavy_max_tokens = args.heavy_max_tokens or ([16, 32] if args.quick else [64, 128])
    args.heavy_timeout = args.heavy_timeout or (60.0 if args.quick else 900.0)
    args.light_delay = args.light_delay if args.light_delay is not None else (0.0 if args.quick else 2.0)
    with model_source(args) as (model, device):
        tok = load_tokenizer(model)
        heavy = make_requests(tok, args.heavy_requests, tuple(args.heavy_prompt_tokens),
                              tuple(args.heavy_max_tokens), args.seed)
        rng = random.Random(args.seed + 1)
        light = []
        for i in range(args.light_requests):
            text, _ = prompt_of_length(tok, rng, args.light_prompt_tokens)
            light.append(Job(10_000 + i, text, args.light_max_tokens, i * args.light_interval, args.light_timeout))
        header = (f"model {model} on {device} ({args.dtype}); heavy: {len(heavy)} requests at once, prompts "
                  f"{args.heavy_prompt_tokens[0]}-{args.heavy_prompt_tokens[1]} tokens, max_tokens "
                  f"{args.heavy_max_tokens[0]}-{args.heavy_max_tokens[1]}; light: {len(light)} requests every "
                  f"{args.light_interval}s, {args.light_prompt_tokens}-token prompts, max_tokens {args.light_max_tokens}")
        log(header)
        log(machine_line())
        with kernel(model, device, args.kv_cache, args.dtype) as k:
            run_clients(k.socket, model, [[Job(-1, light[0].prompt, 2)]], "warm-up")
            log("light process alone")
            (alone,) = run_clients(k.socket, model, [light], "light alone", names=["light"]).groups
            log("heavy and light together")
            late = [Job(j.idx, j.prompt, j.max_tokens, j.at + args.light_delay, j.timeout) for j in light]
            heavy_jobs = [Job(r.idx, r.prompt, r.max_tokens, 0.0, args.heavy_timeout) for r in heavy]
            together = run_clients(k.socket, model, [late, heavy_jobs], "light + heavy", names=["light", "heavy"])
            loaded, heavy_t = together.groups

    light_alone = summarize("light, kernel idle", alone)
    light_loaded = summarize("light, heavy running", loaded)
    heavy_sum = summarize("heavy", heavy_t)
    window = (min(t.submitted for t in loaded), max(t.end for t in loaded))
    in_window = sum(_tokens_between(t, *window) for t in heavy_t)
    light_busy = window[1] - window[0]
    still_running = sum(1 for t in heavy_t if t.end > window[1])

    rows = []
    for s in (light_alone, light_loaded):
        rows.append([s.method, s.requests, s.errors, fmt(percentile(s.ttft, 50), "ms", 0),
                     fmt(percentile(s.ttft, 95), "ms", 0), fmt(max(s.ttft, default=None), "ms", 0),
                     fmt(percentile(s.itl, 50), "ms", 1), fmt(percentile(s.itl, 95), "ms", 1)])
    p50 = _ratio(percentile(light_loaded.ttft, 50), percentile(light_alone.ttft, 50))
    p95 = _ratio(percentile(light_loaded.ttft, 95), percentile(light_alone.ttft, 95))
    rows.append(["ratio (heavy running / idle)", "", "", p50, p95, "", "", ""])
    notes = (error_notes("light, kernel idle", alone) + error_notes("light, heavy running", loaded)
             + error_notes("heavy", heavy_t))
    print_table(f"fairness: {header}",
                ["light process", "requests", "errors", "TTFT p50 ms", "TTFT p95 ms", "TTFT max ms",
                 "ITL p50 ms", "ITL p95 ms"], rows,
                ["TTFT of the requests that succeeded; light requests are sent on a fixed schedule "
                 "whether or not the previous one has finished"] + notes)
    print_table("the heavy process", ["heavy process", "requests", "errors", "out tokens", "wall s",
                                      "out tok/s", "TTFT p50 ms", "TTFT p95 ms"],
                [["whole run", heavy_sum.requests, heavy_sum.errors, heavy_sum.tokens, fmt(heavy_sum.wall_s),
                  fmt(heavy_sum.tok_s), fmt(percentile(heavy_sum.ttft, 50), "ms", 0),
                  fmt(percentile(heavy_sum.ttft, 95), "ms", 0)],
                 ["while the light one ran", "", "", f"~{in_window:.0f}", fmt(light_busy),
                  fmt(in_window / light_busy if light_busy > 0 else None), "", ""]],
                [f"the light process ran from {window[0] - together.start:.1f}s to {window[1] - together.start:.1f}s "
                 f"after the heavy burst; {still_running} heavy requests were still running when it finished"
                 + ("" if still_running else " (the heavy load had ended: raise --heavy-requests)"),
                 "tokens in the window: pieces of streamed text that arrived in it, scaled by each request's "
                 "tokens per piece (the stream carries text, not token counts)",
                 f"after the runs: {machine_line()}"])
    return 0


def _tokens_between(t: Timing, a: float, b: float) -> float:
    """A request's completion tokens that arrived in [a, b]: its pieces of text there, scaled to its token count."""
    if t.error or not t.pieces:
        return 0.0
    inside = sum(1 for x in t.pieces if a <= x <= b)
    return inside * t.completion_tokens / len(t.pieces)


def _ratio(a, b) -> str:
    return f"{a / b:.1f}x" if a is not None and b else "-"


if __name__ == "__main__":
    sys.exit(main())
