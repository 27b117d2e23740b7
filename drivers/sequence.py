"""A generation request, what the engine keeps of it while it runs, and what of it runs in a step.

No torch here: the scheduler plans with these alone, and the model runner reads only `Chunk`s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .detokenizer import TextStream
    from .tools import ToolCallText


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
    repetition_penalty: float = 1.0   # 1: off; drivers/logits.py
    progress: bool = False     # report each prefill chunk of a prompt that takes several (StepEvent.prefill)
    resume: list[int] = field(default_factory=list)   # tokens it had generated elsewhere: go on after them
    cache_salt: str = ""       # its principal: cached prompt blocks are shared only among equal salts
    # Structured generation (kernel/syscalls/structured.py checked these; logits.py applies them):
    constraint: dict | None = None     # compiled by constraints.Grammars; its mask applies each step
    tool_parse: str = ""               # "auto" | "forced": tool calls parsed out of the text (tools.py)
    logprobs: bool = False
    top_logprobs: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: list | None = None     # [[token id, bias]]
    min_tokens: int = 0


@dataclass
class Chunk:
    """Tokens of one sequence to run this step."""

    seq_id: int
    tokens: list[int]
    start: int               # position of tokens[0]; positions before it are in the cache
    block_table: list[int]   # the allocator's own list: it only grows while the sequence runs
    sample: bool             # whether the logits of the last token are wanted
    salt: str = ""           # the request's cache salt: a runner reuses computed tokens only among equal salts
    upto: int = 0            # the most positions the sequence can reach (prompt and max_tokens); 0: not said

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
        self.matcher = None                  # its constraint's grammar matcher (constraints.py), if any
        self.tools: ToolCallText | None = None   # holds back tool calls from its text (tools.py)
        self.logprobs: list[dict] = []       # entries of generated tokens not yet in an event

    @property
    def id(self) -> int:
        return self.req.rid

    @property
    def num_generated(self) -> int:
        return len(self.tokens) - len(self.req.prompt_ids)

    @property
    def max_len(self) -> int:
        """The most tokens it can ever hold: a runner may size its place by it."""
        return len(self.req.prompt_ids) + self.max_tokens

    @property
    def num_uncomputed(self) -> int:
        return len(self.tokens) - self.num_computed

    def resume_after(self, generated: list[int]) -> None:
        """Go on after tokens generated on a driver that died: they join the tokens (to be prefilled
        with the prompt) and pass through the detokenizer unshown, which leaves it as the undisturbed
        run left it (text held back for a stop string included). The sampler is keyed by seed and
        position, so what follows is what the undisturbed run wrote."""
        self.tokens += generated
        for token in generated:
            if self.matcher is not None:
                self.matcher.accept_token(token)
            delta = self.text.push(token)[0] if self.text is not None else ""
            if self.tools is not None:
                self.tools.push(delta)

    def shown(self, delta: str, finish: str | None) -> tuple[str, str | None, list | None]:
        """(text to send, finish reason, tool calls) of an event: with tools, a call is held back from
        the text, and parsed at the end (finish tool_calls when there are calls)."""
        if self.tools is None or finish in ("error", "cancelled"):
            return delta, finish, None
        delta = self.tools.push(delta)
        if finish is None:
            return delta, None, None
        rest, calls = self.tools.finish()
        return delta + rest, ("tool_calls" if calls else finish), calls or None

    def queue_key(self) -> tuple:
        return (-self.req.priority, self.arrival)

    def rank(self) -> tuple:
        """Smaller runs first; the largest is preempted first."""
        return (-self.req.priority, self.admitted)

    def usage(self) -> dict:
        return {"prompt_tokens": len(self.req.prompt_ids), "completion_tokens": self.num_generated}
