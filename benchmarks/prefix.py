"""The prefix cache: many requests that share a long system prompt, with the cache and without it.

64 requests, each a 600-token system prompt followed by a question of its own, all handed at
once to the driver's Engine in this process (built as drivers/torch_driver.py builds it, with the
kernel's KV budget), once with the prefix cache and once with Engine(prefix_cache=False), in the
same run. Greedy, and every request runs to its max_tokens (ignore_eos), so both runs do the same
work; the benchmark checks that they also give the same tokens. TTFT counts from the moment the
requests are handed over, so it includes queueing behind the others' prompts: the queue is what
the cache shortens. Issue 12's goals: TTFT p50 at least 3x lower, throughput at least 1.5x higher.

    python benchmarks/prefix.py              # smollm2-135m-instruct on the CPU, ~5 min
    python benchmarks/prefix.py --quick      # tiny random model, ~20 s
"""

from __future__ import annotations

import random
import sys
import time

from tqdm import tqdm

import options
from bench_models import load_model, model_source
from cpu_meter import CpuMeter
from in_process import default_kv_bytes
from report import fmt, log, machine_line, print_table, throughput_table
from timings import Summary, Timing, percentile, summarize
from workload import prompt_of_length

GOALS = {"TTFT p50": 3.0, "throughput": 1.5}   # cached run over uncached run (TTFT: uncached / cached)


def parser():
    p = options.parser(__doc__)
    p.add_argument("--requests", type=int, default=64, help="requests, all sent at once (default 64)")
    p.add_argument("--system-tokens", type=int, help="tokens of the shared system prompt (default 600; 300 with "
                                                       "--quick: the tiny model's context is 512)")
    p.add_argument("--question-tokens", type=int, nargs=2, default=[16, 48], metavar=("MIN", "MAX"),
                   help="tokens of each request's own question after it (default 16 48)")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens each request generates (default 32)")
    return p


def make_prompts(tokenizer, args) -> list[list[int]]:
    """The shared system prompt's ids, then each request's own question's ids."""
    rng = random.Random(args.seed)
    _, system = prompt_of_length(tokenizer, rng, args.system_tokens)
    prompts = []
    for _ in range(args.requests):
        text, _ = prompt_of_length(tokenizer, rng, rng.randint(*args.question_tokens))
        prompts.append(system + tokenizer(" " + text, add_special_tokens=False).input_ids)
    return prompts


def run(lm, prompts: list[list[int]], max_tokens: int, kv_bytes: int, prefix_cache: bool):
    """All prompts at once through a fresh Engine; its summary, stats and each request's tokens."""
    from llmos.drivers.engine import Engine
    from llmos.drivers.sequence import GenRequest
    from llmos.drivers.torch_driver import ENGINE_SIZES

    engine = Engine(lm, kv_budget_bytes=kv_bytes, prefix_cache=prefix_cache, **ENGINE_SIZES[lm.device.type])
    method = "with prefix cache" if prefix_cache else "without"
    tokens: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
    start = time.monotonic()
    timings = {i: Timing(i, start, 0.0) for i in range(len(prompts))}
    for i, ids in enumerate(prompts):
        engine.add(GenRequest(rid=i, prompt_ids=ids, max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=0,
                              stop=[], seed=None, ignore_eos=True, cache_salt="bench"))
    meter = CpuMeter().start()
    with tqdm(total=len(prompts) * max_tokens, desc=method, unit="tok", file=sys.stderr, leave=False) as bar:
        while engine.has_work():
            events = engine.step()
            now = time.monotonic()
            for ev in events:
                t = timings[ev.rid]
                tokens[ev.rid] += ev.token_ids
                t.completion_tokens += ev.tokens
                bar.update(ev.tokens)
                if ev.tokens:
                    t.pieces.append(now)
                    t.first = t.first or now
                if ev.finish:
                    t.end = now
                    if ev.finish == "error":
                        t.error = f"{ev.errno}: {ev.message}"
    meter.stop()
    summary = summarize(method, list(timings.values()))
    summary.cpu_line = f"{method}: " + meter.line()
    summary.others = meter.others()
    return summary, engine.stats(), tokens


def ratio_table(cached: Summary, uncached: Summary, stats: dict, same: int) -> None:
    ttft = percentile(uncached.ttft, 50) / percentile(cached.ttft, 50)
    rate = cached.tok_s / uncached.tok_s
    rows = [["TTFT p50, without / with", f"{ttft:.2f}x", f">= {GOALS['TTFT p50']}x",
             "met" if ttft >= GOALS["TTFT p50"] else "NOT met"],
            ["throughput, with / without", f"{rate:.2f}x", f">= {GOALS['throughput']}x",
             "met" if rate >= GOALS["throughput"] else "NOT met"]]
    hit = stats["prefix_hit_blocks"] / max(1, stats["prefix_queried_blocks"])
    print_table("Prefix cache against issue 12's goals", ["measure", "ratio", "goal", ""], rows,
                [f"with the cache: {stats['prefix_hit_blocks']} of {stats['prefix_queried_blocks']} blocks looked up "
                 f"at admission were cached ({100 * hit:.0f}%)",
                 f"requests that generated the same tokens with and without the cache: {same} of "
                 f"{cached.requests} (all, in float32; in bf16 a different batching alone changes some, "
                 f"cache or not)"])


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    args.system_tokens = args.system_tokens or (300 if args.quick else 600)
    options.exit_cleanly_on_sigterm()
    with model_source(args) as (model, device):
        log(f"loading {model} on {device} in this process")
        lm = load_model(model, device, args.dtype)
        prompts = make_prompts(lm.tokenizer, args)
        kv = default_kv_bytes(device, args.kv_cache)
        log(f"model {lm.name} on {device} ({lm.dtype}); {len(prompts)} requests: a {args.system_tokens}-token system "
            f"prompt + {args.question_tokens[0]}-{args.question_tokens[1]} tokens each, {args.max_tokens} generated "
            f"each, greedy; KV budget {kv >> 20} MiB")
        log(machine_line())
        run(lm, prompts[:2], 2, kv, prefix_cache=False)   # warm-up
        uncached, uncached_stats, uncached_tokens = run(lm, prompts, args.max_tokens, kv, prefix_cache=False)
        log(f"without the cache: {uncached.tok_s:.1f} tok/s, TTFT p50 {fmt(percentile(uncached.ttft, 50), 'ms', 0)} ms")
        cached, stats, cached_tokens = run(lm, prompts, args.max_tokens, kv, prefix_cache=True)
        log(f"with the cache: {cached.tok_s:.1f} tok/s, TTFT p50 {fmt(percentile(cached.ttft, 50), 'ms', 0)} ms")
        print(f"model {lm.name} on {device} ({lm.dtype}), KV budget {kv >> 20} MiB; {machine_line()}")
        throughput_table(f"{len(prompts)} requests sharing a {args.system_tokens}-token system prompt, "
                         f"{args.max_tokens} tokens each, all at once, in-process Engine",
                         [uncached, cached], uncached,
                         [f"tokens run through the model (prompts and decodes): without "
                          f"{uncached_stats['computed_tokens']}, with {stats['computed_tokens']}",
                          f"preemptions: without {uncached_stats['preemptions']}, with {stats['preemptions']}",
                          uncached.cpu_line, cached.cpu_line])
        ratio_table(cached, uncached, stats, sum(cached_tokens[i] == uncached_tokens[i] for i in cached_tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
