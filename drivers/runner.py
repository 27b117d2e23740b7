"""The model runner: one forward pass over the tokens of many sequences, with a paged KV cache.

The engine hands over a list of `Chunk`s (prefill pieces and single decode tokens). The paged
runner lays them out as one flat batch without padding, runs the HF decoder layers' own
modules over it, writes keys and values into the paged cache and attends per sequence. On CUDA a
step of decode tokens only is padded to a fixed batch size and replayed as a CUDA graph
(`cuda_graphs.py`); every other step runs eagerly, unpadded. Models whose layers are not Llama-shaped go
through `HFRunner`, transformers' own forward with one cache per sequence: correct, but one
sequence at a time. `make_runner` picks.

Both runners also offer `forward_slices`, a generator that yields between layers (or between
sequences) and returns the logits: the engine uses those pauses to run a
short, urgent prefill in a pass of its own while a long step is half done.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from .attention import paged_decode_attention, uses_kernel
from .cuda_graphs import DecodeGraphs, batch_sizes, padded_size
from .kvcache import KVCache, KVLayout
from .loader import LoadedModel

# Model types whose forward is exactly: embed, [norm, attention (+ optional q/k norm), residual,
# norm, mlp, residual] per layer, final norm, lm_head. Same-named modules elsewhere (Gemma's
# scaled embeddings, Granite's multipliers) compute something else, hence a list, not a probe.
PAGED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


Slices = Generator[None, None, torch.Tensor]   # a forward pass that pauses; returns the logits


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


@dataclass
class Chunk:
    """Tokens of one sequence to run this step."""

    seq_id: int
    tokens: list[int]
    start: int               # position of tokens[0]; positions before it are in the cache
    block_table: list[int]   # the allocator's own list: it only grows while the sequence runs
    sample: bool             # whether the logits of the last token are wanted

    @property
    def is_decode(self) -> bool:
        return len(self.tokens) == 1 and self.start > 0


def make_runner(lm: LoadedModel, num_blocks: int, max_seqs: int = 64,
                cuda_graphs: bool = True) -> PagedRunner | HFRunner:
    if supports_paged(lm):
        return PagedRunner(lm, num_blocks, max_seqs, cuda_graphs)
    return HFRunner(lm)


def supports_paged(lm: LoadedModel) -> bool:
    model = lm.model
    if model.config.model_type not in PAGED_MODEL_TYPES or not hasattr(model, "lm_head"):
        return False
    base = getattr(model, "model", None)
    if not all(hasattr(base, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return False
    for layer in base.layers:
        if not all(hasattr(layer, n) for n in ("input_layernorm", "post_attention_layernorm", "mlp", "self_attn")):
            return False
        if not all(hasattr(layer.self_attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
            return False
    window = _sliding_window(model)
    return window is None or window >= lm.context_length


def _sliding_window(model) -> int | None:
    if model.config.model_type == "mistral":
        return getattr(model.config, "sliding_window", None)
    windows = [w for layer in model.model.layers if (w := getattr(layer.self_attn, "sliding_window", None))]
    return min(windows, default=None)


class BlockTables:
    """Every running sequence's block table, kept on the device and updated by what is new.

    Each sequence owns a row while it runs; a step sends only the blocks added since the last
    one. The last row is for padding: all of it points at a scratch block no sequence owns, so
    padded decode rows write and read there and nowhere else.
    """

    def __init__(self, max_seqs: int, width: int, scratch_block: int, device: torch.device):
        self.data = torch.full((max_seqs + 1, width), scratch_block, dtype=torch.int32, device=device)
        self.padding_row = max_seqs
        self._free = list(range(max_seqs - 1, -1, -1))
        self._rows: dict[int, list[int]] = {}       # seq_id -> [row, blocks already sent]

    def sync(self, chunks: list[Chunk]) -> list[int]:
        """The chunks' rows, after sending their new blocks to the device."""
        rows, where, blocks = [], [], []
        for c in chunks:
            entry = self._rows.get(c.seq_id)
            if entry is None:
                if not self._free:
                    raise RuntimeError(f"more than {self.padding_row} sequences in one runner; "
                                       f"give make_runner a larger max_seqs")
                entry = self._rows[c.seq_id] = [self._free.pop(), 0]
            row, sent = entry
            table = c.block_table
            if len(table) > sent:
                if len(table) > self.data.shape[1]:
                    raise RuntimeError(f"sequence {c.seq_id} holds {len(table)} blocks, more than the "
                                       f"{self.data.shape[1]} its context length allows")
                where += [row * self.data.shape[1] + j for j in range(sent, len(table))]
                blocks += table[sent:]
                entry[1] = len(table)
            rows.append(row)
        if blocks:
            update = torch.tensor([where, blocks], dtype=torch.long).to(self.data.device, non_blocking=True)
            self.data.view(-1).index_copy_(0, update[0], update[1].to(torch.int32))
        return rows

    def release(self, seq_id: int) -> None:
        entry = self._rows.pop(seq_id, None)
        if entry is not None:
            self._free.append(entry[0])


