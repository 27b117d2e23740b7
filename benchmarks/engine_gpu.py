"""The engine's output tokens/s on one GPU against transformers' own continuous batching.

A random-weight Llama of SmolLM2's shape (built in memory, no files), n requests of `new`
tokens each with EOS ignored, timed through `Engine` with and without CUDA graphs and, in the
same run, through transformers' `generate_batch` with its CUDA graphs on. `--check` first
verifies on the GPU: the Triton decode kernel against SDPA, the engine against transformers'
greedy generate on a tiny fp32 model, and the engine with graphs against without (same tokens).

    python benchmarks/engine_gpu.py --shape smollm2-135m --n 256 --new 128 --check
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import random
import sys
import time
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent

ARCH = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, tie_word_embeddings=True),
    "smollm2-1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                         num_key_value_heads=32, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True, initializer_range=0.1),
}
VOCAB = {"tiny": 384}


def import_drivers():
    """llmos.drivers, installed or straight from this checkout (the GPU machine has no install)."""
    try:
        import llmos.drivers  # noqa: F401
    except ImportError:
        sys.modules.setdefault("llmos", types.ModuleType("llmos")).__path__ = []
        spec = importlib.util.spec_from_file_location("llmos.drivers", REPO / "drivers" / "__init__.py",
                                                      submodule_search_locations=[str(REPO / "drivers")])
        module = importlib.util.module_from_spec(spec)
        sys.modules["llmos.drivers"] = module
        spec.loader.exec_module(module)
    from llmos.drivers import attention, engine, kvcache, loader
    return attention, engine, kvcache, loader


attention, engine_mod, kvcache, loader = import_drivers()
Engine, GenRequest = engine_mod.Engine, engine_mod.GenRequest
DEVICE = torch.device("cuda")   # --device cpu: a slow dry run of the same code


def free_memory() -> None:
    """Give back what the last method held (graph pools and caches sit in reference cycles)."""
    gc.collect()
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()
        print(f"  (GPU memory free: {torch.cuda.mem_get_info()[0] / 2**30:.1f} GiB)", flush=True)


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def build(shape: str, dtype=torch.bfloat16, attn: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=VOCAB.get(shape, 49152), max_position_embeddings=8192, rope_theta=100000.0,
                         **ARCH[shape])
    config._attn_implementation = attn
    torch.manual_seed(0)
    with DEVICE:
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


def loaded(model, dtype) -> "loader.LoadedModel":
    """The model as the engine takes it; no tokenizer: the engine runs with decode_text=False."""
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    return loader.LoadedModel("bench", "generate", model, None, DEVICE, dtype, 8192, size, [0])


def prompts(n: int, vocab: int, lo: int = 32, hi: int = 128, seed: int = 1) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab - 100) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def make_engine(lm, n: int, longest: int, graphs: bool):
    """Room in the KV cache for n sequences of up to `longest` tokens, all in one batch."""
    blocks = n * (-(-longest // kvcache.BLOCK_SIZE) + 1)
    kv_bytes = blocks * kvcache.BLOCK_SIZE * kvcache.KVLayout.of(lm.model.config, lm.dtype).bytes_per_token
    return Engine(lm, kv_bytes, max_batch_tokens=8192, max_seqs=n, decode_text=False, cuda_graphs=graphs)


def generate(engine, ps: list[list[int]], new: list[int] | int) -> tuple[dict[int, list[int]], int]:
    """Run requests to completion; their tokens, and the number of engine steps."""
    news = new if isinstance(new, list) else [new] * len(ps)
    for i, (p, k) in enumerate(zip(ps, news)):
        engine.add(GenRequest(i, p, k, 0.0, 1.0, 0, [], None, ignore_eos=True))
    out: dict[int, list[int]] = {i: [] for i in range(len(ps))}
    steps = 0
    while engine.has_work():
        for e in engine.step():
            if e.finish == "error":
                raise RuntimeError(f"{e.errno}: {e.message}")
            out[e.rid] += e.token_ids
        steps += 1
    return out, steps


def time_engine(lm, ps, new: int, graphs: bool) -> dict:
    engine = make_engine(lm, len(ps), max(map(len, ps)) + new, graphs)
    generate(engine, ps, 4)                                    # warm-up: kernels, graphs, allocator
    sync()
    start = time.perf_counter()
    out, steps = generate(engine, ps, new)
    sync()
    seconds = time.perf_counter() - start
    tokens = sum(map(len, out.values()))
    assert tokens == len(ps) * new, f"{tokens} tokens, expected {len(ps) * new}"
    result = {"tok_s": tokens / seconds, "seconds": seconds, "steps": steps, "ms_per_step": 1000 * seconds / steps}
    runner = engine.runner
    if graphs and runner.graphs is not None and runner.graphs.graphs:
        size = max(runner.graphs.graphs)
        runner.decode_inputs[2].fill_(runner.tables.padding_row)   # replay on padding rows only
        runner.decode_inputs[:2].zero_()
        for _ in range(3):
            runner.graphs.run(size)
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(20):
            runner.graphs.run(size)
        end.record()
        torch.cuda.synchronize()
        result[f"graph_replay_ms_b{size}"] = begin.elapsed_time(end) / 20
    return result


def profile_decode_step(lm, size: int) -> None:
    """The CUDA kernels of one eager decode step at a padded batch size, most time first."""
    from torch.profiler import ProfilerActivity, profile
    engine = make_engine(lm, size, 256, graphs=False)
    runner = engine.runner
    runner.decode_inputs[2].fill_(runner.tables.padding_row)
    runner.decode_inputs[:2].zero_()
    with torch.inference_mode():
        runner._decode_forward(size)
        sync()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            runner._decode_forward(size)
            sync()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=70), flush=True)


def time_hf(model, ps, new: int) -> dict:
    """transformers' generate_batch with CUDA graphs (outside inference_mode: it fails inside)."""
    import inspect

    from transformers import GenerationConfig
    try:
        from transformers import ContinuousBatchingConfig
    except ImportError:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
    gen = GenerationConfig(max_new_tokens=new, min_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)
    kw = {"use_cuda_graph": True} if "use_cuda_graph" in inspect.signature(ContinuousBatchingConfig).parameters else {}
    cbc = ContinuousBatchingConfig(**kw)
    model.generate_batch(ps[:8], generation_config=gen, continuous_batching_config=cbc)
    sync()
    start = time.perf_counter()
    out = model.generate_batch(ps, generation_config=gen, continuous_batching_config=cbc)
    sync()
    seconds = time.perf_counter() - start
    tokens = sum(len(o.generated_tokens) for o in out.values())
    return {"tok_s": tokens / seconds, "seconds": seconds, "tokens": tokens, "cuda_graph": bool(kw)}


