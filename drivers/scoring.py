"""Scoring: each text's summed log-loss under a generate model (the `score` syscall), in slices.

A plain no-grad forward, outside the engine and its KV cache. Rows are batched by length and padded
on the right, where padding precedes no token it could change; a batch holds at most SLICE_TOKENS
padded tokens (a longer row goes alone), and `nll_slices` yields after each one, so the driver loop
steps its engines and answers pings between them (host.py); within a long forward, pause() comes
after its layers. For Llama-shaped models (runner.PAGED_MODEL_TYPES) the head and the loss run over
HEAD_TOKENS positions at a time: one row of 8192 tokens would otherwise hold [8192, vocab] logits
(1.6 GB in float32 for a 49k vocabulary) and make them in one matmul that no pause can cut.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator

import torch
import torch.nn.functional as F

from .loader import LoadedModel
from .runner import supports_paged
from .slices import pausing, run_to_end

SLICE_TOKENS = 2048    # padded tokens per scoring forward
HEAD_TOKENS = 1024     # positions whose logits are made at once (Llama-shaped models)


def summed_nll(lm: LoadedModel, rows: list[list[int]]) -> list[float]:
    """-log p(token | the tokens before it), natural log, summed over each row's tokens after its first."""
    return run_to_end(nll_slices(lm, rows))


def nll_slices(lm: LoadedModel, rows: list[list[int]], pause: Callable[[], None] = lambda: None,
               around: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
               ) -> Generator[None, None, list[float]]:
    """summed_nll, yielding after each batch; each batch's forward runs inside around() (a LoRA
    adapter's rows, say), never across a pause of the generator."""
    nll = [0.0] * len(rows)
    order = sorted((i for i, row in enumerate(rows) if len(row) > 1), key=lambda i: len(rows[i]))
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end + 1 - start) * len(rows[order[end]]) <= SLICE_TOKENS:
            end += 1
        batch = order[start:end]
        ids = torch.zeros(len(batch), len(rows[batch[-1]]), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, i in enumerate(batch):
            ids[j, :len(rows[i])] = torch.tensor(rows[i])
            mask[j, :len(rows[i])] = 1
        with torch.inference_mode(), around(), pausing(lm.model, pause) as tick:
            losses = _losses(lm, ids.to(lm.device), mask.to(lm.device), tick)
        for i, total in zip(batch, losses.tolist()):
            nll[i] = total
        start = end
        yield
    return nll


def _losses(lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor, tick: Callable[[], None]) -> torch.Tensor:
    """Each row's summed -log p of its tokens after the first, [rows]."""
    targets, counted = ids[:, 1:], mask[:, 1:]
    if not supports_paged(lm):
        logits = lm.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        return (F.cross_entropy(logits.transpose(1, 2), targets, reduction="none") * counted).sum(1)
    hidden = lm.model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    total = torch.zeros(ids.shape[0], device=ids.device)
    step = max(1, HEAD_TOKENS // ids.shape[0])
    for a in range(0, hidden.shape[1], step):
        logits = lm.model.lm_head(hidden[:, a:a + step]).float()
        total += (F.cross_entropy(logits.transpose(1, 2), targets[:, a:a + step], reduction="none")
                  * counted[:, a:a + step]).sum(1)
        tick()
    return total
