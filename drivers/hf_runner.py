"""The fallback model runner: any causal LM through transformers' own forward.

Models whose layers are not shaped as the paged runner needs (runner.py says which are) run
here with one transformers cache per sequence, one sequence at a time: correct, but without
batching. It offers the paged runner's interface, pauses included (after each sequence). A chunk
run again after a pass failed runs on its sequence's cache cropped back to the chunk's start.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

from .loader import LoadedModel
from .sequence import Chunk
from .slices import Slices, run_to_end


class HFRunner:
    """Any causal LM through transformers' own forward, one sequence and cache at a time."""

    def __init__(self, lm: LoadedModel):
        self.model = lm.model
        self.device = lm.device
        self.caches: dict[int, DynamicCache] = {}

    def forward(self, chunks: list[Chunk]) -> torch.Tensor:
        return run_to_end(self.forward_slices(chunks))

    @torch.inference_mode()
    def forward_slices(self, chunks: list[Chunk]) -> Slices:
        """forward, pausing after each sequence."""
        rows = []
        for c in chunks:
            if c.start == 0:
                self.caches[c.seq_id] = DynamicCache(config=self.model.config)
            elif (extra := self.caches[c.seq_id].get_seq_length() - c.start) > 0:   # a failed pass grew it
                self.caches[c.seq_id].crop(-extra)     # negative: drop that many (every transformers takes it)
            ids = torch.tensor([c.tokens], dtype=torch.long, device=self.device)
            out = self.model(input_ids=ids, past_key_values=self.caches[c.seq_id], use_cache=True)
            if c.sample:
                rows.append(out.logits[0, -1])
            yield
        return torch.stack(rows).float() if rows else torch.empty(0, 0, device=self.device)

    def release(self, seq_id: int) -> None:
        self.caches.pop(seq_id, None)
