"""The model runner: one forward pass over the tokens of many sequences, with a paged KV cache.

The engine hands over a list of `Chunk`s (prefill pieces and single decode tokens). The paged
runner has them laid out as one flat batch without padding (batch.py), runs the HF decoder
layers' own modules over it, writes keys and values into the paged cache and attends per
sequence (attention.py). On CUDA a step of decode tokens only is padded to a fixed batch size
and replayed as a CUDA graph (cuda_graphs.py); every other step runs eagerly, unpadded, and so does
any step in which a sequence uses a LoRA adapter (lora.py: the rows of each adapter get its
update, grouped per adapter; a graph holds the base alone). Models
whose layers are not Llama-shaped go through `HFRunner` (hf_runner.py). `make_runner` picks.

Both runners also offer `forward_slices`, a generator that yields between layers (or between
sequences) and returns the logits: the engine uses those pauses to run a short, urgent
prefill in a pass of its own while a long step is half done.
"""

from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from .attention import step_attention, uses_kernel
from .batch import BatchLayout, BlockTables, StepBatch
from .cuda_graphs import DecodeGraphs, batch_sizes, padded_size
from .hf_runner import HFRunner
from .kvcache import KVCache, KVLayout
from .loader import LoadedModel
from .lora import LoRAModel
from .sequence import Chunk
from .slices import Slices, run_to_end

# Model types whose forward is exactly: embed, [norm, attention (+ optional q/k norm), residual,
# norm, mlp, residual] per layer, final norm, lm_head. Same-named modules elsewhere (Gemma's
# scaled embeddings, Granite's multipliers) compute something else, hence a list, not a probe.
PAGED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


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


class PagedRunner:
    """Llama-shaped models (PAGED_MODEL_TYPES), every sequence of a step in one flat batch."""

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
        kernel_attention = uses_kernel(lm.device)
        self.batch_layout = BatchLayout(self.tables, self.block_size, lm.device, group_decodes=not kernel_attention)
        use_graphs = cuda_graphs and lm.device.type == "cuda" and kernel_attention
        self.graphs = DecodeGraphs(self._decode_forward) if use_graphs else None
        self.pad_decodes = use_graphs   # a graph per padded size; eager steps need no padding
        self.dtype = lm.dtype
        self.lora: LoRAModel | None = None         # made when the first adapter is loaded
        self.seq_adapters: dict[int, str] = {}     # seq_id -> the adapter it runs with (absent: the base)

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
        adapters = [self.seq_adapters.get(c.seq_id, "") for c in chunks] if self.seq_adapters else None
        if all(c.is_decode and c.sample for c in chunks) and not any(adapters or ()):
            return (yield from self._decode_step(chunks, rows))
        return (yield from self._layers(self.batch_layout.with_prefill(chunks, rows, adapters)))

    def release(self, seq_id: int) -> None:
        """Forget the sequence's block table; the engine's block allocator owns the blocks."""
        self.tables.release(seq_id)

    # --- adapters (lora.py) -----------------------------------------------------------------------

    def load_adapter(self, adapter: str, files: dict[str, bytes]) -> int:
        """Install a LoRA adapter from PEFT's files; the bytes its weights take (ValueError if unfit)."""
        if self.lora is None:
            self.lora = LoRAModel(self.model, self.dtype, self.device)
        return self.lora.add(adapter, files)

    def unload_adapter(self, adapter: str) -> None:
        if self.lora is not None:
            self.lora.remove(adapter)

    def has_adapter(self, adapter: str) -> bool:
        return self.lora is not None and adapter in self.lora

    def use_adapter(self, seq_id: int, adapter: str) -> None:
        """The sequence runs with `adapter` ("": the base) until `drop_adapter`: its chunks' rows
        get the adapter's update in every step, across preemptions."""
        if adapter:
            self.seq_adapters[seq_id] = adapter
        else:
            self.seq_adapters.pop(seq_id, None)

    def drop_adapter(self, seq_id: int) -> None:
        self.seq_adapters.pop(seq_id, None)

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
        batch = self.batch_layout.decode_only(self.decode_inputs[:, :size], width=-(-max(lengths) // self.block_size))
        batch.decode_groups = self.batch_layout.decode_groups(lengths)
        return (yield from self._layers(batch))[:n]

    def _decode_forward(self, size: int) -> torch.Tensor:
        """The forward pass of a padded decode batch, from the static inputs alone (no host
        sync): what a CUDA graph captures."""
        return run_to_end(self._layers(self.batch_layout.decode_only(self.decode_inputs[:, :size])))

    # --- every step -----------------------------------------------------------------------------

    def _layers(self, batch: StepBatch) -> Slices:
        x = self.base.embed_tokens(batch.input_ids)
        cos, sin = self.base.rotary_emb(x, batch.positions[None])
        cos, sin = cos[0], sin[0]
        try:
            for i, layer in enumerate(self.base.layers):
                if self.lora is not None:    # set before each layer: a cut-in's pass may run in the pause
                    self.lora.active = batch.adapter_rows
                x = self._layer(layer, self.cache.k[i], self.cache.v[i], x, cos, sin, batch)
                yield
        finally:    # a pass that failed leaves no adapter rows active for the next one (a score's)
            if self.lora is not None:
                self.lora.active = None
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
        o = step_attention(q, k, v, k_cache, v_cache, batch, self.scale, self.tables.data)
        x = x + attn.o_proj(o.view(tokens, -1))
        return x + layer.mlp(layer.post_attention_layernorm(x))
