"""A fault stays with the request that caused it: the engine's admission checks and its retry of a
step that failed.

One tenant's request must never end another's. So the engine refuses at admission, with an EINVAL
event for that request alone, whatever cannot work (`refusal`: parameters that are not finite or
out of their range, token ids outside the vocabulary, stop strings that are not strings), and
cuts what only looks strange to what it means (`admitted`: a top_k past the vocabulary keeps every
token, as 0 does; it would not even fit the sampler's int64 column).

What still fails in a step is traced by bisection (`isolate`, `sample_isolated`): the pass is run
again over each half of its sequences, down to single ones; a sequence that fails alone is ended
with EIO, and the others' results are kept. Running a chunk again is safe: a pass writes keys and
values only into blocks its own sequences hold (never a cached block another shares), at the
positions it is about to compute, so a second run writes the same slots again; the fallback runner
crops each sequence's transformers cache back to the chunk's start before it runs it. Sampling is
a pure function of each row's logits and seed, so rows sampled apart give the tokens they would
have given together. Only a fault that no subset isolates (every one of two or more sequences
fails alone: the model or the device, not a request) is raised, and the driver then fails every
request on the engine (Engine.fail_all). The cost, paid only after a failure: at most 2n - 1
passes for a step of n sequences, each pausing between its layers as any step does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from .sequence import GenRequest

if TYPE_CHECKING:
    from .batch_scheduler import Plan
    from .sequence import Sequence


def admitted(req: GenRequest, vocab_size: int) -> GenRequest:
    """The request as the engine runs it: a top_k at or past the vocabulary is cut to its size."""
    return replace(req, top_k=vocab_size) if req.top_k > vocab_size else req


def refusal(req: GenRequest, vocab_size: int) -> str | None:
    """Why the engine cannot run this request, or None; the kernel checked the ranges, but nothing
    a request carries may break a step that other tenants' requests share."""
    def number(value, low: float, high: float = math.inf) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high

    if not number(req.temperature, 0.0, 1e6) or not math.isfinite(req.temperature):
        return f"temperature must be a finite number >= 0, got {req.temperature!r}"
    if not number(req.top_p, 0.0, 1.0):
        return f"top_p must be a number from 0 to 1, got {req.top_p!r}"
    if not isinstance(req.top_k, int) or isinstance(req.top_k, bool) or req.top_k < 0:
        return f"top_k must be an integer >= 0, got {req.top_k!r}"
    if not number(req.repetition_penalty, 1e-6, 1e6):
        return f"repetition_penalty must be a finite number > 0, got {req.repetition_penalty!r}"
    if req.seed is not None and (not isinstance(req.seed, int) or isinstance(req.seed, bool)):
        return f"seed must be an integer, got {type(req.seed).__name__}"
    if not all(isinstance(s, str) for s in req.stop or ()):
        return "stop must be a list of strings"
    for name in ("presence_penalty", "frequency_penalty"):
        if not number(getattr(req, name), -2.0, 2.0):
            return f"{name} must be a number from -2 to 2, got {getattr(req, name)!r}"
    if not isinstance(req.top_logprobs, int) or not 0 <= req.top_logprobs <= 20:
        return f"top_logprobs must be an integer from 0 to 20, got {req.top_logprobs!r}"
    if not isinstance(req.min_tokens, int) or req.min_tokens < 0:
        return f"min_tokens must be an integer >= 0, got {req.min_tokens!r}"
    for pair in req.logit_bias or ():
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2 or type(pair[0]) is not int
                or not 0 <= pair[0] < vocab_size or not number(pair[1], -100.0, 100.0)):
            return (f"logit_bias takes token ids below this model's vocabulary of {vocab_size} and biases "
                    f"from -100 to 100, got {str(pair)[:64]}")
    for what, ids in (("prompt", req.prompt_ids), ("resume", req.resume)):
        if not all(type(t) is int and 0 <= t < vocab_size for t in ids):
            return f"{what} holds a token id outside this model's vocabulary of {vocab_size}"
    return None


