"""A model runner on llama.cpp: the GGUF's own 4-bit weights, read as they are, on the CPU.

On a CPU a decode step reads every weight once, so its speed is set by the bytes a weight takes:
the torch runner dequantizes a GGUF to bf16 (16 bits a weight), llama.cpp multiplies the file's
4.5 bits directly (benchmarks/README.md, "CPU: llmos against llama.cpp"). So where llama-cpp-python
is installed (the optional `llamacpp` extra) and a model comes as a GGUF file, the CPU driver runs
generation here, behind the same interface as runner.py: the engine hands over `Chunk`s and gets
logits back, and everything else (continuous batching, fair share, preemption and resume, stop
strings, constraints, logprobs, penalties, seeds) stays the engine's, unchanged. LoRA adapters
are the torch runner's: a request with one runs on the torch engine beside this one, which also
takes the model's requests when a crowd of them would run faster there (engine_pair.py).

llama.cpp keeps the keys and values itself, in one cache shared by every sequence (its unified
KV cache). The engine's block allocator still decides who runs and who is preempted, from a budget
(`n_tokens`) that llama.cpp's cache holds with room to spare, so llama.cpp never runs out first. A
sequence gets one of llama.cpp's `max_seqs` sequence slots while it runs.

When a sequence ends (or is preempted), its slot keeps its tokens' keys and values, up to
`kept_tokens` over all idle slots (the oldest go first), and while sequences run, up to a quarter of
the tokens they hold (KEPT_FLOOR at least): llama.cpp's attention spans every occupied cell of the
unified cache, masked, so a kept token costs every step of every running sequence. Measured on a
2-core AVX2 EPYC, 6,553 kept tokens took a 16-sequence step from 53 to 88 ms and a lone one from 8.5
to 12.7 (benchmarks/README.md). A new sequence takes the idle slot whose tokens begin as its own do
for longest, and computes only the rest: a chat's next turn, a support
bot's system prompt and a preempted request's recompute start where the earlier pass left off, as
llama.cpp's own server reuses a slot. The keys and values are the ones it would have computed, so
outputs do not change. Only sequences of the same cache salt (their principal) share: a hit is
measurably faster, so reuse across principals would tell one what another's prompts begin with.

A step is one `llama_decode` per `n_batch` tokens; between two of them the runner yields, so a
cut-in can run as it does between the torch runner's layers. Each call's logits are copied out
before yielding: llama.cpp keeps only the last call's.
"""

from __future__ import annotations

import ctypes
import os
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from .sequence import Chunk
from .slices import Slices, run_to_end

BACKEND_ENV = "LLMOS_CPU_BACKEND"
BACKENDS = ("auto", "torch", "llamacpp")
HEADROOM_TOKENS = 256     # cells beyond the engine's budget: a batch's slot search never comes up short
KEPT_FLOOR = 512          # idle slots may keep this many tokens however few run ...
KEPT_RUNNING_SHARE = 4    # ... else a quarter of the tokens the running sequences hold


class LlamaCppUnavailable(RuntimeError):
    """LLMOS_CPU_BACKEND=llamacpp, but llama-cpp-python cannot be imported."""


def wanted_backend() -> str:
    """The operator's choice, LLMOS_CPU_BACKEND in the kernel's environment (its drivers inherit it):
    auto (default) runs a GGUF on llama.cpp where llama-cpp-python imports, torch names the torch
    runner always, llamacpp requires llama.cpp for every GGUF model."""
    given = os.environ.get(BACKEND_ENV, "").strip() or "auto"
    if given not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={given!r}: give one of {', '.join(BACKENDS)}")
    return given


def available() -> bool:
    try:
        import llama_cpp.llama_cpp  # noqa: F401
    except Exception:   # not installed, or its shared library does not load on this machine
        return False
    return True


def use_llamacpp(gguf_path: str | None, device_kind: str) -> bool:
    """Whether the CPU driver runs this model's generation on llama.cpp."""
    backend = wanted_backend()
    if backend == "torch" or device_kind != "cpu" or not gguf_path:
        return False
    if available():
        return True
    if backend == "llamacpp":
        raise LlamaCppUnavailable(f"{BACKEND_ENV}=llamacpp, but llama-cpp-python does not import here: "
                                  "pip install 'llmos[llamacpp]' (it builds llama.cpp from source)")
    return False


_LOG_CALLBACK = None    # llama.cpp keeps a pointer to it: it must outlive every call


