"""The model runner: one forward pass over the tokens of many sequences, with a paged KV cache.

The engine hands over a list of `Chunk`s (prefill pieces and single decode tokens). The paged
runner lays them out as one flat batch without padding, runs the HF decoder layers' own
modules over it, writes keys and values into the paged cache and attends per sequence. Models
whose layers are not Llama-shaped go through `HFRunner`, transformers' own forward with one
cache per sequence: correct, but one sequence at a time. `make_runner` picks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from .kvcache import KVCache, KVLayout
from .loader import LoadedModel

# Model types whose forward is exactly: embed, [norm, attention (+ optional q/k norm), residual,
# norm, mlp, residual] per layer, final norm, lm_head. Same-named modules elsewhere (Gemma's
# scaled embeddings, Granite's multipliers) compute something else, hence a list, not a probe.
PAGED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass
class Chunk:
    """Tokens of one sequence to run this step."""

    seq_id: int
    tokens: list[int]
    start: int               # position of tokens[0]; positions before it are in the cache
    block_table: list[int]
    sample: bool             # whether the logits of the last token are wanted

    @property
    def is_decode(self) -> bool:
        return len(self.tokens) == 1 and self.start > 0


def make_runner(lm: LoadedModel, num_blocks: int) -> PagedRunner | HFRunner:
    return PagedRunner(lm, num_blocks) if supports_paged(lm) else HFRunner(lm)


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


@dataclass
class PrefillSpan:
    """Where one prefill chunk sits in the flat batch, and what it attends to."""

    q_start: int
    q_end: int
    block_table: torch.Tensor | None   # None: the chunk starts the sequence, attend to itself
    mask: torch.Tensor | None          # [n, context] causal mask for a chunk that continues one


@dataclass
class StepBatch:
    """Everything the forward pass needs about the step, built once and shared by all layers.

    Decode tokens come first in the flat batch so their attention runs as one batched call.
    """

    input_ids: torch.Tensor       # [T]
    positions: torch.Tensor       # [T]
    slots: torch.Tensor           # [T] flat index into the cache: block * block_size + offset
    logits_rows: torch.Tensor     # [S] rows of the flat batch whose logits are sampled
    num_decodes: int
    decode_tables: torch.Tensor   # [num_decodes, max_blocks], padded with block 0
    decode_mask: torch.Tensor     # [num_decodes, 1, 1, max_blocks * block_size]
    prefills: list[PrefillSpan]


class PagedRunner:
    def __init__(self, lm: LoadedModel, num_blocks: int):
        self.model = lm.model
        self.base = lm.model.model
        self.device = lm.device
        self.layout = KVLayout.of(lm.model.config, lm.dtype)
        self.cache = KVCache(self.layout, num_blocks, lm.dtype, lm.device)
        attn = self.base.layers[0].self_attn
        self.scale = getattr(attn, "scaling", self.layout.head_dim ** -0.5)
        self.qk_norm = hasattr(attn, "q_norm")

    @torch.inference_mode()
    def forward(self, chunks: list[Chunk]) -> torch.Tensor:
        """Logits [S, V] (float32) for the chunks with sample=True, in their order."""
        batch = self._prepare(chunks)
        x = self.base.embed_tokens(batch.input_ids)
        cos, sin = self.base.rotary_emb(x, batch.positions[None])
        cos, sin = cos[0], sin[0]
        for i, layer in enumerate(self.base.layers):
            x = self._layer(layer, self.cache.k[i], self.cache.v[i], x, cos, sin, batch)
        hidden = self.base.norm(x.index_select(0, batch.logits_rows))
        return self.model.lm_head(hidden).float()

    def release(self, seq_id: int) -> None:
        """Nothing to do: the engine's block allocator owns the cache blocks."""

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
        o = attention(q, k, v, k_cache, v_cache, batch, self.scale)
        x = x + attn.o_proj(o.view(tokens, -1))
        return x + layer.mlp(layer.post_attention_layernorm(x))

    def _prepare(self, chunks: list[Chunk]) -> StepBatch:
        bs = self.cache.block_size
        order = sorted(range(len(chunks)), key=lambda i: not chunks[i].is_decode)
        ids, positions, slots, last_row = [], [], [], {}
        tables, lengths, prefills = [], [], []
        for i in order:
            c = chunks[i]
            a, n = len(ids), len(c.tokens)
            span = range(c.start, c.start + n)
            ids += c.tokens
            positions += span
            slots += [c.block_table[p // bs] * bs + p % bs for p in span]
            last_row[i] = a + n - 1
            context = c.start + n
            used = c.block_table[: -(-context // bs)]
            if c.is_decode:
                tables.append(used)
                lengths.append(context)
            elif c.start == 0:
                prefills.append(PrefillSpan(a, a + n, None, None))
            else:
                mask = torch.arange(context)[None, :] <= torch.arange(c.start, context)[:, None]
                prefills.append(PrefillSpan(a, a + n, self._tensor(used), mask.to(self.device)))
        width = max(map(len, tables), default=0)
        decode_tables = self._tensor([t + [0] * (width - len(t)) for t in tables]).view(len(tables), width)
        decode_mask = torch.arange(width * bs)[None, :] < torch.tensor(lengths, dtype=torch.long)[:, None]
        return StepBatch(self._tensor(ids), self._tensor(positions), self._tensor(slots),
                         self._tensor([last_row[i] for i, c in enumerate(chunks) if c.sample]),
                         len(tables), decode_tables, decode_mask.view(len(tables), 1, 1, width * bs).to(self.device),
                         prefills)

    def _tensor(self, values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)


def attention(q, k, v, k_cache, v_cache, batch: StepBatch, scale: float) -> torch.Tensor:
    """Causal attention of each sequence's new queries over its cached keys and values.

    q [T, H, D]; k, v [T, Hkv, D] (already written to the cache); caches
    [blocks, block_size, Hkv, D]. Returns [T, H, D]. The one place to swap in a fused kernel.
    """
    out = torch.empty_like(q)
    n = batch.num_decodes
    if n:
        out[:n] = _decode_attention(q[:n], k_cache, v_cache, batch.decode_tables, batch.decode_mask, scale)
    for span in batch.prefills:
        qs = q[span.q_start:span.q_end].transpose(0, 1)[None]
        if span.block_table is None:
            ks, vs = k[span.q_start:span.q_end], v[span.q_start:span.q_end]
        else:
            context = span.mask.shape[1]
            ks = k_cache.index_select(0, span.block_table).flatten(0, 1)[:context]
            vs = v_cache.index_select(0, span.block_table).flatten(0, 1)[:context]
        o = F.scaled_dot_product_attention(qs, ks.transpose(0, 1)[None], vs.transpose(0, 1)[None],
                                           attn_mask=span.mask, is_causal=span.mask is None, scale=scale,
                                           enable_gqa=True)
        out[span.q_start:span.q_end] = o[0].transpose(0, 1)
    return out


def _decode_attention(q, k_cache, v_cache, tables, mask, scale) -> torch.Tensor:
    """One query token per sequence, batched over sequences with keys padded to the longest.

    The query heads that share a KV head are laid out as that head's "query rows", so GQA needs
    no copy of the keys.
    """
    seqs, heads, head_dim = q.shape
    shape = (seqs, -1, *k_cache.shape[2:])                   # index_select: far cheaper than k_cache[tables]
    keys = k_cache.index_select(0, tables.flatten()).view(shape).transpose(1, 2)      # [S, Hkv, L, D]
    values = v_cache.index_select(0, tables.flatten()).view(shape).transpose(1, 2)
    grouped = q.view(seqs, keys.shape[1], -1, head_dim)       # [S, Hkv, H / Hkv, D]
    o = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask, scale=scale)
    return o.reshape(seqs, heads, head_dim)


class HFRunner:
    """Any causal LM through transformers' own forward, one sequence and cache at a time."""

    def __init__(self, lm: LoadedModel):
        self.model = lm.model
        self.device = lm.device
        self.caches: dict[int, DynamicCache] = {}

    @torch.inference_mode()
    def forward(self, chunks: list[Chunk]) -> torch.Tensor:
        rows = []
        for c in chunks:
            if c.start == 0:
                self.caches[c.seq_id] = DynamicCache(config=self.model.config)
            ids = torch.tensor([c.tokens], dtype=torch.long, device=self.device)
            out = self.model(input_ids=ids, past_key_values=self.caches[c.seq_id], use_cache=True)
            if c.sample:
                rows.append(out.logits[0, -1])
        return torch.stack(rows).float() if rows else torch.empty(0, 0, device=self.device)

    def release(self, seq_id: int) -> None:
        self.caches.pop(seq_id, None)
