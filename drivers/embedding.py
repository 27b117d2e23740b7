"""Sentence embeddings from an encoder: mean of the token states, L2-normalized.

This is sentence-transformers' recipe for models like all-MiniLM-L6-v2, so vectors match what
users of that library get. Texts are batched by length to waste little on padding.
"""

from __future__ import annotations

import torch

from .loader import LoadedModel

BATCH_SIZE = 32


def embed(lm: LoadedModel, texts: list[str], normalize: bool = True) -> tuple[list[list[float]], int]:
    """One vector per text, and how many tokens were read (after truncation)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors: list[list[float] | None] = [None] * len(texts)
    total_tokens = 0
    with torch.inference_mode():
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start:start + BATCH_SIZE]
            enc = lm.tokenizer([texts[i] for i in batch], padding=True, truncation=True,
                               max_length=lm.context_length, return_tensors="pt").to(lm.device)
            states = lm.model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
            total_tokens += int(enc["attention_mask"].sum())
            for i, vec in zip(batch, pooled.cpu().tolist()):
                vectors[i] = vec
    return vectors, total_tokens
