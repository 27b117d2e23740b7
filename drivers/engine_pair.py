"""One model on a CPU, two engines: llama.cpp while a few requests run, torch once a crowd does, if
torch is faster for a crowd on this CPU.

Measured on a 2-core AMX machine (benchmarks/README.md, "CPU: llmos against llama.cpp"), a decode
step of SmolLM2-135M on llama.cpp (the GGUF's 4-bit weights) takes 12 ms alone and grows about
5.5 ms a sequence (92 ms at 16): its 4-bit dot products are compute-bound. The torch runner's bf16
step takes 48 ms alone and 58 ms at 16: it is bound by reading the weights once a step, which a
wide batch shares. So llama.cpp is 4x faster for one stream and torch 1.6x faster for sixteen, with
the crossover near eight. On a 2-core AVX2 machine (no native bf16, so torch runs fp32) llama.cpp
grows 10 ms a sequence and torch's step takes 72 ms alone and 185 ms at 16: torch is never faster.
So the crossover is measured, not assumed: when the pair is made, each engine times its decode step
at two batch sizes (PROBE_SIZES, about a second in all), a line through them predicts its step at
any size, and torch takes over from the smallest load at which it is predicted to make MARGIN times
llama.cpp's tokens a second (never, if at no load up to the engine's size it would).

Running both at once is slower than either (their steps take turns on the same cores), so the pair is
in one regime at a time:

- `llama.cpp` while the model has few requests: new ones go to the llama.cpp engine;
- `torch` once it has `torch_from` or more: every request moves to the torch engine, recomputed there
  from its prompt and what it has generated (Engine.hand_over, as after a preemption), and new ones
  follow; back to `llama.cpp` when they fall to `llamacpp_up_to` (RETURN_SHARE of torch_from: a gap,
  so a load at the threshold does not move back and forth).

Requests with a LoRA adapter always run on torch (llama.cpp here serves none) and stay there.
A request that moves keeps its seed, text and constraint; a greedy answer may take another word
after the move, as the two runners' numbers differ (4-bit against bf16 weights).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

from .engine import Engine
from .llamacpp_weights import file_type, q8_0_copy, wanted_weights, wants_copy
from .sequence import GenRequest

PROBE_SIZES = (1, 12)       # batch sizes each engine's decode step is timed at when the pair is made
PROBE_STEPS = 3             # decode steps timed at each size (their median counts)
WEIGHT_PROBE_STEPS = 9      # ... when two llama.cpp weights are compared: closer numbers, a finer median
PROBE_PROMPT = 16           # tokens of each probe sequence's prompt
PROBE_RID = 1 << 62         # probe sequences' ids: far from any the kernel gives
SINGLE_MARGIN = 0.85        # a Q8_0 copy must keep this share of the file's lone-stream speed (step times on a
                            # shared VM wander 10-15%; a stream bound by reading weights reads ~1.9x the bytes)
MARGIN = 1.15               # torch must promise this many times llama.cpp's tok/s: a move recomputes every request
RETURN_SHARE = 0.6          # back to llama.cpp at or under this share of torch_from
CROWD_ENV = "LLMOS_CPU_CROWD_FROM"   # the operator's pin: "measure" (default), "never", or a load N >= 2


def wanted_crowd_from() -> int | str | None:
    """LLMOS_CPU_CROWD_FROM in the kernel's environment (its drivers inherit it): "measure" (the default),
    None for "never", or the load that moves a model to torch. A probe at load time sees whatever else
    runs then; where repeatable behaviour matters more, pin it."""
    given = os.environ.get(CROWD_ENV, "").strip() or "measure"
    if given in ("measure", "never"):
        return None if given == "never" else given
    if given.isdigit() and int(given) >= 2:
        return int(given)
    raise ValueError(f"{CROWD_ENV}={given[:40]!r}: give measure, never, or a number of requests of at least 2")


@dataclass(frozen=True)
class StepTime:
    """An engine's decode step, in seconds, as a line in the number of sequences it carries."""
    fixed: float
    per_seq: float

    def tok_s(self, n: int) -> float:
        return n / max(1e-6, self.fixed + self.per_seq * n)

    @classmethod
    def through(cls, points: list[tuple[int, float]]) -> "StepTime":
        (n0, t0), (n1, t1) = points[0], points[-1]
        per_seq = max(0.0, (t1 - t0) / (n1 - n0))
        return cls(max(0.0, t0 - per_seq * n0), per_seq)


def describe_steps(steps: dict[str, StepTime]) -> str:
    return ", ".join(f"{name} {1000 * s.fixed:.1f} ms + {1000 * s.per_seq:.1f} ms a sequence" for name, s in steps.items())


def crossover(fast: StepTime, crowd: StepTime, max_seqs: int, margin: float = MARGIN) -> int | None:
    """The smallest load at which the crowd's engine makes `margin` times the fast one's tokens a second;
    None if it does at no load up to max_seqs."""
    return next((n for n in range(2, max_seqs + 1) if crowd.tok_s(n) >= margin * fast.tok_s(n)), None)


