"""CUDA graphs of the decode forward: one graph per padded batch size, captured on first use.

A decode step of a small model is hundreds of short kernels; replaying them as one graph
removes the per-kernel launch cost that otherwise dominates. The runner keeps the graph's
inputs in static buffers and pads the batch up to the next power of two (`batch_sizes`),
so a handful of graphs cover every batch.
"""

from __future__ import annotations

from typing import Callable

import torch


def batch_sizes(max_batch: int) -> list[int]:
    """Padded decode batch sizes: powers of two up to the first that holds max_batch."""
    sizes = [1]
    while sizes[-1] < max_batch:
        sizes.append(sizes[-1] * 2)
    return sizes


def padded_size(n: int, sizes: list[int]) -> int:
    return next(s for s in sizes if s >= n)


class DecodeGraphs:
    """forward(size) reads static buffers and returns a tensor; graphs of it, by size.

    All graphs share one memory pool: they never run at once, and each one's output is read
    before the next replay.
    """

    def __init__(self, forward: Callable[[int], torch.Tensor]):
        self.forward = forward
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None

    def run(self, size: int) -> torch.Tensor:
        if size not in self.graphs:
            self.graphs[size] = self._capture(size)
        graph, out = self.graphs[size]
        graph.replay()
        return out

    def _capture(self, size: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # Run once outside the graph first: Triton compiles, cuBLAS makes its handles. The step
        # it runs is the real one, and replaying it again writes the same keys and values.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.forward(size)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.forward(size)
        if self.pool is None:
            self.pool = graph.pool()
        return graph, out
