"""Scoring: each text's summed log-loss under a generate model (the `score` syscall), in slices.

Plain no-grad forwards, outside the engine and its KV cache. The texts are tokenized in runs
(`token_rows`), then rows are batched by length and padded on the right, where padding precedes no
token it could change; `nll_slices` yields after each forward, so the driver loop steps its engines
and answers pings between them (host.py). A Budget (slices.py) sizes each forward: at most
SLICE_TOKENS padded tokens, and while others wait on the device, about as long as the loop allows.

A row longer than that goes alone, and on Llama-shaped models (runner.PAGED_MODEL_TYPES) in chunks
of positions, each chunk reading the keys and values of those before it from a KV cache the call
holds across its slices: one text of 1,000 tokens is over a second of SmolLM2-135M on a busy CPU,
which the stream beside it would wait between two tokens. Their head and loss run over HEAD_TOKENS
positions at a time: one row of 8192 tokens would otherwise hold [8192, vocab] logits (1.6 GB in
float32 for a 49k vocabulary) and make them in one matmul that no pause can cut. Other models read
a long row in one forward, within which pause() comes after its layers.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Generator

import torch
import torch.nn.functional as F

from .loader import LoadedModel
from .runner import supports_paged
from .slices import Budget, in_runs, pausing, run_to_end, take_batch

SLICE_TOKENS = 2048    # padded tokens per scoring forward: bounds what one forward holds
FIRST_TOKENS = 128     # tokens of the first forward, before the call knows its rate
LEAST_TOKENS = 32      # of a forward at least: a forward of SmolLM2-135M costs ~60 ms on a busy CPU however few
                       # its positions, and a time budget under that would ask for one at a time and do little else
FIRST_CHARS = 16384    # characters of the first run tokenized
MOST_CHARS = 1 << 20   # characters of one run tokenized when nobody waits
HEAD_TOKENS = 1024     # positions whose logits are made at once (Llama-shaped models)


def summed_nll(lm: LoadedModel, rows: list[list[int]]) -> list[float]:
    """-log p(token | the tokens before it), natural log, summed over each row's tokens after its first."""
    return run_to_end(nll_slices(lm, rows))


def token_rows(lm: LoadedModel, texts: list[str], slice_s: Callable[[], float | None] = lambda: None,
               ) -> Generator[None, None, list[list[int]]]:
    """Each text's token ids, tokenized in runs (yielding after each)."""
    return (yield from in_runs(texts, Budget(FIRST_CHARS, MOST_CHARS, slice_s),
                               lambda run: lm.tokenizer(run)["input_ids"]))


def nll_slices(lm: LoadedModel, rows: list[list[int]], pause: Callable[[], None] = lambda: None,
               around: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
               slice_s: Callable[[], float | None] = lambda: None, tokens: Budget | None = None,
               ) -> Generator[None, None, list[float]]:
    """summed_nll, yielding after each forward; each runs inside around() (a LoRA adapter's rows,
    say), never across a pause of the generator. slice_s(): how long a forward may last (None: as
    long as memory allows); tokens: the Budget of forwards, if not the usual one."""
    tokens = tokens or Budget(FIRST_TOKENS, SLICE_TOKENS, slice_s, least=LEAST_TOKENS)
    nll = [0.0] * len(rows)
    order = sorted((i for i, row in enumerate(rows) if len(row) > 1), key=lambda i: len(rows[i]))
    while order:
        size = tokens.size()
        batch, order = take_batch(order, lambda i: len(rows[i]), size)
        if len(batch) == 1 and len(rows[batch[0]]) > size and supports_paged(lm):
            nll[batch[0]] = yield from _long_row(lm, rows[batch[0]], tokens, pause, around)
            continue
        ids = torch.zeros(len(batch), len(rows[batch[-1]]), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, i in enumerate(batch):
            ids[j, :len(rows[i])] = torch.tensor(rows[i])
            mask[j, :len(rows[i])] = 1
        with tokens.timed(ids.numel()), torch.inference_mode(), around(), pausing(lm.model, pause) as tick:
            losses = _losses(lm, ids.to(lm.device), mask.to(lm.device), tick).tolist()
        for i, total in zip(batch, losses):
            nll[i] = total
        yield
    return nll


def _long_row(lm: LoadedModel, row: list[int], tokens: Budget, pause: Callable[[], None],
              around: Callable[[], contextlib.AbstractContextManager]) -> Generator[None, None, float]:
    """One row's summed -log p, in chunks of positions sized by `tokens`, yielding after each."""
    ids = torch.tensor([row], device=lm.device)
    named = "cache" if "cache" in inspect.signature(lm.model.model.forward).parameters else "past_key_values"
    cache, total, start = None, 0.0, 0     # transformers 5 calls the KV cache `cache`, 4 `past_key_values`
    while start < len(row) - 1:       # the last token predicts nothing: it is never read
        end = min(len(row) - 1, start + tokens.size())
        with tokens.timed(end - start), torch.inference_mode(), around(), pausing(lm.model, pause) as tick:
            out = lm.model.model(input_ids=ids[:, start:end], use_cache=True, **{named: cache})
            cache = getattr(out, named)
            targets = ids[:, start + 1:end + 1]
            total += float(_head(lm, out.last_hidden_state, targets, torch.ones_like(targets), tick)[0])
        start = end
        yield
    return total


def _losses(lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor, tick: Callable[[], None]) -> torch.Tensor:
    """Each row's summed -log p of its tokens after the first, [rows]."""
    targets, counted = ids[:, 1:], mask[:, 1:]
    if not supports_paged(lm):
        logits = lm.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        return (F.cross_entropy(logits.transpose(1, 2), targets, reduction="none") * counted).sum(1)
    hidden = lm.model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    return _head(lm, hidden, targets, counted, tick)


def _head(lm: LoadedModel, hidden: torch.Tensor, targets: torch.Tensor, counted: torch.Tensor,
          tick: Callable[[], None]) -> torch.Tensor:
    """Summed -log p of targets from the final hidden states before them, HEAD_TOKENS positions at a time, [rows]."""
    total = torch.zeros(hidden.shape[0], device=hidden.device)
    step = max(1, HEAD_TOKENS // hidden.shape[0])
    for a in range(0, hidden.shape[1], step):
        logits = lm.model.lm_head(hidden[:, a:a + step]).float()
        total += (F.cross_entropy(logits.transpose(1, 2), targets[:, a:a + step], reduction="none")
                  * counted[:, a:a + step]).sum(1)
        tick()
    return total