def engine_refusal(req: GenRequest, vocab_size: int, blocks, kv_budget_bytes: int,
                   decode_text: bool) -> tuple[str, str] | None:
    """(errno, message) if an engine of this vocabulary, cache and text mode cannot take the request."""
    n = len(req.prompt_ids)
    if n == 0:
        return "EINVAL", "empty prompt: give at least one token"
    if (why := refusal(req, vocab_size)) is not None:
        return "EINVAL", why
    if not blocks.can_ever_hold(n + 1):
        return "ENOMEM", (f"prompt of {n} tokens cannot fit in this driver's KV cache "
                          f"({blocks.num_blocks * blocks.block_size} tokens, {kv_budget_bytes} bytes); "
                          "shorten the prompt or give the driver a larger KV budget")
    if req.stop and not decode_text:
        return "EINVAL", "stop strings need text: this engine emits token ids only (decode_text=False)"
    if (req.constraint or req.tool_parse or req.logprobs) and not decode_text:
        return "EINVAL", "constraints, tools and logprobs need text: this engine emits token ids only"
    return None


def errno_of(exc: BaseException) -> str:
    """ENOMEM for a pass that ran out of memory (it may go through with fewer companions), else EIO."""
    return "ENOMEM" if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)) else "EIO"


Forward = Callable[["Plan"], Generator[Any, None, "torch.Tensor | None"]]


def isolate(plan: "Plan", forward: Forward) -> Generator[Any, None, tuple["Plan", Any, list]]:
    """Run forward(plan), passing on what it yields at its pauses. If it raises, bisect: run each half
    of the plan's sequences, and so on down to single ones. Returns (the plan of the sequences whose
    pass went through, their logits in its order, [(sequence, exception)] of those that failed
    alone); raises the first exception if every one of two or more sequences failed alone."""
    try:
        return plan, (yield from forward(plan)), []
    except Exception as exc:
        if len(plan.seqs) == 1:
            return _part(plan, []), None, [(plan.seqs[0], exc)]
        first = exc
    good, logits, failed = yield from _bisect(plan, forward)
    if not good.seqs:
        raise first
    return good, logits, failed


def _bisect(plan: "Plan", forward: Forward) -> Generator[Any, None, tuple["Plan", Any, list]]:
    parts = []
    for half in _halves(plan):
        try:
            parts.append((half, (yield from forward(half)), []))
        except Exception as exc:
            parts.append((yield from _bisect(half, forward)) if len(half.seqs) > 1 else
                         (_part(plan, []), None, [(half.seqs[0], exc)]))
    good = _part(plan, [pair for p, _, _ in parts for pair in zip(p.seqs, p.chunks)])
    rows = [logits for p, logits, _ in parts if logits is not None and p.sampled()]
    return good, (torch.cat(rows) if rows else None), [f for _, _, fs in parts for f in fs]


def sample_isolated(sample: Callable[[list, torch.Tensor], list[int]], seqs: list["Sequence"],
                    logits: torch.Tensor) -> list[int | Exception]:
    """sample(seqs, logits), bisecting the rows if it raises: per sequence its token, or the exception
    that its row raised alone. Raises if every one of two or more rows failed alone."""
    try:
        return sample(seqs, logits)
    except Exception as exc:
        if len(seqs) == 1:
            return [exc]
        out = _sample_halves(sample, seqs, logits)
        if all(isinstance(t, Exception) for t in out):
            raise
        return out


def _sample_halves(sample, seqs: list["Sequence"], logits: torch.Tensor) -> list[int | Exception]:
    out: list[int | Exception] = []
    half = len(seqs) // 2
    for part, rows in ((seqs[:half], logits[:half]), (seqs[half:], logits[half:])):
        try:
            out += sample(part, rows)
        except Exception as exc:
            out += _sample_halves(sample, part, rows) if len(part) > 1 else [exc]
    return out


def _halves(plan: "Plan") -> list["Plan"]:
    pairs = list(zip(plan.seqs, plan.chunks))
    half = len(pairs) // 2
    return [_part(plan, pairs[:half]), _part(plan, pairs[half:])]


def _part(plan: "Plan", pairs: list) -> "Plan":
    """A plan of some of plan's (sequence, chunk) pairs; its sequences that ran out of cache stay with it."""
    return type(plan)([s for s, _ in pairs], [c for _, c in pairs], plan.out_of_cache)