@dataclass
class PackedPrefills:
    """Prefill chunks that start their sequence, laid out as a right-padded batch [P, L].

    Right padding keeps causal attention exact for the real tokens, so one SDPA call covers
    them all; `gather` picks rows of the flat batch (padding repeats a real row), `src` the
    real rows of the padded result and `dest` where they go in the flat batch.
    """

    gather: torch.Tensor   # [P * L]
    src: torch.Tensor      # [n]
    dest: torch.Tensor     # [n]
    shape: tuple[int, int]


@dataclass
class ContinuedPrefill:
    """A prefill chunk that continues a sequence: it attends to the cache through a causal mask."""

    q_start: int
    q_end: int
    row: int                    # the sequence's row in BlockTables
    mask: torch.Tensor          # [n, context]


@dataclass
class DecodeGroup:
    """Decodes of similar length, attended together with their tables cut to the longest of them.

    Without the Triton kernel, decode attention gathers every sequence's keys up to the width of
    the table, so one long sequence would make all the short ones pay for its length.
    """

    index: torch.Tensor   # [g] positions among the step's decodes
    width: int            # blocks that the longest of them spans


@dataclass
class StepBatch:
    """Everything the forward pass needs about the step, built once and shared by all layers.

    Decode tokens come first in the flat batch so their attention runs as one batched call.
    """

    input_ids: torch.Tensor           # [T]
    positions: torch.Tensor           # [T]
    slots: torch.Tensor               # [T] flat index into the cache: block * block_size + offset
    logits_rows: torch.Tensor | None  # [S] rows of the flat batch whose logits are sampled; None: all
    num_decodes: int
    decode_tables: torch.Tensor       # [num_decodes, width] block ids
    decode_lengths: torch.Tensor      # [num_decodes] tokens each decode attends to
    packed: list[PackedPrefills]
    continued: list[ContinuedPrefill]
    decode_groups: list[DecodeGroup] | None = None   # without the Triton kernel: decodes of like length


