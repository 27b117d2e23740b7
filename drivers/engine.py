"""The batching engine: many generation requests share each forward pass of one model.

Each `step()` schedules (batch_scheduler.py: running decodes first, then prefill chunks of newly
admitted requests, within a token budget and the KV cache, preempting when the cache runs out),
runs the model once over all of it (runner.py), and turns the sampled tokens into text events
(detokenizer.py). A preempted sequence is recomputed from its prompt plus what it had
generated, which, with the position-keyed sampler, yields exactly the tokens it would have
produced anyway.

A step over many tokens is long on a CPU (a prefill of 256 tokens takes about as long as
six single-token steps), and a request that arrives just after it starts would wait for all
of it. So a step runs in slices, one layer each (`step_slices`), and between slices the
driver hands over what arrived. A short prompt marked `cut_in` by the kernel (its program has
had the least service of those on the device: an interactive user, not a flood) is then
prefilled in a pass of its own and its first token goes out at once; the long step resumes
where it paused. One that is waiting when a step begins gets the same pass before the step,
and then decodes in it. At most `cut_in_tokens` of prompt cut in per step.

Requests that begin alike (a long system prompt, a chat's history) share the keys and values
of that beginning: the prefix cache (prefix_cache.py) keeps every full block a pass computed,
keyed by its tokens and all before them under the request's cache salt (its principal, so
tenants never share), and a new request starts after the longest cached beginning. Idle cached
blocks are given out again only when no other block is free, before anyone is preempted. The
keys and values are the ones the request would have computed itself, so outputs do not change
(in float32 exactly; in bf16 as exactly as batching with other requests already allows). Only
the paged runner reads a cache it did not write; under HFRunner the cache is off, and on llama.cpp
the runner keeps ended sequences' tokens in idle slots instead (llamacpp_runner.py).

A fault stays with the request that caused it (faults.py): what cannot work is refused at `add`,
and a step that fails anyway is run again without the suspect requests, bisecting its batch.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Generator
from dataclasses import dataclass, field

import torch

from .blocks import BlockAllocator
from .detokenizer import TextStream
from .faults import admitted, engine_refusal, errno_of, isolate, sample_isolated
from .kvcache import KVLayout
from .llamacpp_runner import LlamaCppRunner, stream_lane
from .loader import LoadedModel
from .runner import make_runner, supports_paged
from .constraints import ConstraintError, Grammars
from .logits import TokenTexts, next_tokens
from .batch_scheduler import BatchScheduler, Plan
from .sequence import GenRequest, Sequence
from .slices import run_to_end
from .tools import ToolCallText, family

__all__ = ["Engine", "GenRequest", "PromptTooLong", "StepEvent"]


KEPT_SHARE = 5   # on llama.cpp, a fifth of the KV budget keeps ended sequences' tokens (llamacpp_runner.py)


class PromptTooLong(ValueError):
    """The prompt leaves no room in the model's context for a single generated token."""

    errno = "EINVAL"


@dataclass
class StepEvent:
    """What one request did in a step. An error event (finish "error") says why in errno and
    message: ENOMEM, the KV cache can never hold the prompt; EINVAL, a request this engine cannot
    run (faults.refusal); EIO, its step failed alone (faults.py), or the engine failed (fail_all)."""

    rid: int
    delta: str                # new generated text; a possible start of a stop string is held back
    tokens: int               # tokens generated since this request's previous event
    finish: str | None        # "stop" | "length" | "cancelled" | "error"; None while running
    usage: dict | None        # {"prompt_tokens", "completion_tokens"} on the final event, unless an error
    token_ids: list[int] = field(default_factory=list)  # the `tokens` new token ids
    errno: str | None = None
    message: str | None = None
    prefill: list[int] | None = None   # [computed, prompt tokens] after a chunk of a prompt read in several
    logprobs: list[dict] | None = None  # with the request's logprobs: an entry per new token (logits.py)
    tool_calls: list[dict] | None = None   # on the final event of a request with tools that called some