# --- checks ------------------------------------------------------------------------------------------


def check_kernel() -> dict:
    torch.manual_seed(0)
    worst = {}
    for dtype in (torch.bfloat16, torch.float32):
        for heads, kv_heads, dim in ((9, 3, 64), (32, 32, 64), (4, 2, 16)):
            kc = torch.randn(300, 16, kv_heads, dim, device=DEVICE).to(dtype)
            vc = torch.randn_like(kc)
            lengths = torch.tensor([1, 15, 16, 17, 64, 65, 200, 333], device=DEVICE)
            tables = torch.randperm(300, device=DEVICE)[:len(lengths) * 21].view(len(lengths), 21).int()
            q = torch.randn(len(lengths), heads, dim, device=DEVICE).to(dtype)
            ref = attention._sdpa_attention(q.float(), kc.float(), vc.float(), tables, lengths, dim ** -0.5)
            got = attention.paged_decode_attention(q, kc, vc, tables, lengths, dim ** -0.5)
            worst[f"{str(dtype)[6:]} {heads}/{kv_heads}x{dim}"] = float((got.float() - ref).abs().max())
    return worst


def check_tiny_matches_hf() -> bool:
    model = build("tiny", torch.float32)
    lm = loaded(model, torch.float32)
    ps = prompts(6, 384, 3, 40, seed=2)
    out, _ = generate(make_engine(lm, 8, 80, graphs=True), ps, 24)
    for i, p in enumerate(ps):
        ids = torch.tensor([p], device=DEVICE)
        with torch.inference_mode():
            ref = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24,
                                 min_new_tokens=24, eos_token_id=None, pad_token_id=0)[0, len(p):].tolist()
        if out[i] != ref:
            print("tiny mismatch", i, out[i], ref, flush=True)
            return False
    return True


