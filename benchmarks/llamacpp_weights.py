"""llama.cpp's weights for batches: the GGUF file's own against a Q8_0 copy (and an F16 one), in one run.

What drivers/llamacpp_weights.py and engine_pair.pick_weights decide from, measured in this process
through the driver's own LlamaCppRunner:

1. speed: a decode step at 1..32 sequences (after a short prompt each), median of --steps;
2. quality: perplexity over the benchmark corpus's paragraphs, each paragraph in one llama.cpp call
   (its prompt path) and one token a call (its decode path, what generation runs), with the
   dequantized weights in torch (float32: the file's numbers, exactly) as the reference;
3. answers: greedy chat answers of --new tokens on each copy, against the file's, and the file's own
   answer alone against the same request decoded beside three others (the noise a batch adds).

    python benchmarks/llamacpp_weights.py            # smollm2-135m-instruct's Q4_1 file, about 4 min
Needs the `llamacpp` extra. Copies are made in a temporary cache directory, removed at the end.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time

from report import fmt, log, machine_line, print_table

SIZES = (1, 2, 4, 8, 12, 16, 24, 32)
QUESTIONS = ["What is the capital of France?", "Name three colours.", "Write a haiku about rain.", "What is 2 + 2?",
             "Summarize: the meeting moved to Tuesday because the room was booked.",
             "Translate 'good morning' to Spanish.", "Is this review positive or negative? 'The food was cold.'",
             "My order never arrived, what can I do?", "How do I reset my password?", "Explain what a glacier is.",
             "Give me a short tip for baking bread.", "Write one sentence about honeybees.",
             "What should I pack for a rainy weekend?", "Classify the topic: 'The striker scored twice.'",
             "Rewrite politely: 'Send me the file now.'", "Which is larger, 7 or 12?"]


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="a registry name of a GGUF model")
    p.add_argument("--steps", type=int, default=7, help="decode steps timed at each size (default 7, median)")
    p.add_argument("--new", type=int, default=32, help="tokens of each greedy answer compared (default 32)")
    p.add_argument("--no-f16", action="store_true", help="leave out the F16 copy")
    return p


def copy_of(gguf: str, ftype: int, name: str, directory: str) -> str:
    """A copy of the file at another llama.cpp file type (Q8_0 the way the driver makes it)."""
    import ctypes

    import llama_cpp.llama_cpp as low

    from llmos.drivers import llamacpp_weights

    if ftype == llamacpp_weights.Q8_0:
        return str(llamacpp_weights.q8_0_copy(gguf))
    out = os.path.join(directory, f"{name}.gguf")
    params = low.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize = ftype, True
    if low.llama_model_quantize(gguf.encode(), out.encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama.cpp could not make the {name} copy")
    return out


def step_times(runner, sizes, steps: int) -> dict[int, float]:
    """Median seconds of a decode step of n sequences, each after a 24-token prompt of its own."""
    from llmos.drivers.sequence import Chunk

    times = {}
    for n in sizes:
        prompts = {1000 + s: [(1000 + 97 * s + 7 * j) % 49000 for j in range(24)] for s in range(n)}
        runner.forward([Chunk(sid, p, 0, [], True) for sid, p in prompts.items()])
        took = []
        for step in range(steps + 1):
            started = time.perf_counter()
            runner.forward([Chunk(sid, [500 + step], 24 + step, [], True) for sid in prompts])
            took.append(time.perf_counter() - started)
        for sid in prompts:
            runner.release(sid)
        times[n] = statistics.median(took[1:])
    return times


def perplexity_llamacpp(path: str, texts: list[list[int]]) -> float:
    """exp(mean negative log-likelihood) of every token after the first, each text in its own call."""
    import numpy as np
    import llama_cpp.llama_cpp as low

    params = low.llama_model_default_params()
    params.use_extra_bufts = False
    model = low.llama_model_load_from_file(path.encode(), params)
    ctx_params = low.llama_context_default_params()
    ctx_params.n_ctx = ctx_params.n_batch = ctx_params.n_ubatch = 512
    ctx = low.llama_init_from_model(model, ctx_params)
    vocab = low.llama_vocab_n_tokens(low.llama_model_get_vocab(model))
    batch = low.llama_batch_init(512, 0, 1)
    nll, count = 0.0, 0
    try:
        for ids in texts:
            low.llama_memory_clear(low.llama_get_memory(ctx), True)
            for i, token in enumerate(ids):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, i, 1, True
                batch.seq_id[i][0] = 0
            batch.n_tokens = len(ids)
            if low.llama_decode(ctx, batch) != 0:
                raise SystemExit("llama_decode failed")
            logits = np.ctypeslib.as_array(low.llama_get_logits(ctx), shape=(len(ids), vocab)).astype(np.float64)
            logits -= logits.max(axis=1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            nll -= float(sum(logp[i, ids[i + 1]] for i in range(len(ids) - 1)))
            count += len(ids) - 1
    finally:
        low.llama_batch_free(batch)
        low.llama_free(ctx)
        low.llama_model_free(model)
    return math.exp(nll / count)


def perplexity_decoding(runner, texts: list[list[int]]) -> float:
    """The same, through the driver's runner one token a call, as generation reads the weights."""
    from llmos.drivers.sequence import Chunk

    nll, count = 0.0, 0
    for ids in texts:
        for i in range(len(ids) - 1):
            logits = runner.forward([Chunk(3000, [ids[i]], i, [], True)])[0].double()
            nll -= float(logits.log_softmax(-1)[ids[i + 1]])
        runner.release(3000)
        count += len(ids) - 1
    return math.exp(nll / count)