class PagedRunner:
    def __init__(self, lm: LoadedModel, num_blocks: int, max_seqs: int = 64, cuda_graphs: bool = True):
        self.model = lm.model
        self.base = lm.model.model
        self.device = lm.device
        self.layout = KVLayout.of(lm.model.config, lm.dtype)
        self.cache = KVCache(self.layout, num_blocks + 1, lm.dtype, lm.device)   # + the scratch block
        self.block_size = self.cache.block_size
        width = max(1, min(num_blocks, -(-lm.context_length // self.block_size)))
        self.tables = BlockTables(max_seqs, width, scratch_block=num_blocks, device=lm.device)
        attn = self.base.layers[0].self_attn
        self.scale = getattr(attn, "scaling", self.layout.head_dim ** -0.5)
        self.qk_norm = hasattr(attn, "q_norm")
        # Decode-only steps: inputs (token ids, positions, table rows) in static buffers.
        self.batch_sizes = batch_sizes(max_seqs)
        self.decode_inputs = torch.zeros(3, self.batch_sizes[-1], dtype=torch.long, device=lm.device)
        self.kernel_attention = uses_kernel(lm.device)
        use_graphs = cuda_graphs and lm.device.type == "cuda" and self.kernel_attention
        self.graphs = DecodeGraphs(self._decode_forward) if use_graphs else None
        self.pad_decodes = use_graphs   # a graph per padded size; eager steps need no padding

    def forward(self, chunks: list[Chunk]) -> torch.Tensor:
        """Logits [S, V] (float32) for the chunks with sample=True, in their order."""
        return run_to_end(self.forward_slices(chunks))

    @torch.inference_mode()
    def forward_slices(self, chunks: list[Chunk]) -> Slices:
        """forward, pausing after each layer; a decode step replayed as a CUDA graph does not pause.

        Between two slices the caller may run other forward passes over other sequences: the
        step's inputs were all taken at the start, and its cache blocks are its own.
        """
        rows = self.tables.sync(chunks)
        if all(c.is_decode and c.sample for c in chunks):
            return (yield from self._decode_step(chunks, rows))
        return (yield from self._layers(self._prepare(chunks, rows)))

    def release(self, seq_id: int) -> None:
        """Forget the sequence's block table; the engine's block allocator owns the blocks."""
        self.tables.release(seq_id)

    # --- decode-only steps: padded, static inputs, graph-captured on CUDA --------------------------

    def _decode_step(self, chunks: list[Chunk], rows: list[int]) -> Slices:
        n = len(chunks)
        size = padded_size(n, self.batch_sizes) if self.pad_decodes else n
        pad = size - n
        inputs = torch.tensor([[c.tokens[0] for c in chunks] + [0] * pad,
                               [c.start for c in chunks] + [0] * pad,
                               rows + [self.tables.padding_row] * pad], dtype=torch.long)
        self.decode_inputs[:, :size].copy_(inputs, non_blocking=True)
        if self.graphs is not None:
            return self.graphs.run(size)[:n]
        lengths = [c.start + 1 for c in chunks]
        batch = self._decode_batch(size, width=-(-max(lengths) // self.block_size))
        batch.decode_groups = self._decode_groups(lengths)
        return (yield from self._layers(batch))[:n]

    def _decode_forward(self, size: int) -> torch.Tensor:
        """The forward pass of a padded decode batch, from the static inputs alone (no host
        sync): what a CUDA graph captures."""
        return self._run(self._decode_batch(size))

    def _decode_batch(self, size: int, width: int | None = None) -> StepBatch:
        """The step batch of the first size rows of the static decode inputs.

        width trims the block tables when not captured; the kernel reads only up to each
        length either way, so trimming changes nothing but the work of the SDPA fallback.
        """
        ids, positions, rows = self.decode_inputs[:, :size]
        tables = self.tables.data.index_select(0, rows)
        if width is not None:
            tables = tables[:, :width]
        blocks = tables.gather(1, (positions // self.block_size)[:, None])[:, 0].long()
        slots = blocks * self.block_size + positions % self.block_size
        return StepBatch(ids, positions, slots, None, size, tables, positions + 1, [], [])

    # --- every step -----------------------------------------------------------------------------

    def _run(self, batch: StepBatch) -> torch.Tensor:
        return run_to_end(self._layers(batch))

    def _layers(self, batch: StepBatch) -> Slices:
        x = self.base.embed_tokens(batch.input_ids)
        cos, sin = self.base.rotary_emb(x, batch.positions[None])
        cos, sin = cos[0], sin[0]
        for i, layer in enumerate(self.base.layers):
            x = self._layer(layer, self.cache.k[i], self.cache.v[i], x, cos, sin, batch)
            yield
        if batch.logits_rows is not None:
            x = x.index_select(0, batch.logits_rows)
        return self.model.lm_head(self.base.norm(x)).float()

    def _layer(self, layer, k_cache, v_cache, x, cos, sin, batch: StepBatch) -> torch.Tensor:
        attn = layer.self_attn
        tokens, head_dim = x.shape[0], self.layout.head_dim
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(tokens, -1, head_dim)
        k = attn.k_proj(h).view(tokens, -1, head_dim)
        v = attn.v_proj(h).view(tokens, -1, head_dim)
        if self.qk_norm:
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
        k_cache.view(-1, *k.shape[1:]).index_copy_(0, batch.slots, k)
        v_cache.view(-1, *v.shape[1:]).index_copy_(0, batch.slots, v)
        o = attention(q, k, v, k_cache, v_cache, batch, self.scale, self.tables.data)
        x = x + attn.o_proj(o.view(tokens, -1))
        return x + layer.mlp(layer.post_attention_layernorm(x))

    def _prepare(self, chunks: list[Chunk], rows: list[int]) -> StepBatch:
        """The flat batch of a step with prefill in it: decodes first, then the prefill chunks."""
        bs = self.block_size
        order = sorted(range(len(chunks)), key=lambda i: not chunks[i].is_decode)
        ids, positions, token_rows, last_row = [], [], [], {}
        decode_rows, decode_lengths, fresh, continued = [], [], [], []
        for i in order:
            c, row = chunks[i], rows[i]
            a, n = len(ids), len(c.tokens)
            ids += c.tokens
            positions += range(c.start, c.start + n)
            token_rows += [row] * n
            last_row[i] = a + n - 1
            if c.is_decode:
                decode_rows.append(row)
                decode_lengths.append(c.start + 1)
            elif c.start == 0:
                fresh.append((a, n))
            else:
                context = c.start + n
                mask = torch.arange(context)[None, :] <= torch.arange(c.start, context)[:, None]
                continued.append(ContinuedPrefill(a, a + n, row, mask.to(self.device)))
        width = -(-max(decode_lengths, default=1) // bs)
        positions_t = self._tensor(positions)
        token_blocks = self.tables.data[self._tensor(token_rows), positions_t // bs].long()
        return StepBatch(self._tensor(ids), positions_t, token_blocks * bs + positions_t % bs,
                         self._tensor([last_row[i] for i, c in enumerate(chunks) if c.sample]),
                         len(decode_rows), self.tables.data[self._tensor(decode_rows)][:, :width],
                         self._tensor(decode_lengths), [self._pack(g) for g in _pack_groups(fresh)], continued,
                         self._decode_groups(decode_lengths))

    def _pack(self, spans: list[tuple[int, int]]) -> PackedPrefills:
        starts = torch.tensor([a for a, _ in spans])
        lengths = torch.tensor([n for _, n in spans])
        longest = int(lengths.max())
        offsets = torch.arange(longest)
        real = (offsets[None, :] < lengths[:, None]).flatten()
        index = (starts[:, None] + offsets[None, :]).flatten()
        gather = torch.where(real, index, starts.repeat_interleave(longest))
        src = real.nonzero().squeeze(1)
        return PackedPrefills(gather.to(self.device), src.to(self.device), index[src].to(self.device),
                              (len(spans), longest))

    def _decode_groups(self, lengths: list[int]) -> list[DecodeGroup] | None:
        """Decodes grouped by length where decode attention pads (no Triton kernel); None: one call."""
        if self.kernel_attention or len(lengths) < 2:
            return None
        groups = length_groups(lengths, max_padding=1.25)
        if len(groups) == 1:
            return None
        return [DecodeGroup(self._tensor(g), -(-lengths[g[0]] // self.block_size)) for g in groups]

    def _tensor(self, values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long).to(self.device, non_blocking=True)


def _pack_groups(spans: list[tuple[int, int]], max_padding: float = 2.0) -> list[list[tuple[int, int]]]:
    """Spans (start, length), longest first, grouped so padding at most doubles a group's tokens."""
    return [[spans[i] for i in group] for group in length_groups([n for _, n in spans], max_padding)]


def length_groups(lengths: list[int], max_padding: float) -> list[list[int]]:
    """Indices of lengths, longest first, grouped so that padding every member of a group to
    its first (longest) costs at most max_padding times the group's real length."""
    groups: list[list[int]] = []
    tokens = 0
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= max_padding * (tokens + lengths[i]):
            groups[-1].append(i)
            tokens += lengths[i]
        else:
            groups.append([i])
            tokens = lengths[i]
    return groups


def attention(q, k, v, k_cache, v_cache, batch: StepBatch, scale: float, tables: torch.Tensor) -> torch.Tensor:
    """Causal attention of each sequence's new queries over its cached keys and values.

    q [T, H, D]; k, v [T, Hkv, D] (already written to the cache); caches
    [blocks, block_size, Hkv, D]; tables: BlockTables.data. Returns [T, H, D]. Decodes go
    through `paged_decode_attention`: with the Triton kernel (CUDA) in one call, else in one
    call per group of like length.
    """
    n = batch.num_decodes
    if n == q.shape[0] and batch.decode_groups is None:
        return paged_decode_attention(q, k_cache, v_cache, batch.decode_tables, batch.decode_lengths, scale)
    out = torch.empty_like(q) if batch.decode_groups is None else torch.zeros_like(q)   # padding rows: no group
    if batch.decode_groups is not None:
        for group in batch.decode_groups:
            o = paged_decode_attention(q.index_select(0, group.index), k_cache, v_cache,
                                       batch.decode_tables[group.index, :group.width],
                                       batch.decode_lengths.index_select(0, group.index), scale)
            out.index_copy_(0, group.index, o)
    elif n:
        out[:n] = paged_decode_attention(q[:n], k_cache, v_cache, batch.decode_tables, batch.decode_lengths, scale)
    for pack in batch.packed:
        groups, longest = pack.shape
        def padded(x):
            return x.index_select(0, pack.gather).view(groups, longest, *x.shape[1:]).transpose(1, 2)
        o = F.scaled_dot_product_attention(padded(q), padded(k), padded(v), is_causal=True, scale=scale,
                                           enable_gqa=True)
        out.index_copy_(0, pack.dest, o.transpose(1, 2).reshape(-1, *q.shape[1:]).index_select(0, pack.src))
    for span in batch.continued:
        context = span.mask.shape[1]
        blocks = tables[span.row, :-(-context // k_cache.shape[1])].long()
        ks = k_cache.index_select(0, blocks).flatten(0, 1)[:context]
        vs = v_cache.index_select(0, blocks).flatten(0, 1)[:context]
        qs = q[span.q_start:span.q_end].transpose(0, 1)[None]
        o = F.scaled_dot_product_attention(qs, ks.transpose(0, 1)[None], vs.transpose(0, 1)[None],
                                           attn_mask=span.mask, scale=scale, enable_gqa=True)
        out[span.q_start:span.q_end] = o[0].transpose(0, 1)
    return out


class HFRunner:
    """Any causal LM through transformers' own forward, one sequence and cache at a time."""

    def __init__(self, lm: LoadedModel):
        self.model = lm.model
        self.device = lm.device
        self.caches: dict[int, DynamicCache] = {}

    def forward(self, chunks: list[Chunk]) -> torch.Tensor:
        return run_to_end(self.forward_slices(chunks))

    @torch.inference_mode()
    def forward_slices(self, chunks: list[Chunk]) -> Slices:
        """forward, pausing after each sequence."""
        rows = []
        for c in chunks:
            if c.start == 0:
                self.caches[c.seq_id] = DynamicCache(config=self.model.config)
            ids = torch.tensor([c.tokens], dtype=torch.long, device=self.device)
            out = self.model(input_ids=ids, past_key_values=self.caches[c.seq_id], use_cache=True)
            if c.sample:
                rows.append(out.logits[0, -1])
            yield
        return torch.stack(rows).float() if rows else torch.empty(0, 0, device=self.device)

    def release(self, seq_id: int) -> None:
        self.caches.pop(seq_id, None)
