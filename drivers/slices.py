"""Work that pauses: a forward pass or an engine step as a generator that yields between slices.

A long step yields between layers so that its caller can take in what arrived and run a short,
urgent prefill in a pass of its own (engine.py says why). Callers that have nothing to do in
the pauses run it straight through with `run_to_end`.

A transformers forward that cannot be cut into a generator (an embedding model's, a score's, a
training step's) still lets its caller answer: `pausing` calls pause() after its layers, at most
every PAUSE_EVERY_S, where the driver loop takes in pings and submissions (host.py).
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
