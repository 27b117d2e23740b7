"""The KV cache: how many tokens the budget holds, who owns which block, and the tensors.

The accounting (`KVLayout`, `BlockAllocator`) is pure bookkeeping so the scheduler can plan
without touching the device; `KVCache` is the storage the model runner writes into. Memory is
handed out in blocks of `BLOCK_SIZE` tokens so that sequences of any length share one pool
without fragmentation, and a preempted sequence gives back everything at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK_SIZE = 16


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


class BlockAllocator:
    """Which cache blocks each sequence owns; sequences are named by an int id."""

    def __init__(self, num_blocks: int, block_size: int = BLOCK_SIZE):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free = list(range(num_blocks - 1, -1, -1))  # pop() hands out low ids first
        self._tables: dict[int, list[int]] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def can_allocate(self, n_tokens: int) -> bool:
        """Whether a new sequence of n_tokens fits in the free blocks now."""
        return self.blocks_for(n_tokens) <= len(self._free)

    def can_ever_hold(self, n_tokens: int) -> bool:
        """Whether n_tokens would fit if this sequence had the whole cache to itself."""
        return self.blocks_for(n_tokens) <= self.num_blocks

    def can_extend(self, seq_id: int, n_tokens: int) -> bool:
        """Whether the sequence can grow to hold n_tokens in total."""
        return self.blocks_for(n_tokens) - len(self._tables[seq_id]) <= len(self._free)

    def allocate(self, seq_id: int, n_tokens: int) -> list[int]:
        if seq_id in self._tables:
            raise ValueError(f"sequence {seq_id} already holds blocks; use extend()")
        self._tables[seq_id] = []
        return self.extend(seq_id, n_tokens)

    def extend(self, seq_id: int, n_tokens: int) -> list[int]:
        """Grow the sequence's block table to hold n_tokens in total; returns the table."""
        table = self._tables[seq_id]
        missing = self.blocks_for(n_tokens) - len(table)
        if missing > len(self._free):
            raise MemoryError(f"KV cache full: sequence {seq_id} needs {missing} more blocks, "
                              f"{len(self._free)} free")
        table.extend(self._free.pop() for _ in range(max(0, missing)))
        return table

    def free(self, seq_id: int) -> None:
        self._free.extend(reversed(self._tables.pop(seq_id, [])))

    def block_table(self, seq_id: int) -> list[int]:
        return self._tables[seq_id]


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
