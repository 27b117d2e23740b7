"""What shapes a batch's logits before a token is chosen, and the log-probabilities sent back.

In order, for the rows that ask for each (a row that asks for none is not touched, and a batch
where none asks pays nothing): logit_bias; the repetition penalty (transformers', over prompt and
generated tokens); presence and frequency penalties (OpenAI's, over generated tokens); end of
sequence banned until min_tokens; the constraint's grammar mask (constraints.py). Each is one
tensor operation over all the rows that use it, with their token counts gathered by one
scatter, never a model-sized loop per sequence.

Log-probabilities are those of the distribution so shaped (a token the grammar forbids has
none), before temperature and the nucleus: what the model thought, under the request's rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .constraints import mask_rows
from .sampling import sample_rows

if TYPE_CHECKING:
    from .sequence import Sequence


def next_tokens(seqs: list["Sequence"], logits: torch.Tensor, eos_ids: list[int],
                texts: "TokenTexts") -> list[tuple[int, dict | None]]:
    """Per sequence, its next token and (if it asked) the token's logprobs entry."""
    logits = shape(logits, seqs, eos_ids)
    if all(s.req.temperature <= 0 for s in seqs):
        tokens = logits.argmax(-1).tolist()   # what sample() gives, without building its parameter columns
    else:
        tokens = sample_rows(logits, [s.req.temperature for s in seqs], [s.req.top_p for s in seqs],
                             [s.req.top_k for s in seqs], [s.seed for s in seqs], [s.num_generated for s in seqs])
    return list(zip(tokens, logprob_entries(logits, seqs, tokens, texts)))


def shape(logits: torch.Tensor, seqs: list["Sequence"], eos_ids: list[int]) -> torch.Tensor:
    """The logits [S, V] of seqs, with every request's rules applied (a new tensor where any applies)."""
    reqs = [s.req for s in seqs]
    if not any(r.logit_bias or r.repetition_penalty != 1.0 or r.presence_penalty or r.frequency_penalty
               or r.min_tokens or s.matcher is not None for r, s in zip(reqs, seqs)):
        return logits
    logits = logits.clone()
    _bias(logits, seqs)
    _repetition(logits, seqs)
    _presence_frequency(logits, seqs)
    _min_tokens(logits, seqs, eos_ids)
    constrained = [i for i, s in enumerate(seqs) if s.matcher is not None]
    if constrained:
        mask_rows(logits, [seqs[i].matcher for i in constrained], constrained)
    return logits


def _bias(logits: torch.Tensor, seqs: list["Sequence"]) -> None:
    rows, ids, values = [], [], []
    for i, s in enumerate(seqs):
        for token, bias in s.req.logit_bias or ():
            rows.append(i)
            ids.append(token)
            values.append(bias)
    if rows:
        logits.index_put_((_long(rows, logits), _long(ids, logits)),
                          torch.tensor(values, dtype=logits.dtype, device=logits.device), accumulate=True)


def _counts(logits: torch.Tensor, seqs: list["Sequence"], rows: list[int], generated_only: bool) -> torch.Tensor:
    """[len(rows), V] how often each token occurs in each row's sequence (generated part, or all)."""
    row_of, ids = [], []
    for j, i in enumerate(rows):
        s = seqs[i]
        tokens = s.tokens[len(s.req.prompt_ids):] if generated_only else s.tokens
        row_of += [j] * len(tokens)
        ids += tokens
    counts = torch.zeros(len(rows), logits.shape[-1], dtype=logits.dtype, device=logits.device)
    if ids:
        counts.index_put_((_long(row_of, logits), _long(ids, logits)),
                          torch.ones(len(ids), dtype=logits.dtype, device=logits.device), accumulate=True)
    return counts


def _repetition(logits: torch.Tensor, seqs: list["Sequence"]) -> None:
    rows = [i for i, s in enumerate(seqs) if s.req.repetition_penalty != 1.0]
    if not rows:
        return
    seen = _counts(logits, seqs, rows, generated_only=False) > 0
    penalty = torch.tensor([seqs[i].req.repetition_penalty for i in rows], dtype=logits.dtype,
                           device=logits.device)[:, None]
    x = logits[rows]
    logits[rows] = torch.where(seen, torch.where(x > 0, x / penalty, x * penalty), x)


def _presence_frequency(logits: torch.Tensor, seqs: list["Sequence"]) -> None:
    rows = [i for i, s in enumerate(seqs) if s.req.presence_penalty or s.req.frequency_penalty]
    if not rows:
        return
    counts = _counts(logits, seqs, rows, generated_only=True)
    column = lambda name: torch.tensor([getattr(seqs[i].req, name) for i in rows], dtype=logits.dtype,
                                       device=logits.device)[:, None]
    logits[rows] -= column("frequency_penalty") * counts + column("presence_penalty") * (counts > 0)


def _min_tokens(logits: torch.Tensor, seqs: list["Sequence"], eos_ids: list[int]) -> None:
    """A constrained row is left to its grammar, which knows when its text may end."""
    rows = [i for i, s in enumerate(seqs) if s.num_generated < s.req.min_tokens and s.matcher is None]
    if rows and eos_ids:
        logits[_long(rows, logits)[:, None], _long(eos_ids, logits)[None, :]] = float("-inf")


def _long(values: list[int], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=like.device)


class TokenTexts:
    """A token id's text as logprobs report it, decoded once per id (bounded by the vocabulary)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._text: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        text = self._text.get(token)
        if text is None:
            text = self._text[token] = self.tokenizer.decode([token])
        return text

    def entry(self, token: int, logprob: float) -> dict:
        text = self(token)
        return {"token": text, "bytes": list(text.encode("utf-8", "replace")), "logprob": logprob}


def logprob_entries(logits: torch.Tensor, seqs: list["Sequence"], tokens: list[int],
                    texts: TokenTexts) -> list[dict | None]:
    """Per row, the chosen token's entry with its top alternatives, or None where not asked for."""
    rows = [i for i, s in enumerate(seqs) if s.req.logprobs]
    out: list[dict | None] = [None] * len(seqs)
    if not rows:
        return out
    lp = torch.log_softmax(logits[rows].float(), dim=-1)
    chosen = lp.gather(1, _long([tokens[i] for i in rows], lp)[:, None]).squeeze(1).tolist()
    k = max(seqs[i].req.top_logprobs for i in rows)
    top_values, top_ids = (lp.topk(k, dim=-1) if k else (None, None))
    for j, i in enumerate(rows):
        entry = texts.entry(tokens[i], _finite(chosen[j]))
        n = seqs[i].req.top_logprobs
        entry["top_logprobs"] = [texts.entry(t, _finite(v)) for t, v in
                                 zip(top_ids[j, :n].tolist(), top_values[j, :n].tolist())] if n else []
        out[i] = entry
    return out


def _finite(value: float) -> float:
    """-inf (a token the rules forbid) as the most negative float JSON can carry."""
    return value if value > -3.4e38 else -9999.0
