"""The requests a benchmark sends: prompts cut from English prose to exact token lengths."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from corpus import PARAGRAPHS


@dataclass
class BenchRequest:
    idx: int
    prompt: str              # sent as a plain prompt (no chat template), so its ids are tokenizer(prompt)
    prompt_ids: list[int]
    max_tokens: int


def make_requests(tokenizer, n: int, prompt_range: tuple[int, int], max_tokens_range: tuple[int, int],
                  seed: int, context_length: int | None = None) -> list[BenchRequest]:
    """n requests with prompt lengths (in tokens) and max_tokens drawn uniformly from the ranges."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(*prompt_range)
        text, ids = prompt_of_length(tokenizer, rng, length)
        max_tokens = rng.randint(*max_tokens_range)
        if context_length:
            max_tokens = max(1, min(max_tokens, context_length - len(ids)))
        out.append(BenchRequest(i, text, ids, max_tokens))
    return out


def prompt_of_length(tokenizer, rng: random.Random, n_tokens: int) -> tuple[str, list[int]]:
    """Text from the corpus, starting at a random paragraph, that encodes to (nearly) n_tokens tokens."""
    order = PARAGRAPHS[:]
    rng.shuffle(order)
    text, ids = "", []
    for para in itertools.cycle(order):
        text = f"{text} {para}" if text else para
        ids = tokenizer(text).input_ids
        if len(ids) > n_tokens + 8:
            break
    # Decoding a cut and encoding it again can merge tokens across the cut: step back until it fits.
    best = None
    for cut in range(n_tokens, max(0, n_tokens - 8), -1):
        piece = tokenizer.decode(ids[:cut], skip_special_tokens=True, clean_up_tokenization_spaces=False).rstrip()
        again = tokenizer(piece).input_ids
        if best is None or abs(len(again) - n_tokens) < abs(len(best[1]) - n_tokens):
            best = (piece, again)
        if len(again) == n_tokens:
            break
    return best
