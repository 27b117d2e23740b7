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

llama.cpp keeps the keys and values itself, in two caches over one model (two llama.cpp contexts,
"lanes"). The engine's block allocator still decides who runs and who is preempted, from a budget
(`n_tokens`) that the unified lane holds with room to spare, so llama.cpp never runs out first.

- The unified lane: one cache shared by every sequence, `max_seqs` sequence slots; a sequence may
  grow to the whole budget. But llama.cpp's attention there spans every occupied cell, masked, so a
  step costs every running sequence the tokens of all the others: measured on a 2-core AVX2 EPYC,
  16 sequences of 400 tokens took 217 ms a step against 82 ms in streams of their own
  (benchmarks/README.md), and the gap grows with the crowd and its context.
- The streams lane: up to STREAMS sequences, each in a stream of `stream_tokens` cells of its own
  (llama.cpp's non-unified cache), where a step's attention reads only the sequence's own tokens.
  A sequence goes there when all it can ever hold (prompt and max_tokens: `Chunk.upto`) fits a
  stream and one is free, so no sequence outgrows its stream; anything else runs in the unified
  lane. Its cells are memory beside the budget (`stream_bytes`, at most the budget again:
  `stream_lane`); LLMOS_LLAMACPP_STREAMS=0 turns it off.

When a sequence ends (or is preempted), its slot keeps its tokens' keys and values. In a stream they
cost no one else; in the unified lane they cost every step of every sequence there, so idle unified
slots keep up to `kept_tokens`, and while sequences run there, up to a quarter of the tokens they
hold (KEPT_FLOOR at least): 6,553 kept tokens took a 16-sequence step from 53 to 88 ms and a lone
one from 8.5 to 12.7 (benchmarks/README.md). A new sequence takes the idle slot of its lane whose
tokens begin as its own do for longest, and computes only the rest: a chat's next turn, a support
bot's system prompt and a preempted request's recompute start where the earlier pass left off, as
llama.cpp's own server reuses a slot. The keys and values are the ones it would have computed, so
outputs do not change. Only sequences of the same cache salt (their principal) share: a hit is
measurably faster, so reuse across principals would tell one what another's prompts begin with.

A step is one `llama_decode` per lane and `n_batch` tokens; between two of them the runner yields,
so a cut-in can run as it does between the torch runner's layers. Each call's logits are copied out
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
STREAMS = 16              # sequences the streams lane holds at most
STREAM_FLOOR = 512        # no stream holds fewer tokens: below it, no streams lane
MIN_STREAMS = 4           # nor fewer streams than this (a big model's step is its matmuls, not attention)
STREAMS_ENV = "LLMOS_LLAMACPP_STREAMS"


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


def wanted_streams() -> int:
    """LLMOS_LLAMACPP_STREAMS in the kernel's environment (its drivers inherit it): the most streams
    (default STREAMS); 0 runs every sequence in the unified lane."""
    given = os.environ.get(STREAMS_ENV, "").strip()
    if not given:
        return STREAMS
    if not given.isdigit() or int(given) > 256:
        raise ValueError(f"{STREAMS_ENV}={given[:40]!r}: give a number of streams from 0 (none) to 256")
    return int(given)


def stream_lane(bytes_per_token: int, budget_bytes: int, context_length: int, max_seqs: int,
                wanted: int | None = None) -> tuple[int, int]:
    """(streams, tokens a stream) of the streams lane, (0, 0) for none: up to `wanted` streams (at most
    the engine's max_seqs), as many tokens each as the budget gives them (never more than the model's
    context, never fewer than STREAM_FLOOR), all in at most `budget_bytes`."""
    wanted = min(wanted_streams() if wanted is None else wanted, max_seqs)
    if wanted < MIN_STREAMS or bytes_per_token <= 0:
        return 0, 0
    tokens = min(context_length, max(STREAM_FLOOR, budget_bytes // (wanted * bytes_per_token)))
    streams = min(wanted, budget_bytes // (tokens * bytes_per_token))
    return (streams, tokens) if streams >= MIN_STREAMS and tokens >= min(STREAM_FLOOR, context_length) else (0, 0)


_LOG_CALLBACK = None    # llama.cpp keeps a pointer to it: it must outlive every call


def quiet_logs(low) -> None:
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
    """One of a lane's sequence ids, and the tokens (from position 0) whose keys and values it holds."""

    id: int
    lane: "Lane"
    tokens: list[int] = field(default_factory=list)
    salt: str = ""


class Lane:
    """One llama.cpp context over the runner's model: its cache, its batch and its sequence slots."""

    def __init__(self, runner: "LlamaCppRunner", name: str, n_ctx: int, n_seq: int, unified: bool,
                 seq_tokens: int):
        low = runner.low
        self.low, self.name, self.unified, self.seq_tokens, self.n_seq = low, name, unified, seq_tokens, n_seq
        params = low.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = runner.n_batch
        params.n_seq_max = n_seq
        params.kv_unified = unified
        params.n_threads = params.n_threads_batch = runner.threads
        params.no_perf = True
        self.ctx = low.llama_init_from_model(runner.model, params)
        if not self.ctx:
            raise ValueError(f"llama.cpp could not make a context of {n_ctx} tokens for its {name} lane")
        self.memory = low.llama_get_memory(self.ctx)
        self.batch = low.llama_batch_init(runner.n_batch, 0, 1)
        self.idle: OrderedDict[int, Slot] = OrderedDict((i, Slot(i, self)) for i in range(n_seq))   # oldest first

    def close(self) -> None:
        self.low.llama_batch_free(self.batch)
        self.low.llama_free(self.ctx)

    def fits(self, chunk: Chunk) -> bool:
        return 0 < chunk.upto <= self.seq_tokens


class LlamaCppRunner:
    """Generation steps on llama.cpp over a GGUF file, as runner.PagedRunner's interface asks."""

    def __init__(self, gguf_path: str, n_tokens: int, max_seqs: int, n_batch: int, kept_tokens: int = 0,
                 threads: int | None = None, streams: int = 0, stream_tokens: int = 0):
        import llama_cpp.llama_cpp as low

        self.low = low
        self.lanes: list[Lane] = []
        quiet_logs(low)
        low.llama_backend_init()
        params = low.llama_model_default_params()
        params.use_extra_bufts = False      # its extra buffer types crash llama_decode on AMX CPUs
        self.model = low.llama_model_load_from_file(gguf_path.encode(), params)
        if not self.model:
            raise ValueError(f"llama.cpp could not load {gguf_path}")
        self.n_batch = max(1, n_batch)
        self.threads = threads or torch.get_num_threads()
        self.max_seqs = max(1, min(max_seqs, low.llama_max_parallel_sequences()))
        try:
            n_ctx = n_tokens + kept_tokens + HEADROOM_TOKENS
            self.unified = Lane(self, "unified", n_ctx, self.max_seqs, True, n_ctx)
            self.lanes.append(self.unified)
            streams = min(streams, self.max_seqs)
            if streams and stream_tokens:
                self.lanes.insert(0, Lane(self, "streams", streams * stream_tokens, streams, False, stream_tokens))
        except ValueError as exc:
            self.close()
            raise ValueError(f"{exc} ({gguf_path})") from None
        self.vocab_size = low.llama_vocab_n_tokens(low.llama_model_get_vocab(self.model))
        self.active: dict[int, Slot] = {}                  # engine seq_id -> its slot
        self.kept_tokens = kept_tokens
        self.reused_tokens = 0      # prompt tokens not computed: an idle slot held them

    @property
    def streams(self) -> Lane | None:
        return self.lanes[0] if len(self.lanes) > 1 else None

    @property
    def idle(self) -> OrderedDict[int, Slot]:
        return self.unified.idle

    def describe(self) -> str:
        streams = self.streams
        lanes = f"{streams.n_seq} streams of {streams.seq_tokens} tokens and " if streams else ""
        return f"{lanes}a unified cache of {self.unified.seq_tokens} tokens"

    def close(self) -> None:
        for lane in self.lanes:
            lane.close()
        self.lanes = []
        if self.model:
            self.low.llama_model_free(self.model)
            self.model = None

    def __del__(self):
        self.close()

    def forward(self, chunks: list[Chunk]) -> torch.Tensor:
        return run_to_end(self.forward_slices(chunks))

    def forward_slices(self, chunks: list[Chunk]) -> Slices:
        """Logits [S, V] (float32) for the chunks with sample=True, in their order; a pause between
        two llama_decode calls when the chunks' tokens take more than one (a call per lane at least)."""
        rows: dict[int, torch.Tensor] = {}        # chunk's index -> its logits
        parts: dict[Lane, list[tuple[Slot, Chunk, int]]] = {}
        sizes: dict[Lane, int] = {}
        for index, chunk in enumerate(chunks):
            slot, skip = self._slot(chunk)
            lane = slot.lane
            for piece in self._pieces(chunk, skip):
                if sizes.get(lane, 0) + len(piece.tokens) > self.n_batch:
                    rows.update(self._decode(lane, parts.pop(lane)))
                    sizes[lane] = 0
                    yield
                parts.setdefault(lane, []).append((slot, piece, index))
                sizes[lane] = sizes.get(lane, 0) + len(piece.tokens)
        for n, (lane, part) in enumerate(parts.items()):
            if n:
                yield
            rows.update(self._decode(lane, part))
        if not rows:
            return torch.empty(0, self.vocab_size)
        return torch.stack([rows[i] for i in sorted(rows)])

    def release(self, seq_id: int) -> None:
        """The engine forgot the sequence (ended or preempted): its slot goes idle, keeping its tokens
        for a sequence that begins alike (in the unified lane, while the idle slots' share allows)."""
        slot = self.active.pop(seq_id, None)
        if slot is None:
            return
        slot.lane.idle[slot.id] = slot
        self._trim_idle()

    def kept_limit(self) -> int:
        """How many tokens the unified lane's idle slots may keep now (see the module's docstring)."""
        running = sum(len(s.tokens) for s in self.active.values() if s.lane is self.unified)
        return min(self.kept_tokens, max(KEPT_FLOOR, running // KEPT_RUNNING_SHARE))

    def _trim_idle(self) -> None:
        """Clear the unified lane's slots idle longest until they keep no more than kept_limit() tokens."""
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
            self.low.llama_memory_seq_rm(slot.lane.memory, slot.id, keep, -1)
            del slot.tokens[keep:]

    def _lane_for(self, chunk: Chunk) -> Lane:
        streams = self.streams
        if streams is not None and streams.idle and streams.fits(chunk):
            return streams
        return self.unified

    def _take_slot(self, chunk: Chunk) -> tuple[Slot, int]:
        """An idle slot for a sequence's first chunk, in its lane, and how many of its tokens the slot
        holds already: the longest equal beginning among slots of the same salt (one token is always
        computed, for its logits, if it wants them), else an empty slot, else the one idle longest."""
        if chunk.start != 0:
            raise RuntimeError(f"sequence {chunk.seq_id} starts at position {chunk.start}, but llama.cpp holds none")
        idle = self._lane_for(chunk).idle
        if not idle:
            raise RuntimeError(f"llama.cpp has no free sequence slot for sequence {chunk.seq_id}")
        best, hit = None, 0
        limit = len(chunk.tokens) - chunk.sample
        for slot in idle.values():
            if slot.salt == chunk.salt and slot.tokens:
                n = _common_prefix(slot.tokens, chunk.tokens, limit)
                if n > hit:
                    best, hit = slot, n
        if best is None:
            best = next((s for s in idle.values() if not s.tokens), next(iter(idle.values())))
        del idle[best.id]
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
        if chunk.start + len(chunk.tokens) > slot.lane.seq_tokens:   # the engine said it never would
            raise RuntimeError(f"sequence {chunk.seq_id} outgrows its {slot.lane.seq_tokens}-token "
                               f"{slot.lane.name} slot")
        self._clear(slot, chunk.start)      # recomputed from an earlier position: what follows it goes
        return slot, 0

    # --- one llama_decode -------------------------------------------------------------------------

    def _pieces(self, chunk: Chunk, skip: int) -> list[Chunk]:
        """The chunk's tokens after the `skip` its slot holds, cut to n_batch tokens a piece (the
        scheduler's chunks fit already; a cut-in's might not), only the last one sampled."""
        n, tokens = self.n_batch, chunk.tokens[skip:]
        return [Chunk(chunk.seq_id, tokens[i:i + n], chunk.start + skip + i, chunk.block_table,
                      chunk.sample and i + n >= len(tokens), chunk.salt, chunk.upto)
                for i in range(0, len(tokens), n)]

    def _decode(self, lane: Lane, pieces: list[tuple[Slot, Chunk, int]]) -> dict[int, torch.Tensor]:
        """One llama_decode of the pieces in lane; the logits of each sampled piece, by its chunk's index."""
        batch, outputs, i = lane.batch, [], 0
        for slot, piece, index in pieces:
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
                outputs.append((index, i - 1))
        batch.n_tokens = i
        code = self.low.llama_decode(lane.ctx, batch)
        if code != 0:    # what this call wrote is dropped: a retry of some of its chunks starts clean
            for slot, piece, _ in pieces:
                self._clear(slot, piece.start)
            raise RuntimeError(f"llama_decode failed ({code}: {'no room in its KV cache' if code == 1 else 'error'})")
        return {index: torch.from_numpy(np.ctypeslib.as_array(self.low.llama_get_logits_ith(lane.ctx, row),
                                                              shape=(self.vocab_size,)).copy())
                for index, row in outputs}

    def set_threads(self, threads: int) -> None:
        """The threads llama.cpp computes on from the next call (the driver's thread policy decides)."""
        threads = max(1, threads)
        if threads != self.threads:
            for lane in self.lanes:
                self.low.llama_set_n_threads(lane.ctx, threads, threads)
            self.threads = threads


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y or n >= limit:
            break
        n += 1
    return n
