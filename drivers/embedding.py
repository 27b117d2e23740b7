"""Sentence embeddings from an encoder: mean of the token states, L2-normalized.

This is sentence-transformers' recipe for models like all-MiniLM-L6-v2, so vectors match what
users of that library get. Texts are batched by length to waste little on padding.

An embed of the most the syscall allows (1024 texts, a 32 MiB frame of them) is a minute of work
on a CPU, so it runs in slices (`embed_slices`), and the driver loop steps its engines and answers
pings between them (host.py). A slice tokenizes a run of texts or runs one forward of a batch,
each sized by a Budget (slices.py): at most SLICE_TEXTS texts and SLICE_TOKENS padded tokens, and
while others wait on the device, about as long as the loop allows (an engine step's time). One
text is the least a forward takes (an encoder reads it whole: 512 tokens of all-MiniLM-L6 are
15-150 ms of a CPU), so within a forward, pause() comes after its layers as often, and there the
loop may step its engines.
A model reads only the start of a text that passes its context, so a text is cut to
CHARS_PER_TOKEN characters per token of context before it is tokenized: tokenizing 32 MiB to keep
the first few hundred tokens took the driver past the kernel's watchdog.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import torch

from .loader import LoadedModel
from .slices import Budget, in_runs, pausing, run_to_end, take_batch

SLICE_TEXTS = 32
SLICE_TOKENS = 4096        # padded tokens of one slice's forward
FIRST_TOKENS = 256         # padded tokens of the first forward, before the call knows its rate
FIRST_CHARS = 16384        # characters of the first run tokenized
CHARS_PER_TOKEN = 32       # far past what a tokenizer's token spans in any text but a pathological one


def embed(lm: LoadedModel, texts: list[str], normalize: bool = True) -> tuple[list[list[float]], int]:
    """One vector per text, and how many tokens were read (after truncation)."""
    return run_to_end(embed_slices(lm, texts, normalize))


def embed_slices(lm: LoadedModel, texts: list[str], normalize: bool = True,
                 pause: Callable[[], None] = lambda: None, slice_s: Callable[[], float | None] = lambda: None,
                 ) -> Generator[None, None, tuple[list[list[float]], int]]:
    """embed, yielding after each slice of tokenizing and of forward passes; pause() may come after
    a layer of a long forward; slice_s(): how long a slice may last (None: as long as memory
    allows). Returns what embed does."""
    limit = lm.context_length * CHARS_PER_TOKEN
    chars = Budget(FIRST_CHARS, SLICE_TEXTS * limit, slice_s)
    rows = yield from in_runs([t[:limit] for t in texts], chars, lambda run: _rows(lm, run))
    vectors: list[list[float] | None] = [None] * len(texts)
    total_tokens = 0
    tokens = Budget(FIRST_TOKENS, SLICE_TOKENS, slice_s)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    while order:
        batch, order = take_batch(order, lambda i: len(rows[i]["input_ids"]), tokens.size(), SLICE_TEXTS)
        enc = lm.tokenizer.pad([rows[i] for i in batch], return_tensors="pt").to(lm.device)
        with (tokens.timed(enc["input_ids"].numel()), torch.inference_mode(),
              pausing(lm.model, tokens.excluding(pause), slice_s())):
            states = lm.model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
            pooled = pooled.cpu().tolist()       # on a GPU, the slice's end: its time is all in
        total_tokens += int(enc["attention_mask"].sum())
        for i, vec in zip(batch, pooled):
            vectors[i] = vec
        yield
    return vectors, total_tokens


def _rows(lm: LoadedModel, texts: list[str]) -> list[dict]:
    """Each text tokenized (truncated to the context), as a row for tokenizer.pad."""
    enc = lm.tokenizer(texts, truncation=True, max_length=lm.context_length)
    return [{key: enc[key][j] for key in enc.keys()} for j in range(len(enc["input_ids"]))]
