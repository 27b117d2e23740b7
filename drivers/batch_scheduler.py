"""The engine's policy: which sequences run in the next forward pass, who waits, who is preempted.

Pure bookkeeping over the block allocator, with no torch and no device: the engine asks for a
`Plan`, runs it, and hands it back through `computed`. A plan takes, within a token budget:
running decodes first (one token each, so a long prefill never delays them), then unfinished
prefills, then waiting sequences in queue order (priority, then arrival) while a slot and the
cache allow. The first in line waits for room: nobody overtakes it but a cut-in.

When a decode finds no cache block for its next token, the lowest-ranked running sequence
(lowest priority, most recently admitted) is preempted: its blocks are freed and it waits again,
to be recomputed later from its prompt plus what it had generated. While anyone is short of
cache nobody new is admitted, since that would only preempt again.

A cut-in (engine.py says why) is a waiting sequence marked `cut_in` whose whole prompt fits in
what is left of `cut_in_tokens` for this step, in a slot and in the free cache without
preempting anyone; `schedule_cut_ins` admits such sequences for a pass of their own.

With the prefix cache on (prefix_cache.py), a sequence is admitted holding the cached blocks
of the longest beginning of its tokens that the cache has, and starts computing after them;
the full blocks of its last token never count, so that token is computed and there are logits
to sample. Each block a pass fills is entered in the cache.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from .blocks import BlockAllocator
from .prefix_cache import block_keys
from .sequence import Chunk, Sequence


@dataclass
class Plan:
    """One forward pass: a chunk per scheduled sequence, in the same order."""

    seqs: list[Sequence] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)
    out_of_cache: list[Sequence] = field(default_factory=list)   # ended: alone they would fill the cache

    def __bool__(self) -> bool:
        return bool(self.chunks)

    def add(self, seq: Sequence, chunk: Chunk) -> None:
        self.seqs.append(seq)
        self.chunks.append(chunk)

    def sampled(self) -> list[Sequence]:
        """The sequences whose next token this pass samples."""
        return [seq for seq, chunk in zip(self.seqs, self.chunks) if chunk.sample]


class BatchScheduler:
    def __init__(self, blocks: BlockAllocator, max_seqs: int, max_batch_tokens: int, cut_in_tokens: int = 0,
                 forget: Callable[[int], None] = lambda seq_id: None):
        """forget(seq_id) is called whenever a sequence gives back its blocks (ended or
        preempted): the model runner drops what it keeps for it."""
        self.blocks = blocks
        self.max_seqs = max(1, max_seqs)
        self.max_batch_tokens = max(1, max_batch_tokens)
        self.cut_in_tokens = max(0, cut_in_tokens)
        self.forget = forget
        self.waiting: list[Sequence] = []    # sorted by Sequence.queue_key
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.num_cut_ins = 0
        self.num_computed_tokens = 0         # tokens run through the model, prefill and decode
        self._cut_in_room = 0                # prompt tokens that may still cut into this step
        self._arrivals = itertools.count()
        self._admissions = itertools.count()

    def add(self, seq: Sequence) -> None:
        seq.arrival = next(self._arrivals)
        bisect.insort(self.waiting, seq, key=Sequence.queue_key)

    def find(self, seq_id: int) -> Sequence | None:
        return next((s for s in (*self.running, *self.waiting) if s.id == seq_id), None)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def remove(self, seq: Sequence) -> None:
        """Take seq out of the queues and give back its cache."""
        if seq.admitted is None:
            self.waiting.remove(seq)
        else:
            self.running.remove(seq)
            seq.admitted = None
        self.blocks.free(seq.id)
        self.forget(seq.id)

    def computed(self, plan: Plan) -> None:
        """The plan's forward pass ran: its tokens are in the cache, and so are the blocks it filled."""
        for seq, chunk in zip(plan.seqs, plan.chunks):
            seq.num_computed += len(chunk.tokens)
            self.num_computed_tokens += len(chunk.tokens)
            if self.blocks.cache is not None:
                self.blocks.index(seq.id, self._keys(seq, seq.num_computed // self.blocks.block_size))

    # --- a step's plan ------------------------------------------------------------------------

    def schedule(self) -> Plan:
        """This step's work: decodes, then unfinished prefills, then new admissions."""
        budget = self.max_batch_tokens
        plan = Plan()
        scheduled: set[int] = set()
        short_of_cache = False
        ranked = sorted(self.running, key=Sequence.rank)
        for seq in ranked:
            if budget and seq.admitted is not None and seq.num_uncomputed == 1:
                if self._make_room(seq, scheduled, plan):
                    plan.add(seq, self._chunk(seq, 1))
                    scheduled.add(seq.id)
                    budget -= 1
                else:
                    short_of_cache = True  # admitting now would only preempt again
        for seq in ranked:
            if budget and seq.admitted is not None and seq.num_uncomputed > 1:
                n = min(seq.num_uncomputed, budget)
                plan.add(seq, self._chunk(seq, n))
                budget -= n
        while not short_of_cache and budget and self.waiting and len(self.running) < self.max_seqs:
            seq = self.waiting[0]
            if not self.blocks.can_ever_hold(len(seq.tokens)):
                self._end(seq, plan)  # a preempted sequence that had filled the whole cache
                continue
            keys = self._prompt_keys(seq)
            if not self.blocks.can_allocate(len(seq.tokens), keys):
                break
            self._admit(seq, keys)
            n = min(seq.num_uncomputed, budget)
            plan.add(seq, self._chunk(seq, n))
            budget -= n
        return plan

    def begin_step(self) -> None:
        """A step begins: cut-ins may take up to cut_in_tokens of prompt during it."""
        self._cut_in_room = self.cut_in_tokens

    def schedule_cut_ins(self) -> Plan:
        """Admit the waiting cut-ins whose uncached tokens fit what is left of this step's room, each whole."""
        plan = Plan()
        if not self._cut_in_room:
            return plan
        for seq in list(self.waiting):
            if not seq.req.cut_in:
                continue
            keys = self._prompt_keys(seq)
            n = len(seq.tokens) - len(self.blocks.cached_blocks(keys)) * self.blocks.block_size
            if n > self._cut_in_room:
                continue
            if len(self.running) >= self.max_seqs or not self.blocks.can_allocate(len(seq.tokens), keys):
                break
            self._admit(seq, keys)
            plan.add(seq, self._chunk(seq, seq.num_uncomputed))
            self._cut_in_room -= seq.num_uncomputed
        self.num_cut_ins += len(plan.seqs)
        return plan

    # --- bookkeeping ------------------------------------------------------------------------

    def _admit(self, seq: Sequence, keys: list[bytes]) -> None:
        """Move seq from waiting to running, with cache blocks for all its tokens; those the
        prefix cache already held for it (keyed by keys) count as computed."""
        self.waiting.remove(seq)
        seq.num_computed = self.blocks.allocate(seq.id, len(seq.tokens), keys)
        seq.admitted = next(self._admissions)
        self.running.append(seq)

    def _prompt_keys(self, seq: Sequence) -> list[bytes]:
        """The keys to look up at admission: the full blocks before seq's last token."""
        return self._keys(seq, (len(seq.tokens) - 1) // self.blocks.block_size)

    def _keys(self, seq: Sequence, num_blocks: int) -> list[bytes]:
        """The prefix-cache keys of seq's first num_blocks full blocks (none with the cache off)."""
        if self.blocks.cache is None:
            return []
        return block_keys(seq.block_keys, seq.req.cache_salt, seq.tokens, self.blocks.block_size, num_blocks)[:num_blocks]

    def _make_room(self, seq: Sequence, scheduled: set[int], plan: Plan) -> bool:
        """Get a cache slot for seq's next token, preempting others (or seq) if needed."""
        need = seq.num_computed + 1
        if not self.blocks.can_ever_hold(need):
            self._end(seq, plan)  # it alone fills the whole cache
            return False
        while not self.blocks.can_extend(seq.id, need):
            victim = max((s for s in self.running if s.id not in scheduled), key=Sequence.rank)
            self._preempt(victim)
            if victim is seq:
                return False
        self.blocks.extend(seq.id, need)
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.num_preemptions += 1
        self.remove(seq)
        seq.num_computed = 0
        bisect.insort(self.waiting, seq, key=Sequence.queue_key)

    def _end(self, seq: Sequence, plan: Plan) -> None:
        """seq can never get the cache it needs: it leaves, and the plan says so."""
        self.remove(seq)
        plan.out_of_cache.append(seq)

    def _chunk(self, seq: Sequence, n: int) -> Chunk:
        start = seq.num_computed
        return Chunk(seq.id, seq.tokens[start:start + n], start, self.blocks.block_table(seq.id),
                     sample=start + n == len(seq.tokens), salt=seq.req.cache_salt, upto=seq.max_len)
