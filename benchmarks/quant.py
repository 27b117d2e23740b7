"""int8 weights: one model loaded as the driver loads it, in its dtype and with quant int8, side by side.

Weight memory: LoadedModel.bytes, what the driver reports to the kernel (parameters and buffers on
the device, a tied matrix counted once), beside the kernel's estimate from file metadata alone
(what it admits the load against). Decode speed: the driver's Engine stepped in this process
(in_process.run_engine), greedy, on one stream and on a batch of streams; the two models take
turns, round after round, so the machine's other load falls on both alike, and each row is the
median round (with the cores other processes used meanwhile: above 0.25 the figure is disturbed),
and the CPU time this process spent per output token, which other load disturbs far less than
the wall clock (best with --threads 1, where no torch thread waits for a descheduled sibling).
Perplexity: token-level NLL of transformers' own forward over the same held-out English text
(benchmarks/corpus.py's prose and the knowledge-base documents under tests/data, written for this
project, so no model was trained on them), in windows of --window tokens; the time that pass takes
gives a prefill rate (512-token windows: the many-rows case, where int8 dequantizes).

Goals (issue 12): at least 40% less weight memory than bf16, perplexity within +2%.

    python benchmarks/quant.py            # smollm2-135m-instruct in the CPU's auto dtype, a few minutes
    python benchmarks/quant.py --quick    # tiny random model, seconds: checks the script
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from pathlib import Path

import options
from bench_models import model_source
from corpus import PARAGRAPHS
from in_process import default_kv_bytes, run_engine
from report import fmt, log, machine_line, print_table
from workload import make_requests

TESTS_DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def parser():
    p = options.parser(__doc__)
    p.add_argument("--rounds", type=int, help="decode runs per model and workload, taking turns (default 3; 1 with --quick)")
    p.add_argument("--streams", type=int, default=16, help="requests of the batched decode workload (default 16)")
    p.add_argument("--window", type=int, default=512, help="tokens per perplexity window (default 512)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own, as the driver runs)")
    return p


def held_out_text() -> str:
    """Prose the model was not tuned on: the benchmark corpus, then the knowledge-base documents."""
    docs = sorted((TESTS_DATA / "kb").glob("*.md")) + sorted((TESTS_DATA / "heldout" / "kb").glob("*.md"))
    return "\n\n".join([*PARAGRAPHS, *(d.read_text() for d in docs)])


def perplexity(lm, ids: list[int], window: int) -> tuple[float, int, float]:
    """exp(mean NLL) of every token after the first of each window, how many tokens that is, and seconds."""
    import torch
    import torch.nn.functional as F

    nll, count, started = 0.0, 0, time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, window):
            piece = torch.tensor([ids[start:start + window]], device=lm.device)
            if piece.shape[1] < 2:
                break
            logits = lm.model(input_ids=piece).logits[0, :-1].float()
            nll += F.cross_entropy(logits, piece[0, 1:], reduction="sum").item()
            count += piece.shape[1] - 1
    return math.exp(nll / count), count, time.perf_counter() - started


def decode_rate(lm, requests, kv_bytes: int) -> tuple[float, float, float]:
    """Output tokens per second, the cores other processes used meanwhile, and this process's CPU ms per token."""
    cpu = time.process_time()
    summary, _ = run_engine(lm, requests, kv_bytes)
    return summary.tok_s, summary.others or 0.0, (time.process_time() - cpu) * 1000 / max(1, summary.tokens)


def torch_threads() -> int:
    import torch
    return torch.get_num_threads()


def main(argv=None) -> int:
    options.exit_cleanly_on_sigterm()
    args = parser().parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    from llmos.drivers.loader import load
    from llmos.kernel import registry

    with model_source(args) as (name, device):
        log(f"{name} on {device} in {args.dtype}: {machine_line()}")
        dtype_bytes = 4 if args.dtype == "float32" else 2
        models, rows = {}, {}
        for quant in ("none", "int8"):
            spec = registry.resolve(name, quant=quant)
            started = time.monotonic()
            lm = load(spec, device, args.dtype)
            models[quant] = lm
            rows[quant] = {"bytes": lm.bytes, "estimate": registry.estimate_bytes(spec, dtype_bytes),
                           "load_s": time.monotonic() - started, "one": [], "many": []}
            log(f"loaded quant={quant}: {lm.bytes / 2**20:.1f} MiB in {rows[quant]['load_s']:.1f}s")
        tokenizer = models["none"].tokenizer
        ids = tokenizer(held_out_text()).input_ids
        for quant, lm in models.items():
            rows[quant]["ppl"], rows[quant]["ppl_tokens"], rows[quant]["ppl_s"] = perplexity(lm, ids, args.window)
            log(f"perplexity quant={quant}: {rows[quant]['ppl']:.3f} over {rows[quant]['ppl_tokens']} tokens")
        kv_bytes = default_kv_bytes(device, args.kv_cache)
        max_new = (16, 32) if args.quick else (48, 64)
        one = make_requests(tokenizer, 1, (64, 64), (max_new[1], max_new[1]), args.seed)
        many = make_requests(tokenizer, args.streams, (32, 128), max_new, args.seed + 1)
        for r in range(rounds):
            for quant, lm in models.items():
                for workload, requests in (("one", one), ("many", many)):
                    rows[quant][workload].append(decode_rate(lm, requests, kv_bytes))
                log(f"round {r + 1}/{rounds} quant={quant}: tok/s, other cores, CPU ms per token: "
                    f"{' / '.join(f'{x:.2f}' for x in rows[quant]['one'][-1])} on 1 stream, "
                    f"{' / '.join(f'{x:.2f}' for x in rows[quant]['many'][-1])} on {args.streams} streams")
        del models
        gc.collect()
        report(name, device, args, rows, rounds)
    return 0


