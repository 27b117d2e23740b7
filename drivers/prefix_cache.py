"""The prefix cache's index: which KV blocks hold which run of tokens, and which of them may go.

Many requests begin with the same tokens (a support bot's system prompt, a chat's history, a
kb's passages). A full block of the cache, once computed, is kept under a key that names the
block's tokens and everything before them, so a later request that begins the same way reuses
its keys and values instead of computing them again.

The key of a block is a hash chain: sha256 of the previous block's key and this block's token
ids, starting from the request's cache salt (its principal). Equal keys mean equal tokens from
the start, so equal keys and values. The salt keeps tenants apart: a hit is measurably faster,
so a block shared across principals would tell one what another's prompts begin with.

A cached block that no sequence holds waits in a least-recently-used order and is taken back
only when the allocator runs out of free blocks (blocks.py), which is before anyone is preempted.
Pure bookkeeping, no torch: the scheduler plans with it.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict


def block_keys(keys: list[bytes], salt: str, tokens: list[int], block_size: int, num_blocks: int) -> list[bytes]:
    """Extend `keys` (the keys of tokens' first blocks, as far as known) to the first num_blocks
    full blocks of tokens; returns keys itself. Callers keep the list, so each block is hashed once."""
    parent = keys[-1] if keys else hashlib.sha256(b"llmos-prefix\0" + salt.encode()).digest()
    for i in range(len(keys), num_blocks):
        block = array("q", tokens[i * block_size:(i + 1) * block_size]).tobytes()
        parent = hashlib.sha256(parent + block).digest()
        keys.append(parent)
    return keys


class PrefixCache:
    """Key -> block for the full, computed blocks in the cache, and the idle ones in LRU order."""

    def __init__(self) -> None:
        self._block_of: dict[bytes, int] = {}
        self._key_of: dict[int, bytes] = {}
        self._idle: OrderedDict[int, None] = OrderedDict()   # cached, held by no sequence; oldest first
        self.queried_blocks = 0   # blocks looked up at admissions
        self.hit_blocks = 0       # of those, found in the cache

    @property
    def num_cached_blocks(self) -> int:
        return len(self._key_of)

    @property
    def num_idle_blocks(self) -> int:
        return len(self._idle)

    def longest_prefix(self, keys: list[bytes]) -> list[int]:
        """The blocks of the longest run of keys, from the first, that the cache holds."""
        found = []
        for key in keys:
            block = self._block_of.get(key)
            if block is None:
                break
            found.append(block)
        return found

    def count_lookup(self, queried: int, hits: int) -> None:
        self.queried_blocks += queried
        self.hit_blocks += hits

    def is_idle(self, block: int) -> bool:
        return block in self._idle

    def is_cached(self, block: int) -> bool:
        return block in self._key_of

    def add(self, block: int, key: bytes) -> None:
        """Index a full, computed block; a key already held by another block keeps that one."""
        if key not in self._block_of and block not in self._key_of:
            self._block_of[key] = block
            self._key_of[block] = key

    def park(self, block: int) -> None:
        """A cached block's last holder let go: it stays, newest in the LRU order."""
        self._idle[block] = None

    def take(self, block: int) -> None:
        """An idle block is held again (a hit)."""
        del self._idle[block]

    def evict(self) -> int:
        """Forget the least recently used idle block and hand it out for new tokens."""
        block, _ = self._idle.popitem(last=False)
        del self._block_of[self._key_of.pop(block)]
        return block
