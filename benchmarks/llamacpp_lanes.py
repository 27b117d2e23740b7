"""llama.cpp's two caches for a crowd: the unified lane against the streams lane, in one runner, one run.

What drivers/llamacpp_runner.py's lanes decide from. In llama.cpp's unified cache every sequence's
attention spans every occupied cell (masked), so a crowd's step grows with the crowd times its context;
in the streams lane each sequence has a stream of its own. One LlamaCppRunner holds both, over the same
weights; a sequence lands in one or the other by how far it says it may grow (`Chunk.upto`), so each
row below is the same model, threads and batch, only the cache differs:

    python benchmarks/llamacpp_lanes.py        # smollm2-135m-instruct, its Q8_0 copy, about 3 min

A decode step of --seqs sequences (and of one) is timed at each context length, median of --steps.
Needs the `llamacpp` extra.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from report import log, machine_line, print_table

CONTEXTS = (32, 128, 256, 512, 768)


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="a registry name of a GGUF model")
    p.add_argument("--weights", choices=["file", "q8_0"], default="q8_0",
                   help="the GGUF's own weights or a Q8_0 copy (default q8_0, what the driver keeps for SmolLM2)")
    p.add_argument("--seqs", type=int, default=16, help="sequences of the crowd (default 16)")
    p.add_argument("--steps", type=int, default=7, help="decode steps timed at each length (default 7, median)")
    return p


def step_ms(runner, n: int, upto: int, contexts, steps: int) -> list[float]:
    """Median ms of a decode step of n sequences at each context length; `upto` picks their lane."""
    from llmos.drivers.sequence import Chunk

    ids = range(1000, 1000 + n)
    runner.forward([Chunk(s, [(97 * s + 7 * j) % 40000 + 500 for j in range(contexts[0])], 0, [], True, upto=upto)
                    for s in ids])
    pos, out = contexts[0], []
    for length in contexts:
        while pos < length:                        # grow every sequence to the length, in prompt-sized calls
            grow = min(256 // n or 1, length - pos)
            runner.forward([Chunk(s, [600 + (pos + k) % 300 for k in range(grow)], pos, [], True, upto=upto)
                            for s in ids])
            pos += grow
        took = []
        for _ in range(steps):
            started = time.perf_counter()
            runner.forward([Chunk(s, [700 + pos % 300], pos, [], True, upto=upto) for s in ids])
            took.append(time.perf_counter() - started)
            pos += 1
        out.append(1000 * statistics.median(took))
    for s in ids:
        runner.release(s)
    return out


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    import llama_cpp.llama_cpp  # noqa: F401  (the extra: fail before loading anything)
    import torch

    from bench_models import gguf_path
    from llmos.drivers import llamacpp_weights
    from llmos.drivers.llamacpp_runner import LlamaCppRunner

    print(machine_line())
    gguf, contexts = gguf_path(args.model), list(CONTEXTS)
    stream_tokens = contexts[-1] + args.steps * len(contexts) + 16
    with tempfile.TemporaryDirectory(prefix="llmos-lanes-") as tmp:
        os.environ["LLMOS_CACHE_DIR"] = tmp
        path = str(llamacpp_weights.q8_0_copy(gguf)) if args.weights == "q8_0" else gguf
        runner = LlamaCppRunner(path, n_tokens=args.seqs * stream_tokens, max_seqs=args.seqs, n_batch=512,
                                threads=torch.get_num_threads(), streams=args.seqs, stream_tokens=stream_tokens)
        rows = []
        for n in (args.seqs, 1):
            times = {}
            for lane, upto in (("unified", stream_tokens + 1), ("streams", stream_tokens)):
                times[lane] = step_ms(runner, n, upto, contexts, args.steps)
                log(f"n={n} {lane}: " + ", ".join(f"{t:.1f}" for t in times[lane]))
            for lane, row in times.items():
                rows.append([f"{n}", lane, *(f"{t:.1f} ({n / t * 1000:.0f})" for t in row)])
            rows.append([f"{n}", "unified / streams", *(f"{u / s:.2f}x" for u, s in zip(times["unified"], times["streams"]))])
        runner.close()
    print_table(f"llama.cpp decode step, ms (tok/s), by context length, {args.model} {args.weights}, "
                f"{torch.get_num_threads()} threads",
                ["seqs", "cache", *(f"ctx {c}" for c in contexts)], rows,
                [f"one runner, both lanes (streams of {stream_tokens} tokens); each sequence's context, its own tokens"])


if __name__ == "__main__":
    sys.exit(main())