def report(name: str, device: str, args, rows: dict, rounds: int) -> None:
    base, q = rows["none"], rows["int8"]
    mib = 2 ** 20

    def ratio(a, b, digits=3):
        return fmt(a / b, digits=digits) + "x"

    one = {k: statistics.median(rate for rate, _, _ in v["one"]) for k, v in rows.items()}
    many = {k: statistics.median(rate for rate, _, _ in v["many"]) for k, v in rows.items()}
    cpu_one = {k: statistics.median(ms for _, _, ms in v["one"]) for k, v in rows.items()}
    cpu_many = {k: statistics.median(ms for _, _, ms in v["many"]) for k, v in rows.items()}
    prefill = {k: v["ppl_tokens"] / v["ppl_s"] for k, v in rows.items()}

    def rounds_of(quant: str, workload: str) -> str:
        return ", ".join(f"{rate:.1f} ({others:.2f}, {ms:.0f} ms)" for rate, others, ms in rows[quant][workload])
    table = [
        ["weight memory MiB (LoadedModel.bytes)", fmt(base["bytes"] / mib), fmt(q["bytes"] / mib),
         ratio(q["bytes"], base["bytes"]), f"{(1 - q['bytes'] / base['bytes']) * 100:.1f}% less (goal >= 40%)"],
        ["kernel's estimate MiB (file metadata)", fmt(base["estimate"] / mib), fmt(q["estimate"] / mib),
         ratio(q["estimate"], base["estimate"]), ""],
        [f"perplexity ({base['ppl_tokens']} tokens, windows of {args.window})", fmt(base["ppl"], digits=3),
         fmt(q["ppl"], digits=3), ratio(q["ppl"], base["ppl"], 4),
         f"{(q['ppl'] / base['ppl'] - 1) * 100:+.2f}% (goal <= +2%)"],
        ["decode tok/s, 1 stream (median round)", fmt(one["none"]), fmt(one["int8"]), ratio(one["int8"], one["none"]), ""],
        [f"decode tok/s, {args.streams} streams (median round)", fmt(many["none"]), fmt(many["int8"]),
         ratio(many["int8"], many["none"]), ""],
        ["CPU ms per output token, 1 stream (median)", fmt(cpu_one["none"]), fmt(cpu_one["int8"]),
         ratio(cpu_one["int8"], cpu_one["none"]), ""],
        [f"CPU ms per output token, {args.streams} streams (median)", fmt(cpu_many["none"]), fmt(cpu_many["int8"]),
         ratio(cpu_many["int8"], cpu_many["none"]), ""],
        ["prefill tok/s (the perplexity pass)", fmt(prefill["none"]), fmt(prefill["int8"]),
         ratio(prefill["int8"], prefill["none"]), ""],
        ["load s", fmt(base["load_s"]), fmt(q["load_s"]), ratio(q["load_s"], base["load_s"]), ""],
    ]
    notes = [f"model {name} on {device}, dtype {args.dtype}; {machine_line()}",
             f"decode: the in-process Engine, greedy, {rounds} round(s) per model taking turns, torch threads "
             f"{torch_threads()}; each round as tok/s (cores other processes used meanwhile, CPU ms per token):",
             f"  {args.dtype}: 1 stream {rounds_of('none', 'one')}; {args.streams} streams {rounds_of('none', 'many')}",
             f"  int8: 1 stream {rounds_of('int8', 'one')}; {args.streams} streams {rounds_of('int8', 'many')}"]
    print_table(f"int8 weight-only quantization against {args.dtype}, same run ({time.strftime('%Y-%m-%d %H:%M')})",
                ["measure", args.dtype, "int8", "int8 / " + args.dtype, "against the goal"], table, notes)


if __name__ == "__main__":
    raise SystemExit(main())