def perplexity_torch(lm, texts: list[list[int]]) -> float:
    import torch

    nll, count = 0.0, 0
    with torch.inference_mode():
        for ids in texts:
            logits = lm.model(torch.tensor([ids])).logits[0].double()
            logp = logits.log_softmax(-1)
            nll -= float(logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())
            count += len(ids) - 1
    return math.exp(nll / count)


def greedy(runner, prompts: list[list[int]], n: int, together: bool) -> list[list[int]]:
    """Each prompt's greedy answer: alone (one sequence a call), or all decoded in the same calls."""
    from llmos.drivers.sequence import Chunk

    groups = [list(range(len(prompts)))] if together else [[i] for i in range(len(prompts))]
    out = [[] for _ in prompts]
    for group in groups:
        logits = runner.forward([Chunk(2000 + i, prompts[i], 0, [], True) for i in group])
        for step in range(n):
            for row, i in enumerate(group):
                out[i].append(int(logits[row].argmax()))
            logits = runner.forward([Chunk(2000 + i, [out[i][-1]], len(prompts[i]) + step, [], True) for i in group])
        for i in group:
            runner.release(2000 + i)
    return out


def agreement(a: list[list[int]], b: list[list[int]]) -> tuple[int, float]:
    """How many answers are the same to the end, and the mean length of their common beginning."""
    firsts = [next((j for j, (x, y) in enumerate(zip(u, v)) if x != y), len(u)) for u, v in zip(a, b)]
    return sum(f == len(u) for f, u in zip(firsts, a)), statistics.mean(firsts)


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    import llama_cpp.llama_cpp  # noqa: F401  (the extra: fail before loading anything)
    import torch

    from bench_models import gguf_path, load_model
    from corpus import PARAGRAPHS
    from llmos.drivers.llamacpp_runner import LlamaCppRunner
    from llmos.drivers.loader import encode_prompt

    print(machine_line())
    gguf = gguf_path(args.model)
    with tempfile.TemporaryDirectory(prefix="llmos-weights-") as tmp:
        os.environ["LLMOS_CACHE_DIR"] = tmp
        files = {"file (" + gguf.rsplit(".", 2)[-2] + ")": gguf, "q8_0 copy": copy_of(gguf, 7, "q8_0", tmp)}
        if not args.no_f16:
            files["f16 copy"] = copy_of(gguf, 1, "f16", tmp)
        log(f"model {args.model}: {', '.join(f'{k} {os.path.getsize(v) / 2**20:.0f} MiB' for k, v in files.items())}")
        lm = load_model(args.model, "cpu", "float32")
        texts = [lm.tokenizer(p).input_ids[:512] for p in PARAGRAPHS]
        prompts = [encode_prompt(lm, None, [{"role": "user", "content": q}]) for q in QUESTIONS]
        rows, steps, answers = [], {}, {}
        reference = perplexity_torch(lm, texts)
        for name, path in files.items():
            runner = LlamaCppRunner(path, n_tokens=8192, max_seqs=max(SIZES), n_batch=512, threads=torch.get_num_threads())
            steps[name] = step_times(runner, SIZES, args.steps)
            answers[name] = greedy(runner, prompts, args.new, together=False)
            if name.startswith("file"):
                answers["file, 16 in company"] = greedy(runner, prompts, args.new, together=True)
            decoded = perplexity_decoding(runner, texts)
            runner.close()
            ppl = perplexity_llamacpp(path, texts)
            rows.append([name, f"{os.path.getsize(path) / 2**20:.0f}",
                         *(f"{1000 * steps[name][n]:.1f} ({n / steps[name][n]:.0f})" for n in SIZES),
                         fmt(ppl, digits=3), f"{100 * (ppl / reference - 1):+.2f}%",
                         fmt(decoded, digits=3), f"{100 * (decoded / reference - 1):+.2f}%"])
            log(f"{name}: done")
        print_table(f"llama.cpp decode step, ms (tok/s), and perplexity, {args.model}, {torch.get_num_threads()} threads",
                    ["weights", "MiB", *(f"n={n}" for n in SIZES), "ppl, whole texts", "vs torch fp32",
                     "ppl, a token a call", "vs torch fp32"], rows,
                    [f"torch float32 over the dequantized file: perplexity {reference:.3f} "
                     f"({sum(len(t) for t in texts)} tokens, {len(texts)} paragraphs of benchmarks/corpus.py)"])
        file_name = next(iter(files))
        table = []
        for name in answers:
            if name == file_name:
                continue
            same, common = agreement(answers[file_name], answers[name])
            table.append([name, f"{same}/{len(prompts)}", f"{common:.1f} of {args.new}"])
        print_table(f"greedy chat answers of {args.new} tokens against the file's alone",
                    ["answers from", "same to the end", "mean common beginning"], table)


if __name__ == "__main__":
    sys.exit(main())
