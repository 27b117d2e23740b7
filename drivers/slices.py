"""Work that pauses: a forward pass or an engine step as a generator that yields between slices.

A long step yields between layers so that its caller can take in what arrived and run a short,
urgent prefill in a pass of its own (engine.py says why). Callers that have nothing to do in
the pauses run it straight through with `run_to_end`.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

Slices = Generator[None, None, "torch.Tensor"]   # a forward pass that pauses; returns the logits


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
