"""transformers' own ways to run the same requests: generate() one at a time, on static padded
batches, and its continuous batching; each request greedy, with its own max_tokens.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from timings import Summary, Timing, summarize
from workload import BenchRequest


def _step_timer():
    """A generate() streamer that records when each new token (batch row or not) is produced."""
    from transformers.generation.streamers import BaseStreamer

    class StepTimes(BaseStreamer):
        def __init__(self):
            self.times: list[float] = []
            self._prompt_seen = False

        def put(self, value):
            if not self._prompt_seen:     # the first put is the prompt
                self._prompt_seen = True
                return
            self.times.append(time.monotonic())

        def end(self):
            pass

    return StepTimes()


def _greedy_kwargs(lm) -> dict:
    from transformers import GenerationConfig
    pad = lm.tokenizer.pad_token_id
    pad = pad if pad is not None else lm.eos_token_ids[0]
    return dict(generation_config=GenerationConfig(do_sample=False, eos_token_id=lm.eos_token_ids, pad_token_id=pad),
                pad_token_id=pad)


def _useful_tokens(row: list[int], max_tokens: int, eos: set[int]) -> int:
    """Tokens a request wanted from a generated row: up to and including EOS, at most max_tokens."""
    for i, tok in enumerate(row[:max_tokens]):
        if tok in eos:
            return i + 1
    return min(len(row), max_tokens)


def run_hf_sequential(lm, requests: list[BenchRequest]) -> Summary:
    """transformers generate(), one request at a time, greedy, each with its own max_new_tokens."""
    import torch
    kw = _greedy_kwargs(lm)
    eos = set(lm.eos_token_ids)
    timings = []
    start = time.monotonic()
    for r in tqdm(requests, desc="hf generate", unit="req", file=sys.stderr, leave=False):
        ids = torch.tensor([r.prompt_ids], device=lm.device)
        streamer = _step_timer()
        t = Timing(r.idx, time.monotonic(), 0.0)
        with torch.inference_mode():
            out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=r.max_tokens,
                                    streamer=streamer, **kw)
        t.end = time.monotonic()
        t.completion_tokens = _useful_tokens(out[0, ids.shape[1]:].tolist(), r.max_tokens, eos)
        t.pieces = streamer.times[:t.completion_tokens]
        t.first = t.pieces[0] if t.pieces else t.end
        timings.append(t)
    return summarize("hf generate, 1 at a time", timings, time.monotonic() - start)


def run_hf_static(lm, requests: list[BenchRequest], batch_size: int) -> Summary:
    """transformers generate() on fixed batches, left-padded, each batch run to its longest max_tokens."""
    import torch
    kw = _greedy_kwargs(lm)
    pad, eos = kw["pad_token_id"], set(lm.eos_token_ids)
    timings = []
    start = time.monotonic()
    batches = [requests[i:i + batch_size] for i in range(0, len(requests), batch_size)]
    for batch in tqdm(batches, desc="hf static batches", unit="batch", file=sys.stderr, leave=False):
        width = max(len(r.prompt_ids) for r in batch)
        ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in batch], device=lm.device)
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in batch],
                            device=lm.device)
        streamer = _step_timer()
        submitted = time.monotonic()
        with torch.inference_mode():
            out = lm.model.generate(ids, attention_mask=mask, max_new_tokens=max(r.max_tokens for r in batch),
                                    streamer=streamer, **kw)
        end = time.monotonic()
        for row, r in zip(out[:, width:].tolist(), batch):
            n = _useful_tokens(row, r.max_tokens, eos)
            pieces = streamer.times[:n]
            timings.append(Timing(r.idx, submitted, pieces[-1] if pieces else end, pieces[0] if pieces else end,
                                  pieces, n))
    return summarize(f"hf generate, static batches of {batch_size}", timings, time.monotonic() - start)


def run_hf_continuous(lm, requests: list[BenchRequest]) -> Summary:
    """transformers' continuous batching, set up exactly as generate_batch() sets it up, but with each
    request's own max_new_tokens (generate_batch takes one for all; its manager takes one per request).

    It runs a background thread and must not run under inference_mode.
    """
    from transformers import GenerationConfig

    kw = _greedy_kwargs(lm)
    gen = GenerationConfig(do_sample=False, eos_token_id=lm.eos_token_ids, pad_token_id=kw["pad_token_id"],
                           max_new_tokens=max(r.max_tokens for r in requests))
    hints = {}
    try:
        from transformers.generation.continuous_batching.utils import WorkloadHints
        hints["workload_hints"] = WorkloadHints(max_prompt_length=max(len(r.prompt_ids) for r in requests),
                                                max_generated_length=gen.max_new_tokens, num_requests=len(requests))
    except ImportError:   # older transformers size the cache without hints
        pass
    eos = set(lm.eos_token_ids)
    timings: dict[str, Timing] = {}
    by_id = {f"req-{r.idx}": r for r in requests}
    with lm.model.continuous_batching_context_manager(generation_config=gen, block=True, timeout=30, **hints) as manager:
        start = time.monotonic()
        for rid, r in by_id.items():   # timestamps below are perf_counter(); so is `submitted`
            timings[rid] = Timing(r.idx, time.perf_counter(), 0.0)
            manager.add_request(list(r.prompt_ids), request_id=rid, max_new_tokens=r.max_tokens,
                                record_timestamps=True)
        with tqdm(total=len(requests), desc="hf continuous batching", unit="req", file=sys.stderr, leave=False) as bar:
            while bar.n < len(requests):
                result = manager.get_result(timeout=1)
                if result is None:
                    if not manager.is_running():
                        raise RuntimeError("transformers' continuous batching thread stopped")
                    continue
                if not result.is_finished() or result.request_id not in timings:
                    continue
                t, r = timings[result.request_id], by_id[result.request_id]
                stamps = list(result.timestamps or [])
                t.completion_tokens = _useful_tokens(list(result.generated_tokens), r.max_tokens, eos)
                t.pieces = stamps[:t.completion_tokens]
                t.end = stamps[-1] if stamps else time.perf_counter()
                t.first = t.pieces[0] if t.pieces else t.end
                t.error = result.error
                bar.update(1)
        wall = time.monotonic() - start
    return summarize("hf continuous batching", list(timings.values()), wall)
