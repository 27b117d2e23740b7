"""The KV cache's accounting: which blocks of the cache each sequence owns.

Pure bookkeeping with no torch, so the scheduler can plan without touching the device (the
tensors are in kvcache.py). Memory is handed out in blocks of `BLOCK_SIZE` tokens so that
sequences of any length share one pool without fragmentation, and a preempted sequence gives
back everything at once.
"""

from __future__ import annotations

BLOCK_SIZE = 16


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
