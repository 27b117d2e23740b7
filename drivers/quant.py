"""int8 weight-only quantization: every weight matrix of a Llama-family model as int8, one scale a row.

Why weight-only: a decode step reads every weight once per token, so it is bound by memory, and
int8 is half of bf16 (a quarter of fp32) while activations stay in the model's dtype: no
calibration data. Symmetric per-output-row scales (the row's max |w| / 127, in the model's
dtype) keep each output's error within half a step of its own row's range.

What becomes int8: the attention q/k/v/o and MLP gate/up/down projections, the token embedding
and the lm_head. Tied embeddings (SmolLM2, the tests' tiny model) stay tied: the embedding and
the lm_head share one int8 matrix and its scales, as they shared the float one. (The
projections alone would save 39% of a bf16 SmolLM2-135M, whose 49152x576 embedding is a fifth
of its weights; the goal is 40%.) Norms, biases and rotary tables stay in the model's dtype.

Forward: `aten._weight_int8pack_mm` where it runs and pays (measured on this project's CPU:
3-5x faster than the float matmul for a few rows of bf16, as in decoding; 3-10x slower than
dequantizing for many rows, and its fp32 kernel is slower still), else the int8 matrix is
dequantized to the model's dtype and multiplied as usual (CUDA, where this torch has no such
kernel: a probe decides). Layers are quantized one at a time on the target device, so memory
never holds two float copies, and a GPU never sees the float weights at all.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from llmos.specs.modelspec import QUANT_MODEL_TYPES

PROJECTIONS = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}
PACKED_MAX_ROWS = 16     # above this many rows a dequantized matmul was faster than the packed kernel


class UnsupportedModel(ValueError):
    """A model int8 does not know how to quantize: not a Llama-shaped causal LM of nn.Linear layers."""


def quantize_rows(weight: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 matrix, per-row scales in `dtype`) with weight ~= int8 * scales[:, None].

    The int8 values are rounded against the scales as stored (in `dtype`), so dequantizing
    adds no second rounding error."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny).to(dtype)
    q = torch.round(w / scales.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales


@lru_cache(maxsize=None)
def packed_mm_pays(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether to use aten._weight_int8pack_mm for few rows: never in fp32 (its CPU kernel is a slow
    loop), else where a probe on the device runs it (this torch has it on CPU, not on CUDA)."""
    if dtype == torch.float32:
        return False
    try:
        x = torch.ones(1, 32, dtype=dtype, device=device)
        w = torch.ones(8, 32, dtype=torch.int8, device=device)
        torch.ops.aten._weight_int8pack_mm(x, w, torch.ones(8, dtype=dtype, device=device))
    except (RuntimeError, NotImplementedError):
        return False
    return True


class Int8Linear(nn.Module):
    """y = x @ (int8 * scales).T + bias, with the int8 matrix and scales as buffers (no gradients)."""

    def __init__(self, weight_int8: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = weight_int8.shape
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", bias)
        self.packed = packed_mm_pays(weight_int8.device, scales.dtype)

    @classmethod
    def of(cls, linear: nn.Linear, device: torch.device) -> "Int8Linear":
        dtype = linear.weight.dtype
        q, scales = quantize_rows(linear.weight.to(device), dtype)
        bias = None if linear.bias is None else linear.bias.detach().to(device)
        return cls(q, scales, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.packed and rows.shape[0] <= PACKED_MAX_ROWS and x.dtype == self.scales.dtype:
            y = torch.ops.aten._weight_int8pack_mm(rows.contiguous(), self.weight_int8, self.scales)
        else:
            y = F.linear(rows, self.weight_int8.to(x.dtype)) * self.scales.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int8Embedding(nn.Module):
    """Rows of an int8 table times their scales; may share the table with an Int8Linear lm_head."""

    def __init__(self, weight_int8: torch.Tensor, scales: torch.Tensor):
        super().__init__()
        self.num_embeddings, self.embedding_dim = weight_int8.shape
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("scales", scales)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight_int8[ids].to(self.scales.dtype) * self.scales[ids].unsqueeze(-1)


def quantize(model: nn.Module, device: torch.device | str, quant: str = "int8") -> int:
    """Replace the model's weight matrices by int8 ones on `device`, layer by layer, in place;
    returns how many matrices were quantized. UnsupportedModel if it is not Llama-shaped."""
    if quant != "int8":
        raise UnsupportedModel(f"unknown quantization {quant!r}; this driver does int8")
    device = torch.device(device)
    base = _check_shape(model)
    count = 0
    for layer in base.layers:
        for part, names in PROJECTIONS.items():
            owner = getattr(layer, part)
            for name in names:
                setattr(owner, name, Int8Linear.of(getattr(owner, name), device))
                count += 1
    embed, head = base.embed_tokens, model.lm_head
    tied = head.weight is embed.weight
    q, scales = quantize_rows(embed.weight.to(device), embed.weight.dtype)
    base.embed_tokens = Int8Embedding(q, scales)
    model.lm_head = Int8Linear(q, scales) if tied else Int8Linear.of(head, device)
    return count + (1 if tied else 2)


def _check_shape(model: nn.Module) -> nn.Module:
    """The decoder (model.model) if every matrix int8 replaces is an nn.Linear or nn.Embedding."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in QUANT_MODEL_TYPES:
        raise UnsupportedModel(f"int8 is for Llama-family models ({', '.join(QUANT_MODEL_TYPES)}), "
                               f"not {model_type!r}")
    base = getattr(model, "model", None)
    head = getattr(model, "lm_head", None)
    ok = (isinstance(head, nn.Linear) and isinstance(getattr(base, "embed_tokens", None), nn.Embedding)
          and all(isinstance(getattr(getattr(layer, part, None), name, None), nn.Linear)
                  for layer in getattr(base, "layers", ()) for part, names in PROJECTIONS.items() for name in names))
    if not ok or not getattr(base, "layers", None):
        raise UnsupportedModel(f"this {model_type} model's layers are not plain nn.Linear projections: "
                               f"int8 cannot replace them")
    return base
