"""The KV cache's tensors: how many tokens a byte budget holds, and the storage itself.

`KVLayout` sizes the cache from a model's config; `KVCache` is the storage the model runner
writes into. Who owns which block is blocks.py's bookkeeping, which needs no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .blocks import BLOCK_SIZE


@dataclass(frozen=True)
class KVLayout:
    """The shape of one token's keys and values across all layers."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype_bytes: int

    @classmethod
    def of(cls, config, dtype: torch.dtype) -> KVLayout:
        """Read the layout from a transformers decoder config."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        return cls(config.num_hidden_layers, kv_heads, head_dim, torch.finfo(dtype).bits // 8)

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    def num_blocks(self, kv_budget_bytes: int, block_size: int = BLOCK_SIZE) -> int:
        return max(0, kv_budget_bytes // (self.bytes_per_token * block_size))


class KVCache:
    """The storage: per layer, K and V as [num_blocks, block_size, kv_heads, head_dim].

    One allocation holds every layer so the whole budget is reserved up front and the per-layer
    tensors are views into it.
    """

    def __init__(self, layout: KVLayout, num_blocks: int, dtype: torch.dtype, device: torch.device,
                 block_size: int = BLOCK_SIZE):
        shape = (2, layout.num_layers, num_blocks, block_size, layout.num_kv_heads, layout.head_dim)
        self.data = torch.zeros(shape, dtype=dtype, device=device)
        self.k = list(self.data[0].unbind(0))
        self.v = list(self.data[1].unbind(0))
        self.block_size = block_size
