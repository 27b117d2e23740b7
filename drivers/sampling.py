"""Choose the next token of every sequence in a batch, reproducibly.

Sampling uses the Gumbel-max trick with noise that is a pure function of (seed, position of the
token in the generated text, vocabulary index), computed with integer ops. So a request's tokens
depend only on its own logits and seed: not on which other requests share the batch, not on
whether it was preempted and recomputed, and not on the device (the noise is the same integers
on CPU and CUDA). Temperature 0 is greedy.

A request that leaves a sampling parameter out gets its model's default (SamplingDefaults).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

_MASK32 = 0xFFFFFFFF
_MIX = 0x045D9F3B        # multiplier < 2**27, so (x < 2**32) * _MIX never overflows int64
_GOLDEN = 0x9E3779B1


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds) on int64 tensors holding uint32s."""
    x = ((x >> 16) ^ x) * _MIX & _MASK32
    x = ((x >> 16) ^ x) * _MIX & _MASK32
    return (x >> 16) ^ x


@dataclass(frozen=True)
class SamplingDefaults:
    """What a request that leaves a parameter out gets: what the model's generation_config sets,
    else these. A small model at temperature 0.7 with no nucleus wanders off into other
    languages; a nucleus of 0.9 within the top 50 keeps it on topic. No repetition penalty unless
    the model asks for one: a caller cannot turn off what it cannot see."""

    temperature: float = 0.6
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.0

    @classmethod
    def of(cls, generation_config) -> "SamplingDefaults":
        """The defaults a model's generation_config sets (do_sample false: greedy), the rest ours."""
        found = generation_config.to_diff_dict() if generation_config is not None else {}
        values = {}
        for f in fields(cls):
            value = found.get(f.name)
            values[f.name] = getattr(cls, f.name) if value is None else type(getattr(cls, f.name))(value)
        if found.get("do_sample") is False:
            values["temperature"] = 0.0
        return cls(**values)


def uniform_noise(seeds: torch.Tensor, positions: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[B, V] floats in (0, 1), a deterministic function of (seed, position, vocab index)."""
    columns = torch.arange(vocab_size, dtype=torch.int64, device=seeds.device)
    return noise_at(seeds, positions, columns[None, :])


def noise_at(seeds: torch.Tensor, positions: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """uniform_noise's values at the vocabulary indices `columns` ([B, K] or [1, K]) only: the same
    numbers, for a sampler that knows which few tokens can win."""
    seeds = seeds.to(torch.int64)
    row = _mix32(((seeds ^ (seeds >> 32)) & _MASK32))
    row = _mix32(row ^ (positions.to(torch.int64) * _GOLDEN & _MASK32))
    col = columns.to(torch.int64) * _GOLDEN & _MASK32
    bits = _mix32(_mix32(row[:, None] ^ col))
    # 23 bits and the half step are exact in float32, so 0 and 1 stay out of range (with 24 bits the
    # top value rounded to 1.0, whose Gumbel noise is +inf: that token won whatever its logit, even -inf).
    return ((bits >> 9).to(torch.float32) + 0.5) * (1.0 / (1 << 23))


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor,
           seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Next token per row of logits [B, V]; the other arguments are [B] tensors.

    top_k 0 and top_p 1 disable those filters, top_p 0 keeps only the most likely token;
    positions count generated tokens from 0.

    When every sampled row has a top_k, only its top k tokens can win: the noise is made for
    those alone (the same values as over the whole vocabulary, ties going to the lower index as
    argmax's do), about 5x less work a row of 49,152.
    """
    hot = (temperature > 0).nonzero().squeeze(1)
    if hot.numel() == 0:
        return logits.argmax(-1)
    every = hot.numel() == logits.shape[0]
    rows = logits if every else logits.index_select(0, hot)
    heat = temperature.index_select(0, hot).float()[:, None]
    top_k, top_p = top_k.index_select(0, hot), top_p.index_select(0, hot).float()
    seeds, positions = seeds.index_select(0, hot), positions.index_select(0, hot)
    if bool((top_k > 0).all()):     # a positive temperature keeps the order: the top k of the raw logits
        ordered, order = rows.topk(int(top_k.clamp(1, rows.shape[-1]).max()), dim=-1, sorted=True)
        ordered = _nucleus(ordered.float() / heat, top_k, top_p)
        columns, by_index = order.sort(dim=-1)          # ascending vocabulary index: ties as argmax breaks them
        scores = ordered.gather(-1, by_index) - torch.log(-torch.log(noise_at(seeds, positions, columns)))
        chosen = columns.gather(-1, scores.argmax(-1, keepdim=True)).squeeze(1)
    else:
        x = _filter(rows.float() / heat, top_k, top_p)
        chosen = (x - torch.log(-torch.log(uniform_noise(seeds, positions, x.shape[-1])))).argmax(-1)
    return chosen if every else logits.argmax(-1).index_copy(0, hot, chosen)


def _nucleus(ordered: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Logits sorted high to low, those past each row's top_k or outside its top_p nucleus set to -inf."""
    rank = torch.arange(ordered.shape[-1], device=ordered.device)
    ordered = ordered.masked_fill((top_k[:, None] > 0) & (rank[None, :] >= top_k[:, None]), float("-inf"))
    if bool((top_p < 1).any()):
        probs = ordered.softmax(-1)
        # Drop a token once the tokens before it already cover top_p; the first always stays.
        ordered = ordered.masked_fill(probs.cumsum(-1) - probs > top_p[:, None], float("-inf"))
    return ordered


def _filter(x: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Set logits outside each row's top-k / top-p nucleus to -inf."""
    vocab = x.shape[-1]
    use_k = top_k > 0
    use_p = top_p < 1
    if bool(use_p.any()):
        if bool(use_k.all()):    # the nucleus lies within each row's top k: sort those alone, not the vocabulary
            ordered, order = x.topk(int(top_k.clamp(1, vocab).max()), dim=-1, sorted=True)
        else:
            ordered, order = x.sort(dim=-1, descending=True, stable=True)
        return torch.full_like(x, float("-inf")).scatter(-1, order, _nucleus(ordered, top_k, top_p))
    if bool(use_k.any()):
        k = top_k.clamp(1, vocab)
        kth = x.topk(int(k.max()), -1).values.gather(-1, (k - 1)[:, None])
        return x.masked_fill(use_k[:, None] & (x < kth), float("-inf"))
    return x


def sample_rows(logits: torch.Tensor, temperature: list[float], top_p: list[float], top_k: list[int],
                seeds: list[int], positions: list[int]) -> list[int]:
    """sample() with its parameters as lists, one item per row of logits: what the engine holds."""
    def column(values, dtype):
        return torch.tensor(values, dtype=dtype, device=logits.device)
    return sample(logits, column(temperature, torch.float32), column(top_p, torch.float32),
                  column(top_k, torch.long), column(seeds, torch.long), column(positions, torch.long)).tolist()