def check_graphs_match_eager(shape: str, dtype) -> dict:
    """Same greedy tokens with and without graphs; staggered lengths exercise many batch sizes."""
    model = build(shape, dtype)
    lm = loaded(model, dtype)
    vocab = model.config.vocab_size
    ps = prompts(40, vocab, 3, 70, seed=3)
    news = [5 + 3 * i for i in range(len(ps))]
    with_graphs, _ = generate(make_engine(lm, 48, 200, graphs=True), ps, news)
    eager, _ = generate(make_engine(lm, 48, 200, graphs=False), ps, news)
    same = sum(with_graphs[i] == eager[i] for i in range(len(ps)))
    tokens = sum(a == b for i in range(len(ps)) for a, b in zip(with_graphs[i], eager[i]))
    del model, lm
    free_memory()
    return {"shape": shape, "requests_identical": f"{same}/{len(ps)}",
            "tokens_identical": f"{tokens}/{sum(news)}"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="smollm2-135m", choices=["smollm2-135m", "smollm2-1.7b"])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--no-graphs", action="store_true", help="time the engine without CUDA graphs only")
    p.add_argument("--eager-too", action="store_true", help="also time the engine without CUDA graphs")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="also time transformers' generate_batch with CUDA graphs")
    p.add_argument("--check", action="store_true", help="verify correctness on the GPU first")
    p.add_argument("--profile", action="store_true", help="print the kernels of one decode step")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = p.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    if args.check:
        print("kernel vs SDPA, max abs error:", json.dumps(check_kernel()), flush=True)
        print("tiny fp32 engine == transformers greedy:", check_tiny_matches_hf(), flush=True)
        print("graphs vs eager (tiny):", json.dumps(check_graphs_match_eager("tiny", torch.bfloat16)), flush=True)
        print("graphs vs eager:", json.dumps(check_graphs_match_eager(args.shape, torch.bfloat16)), flush=True)
    model = build(args.shape)
    lm = loaded(model, torch.bfloat16)
    ps = prompts(args.n, model.config.vocab_size)
    if args.profile:
        profile_decode_step(lm, args.n)
        free_memory()
    rows = []
    if args.baseline:   # first, while the GPU's memory is all free: it sizes its cache from that
        result = time_hf(model, ps, args.new)
        print("transformers generate_batch:", json.dumps(result), flush=True)
        rows.append(("transformers generate_batch (CUDA graphs)", result["tok_s"]))
        free_memory()
    modes = [False] if args.no_graphs else ([True, False] if args.eager_too else [True])
    for graphs in modes:
        result = time_engine(lm, ps, args.new, graphs)
        print(f"engine graphs={graphs}:", json.dumps(result), flush=True)
        rows.append((f"llmos Engine ({'CUDA graphs' if graphs else 'eager'})", result["tok_s"]))
        free_memory()
    base = rows[0][1] if args.baseline else None
    print(f"\n{args.shape}, {args.n} requests x {args.new} new tokens, {name}")
    print(f"{'method':45} {'output tok/s':>13} {'ratio':>7}")
    for name, tok_s in rows:
        ratio = f"{tok_s / base:.1f}x" if base else "-"
        print(f"{name:45} {tok_s:13,.0f} {ratio:>7}")


if __name__ == "__main__":
    main()
