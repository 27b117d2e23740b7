"""Work that pauses: a forward pass or an engine step as a generator that yields between slices.

A long step yields between layers so that its caller can take in what arrived and run a short,
urgent prefill in a pass of its own (engine.py says why). Callers that have nothing to do in
the pauses run it straight through with `run_to_end`.

A transformers forward that cannot be cut into a generator (an embedding model's, a score's, a
training step's) still lets its caller answer: `pausing` calls pause() after its layers, at most
every PAUSE_EVERY_S, where the driver loop takes in pings and submissions (host.py).

A call in progress (an embed, a score) sizes each slice with a `Budget`: bounded in tokens (or
characters) for memory, and, while others wait on the device, in time too. Tokens alone do not
bound time: 4,096 padded tokens are 20 ms of a tiny model and 2 s of all-MiniLM-L6 on a busy CPU,
where the stream beside the call waited that long between two tokens. So each call measures its
own slices and sizes the next to last as long as the driver loop says (host.py: about an engine
step, the streams' turn), from the rate of the ones before.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

Slices = Generator[None, None, "torch.Tensor"]   # a forward pass that pauses; returns the logits
PAUSE_EVERY_S = 0.25
SLICE_TARGET_S = 0.04   # a slice's time while only other calls wait (no steps to set the pace): a turn each
ALONE_SLICE_S = 0.25    # while nobody waits: what a request arriving then waits at most for its first step
MIN_SLICE_S = 0.002     # a slice's time at least: under it, its fixed costs (a Python turn, a pad) are most of it
GROWTH = 4      # a slice takes at most this many times the work of the one before: one fast slice misleads little


def run_to_end(slices: Generator, pause=None):
    """Run a generator to its end, handing what it yields at each pause to pause(value) if
    given; its return value."""
    while True:
        try:
            value = next(slices)
        except StopIteration as end:
            return end.value
        if pause is not None:
            pause(value)


@contextlib.contextmanager
def pausing(model: "torch.nn.Module", pause: Callable[[], None],
            every_s: float | None = None) -> Iterator[Callable[[], None]]:
    """Within the block, each forward of one of model's layers (a module whose class name ends in
    Layer or Block: BertLayer, LlamaDecoderLayer, GPT2Block) ends with pause() if every_s has
    passed since the last; the hooks are gone after it. Gives that check, to call between other
    long pieces of work."""
    every = PAUSE_EVERY_S if every_s is None else every_s
    last = time.monotonic()

    def tick(*_) -> None:
        nonlocal last
        if time.monotonic() - last >= every:
            pause()
            last = time.monotonic()

    hooks = [m.register_forward_hook(tick) for m in model.modules() if type(m).__name__.endswith(("Layer", "Block"))]
    try:
        yield tick
    finally:
        for hook in hooks:
            hook.remove()


class Budget:
    """How much work (tokens, characters: `cost`) the next slice of a call may take: what lasts
    slice_s() seconds at the rate the call's own slices ran, starting from `first`, at most GROWTH
    times the last slice's cost, within [least, most]; `most` (the biggest memory allows) where
    slice_s() is None (a caller with no loop to share). Each slice runs in `timed`."""

    def __init__(self, first: int, most: int, slice_s: Callable[[], float | None] = lambda: None,
                 least: int = 1, clock: Callable[[], float] = time.monotonic):
        self.most, self.least, self.slice_s, self.clock = most, least, slice_s, clock
        self.rate: float | None = None     # cost per second of the last slice
        self.ceiling = max(least, min(first, most))   # before any slice: `first`
        self.aside = 0.0                   # seconds of the running slice spent in pauses (not its own)

    def size(self) -> int:
        seconds = self.slice_s()
        if seconds is None:
            return self.most
        if self.rate is None:
            return self.ceiling
        return max(self.least, min(round(self.rate * seconds), self.ceiling))

    @contextlib.contextmanager
    def timed(self, cost: int) -> Iterator[None]:
        """Run one slice of `cost`; its time, less its pauses (`excluding`), sets the rate."""
        self.aside, started = 0.0, self.clock()
        yield
        spent = self.clock() - started - self.aside
        if cost > 0:
            self.rate = cost / max(spent, 1e-6)
            self.ceiling = max(self.least, min(self.most, GROWTH * cost))

    def excluding(self, pause: Callable[[], None]) -> Callable[[], None]:
        """pause, its time not counted as the slice's (the engine steps the loop may run in it)."""
        def paused() -> None:
            started = self.clock()
            pause()
            self.aside += self.clock() - started
        return paused


def in_runs(texts: list[str], budget: Budget, work: Callable[[list[str]], list]) -> Generator[None, None, list]:
    """work(run) over consecutive runs of texts, each at most budget.size() characters (one text at
    least), yielding after each; all that the runs gave, in order. Tokenizing in slices."""
    out: list = []
    start = 0
    while start < len(texts):
        end, chars, size = start + 1, len(texts[start]), budget.size()
        while end < len(texts) and chars + len(texts[end]) <= size:
            chars += len(texts[end])
            end += 1
        with budget.timed(chars):
            out += work(texts[start:end])
        start = end
        yield
    return out


def take_batch(order: list[int], length: Callable[[int], int], tokens: int,
               most_rows: int | None = None) -> tuple[list[int], list[int]]:
    """The first rows of order (shortest first) whose padded tokens, (rows) * length(the last row),
    fit `tokens`, at most most_rows of them and one at least; and the rest of order."""
    n, most = 1, len(order) if most_rows is None else min(len(order), most_rows)
    while n < most and (n + 1) * length(order[n]) <= tokens:
        n += 1
    return order[:n], order[n:]
