"""The KV cache's accounting: which blocks of the cache each sequence holds.

Pure bookkeeping with no torch, so the scheduler can plan without touching the device (the
tensors are in kvcache.py). Memory is handed out in blocks of `BLOCK_SIZE` tokens so that
sequences of any length share one pool without fragmentation, and a preempted sequence gives
back everything at once.

With the prefix cache on (prefix_cache.py), a block is counted by how many sequences hold it:
sequences that begin with the same tokens share the full blocks of that beginning. A cached
block nobody holds is still free to hand out, but it is handed out last, least recently used
first, so it survives as long as there is any other room; the scheduler preempts only when
the free blocks, idle cached ones included, run out.
"""

from __future__ import annotations

from .prefix_cache import PrefixCache

BLOCK_SIZE = 16


class BlockAllocator:
    """Which cache blocks each sequence holds; sequences are named by an int id."""

    def __init__(self, num_blocks: int, block_size: int = BLOCK_SIZE, prefix_cache: bool = False):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.cache = PrefixCache() if prefix_cache else None
        self._free = list(range(num_blocks - 1, -1, -1))  # never cached; pop() hands out low ids first
        self._tables: dict[int, list[int]] = {}
        self._holders = [0] * num_blocks                  # sequences holding each block
        self._indexed: dict[int, int] = {}                # seq_id -> its first blocks in the cache's index

    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence holds: never cached, or cached and idle (given out last)."""
        return len(self._free) + (self.cache.num_idle_blocks if self.cache else 0)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def cached_blocks(self, keys: list[bytes]) -> list[int]:
        """The cached blocks a sequence whose full blocks have these keys would start with."""
        return self.cache.longest_prefix(keys) if self.cache else []

    def blocks_to_take(self, n_tokens: int, keys: list[bytes] = ()) -> int:
        """How many free blocks a new sequence of n_tokens takes, reusing the cached blocks of keys
        (an idle one it reuses is no longer free either)."""
        reused = self.cached_blocks(keys)
        idle = sum(1 for block in reused if self.cache.is_idle(block))
        return self.blocks_for(n_tokens) - len(reused) + idle

    def can_allocate(self, n_tokens: int, keys: list[bytes] = ()) -> bool:
        """Whether a new sequence of n_tokens (full blocks keyed by keys) fits in the free blocks now."""
        return self.blocks_to_take(n_tokens, keys) <= self.num_free_blocks

    def can_ever_hold(self, n_tokens: int) -> bool:
        """Whether n_tokens would fit if this sequence had the whole cache to itself."""
        return self.blocks_for(n_tokens) <= self.num_blocks

    def can_extend(self, seq_id: int, n_tokens: int) -> bool:
        """Whether the sequence can grow to hold n_tokens in total."""
        return self.blocks_for(n_tokens) - len(self._tables[seq_id]) <= self.num_free_blocks

    def allocate(self, seq_id: int, n_tokens: int, keys: list[bytes] = ()) -> int:
        """Blocks for a new sequence of n_tokens, starting with the cached blocks of the longest
        run of keys the cache holds; returns how many of its tokens those already hold."""
        if seq_id in self._tables:
            raise ValueError(f"sequence {seq_id} already holds blocks; use extend()")
        reused = self.cached_blocks(keys)
        if self.cache:
            self.cache.count_lookup(len(keys), len(reused))
        for block in reused:
            if self.cache.is_idle(block):
                self.cache.take(block)
            self._holders[block] += 1
        self._tables[seq_id] = list(reused)
        self._indexed[seq_id] = len(reused)
        self.extend(seq_id, n_tokens)
        return len(reused) * self.block_size

    def extend(self, seq_id: int, n_tokens: int) -> list[int]:
        """Grow the sequence's block table to hold n_tokens in total; returns the table."""
        table = self._tables[seq_id]
        missing = self.blocks_for(n_tokens) - len(table)
        if missing > self.num_free_blocks:
            raise MemoryError(f"KV cache full: sequence {seq_id} needs {missing} more blocks, "
                              f"{self.num_free_blocks} free")
        for _ in range(missing):
            block = self._free.pop() if self._free else self.cache.evict()
            self._holders[block] = 1
            table.append(block)
        return table

    def index(self, seq_id: int, keys: list[bytes]) -> None:
        """The sequence's first len(keys) blocks are full and computed: enter them in the cache."""
        if self.cache is None:
            return
        table = self._tables[seq_id]
        for i in range(self._indexed[seq_id], len(keys)):
            self.cache.add(table[i], keys[i])
        self._indexed[seq_id] = max(self._indexed[seq_id], len(keys))

    def free(self, seq_id: int) -> None:
        """Let go of the sequence's blocks. Cached ones nobody else holds stay cached, the last
        block first in line to go, since beginnings are what other requests share."""
        self._indexed.pop(seq_id, None)
        for block in reversed(self._tables.pop(seq_id, [])):
            self._holders[block] -= 1
            if self._holders[block]:
                continue
            if self.cache and self.cache.is_cached(block):
                self.cache.park(block)
            else:
                self._free.append(block)

    def drop_cached(self) -> None:
        """Forget every idle cached block (after a failed step their contents are not trusted)."""
        while self.cache and self.cache.num_idle_blocks:
            self._free.append(self.cache.evict())

    def block_table(self, seq_id: int) -> list[int]:
        return self._tables[seq_id]