def _quiet_logs(low) -> None:
    """llama.cpp writes every load's tensor list to stderr; keep its warnings and errors only."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None:
        return

    @low.llama_log_callback
    def log(level, text, user_data):
        # GGML_LOG_LEVEL_WARN and ERROR, not CONT (5, a line's continuation); not the warning that a
        # unified cache holds more cells than one sequence's trained context (none may use more)
        if level >= 3 and level != 5 and b"n_ctx_seq" not in text:
            os.write(2, text)

    _LOG_CALLBACK = log
    low.llama_log_set(log, ctypes.c_void_p())


@dataclass
class Slot:
    """One of llama.cpp's sequence ids, and the tokens (from position 0) whose keys and values it holds."""

    id: int
    tokens: list[int] = field(default_factory=list)
    salt: str = ""


class LlamaCppRunner:
    """Generation steps on llama.cpp over a GGUF file, as runner.PagedRunner's interface asks."""

    def __init__(self, gguf_path: str, n_tokens: int, max_seqs: int, n_batch: int, kept_tokens: int = 0,
                 threads: int | None = None):
        import llama_cpp.llama_cpp as low

        self.low = low
        _quiet_logs(low)
        low.llama_backend_init()
        params = low.llama_model_default_params()
        params.use_extra_bufts = False      # its extra buffer types crash llama_decode on AMX CPUs
        self.model = low.llama_model_load_from_file(gguf_path.encode(), params)
        if not self.model:
            raise ValueError(f"llama.cpp could not load {gguf_path}")
        self.n_batch = max(1, n_batch)
        self.threads = threads or torch.get_num_threads()
        ctx = low.llama_context_default_params()
        ctx.n_ctx = n_tokens + kept_tokens + HEADROOM_TOKENS
        ctx.n_batch = ctx.n_ubatch = self.n_batch
        ctx.n_seq_max = max(1, min(max_seqs, low.llama_max_parallel_sequences()))
        ctx.kv_unified = True
        ctx.n_threads = ctx.n_threads_batch = self.threads
        ctx.no_perf = True
        self.ctx = low.llama_init_from_model(self.model, ctx)
        if not self.ctx:
            low.llama_model_free(self.model)
            raise ValueError(f"llama.cpp could not make a context of {ctx.n_ctx} tokens for {gguf_path}")
        self.memory = low.llama_get_memory(self.ctx)
        self.vocab_size = low.llama_vocab_n_tokens(low.llama_model_get_vocab(self.model))
        self.batch = low.llama_batch_init(self.n_batch, 0, 1)
        self.active: dict[int, Slot] = {}                  # engine seq_id -> its slot
        self.max_seqs = ctx.n_seq_max
        self.idle: OrderedDict[int, Slot] = OrderedDict((i, Slot(i)) for i in range(self.max_seqs))   # oldest first
        self.kept_tokens = kept_tokens
        self.reused_tokens = 0      # prompt tokens not computed: an idle slot held them

    def close(self) -> None:
        if self.ctx:
            self.low.llama_batch_free(self.batch)
            self.low.llama_free(self.ctx)
            self.low.llama_model_free(self.model)
            self.ctx = None

    def __del__(self):
        self.close()

    def forward(self, chunks: list[Chunk]) -> torch.Tensor:
        return run_to_end(self.forward_slices(chunks))

    def forward_slices(self, chunks: list[Chunk]) -> Slices:
        """Logits [S, V] (float32) for the chunks with sample=True, in their order; a pause between
        two llama_decode calls when the chunks' tokens take more than one."""
        rows: list[torch.Tensor] = []
        part: list[tuple[Slot, Chunk]] = []
        size = 0
        for chunk in chunks:
            slot, skip = self._slot(chunk)
            for piece in self._pieces(chunk, skip):
                if size + len(piece.tokens) > self.n_batch:
                    rows += self._decode(part)
                    part, size = [], 0
                    yield
                part.append((slot, piece))
                size += len(piece.tokens)
        if part:
            rows += self._decode(part)
        if not rows:
            return torch.empty(0, self.vocab_size)
        return torch.stack(rows)

    def release(self, seq_id: int) -> None:
        """The engine forgot the sequence (ended or preempted): its slot goes idle, keeping its tokens
        for a sequence that begins alike while the idle slots' share of the cache allows."""
        slot = self.active.pop(seq_id, None)
        if slot is None:
            return
        self.idle[slot.id] = slot
        self._trim_idle()

    def kept_limit(self) -> int:
        """How many tokens idle slots may keep now (see the module's docstring)."""
        running = sum(len(s.tokens) for s in self.active.values())
        return min(self.kept_tokens, max(KEPT_FLOOR, running // KEPT_RUNNING_SHARE))

    def _trim_idle(self) -> None:
        """Clear the idle slots idle longest until they keep no more than kept_limit() tokens."""
        kept, limit = sum(len(s.tokens) for s in self.idle.values()), self.kept_limit()
        for old in list(self.idle.values()):
            if kept <= limit:
                break
            kept -= len(old.tokens)
            self._clear(old, 0)

    # --- slots ----------------------------------------------------------------------------------

    def _clear(self, slot: Slot, keep: int) -> None:
        """Drop what slot holds from position `keep` on."""
        if len(slot.tokens) > keep:
            self.low.llama_memory_seq_rm(self.memory, slot.id, keep, -1)
            del slot.tokens[keep:]

    def _take_slot(self, chunk: Chunk) -> tuple[Slot, int]:
        """An idle slot for a sequence's first chunk, and how many of its tokens the slot holds already:
        the longest equal beginning among slots of the same salt (one token is always computed, for
        its logits, if it wants them), else an empty slot, else the one idle longest."""
        if chunk.start != 0:
            raise RuntimeError(f"sequence {chunk.seq_id} starts at position {chunk.start}, but llama.cpp holds none")
        if not self.idle:
            raise RuntimeError(f"llama.cpp has no free sequence slot for sequence {chunk.seq_id}")
        best, hit = None, 0
        limit = len(chunk.tokens) - chunk.sample
        for slot in self.idle.values():
            if slot.salt == chunk.salt and slot.tokens:
                n = _common_prefix(slot.tokens, chunk.tokens, limit)
                if n > hit:
                    best, hit = slot, n
        if best is None:
            best = next((s for s in self.idle.values() if not s.tokens), next(iter(self.idle.values())))
        del self.idle[best.id]
        self._clear(best, hit)
        best.salt = chunk.salt
        self.active[chunk.seq_id] = best
        self.reused_tokens += hit
        return best, hit

    def _slot(self, chunk: Chunk) -> tuple[Slot, int]:
        """The chunk's slot, and how many of its leading tokens need no computing."""
        slot = self.active.get(chunk.seq_id)
        if slot is None:
            return self._take_slot(chunk)
        if chunk.start > len(slot.tokens):
            raise RuntimeError(f"sequence {chunk.seq_id} resumes at position {chunk.start}, "
                               f"but llama.cpp holds {len(slot.tokens)} of its positions")
        self._clear(slot, chunk.start)      # recomputed from an earlier position: what follows it goes
        return slot, 0

    # --- one llama_decode -------------------------------------------------------------------------

    def _pieces(self, chunk: Chunk, skip: int) -> list[Chunk]:
        """The chunk's tokens after the `skip` its slot holds, cut to n_batch tokens a piece (the
        scheduler's chunks fit already; a cut-in's might not), only the last one sampled."""
        n, tokens = self.n_batch, chunk.tokens[skip:]
        return [Chunk(chunk.seq_id, tokens[i:i + n], chunk.start + skip + i, chunk.block_table,
                      chunk.sample and i + n >= len(tokens), chunk.salt) for i in range(0, len(tokens), n)]

    def _decode(self, pieces: list[tuple[Slot, Chunk]]) -> list[torch.Tensor]:
        batch, outputs, i = self.batch, [], 0
        for slot, piece in pieces:
            for j, token in enumerate(piece.tokens):
                batch.token[i] = token
                batch.pos[i] = piece.start + j
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = slot.id
                batch.logits[i] = False
                i += 1
            slot.tokens += piece.tokens
            if piece.sample:
                batch.logits[i - 1] = True
                outputs.append(i - 1)
        batch.n_tokens = i
        code = self.low.llama_decode(self.ctx, batch)
        if code != 0:    # what this call wrote is dropped: a retry of some of its chunks starts clean
            for slot, piece in pieces:
                self._clear(slot, piece.start)
            raise RuntimeError(f"llama_decode failed ({code}: {'no room in its KV cache' if code == 1 else 'error'})")
        return [torch.from_numpy(np.ctypeslib.as_array(self.low.llama_get_logits_ith(self.ctx, row),
                                                       shape=(self.vocab_size,)).copy()) for row in outputs]

    def set_threads(self, threads: int) -> None:
        """The threads llama.cpp computes on from the next call (the driver's thread policy decides)."""
        threads = max(1, threads)
        if threads != self.threads:
            self.low.llama_set_n_threads(self.ctx, threads, threads)
            self.threads = threads


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y or n >= limit:
            break
        n += 1
    return n
