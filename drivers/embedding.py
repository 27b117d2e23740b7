"""Sentence embeddings from an encoder: mean of the token states, L2-normalized.

This is sentence-transformers' recipe for models like all-MiniLM-L6-v2, so vectors match what
users of that library get. Texts are batched by length to waste little on padding.

An embed of the most the syscall allows (1024 texts, a 32 MiB frame of them) is a minute of work
on a CPU, so it runs in slices (`embed_slices`), each at most SLICE_TEXTS texts and SLICE_TOKENS
padded tokens, and the driver loop steps its engines and answers pings between them (host.py).
A model reads only the start of a text that passes its context, so a text is cut to
CHARS_PER_TOKEN characters per token of context before it is tokenized: tokenizing 32 MiB to keep
the first few hundred tokens took the driver past the kernel's watchdog.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import torch

from .loader import LoadedModel
from .slices import pausing, run_to_end

SLICE_TEXTS = 32
SLICE_TOKENS = 4096        # padded tokens of one slice's forward
CHARS_PER_TOKEN = 32       # far past what a tokenizer's token spans in any text but a pathological one


def embed(lm: LoadedModel, texts: list[str], normalize: bool = True) -> tuple[list[list[float]], int]:
    """One vector per text, and how many tokens were read (after truncation)."""
    return run_to_end(embed_slices(lm, texts, normalize))


def embed_slices(lm: LoadedModel, texts: list[str], normalize: bool = True,
                 pause: Callable[[], None] = lambda: None) -> Generator[None, None, tuple[list[list[float]], int]]:
    """embed, yielding after each slice of tokenizing and of forward passes; pause() may come after
    a layer of a long forward. Returns what embed does."""
    limit = lm.context_length * CHARS_PER_TOKEN
    rows: list[dict] = []
    for start in range(0, len(texts), SLICE_TEXTS):
        enc = lm.tokenizer([t[:limit] for t in texts[start:start + SLICE_TEXTS]], truncation=True,
                           max_length=lm.context_length)
        rows += [{key: enc[key][j] for key in enc.keys()} for j in range(len(enc["input_ids"]))]
        yield
    vectors: list[list[float] | None] = [None] * len(texts)
    total_tokens = 0
    for batch in _batches(sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"])), rows):
        enc = lm.tokenizer.pad([rows[i] for i in batch], return_tensors="pt").to(lm.device)
        with torch.inference_mode(), pausing(lm.model, pause):
            states = lm.model(**enc).last_hidden_state.float()
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        total_tokens += int(enc["attention_mask"].sum())
        for i, vec in zip(batch, pooled.cpu().tolist()):
            vectors[i] = vec
        yield
    return vectors, total_tokens


def _batches(order: list[int], rows: list[dict]) -> Generator[list[int], None, None]:
    """Indices in order, shortest first, cut into batches of at most SLICE_TEXTS rows and SLICE_TOKENS
    padded tokens (a longer row goes alone)."""
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) == SLICE_TEXTS or (len(batch) + 1) * len(rows[i]["input_ids"]) > SLICE_TOKENS):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch
