"""The batching engine: many generation requests share each forward pass of one model.

Each `step()` schedules (running decodes first, then prefill chunks of newly admitted
requests, within a token budget and the KV cache), runs the model once over all of it, and
turns the sampled tokens into text events. When the cache runs out, the lowest-priority,
most recently admitted sequence is preempted: its blocks are freed and it is later recomputed
from its prompt plus what it had generated, which, with the position-keyed sampler, yields
exactly the tokens it would have produced anyway.

A step over many tokens is long on a CPU (a prefill of 256 tokens takes about as long as
six single-token steps), and a request that arrives just after it starts would wait for all
of it. So a step runs in slices, one layer each (`step_slices`), and between slices the
driver hands over what arrived. A short prompt marked `cut_in` by the kernel (its program has
had the least service of those on the device: an interactive user, not a flood) is then
prefilled in a pass of its own and its first token goes out at once; the long step resumes
where it paused. One that is waiting when a step begins gets the same pass before the step,
and then decodes in it. At most `cut_in_tokens` of prompt cut in per step.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Generator
from dataclasses import dataclass, field

import torch

from .kvcache import BlockAllocator, KVLayout
from .loader import LoadedModel
from .runner import Chunk, make_runner, run_to_end
from .sampling import sample


@dataclass
class GenRequest:
    rid: int
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stop: list[str]
    seed: int | None
    priority: int = 0
    ignore_eos: bool = False   # run to max_tokens even past EOS (benchmarks)
    cut_in: bool = False       # may be prefilled between the slices of a running step (see above)


@dataclass
class StepEvent:
    rid: int
    delta: str                # new text; a possible start of a stop string is held back
    tokens: int               # tokens generated since this request's previous event
    finish: str | None        # "stop" | "length" | "cancelled" | "error"; None while running
    usage: dict | None        # {"prompt_tokens", "completion_tokens"} on the final event
    token_ids: list[int] = field(default_factory=list)  # the `tokens` new token ids


class TextStream:
    """Generated token ids to text deltas: whole characters only, stop strings cut off.

    Decodes a small window of recent tokens (starting a few prompt tokens back, so tokenizers
    that drop a leading space see the same context every time) and waits while the text ends in
    an incomplete character. Text that could be the start of a stop string is held back.
    """

    def __init__(self, tokenizer, prompt_ids: list[int], stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop or [] if s]
        self.ids = list(prompt_ids[-4:])
        self.prefix = 0
        self.read = len(self.ids)
        self.held = ""

    def push(self, token: int) -> tuple[str, bool]:
        """Text that may be shown now, and whether a stop string was reached."""
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        new = ""
        if len(after) > len(before) and not after.endswith("\ufffd"):
            new = after[len(before):]
            self.prefix, self.read = self.read, len(self.ids)
        text = self.held + new
        cut = min((i for s in self.stop if (i := text.find(s)) >= 0), default=-1)
        if cut >= 0:
            self.held = ""
            return text[:cut], True
        keep = self._partial_stop(text)
        self.held = text[len(text) - keep:]
        return text[:len(text) - keep], False

    def flush(self) -> str:
        """All text not yet shown, incomplete characters included: the sequence has ended."""
        rest = self._decode(self.ids[self.prefix:])[len(self._decode(self.ids[self.prefix:self.read])):]
        text, self.held = self.held + rest, ""
        self.prefix = self.read = len(self.ids)
        return text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _partial_stop(self, text: str) -> int:
        """Length of the longest end of text that begins some stop string."""
        for k in range(min(len(text), max((len(s) - 1 for s in self.stop), default=0)), 0, -1):
            if any(s.startswith(text[-k:]) for s in self.stop):
                return k
        return 0


class Sequence:
    """A request inside the engine: its tokens so far and how many are in the KV cache."""

    def __init__(self, req: GenRequest, seed: int, arrival: int, text: TextStream | None):
        self.req = req
        self.seed = seed
        self.arrival = arrival
        self.text = text
        self.tokens = list(req.prompt_ids)   # prompt, then generated tokens
        self.num_computed = 0                # tokens whose keys and values are cached
        self.admitted: int | None = None     # admission order while running; None while waiting
        self.unreported = 0                  # generated tokens not yet in an event

    @property
    def id(self) -> int:
        return self.req.rid

    @property
    def num_generated(self) -> int:
        return len(self.tokens) - len(self.req.prompt_ids)

    @property
    def num_uncomputed(self) -> int:
        return len(self.tokens) - self.num_computed

    def queue_key(self) -> tuple:
        return (-self.req.priority, self.arrival)

    def rank(self) -> tuple:
        """Smaller runs first; the largest is preempted first."""
        return (-self.req.priority, self.admitted)

    def usage(self) -> dict:
        return {"prompt_tokens": len(self.req.prompt_ids), "completion_tokens": self.num_generated}


class Engine:
    """A continuous batch over one loaded model; the driver calls add/cancel and steps it."""

    def __init__(self, lm: LoadedModel, kv_budget_bytes: int, max_batch_tokens: int = 512, max_seqs: int = 64,
                 decode_text: bool = True, cuda_graphs: bool = True, cut_in_tokens: int = 0):
        """decode_text=False: events carry token ids only (no text, no stop strings), which saves
        two detokenizations per token; cuda_graphs=False: decode steps run eagerly on CUDA too;
        cut_in_tokens: prompt tokens that may cut into one step (0: none)."""
        self.lm = lm
        self.decode_text = decode_text
        self.kv_budget_bytes = kv_budget_bytes
        self.max_batch_tokens = max(1, max_batch_tokens)
        self.max_seqs = max(1, max_seqs)
        self.cut_in_tokens = max(0, cut_in_tokens)
        self.layout = KVLayout.of(lm.model.config, lm.dtype)
        self.blocks = BlockAllocator(self.layout.num_blocks(kv_budget_bytes))
        self.runner = make_runner(lm, self.blocks.num_blocks, self.max_seqs, cuda_graphs)
        self.waiting: list[Sequence] = []    # sorted by (priority desc, arrival)
        self.running: list[Sequence] = []
        self._events: list[StepEvent] = []   # finished outside a forward pass; sent by the next step
        self._arrivals = itertools.count()
        self._admissions = itertools.count()
        self._rng = random.Random()  # own state: a caller seeding `random` must not fix our seeds
        self._eos = set(lm.eos_token_ids)
        self.num_preemptions = 0
        self.num_cut_ins = 0

    # --- the public API -------------------------------------------------------------------

    def add(self, req: GenRequest) -> None:
        if self._find(req.rid) is not None:
            raise ValueError(f"request {req.rid} is already in the engine")
        problem = self._reject_reason(req)
        if problem:
            self._events.append(StepEvent(req.rid, problem, 0, "error", None))
            return
        seed = req.seed % (1 << 63) if req.seed is not None else self._rng.getrandbits(32)
        text = TextStream(self.lm.tokenizer, req.prompt_ids, req.stop) if self.decode_text else None
        seq = Sequence(req, seed, next(self._arrivals), text)
        bisect.insort(self.waiting, seq, key=Sequence.queue_key)

    def cancel(self, rid: int) -> bool:
        """Stop a request and free its cache now; its final event comes with the next step."""
        seq = self._find(rid)
        if seq is None:
            return False
        self._release(seq)
        self._events.append(self._event(seq, "", "cancelled"))
        return True

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._events)

    def step(self) -> list[StepEvent]:
        """One whole step; the events of its cut-ins come first."""
        events: list[StepEvent] = []
        own = run_to_end(self.step_slices(), events.extend)
        return events + own

    def step_slices(self) -> Generator[list[StepEvent], None, list[StepEvent]]:
        """One step that pauses between slices of its forward pass: each pause yields the
        events of a cut-in (often none), and the end returns the step's own events.

        While it is paused the caller may `add` requests, but not `cancel` one: the step's
        sequences hold their cache blocks until it returns.
        """
        room = self.cut_in_tokens
        if room:   # what arrived since the last step goes first, then decodes with the rest
            cut_in, used = self._cut_in(room)
            room -= used
            if cut_in:
                yield cut_in
        plan = self._schedule()
        logits = None
        if plan:
            forward = self.runner.forward_slices([chunk for _, chunk in plan])
            while True:
                try:
                    next(forward)
                except StopIteration as end:
                    logits = end.value
                    break
                cut_in, used = self._cut_in(room) if room else ([], 0)
                room -= used
                yield cut_in
        return self._postprocess(plan, logits)

    def stats(self) -> dict:
        bytes_per_block = self.layout.bytes_per_token * self.blocks.block_size
        return {"running": len(self.running), "waiting": len(self.waiting),
                "kv_used_bytes": self.blocks.num_used_blocks * bytes_per_block,
                "kv_budget_bytes": self.kv_budget_bytes,
                "kv_free_tokens": self.blocks.num_free_blocks * self.blocks.block_size,
                "preemptions": self.num_preemptions, "cut_ins": self.num_cut_ins}

    # --- schedule ---------------------------------------------------------------------------

    def _schedule(self) -> list[tuple[Sequence, Chunk]]:
        """Pick this step's work: decodes, then unfinished prefills, then new admissions."""
        budget = self.max_batch_tokens
        plan: list[tuple[Sequence, Chunk]] = []
        scheduled: set[int] = set()
        short_of_cache = False
        ranked = sorted(self.running, key=Sequence.rank)
        for seq in ranked:
            if budget and seq.admitted is not None and seq.num_uncomputed == 1:
                if self._make_room(seq, scheduled):
                    plan.append((seq, self._chunk(seq, 1)))
                    scheduled.add(seq.id)
                    budget -= 1
                else:
                    short_of_cache = True  # admitting now would only preempt again
        for seq in ranked:
            if budget and seq.admitted is not None and seq.num_uncomputed > 1:
                n = min(seq.num_uncomputed, budget)
                plan.append((seq, self._chunk(seq, n)))
                budget -= n
        while not short_of_cache and budget and self.waiting and len(self.running) < self.max_seqs:
            seq = self.waiting[0]
            if not self.blocks.can_ever_hold(len(seq.tokens)):
                self._end_early(seq, "length")  # a preempted sequence that had filled the whole cache
                continue
            if not self.blocks.can_allocate(len(seq.tokens)):
                break  # first in line waits for room; nobody overtakes it but a cut-in
            self._admit(seq)
            n = min(len(seq.tokens), budget)
            plan.append((seq, self._chunk(seq, n)))
            budget -= n
        return plan

    def _cut_in_candidates(self, tokens: int) -> list[Sequence]:
        """Waiting cut-in sequences, in queue order, whose whole prompts fit in tokens (at most
        cut_in_tokens each) and in the cache without preempting anyone."""
        picked, free = [], self.blocks.num_free_blocks
        for seq in self.waiting:
            n = len(seq.tokens)
            if not seq.req.cut_in or n > min(tokens, self.cut_in_tokens):
                continue
            need = self.blocks.blocks_for(n)
            if len(self.running) + len(picked) >= self.max_seqs or need > free:
                break
            picked.append(seq)
            tokens -= n
            free -= need
        return picked

    def _cut_in(self, tokens: int) -> tuple[list[StepEvent], int]:
        """Prefill cut-in arrivals in a pass of their own, before or in the middle of a step:
        their events and the prompt tokens it took."""
        seqs = self._cut_in_candidates(tokens)
        if not seqs:
            return [], 0
        for seq in seqs:
            self._admit(seq)
        plan = [(seq, self._chunk(seq, len(seq.tokens))) for seq in seqs]
        self.num_cut_ins += len(seqs)
        return self._postprocess(plan, self.runner.forward([chunk for _, chunk in plan])), sum(len(s.tokens) for s in seqs)

    def _admit(self, seq: Sequence) -> None:
        """Move seq from waiting to running, with cache blocks for all its tokens."""
        self.waiting.remove(seq)
        self.blocks.allocate(seq.id, len(seq.tokens))
        seq.admitted = next(self._admissions)
        self.running.append(seq)

    def _make_room(self, seq: Sequence, scheduled: set[int]) -> bool:
        """Get a cache slot for seq's next token, preempting others (or seq) if needed."""
        need = seq.num_computed + 1
        if not self.blocks.can_ever_hold(need):
            self._end_early(seq, "length")  # it alone fills the whole cache
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
        self._release(seq)
        seq.num_computed = 0
        bisect.insort(self.waiting, seq, key=Sequence.queue_key)

    def _chunk(self, seq: Sequence, n: int) -> Chunk:
        start = seq.num_computed
        return Chunk(seq.id, seq.tokens[start:start + n], start, self.blocks.block_table(seq.id),
                     sample=start + n == len(seq.tokens))

    # --- postprocess ------------------------------------------------------------------------

    def _postprocess(self, plan: list[tuple[Sequence, Chunk]], logits: torch.Tensor | None) -> list[StepEvent]:
        events, self._events = self._events, []
        for seq, chunk in plan:
            seq.num_computed += len(chunk.tokens)
        sampled = [seq for seq, chunk in plan if chunk.sample]
        if sampled:
            for seq, token in zip(sampled, self._sample(sampled, logits)):
                event = self._append(seq, token)
                if event is not None:
                    events.append(event)
        return events

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> list[int]:
        if all(s.req.temperature == 0 for s in seqs):
            return logits.argmax(-1).tolist()   # what sample() gives, without its parameter columns

        def column(values, dtype):
            return torch.tensor(values, dtype=dtype, device=logits.device)
        reqs = [s.req for s in seqs]
        return sample(logits, column([r.temperature for r in reqs], torch.float32),
                      column([r.top_p for r in reqs], torch.float32), column([r.top_k for r in reqs], torch.long),
                      column([s.seed for s in seqs], torch.long),
                      column([s.num_generated for s in seqs], torch.long)).tolist()

    def _append(self, seq: Sequence, token: int) -> StepEvent | None:
        """Add a sampled token; the event to send, if there is news."""
        seq.tokens.append(token)
        seq.unreported += 1
        if token in self._eos and not seq.req.ignore_eos:
            return self._finish(seq, self._flush(seq), "stop")
        delta, stopped = seq.text.push(token) if seq.text else ("", False)
        if stopped:
            return self._finish(seq, delta, "stop")
        if seq.num_generated >= seq.req.max_tokens or len(seq.tokens) >= self.lm.context_length:
            return self._finish(seq, delta + self._flush(seq), "length")
        return self._event(seq, delta, None) if delta or not seq.text else None

    @staticmethod
    def _flush(seq: Sequence) -> str:
        return seq.text.flush() if seq.text else ""

    def _end_early(self, seq: Sequence, reason: str) -> None:
        """Finish seq outside a forward pass; its event goes out with this step's."""
        self._release(seq)
        self._events.append(self._event(seq, self._flush(seq), reason))

    def _finish(self, seq: Sequence, delta: str, reason: str) -> StepEvent:
        self._release(seq)
        return self._event(seq, delta, reason)

    def _event(self, seq: Sequence, delta: str, finish: str | None) -> StepEvent:
        new = seq.tokens[len(seq.tokens) - seq.unreported:]
        seq.unreported = 0
        return StepEvent(seq.id, delta, len(new), finish, seq.usage() if finish else None, new)

    # --- bookkeeping ------------------------------------------------------------------------

    def _release(self, seq: Sequence) -> None:
        """Take seq out of the queues and give back its cache."""
        if seq.admitted is None:
            self.waiting.remove(seq)
        else:
            self.running.remove(seq)
            seq.admitted = None
        self.blocks.free(seq.id)
        self.runner.release(seq.id)

    def _find(self, rid: int) -> Sequence | None:
        return next((s for s in (*self.running, *self.waiting) if s.id == rid), None)

    def _reject_reason(self, req: GenRequest) -> str | None:
        n, context = len(req.prompt_ids), self.lm.context_length
        if n == 0:
            return "empty prompt: give at least one token"
        if n >= context:
            return (f"prompt is {n} tokens but model '{self.lm.name}' holds {context} tokens of context; "
                    f"shorten it to at most {context - 1} tokens")
        if not self.blocks.can_ever_hold(n + 1):
            return (f"prompt of {n} tokens cannot fit in this driver's KV cache "
                    f"({self.blocks.num_blocks * self.blocks.block_size} tokens, {self.kv_budget_bytes} bytes); "
                    f"shorten the prompt or give the driver a larger KV budget")
        if req.max_tokens < 1:
            return "max_tokens must be at least 1"
        if req.temperature < 0 or not 0 < req.top_p <= 1 or req.top_k < 0:
            return "sampling parameters out of range: need temperature >= 0, 0 < top_p <= 1, top_k >= 0"
        if req.stop and not self.decode_text:
            return "stop strings need text: this engine emits token ids only (decode_text=False)"
        return None
