"""A generation request, what the engine keeps of it while it runs, and what of it runs in a step.

No torch here: the scheduler plans with these alone, and the model runner reads only `Chunk`s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .detokenizer import TextStream


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
    cut_in: bool = False       # may be prefilled between the slices of a running step (engine.py)
    repetition_penalty: float = 1.0   # 1: off; drivers/sampling.penalize_repeats
    progress: bool = False     # report each prefill chunk of a prompt that takes several (StepEvent.prefill)
    resume: list[int] = field(default_factory=list)   # tokens it had generated elsewhere: go on after them
    cache_salt: str = ""       # its principal: cached prompt blocks are shared only among equal salts


@dataclass
class Chunk:
    """Tokens of one sequence to run this step."""

    seq_id: int
    tokens: list[int]
    start: int               # position of tokens[0]; positions before it are in the cache
    block_table: list[int]   # the allocator's own list: it only grows while the sequence runs
    sample: bool             # whether the logits of the last token are wanted

    @property
    def is_decode(self) -> bool:
        return len(self.tokens) == 1 and self.start > 0


class Sequence:
    """A request inside the engine: its tokens so far and how many are in the KV cache."""

    def __init__(self, req: GenRequest, seed: int, max_tokens: int, text: TextStream | None = None):
        self.req = req
        self.seed = seed
        self.max_tokens = max_tokens         # the request's, cut to the context the prompt leaves
        self.text = text                     # None: the engine emits token ids only
        self.tokens = list(req.prompt_ids)   # prompt, then generated tokens
        self.num_computed = 0                # tokens whose keys and values are cached
        self.arrival = 0                     # order of arrival, set by the scheduler
        self.admitted: int | None = None     # admission order while running; None while waiting
        self.unreported = 0                  # generated tokens not yet in an event
        self.block_keys: list[bytes] = []    # prefix-cache keys of its first full blocks, as far as hashed

    @property
    def id(self) -> int:
        return self.req.rid

    @property
    def num_generated(self) -> int:
        return len(self.tokens) - len(self.req.prompt_ids)

    @property
    def num_uncomputed(self) -> int:
        return len(self.tokens) - self.num_computed

    def resume_after(self, generated: list[int]) -> None:
        """Go on after tokens generated on a driver that died: they join the tokens (to be prefilled
        with the prompt) and pass through the detokenizer unshown, which leaves it as the undisturbed
        run left it (text held back for a stop string included). The sampler is keyed by seed and
        position, so what follows is what the undisturbed run wrote."""
        self.tokens += generated
        if self.text is not None:
            for token in generated:
                self.text.push(token)

    def queue_key(self) -> tuple:
        return (-self.req.priority, self.arrival)

    def rank(self) -> tuple:
        """Smaller runs first; the largest is preempted first."""
        return (-self.req.priority, self.admitted)

    def usage(self) -> dict:
        return {"prompt_tokens": len(self.req.prompt_ids), "completion_tokens": self.num_generated}
