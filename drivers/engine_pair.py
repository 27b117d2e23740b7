"""One model on a CPU, two engines: llama.cpp while a few requests run, torch once a crowd does.

Measured on the 2-core machine (benchmarks/README.md, "CPU: llmos against llama.cpp"), a decode
step of SmolLM2-135M on llama.cpp (the GGUF's 4-bit weights) takes 12 ms alone and grows about
5.5 ms a sequence (92 ms at 16): its 4-bit dot products are compute-bound. The torch runner's bf16
step takes 48 ms alone and 58 ms at 16: it is bound by reading the weights once a step, which a
wide batch shares. So llama.cpp is 4x faster for one stream and torch 1.6x faster for sixteen, with
the crossover near eight. Running both at once is slower than either (their steps take turns on the
same cores), so the pair is in one regime at a time:

- `llama.cpp` while the model has few requests: new ones go to the llama.cpp engine;
- `torch` once it has TORCH_FROM or more: every request moves to the torch engine, recomputed there
  from its prompt and what it has generated (Engine.hand_over, as after a preemption), and new ones
  follow; back to `llama.cpp` when they fall to LLAMACPP_UP_TO (apart from a gap, so a load at the
  threshold does not move back and forth).

Requests with a LoRA adapter always run on torch (llama.cpp here serves none) and stay there.
A request that moves keeps its seed, text and constraint; a greedy answer may take another word
after the move, as the two runners' numbers differ (4-bit against bf16 weights).
"""

from __future__ import annotations

from .engine import Engine

TORCH_FROM = 9        # requests on the model that move it to torch
LLAMACPP_UP_TO = 5    # requests on the model that move it back to llama.cpp


class EnginePair:
    def __init__(self, fast: Engine, crowd: Engine):
        self.fast = fast        # llama.cpp
        self.crowd = crowd      # torch: the crowd's, and every adapter request's
        self.regime = "llama.cpp"
        self.moves = 0          # regime changes, for the benchmarks' curiosity

    @property
    def load(self) -> int:
        return self.fast.load + self.crowd.load

    def engine_for(self, adapter: str) -> Engine:
        if adapter or self.regime == "torch":
            return self.crowd
        return self.fast

    def rebalance(self) -> list[tuple[int, Engine]]:
        """Between steps: change regime if the load says so; (request id, its engine now) of those moved."""
        load = self.load
        if self.regime == "llama.cpp" and load >= TORCH_FROM:
            self.regime, self.moves = "torch", self.moves + 1
            return [(rid, self.crowd) for rid in self.fast.hand_over(self.crowd)]
        if self.regime == "torch" and load <= LLAMACPP_UP_TO:
            self.regime, self.moves = "llama.cpp", self.moves + 1
            adapters = getattr(self.crowd.runner, "seq_adapters", {})
            return [(rid, self.fast) for rid in self.crowd.hand_over(self.fast, keep=lambda seq: seq.id in adapters)]
        return []