def probe(engine: Engine, sizes=PROBE_SIZES, steps: int = PROBE_STEPS) -> StepTime:
    """Time the engine's decode step at each size (greedy sequences with short prompts of their own,
    cancelled after), and fit a line. The engine is left as it was found: empty."""
    vocab = engine.vocab_size
    points = []
    for n in sizes:
        rids = [PROBE_RID + i for i in range(n)]
        for i, rid in enumerate(rids):
            prompt = [(1000 + 97 * i + 7 * j) % vocab for j in range(PROBE_PROMPT)]
            engine.add(GenRequest(rid, prompt, steps + 1, 0.0, 1.0, 0, [], None, ignore_eos=True))
        seen, times = set(), []
        while engine.has_work() and len(times) < steps:
            started = time.perf_counter()
            events = engine.step()
            took = time.perf_counter() - started
            if len(seen) == n:                        # every sequence is past its prompt: a decode step
                times.append(took)
            seen.update(e.rid for e in events if e.token_ids)
        for rid in rids:
            engine.cancel(rid)
        while engine.has_work():
            engine.step()
        points.append((n, statistics.median(times) if times else float("inf")))
    return StepTime.through(points)


def pick_weights(steps: dict[str, StepTime], at: int = PROBE_SIZES[-1], margin: float = SINGLE_MARGIN) -> str:
    """The weights llama.cpp keeps (llamacpp_weights.py): of those whose lone stream makes at least
    `margin` of the fastest lone stream's tokens a second, the one that makes the most at `at`
    sequences. A crowd's speed is never bought with a lone user's."""
    best_alone = max(step.tok_s(1) for step in steps.values())
    fair = [name for name, step in steps.items() if step.tok_s(1) >= margin * best_alone]
    return max(fair, key=lambda name: steps[name].tok_s(at))


def llamacpp_engine(make: Callable[[str], Engine], gguf_path: str) -> tuple[Engine, str, dict[str, StepTime]]:
    """The llama.cpp engine over the file's weights or over their Q8_0 copy (llamacpp_weights.py), as the
    operator pinned or as measured here: (the engine, "file" or "q8_0", the step times measured).
    make(path) builds an engine on llama.cpp over that file; the engine not kept is closed at once."""
    pinned = wanted_weights()
    if pinned == "q8_0":                     # asked for: a copy that cannot be made is a load error
        return make(str(q8_0_copy(gguf_path))), "q8_0", {}
    engine = make(gguf_path)
    if pinned == "file" or not wants_copy(file_type(engine.runner.model, engine.runner.low), os.path.getsize(gguf_path)):
        return engine, "file", {}
    try:
        copy_path = q8_0_copy(gguf_path)
    except (OSError, ValueError) as exc:     # no room, no cache dir: serve the file rather than fail the load
        print(f"driver: no Q8_0 copy of {gguf_path} ({exc}); llama.cpp runs the file's weights", file=sys.stderr)
        return engine, "file", {}
    engines = {"file": engine, "q8_0": make(str(copy_path))}
    steps = {name: probe(e, steps=WEIGHT_PROBE_STEPS) for name, e in engines.items()}
    kept = pick_weights(steps)
    engines["q8_0" if kept == "file" else "file"].runner.close()
    if kept == "file":
        copy_path.unlink(missing_ok=True)     # measured slower: no disk kept for it (remade in a second if asked)
    return engines[kept], kept, steps


class EnginePair:
    def __init__(self, fast: Engine, crowd: Engine, torch_from: int | None):
        self.fast = fast        # llama.cpp
        self.crowd = crowd      # torch: the crowd's, and every adapter request's
        self.regime = "llama.cpp"
        self.moves = 0          # regime changes, for the benchmarks' curiosity
        self.torch_from = torch_from          # None: the crowd stays on llama.cpp (torch serves adapters only)
        self.llamacpp_up_to = max(1, int(RETURN_SHARE * torch_from)) if torch_from else 0
        self.steps: dict[str, StepTime] = {}  # what for_this_machine() measured, for the log and the benchmarks

    @classmethod
    def for_this_machine(cls, fast: Engine, crowd: Engine, max_seqs: int,
                         fast_step: StepTime | None = None) -> "EnginePair":
        """The pair with its crossover pinned by the operator (CROWD_ENV), else measured here, now
        (fast_step: the llama.cpp engine's step, if llamacpp_engine measured it already)."""
        wanted = wanted_crowd_from()
        if wanted != "measure":
            return cls(fast, crowd, wanted)
        steps = {"llama.cpp": fast_step or probe(fast), "torch": probe(crowd)}
        pair = cls(fast, crowd, crossover(steps["llama.cpp"], steps["torch"], max_seqs))
        pair.steps = steps
        return pair

    def describe(self) -> str:
        """One line on the crossover and the step times it came from."""
        where = (f"torch from {self.torch_from} requests, back at {self.llamacpp_up_to}" if self.torch_from
                 else "llama.cpp at every load (torch serves adapters only)")
        return f"{where}; decode step {describe_steps(self.steps)}" if self.steps else f"{where} ({CROWD_ENV})"

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
        if self.regime == "llama.cpp" and self.torch_from and load >= self.torch_from:
            self.regime, self.moves = "torch", self.moves + 1
            return [(rid, self.crowd) for rid in self.fast.hand_over(self.crowd)]
        if self.regime == "torch" and load <= self.llamacpp_up_to:
            self.regime, self.moves = "llama.cpp", self.moves + 1
            adapters = getattr(self.crowd.runner, "seq_adapters", {})
            return [(rid, self.fast) for rid in self.crowd.hand_over(self.fast, keep=lambda seq: seq.id in adapters)]
        return []