class Engine:
    """A continuous batch over one loaded model; the driver calls add/cancel and steps it."""

    def __init__(self, lm: LoadedModel, kv_budget_bytes: int, max_batch_tokens: int = 512, max_seqs: int = 64,
                 decode_text: bool = True, cuda_graphs: bool = True, cut_in_tokens: int = 0,
                 prefix_cache: bool = True, gguf_path: str | None = None):
        """decode_text=False: events carry token ids only (no text, no stop strings), which saves
        two detokenizations per token; cuda_graphs=False: decode steps run eagerly on CUDA too;
        cut_in_tokens: prompt tokens that may cut into one step (0: none); prefix_cache=False:
        every request computes its whole prompt (the baseline the prefix cache is measured by);
        gguf_path: run the forward passes on llama.cpp over that file (llamacpp_runner.py), whose
        cache holds float16 keys and values and serves no prefix cache."""
        self.lm = lm
        self.decode_text = decode_text
        self.kv_budget_bytes = kv_budget_bytes
        self.kv_bytes = kv_budget_bytes      # what its caches take: the budget, and llama.cpp's streams lane
        self.backend = "llama.cpp" if gguf_path else "torch"
        self.layout = KVLayout.of(lm.model.config, torch.float16 if gguf_path else lm.dtype)
        num_blocks = self.layout.num_blocks(kv_budget_bytes)
        kept = num_blocks // KEPT_SHARE if gguf_path and prefix_cache else 0
        self.blocks = BlockAllocator(num_blocks - kept,
                                     prefix_cache=prefix_cache and not gguf_path and supports_paged(lm))
        self.vocab_size = lm.model.get_input_embeddings().num_embeddings
        if gguf_path:
            block = self.blocks.block_size
            streams, stream_tokens = stream_lane(self.layout.bytes_per_token, kv_budget_bytes, lm.context_length,
                                                 max(1, max_seqs))
            self.runner = LlamaCppRunner(gguf_path, self.blocks.num_blocks * block, max(1, max_seqs), max_batch_tokens,
                                         kept_tokens=kept * block, streams=streams, stream_tokens=stream_tokens)
            if self.runner.streams:     # llama.cpp's streams lane: memory beside the budget (llamacpp_runner.py)
                self.kv_bytes += streams * stream_tokens * self.layout.bytes_per_token
            if self.runner.vocab_size != self.vocab_size:
                raise ValueError(f"llama.cpp reads {self.runner.vocab_size} tokens in {gguf_path}, "
                                 f"transformers {self.vocab_size}: the backends disagree on the vocabulary")
        else:
            self.runner = make_runner(lm, self.blocks.num_blocks, max(1, max_seqs), cuda_graphs)
        self.scheduler = BatchScheduler(self.blocks, max_seqs, max_batch_tokens, cut_in_tokens,
                                   forget=self.runner.release)
        self._events: list[StepEvent] = []   # finished outside a forward pass; sent by the next step
        self._rng = random.Random()  # own state: a caller seeding `random` must not fix our seeds
        self._eos = set(lm.eos_token_ids)
        self.grammars = Grammars(lm.tokenizer, self.vocab_size, sorted(self._eos))
        self._token_texts = TokenTexts(lm.tokenizer)

    # --- the public API -------------------------------------------------------------------

    def add(self, req: GenRequest) -> None:
        """Queue a request. PromptTooLong if the prompt fills the model's context; max_tokens is
        cut to the context the prompt leaves. Other refusals come as an error event."""
        if self.scheduler.find(req.rid) is not None:
            raise ValueError(f"request {req.rid} is already in the engine")
        n, context = len(req.prompt_ids), self.lm.context_length
        if n >= context:
            raise PromptTooLong(f"the prompt is {n} tokens; model '{self.lm.name}' takes at most {context - 1}")
        refusal = engine_refusal(req, self.vocab_size, self.blocks, self.kv_budget_bytes, self.decode_text)
        if refusal:
            self._events.append(StepEvent(req.rid, "", 0, "error", None, errno=refusal[0], message=refusal[1]))
            return
        req = admitted(req, self.vocab_size)
        seed = req.seed % (1 << 63) if req.seed is not None else self._rng.getrandbits(32)
        text = TextStream(self.lm.tokenizer, req.prompt_ids, req.stop) if self.decode_text else None
        seq = Sequence(req, seed, min(req.max_tokens, context - n), text)
        try:
            seq.matcher = self.grammars.matcher(req.constraint, req.cache_salt) if req.constraint else None
        except ConstraintError as exc:
            return self._events.append(StepEvent(req.rid, "", 0, "error", None, errno=exc.errno, message=str(exc)))
        seq.tools = ToolCallText(req.tool_parse, family(self.lm.tokenizer)) if req.tool_parse else None
        if req.resume:
            seq.resume_after(req.resume)
        self.scheduler.add(seq)

    def cancel(self, rid: int) -> bool:
        """Stop a request and free its cache now; its final event comes with the next step."""
        seq = self.scheduler.find(rid)
        if seq is None:
            return False
        self.scheduler.remove(seq)
        self._events.append(self._event(seq, "", "cancelled"))
        return True

    def fail_all(self, message: str) -> list[StepEvent]:
        """End every request with an EIO error and free the whole cache: what a driver does when
        a step raised, since the engine's state can no longer be trusted. Events still pending
        come first."""
        events, self._events = self._events, []
        for seq in [*self.scheduler.running, *self.scheduler.waiting]:
            self.scheduler.remove(seq)
            events.append(self._event(seq, "", "error", errno="EIO", message=message))
        self.blocks.drop_cached()
        return events

    def has_work(self) -> bool:
        return bool(self.scheduler.has_work() or self._events)

    @property
    def load(self) -> int:
        """Requests in this engine, running or waiting."""
        return len(self.scheduler.running) + len(self.scheduler.waiting)

    def hand_over(self, other: Engine, keep=lambda seq: False) -> list[int]:
        """Move this engine's requests (but those `keep` says) to `other`, an engine of the same
        loaded model on another runner; their ids. Each is recomputed there from its prompt and what
        it has generated, as after a preemption: its text, constraint, seed and counts go with it.
        Only between steps (a paused step's sequences hold their runner's cache)."""
        moved = []
        for seq in [*self.scheduler.running, *self.scheduler.waiting]:
            if keep(seq):
                continue
            self.scheduler.remove(seq)
            seq.num_computed, seq.block_keys = 0, []
            other.scheduler.add(seq)
            moved.append(seq.id)
        return moved

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
        self.scheduler.begin_step()
        early = self._cut_in()   # what arrived since the last step goes first, then decodes with the rest
        if early:
            yield early
        plan, logits, failed = yield from isolate(self.scheduler.schedule(), self._forward)
        return self._postprocess(plan, logits, failed)

    def stats(self) -> dict:
        """Counters since the engine was made. kv_used_bytes counts the blocks running requests
        hold; idle cached blocks count as free (they are given out when needed)."""
        bytes_per_block = self.layout.bytes_per_token * self.blocks.block_size
        cache = self.blocks.cache
        return {"backend": self.backend, "running": len(self.scheduler.running), "waiting": len(self.scheduler.waiting),
                "kv_used_bytes": self.blocks.num_used_blocks * bytes_per_block,
                "kv_budget_bytes": self.kv_budget_bytes,
                "kv_free_tokens": self.blocks.num_free_blocks * self.blocks.block_size,
                "preemptions": self.scheduler.num_preemptions, "cut_ins": self.scheduler.num_cut_ins,
                "computed_tokens": self.scheduler.num_computed_tokens,
                "prefix_cache": cache is not None or bool(getattr(self.runner, "kept_tokens", 0)),
                "prefix_reused_tokens": getattr(self.runner, "reused_tokens", 0),
                "prefix_queried_blocks": cache.queried_blocks if cache else 0,
                "prefix_hit_blocks": cache.hit_blocks if cache else 0,
                "prefix_cached_blocks": cache.num_cached_blocks if cache else 0}

    @property
    def running(self) -> list[Sequence]:
        """The sequences admitted to the batch (benchmarks read how many)."""
        return self.scheduler.running

    @property
    def num_preemptions(self) -> int:
        return self.scheduler.num_preemptions

    # --- forward ----------------------------------------------------------------------------

    def _forward(self, plan: Plan) -> Generator[list[StepEvent], None, torch.Tensor | None]:
        """The plan's forward pass, running cut-ins in its pauses: each pause yields their events."""
        if not plan:
            return None
        forward = self.runner.forward_slices(plan.chunks)
        while True:
            try:
                next(forward)
            except StopIteration as end:
                return end.value
            yield self._cut_in()

    def _cut_in(self) -> list[StepEvent]:
        """Prefill the cut-ins that may go now in a pass of their own; their events."""
        plan = self.scheduler.schedule_cut_ins()
        if not plan:
            return []
        plan, logits, failed = run_to_end(isolate(plan, lambda part: self.runner.forward_slices(part.chunks)))
        return self._postprocess(plan, logits, failed)

    # --- postprocess ------------------------------------------------------------------------

    def _postprocess(self, plan: Plan, logits: torch.Tensor | None, failed: list) -> list[StepEvent]:
        """failed: (sequence, exception) of those whose pass failed alone (faults.isolate): they end."""
        events, self._events = self._events, []
        events += [self._event(seq, self._flush(seq), "length") for seq in plan.out_of_cache]
        events += [self._fail(seq, exc) for seq, exc in failed]
        self.scheduler.computed(plan)
        events += self._prefill_progress(plan)
        sampled = plan.sampled()
        for seq, token in zip(sampled, sample_isolated(self._sample, sampled, logits) if sampled else ()):
            try:
                event = self._fail(seq, token) if isinstance(token, Exception) else self._append(seq, token)
            except Exception as exc:     # its text could not be made: it alone ends
                event = self._fail(seq, exc)
            if event is not None:
                events.append(event)
        return events

    def _fail(self, seq: Sequence, exc: Exception) -> StepEvent:
        """End seq alone: a fault traced to it (faults.py)."""
        print(f"engine: request {seq.id} failed alone: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        if seq.admitted is not None:
            self.scheduler.remove(seq)
        why = f"{exc.__class__.__name__}: {str(exc)[:500]}"
        return self._event(seq, "", "error", errno_of(exc), f"this request failed in its step ({why}); its batch went on")

    @staticmethod
    def _prefill_progress(plan: Plan) -> list[StepEvent]:
        """How far the first reading of each long prompt that asked for it has got (not a recompute)."""
        return [StepEvent(seq.id, "", 0, None, None, prefill=[seq.num_computed, len(seq.req.prompt_ids)])
                for seq, chunk in zip(plan.seqs, plan.chunks)
                if seq.req.progress and not chunk.sample and seq.num_generated == 0]

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> list[tuple[int, dict | None]]:
        return next_tokens(seqs, logits, sorted(self._eos), self._token_texts)

    def _append(self, seq: Sequence, sampled: tuple[int, dict | None]) -> StepEvent | None:
        """Add a sampled token; the event to send, if there is news."""
        token, logprobs = sampled
        if seq.matcher is not None and not seq.matcher.accept_token(token):
            raise ConstraintError(f"the constraint allows no token here (sampled {token}): "
                                  "logit_bias or penalties may have ruled out every token it allows")
        if logprobs is not None:
            seq.logprobs.append(logprobs)
        seq.tokens.append(token)
        seq.unreported += 1
        if token in self._eos and not seq.req.ignore_eos:
            return self._finish(seq, self._flush(seq), "stop")
        delta, stopped = seq.text.push(token) if seq.text else ("", False)
        if stopped:
            return self._finish(seq, delta, "stop")
        if seq.num_generated >= seq.max_tokens:
            return self._finish(seq, delta + self._flush(seq), "length")
        return self._event(seq, delta, None) if delta or seq.logprobs or not seq.text else None

    @staticmethod
    def _flush(seq: Sequence) -> str:
        return seq.text.flush() if seq.text else ""

    def _finish(self, seq: Sequence, delta: str, reason: str) -> StepEvent:
        self.scheduler.remove(seq)
        return self._event(seq, delta, reason)

    @staticmethod
    def _event(seq: Sequence, delta: str, finish: str | None, errno: str | None = None,
               message: str | None = None) -> StepEvent:
        new = seq.tokens[len(seq.tokens) - seq.unreported:]
        seq.unreported = 0
        usage = seq.usage() if finish and finish != "error" else None
        delta, finish, calls = seq.shown(delta, finish)
        logprobs, seq.logprobs = seq.logprobs or None, []
        return StepEvent(seq.id, delta, len(new), finish, usage, new, errno, message, logprobs=logprobs,
                         tool_calls=calls)
