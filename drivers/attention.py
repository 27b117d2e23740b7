"""Attention over the paged KV cache, for a whole step laid out by batch.py.

`step_attention` attends each sequence's new tokens over its cached keys and values: prefills
through SDPA (packed groups with a causal flag; continued ones through a mask), decodes through
`paged_decode_attention`, one query token per sequence and all sequences at once. On CUDA with
Triton that is one kernel launch for the whole batch (a program per (sequence, KV head) walks
that sequence's block table with an online softmax, the query heads of the GQA group together);
it launches with no host sync, so it can be captured in a CUDA graph. Elsewhere it gathers the
blocks and calls SDPA, which is exact and fine for CPU-sized work.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .batch import StepBatch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs; the SDPA path below needs nothing extra
    triton = None

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"   # Triton's CPU interpreter, for tests


def uses_kernel(device: torch.device) -> bool:
    """Whether decode attention on this device runs the Triton kernel (and may be graph-captured)."""
    return triton is not None and (device.type == "cuda" or _INTERPRET)


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           tables: torch.Tensor, lengths: torch.Tensor, scale: float) -> torch.Tensor:
    """Each sequence's one query over its first lengths[s] cached tokens.

    q [S, H, D]; caches [blocks, block_size, Hkv, D]; tables [S, W] block ids (int32 or int64,
    entries past a sequence's length are never read by the kernel); lengths [S]. Returns [S, H, D].
    """
    if uses_kernel(q.device):
        return _kernel_attention(q, k_cache, v_cache, tables, lengths, scale)
    return _sdpa_attention(q, k_cache, v_cache, tables, lengths, scale)


def step_attention(q, k, v, k_cache, v_cache, batch: StepBatch, scale: float, tables: torch.Tensor) -> torch.Tensor:
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


def _sdpa_attention(q, k_cache, v_cache, tables, lengths, scale) -> torch.Tensor:
    """Gather the blocks, pad keys to the table's width, mask past each length.

    The query heads that share a KV head are laid out as that head's "query rows", so GQA needs
    no copy of the keys.
    """
    seqs, heads, head_dim = q.shape
    width = tables.shape[1] * k_cache.shape[1]
    shape = (seqs, width, *k_cache.shape[2:])
    flat = tables.flatten().long()                           # index_select: far cheaper than k_cache[tables]
    keys = k_cache.index_select(0, flat).view(shape).transpose(1, 2)     # [S, Hkv, L, D]
    values = v_cache.index_select(0, flat).view(shape).transpose(1, 2)
    mask = torch.arange(width, device=q.device)[None, :] < lengths.to(q.device)[:, None]
    grouped = q.view(seqs, keys.shape[1], -1, head_dim)      # [S, Hkv, H / Hkv, D]
    o = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask[:, None, None, :], scale=scale)
    return o.reshape(seqs, heads, head_dim)


def _kernel_attention(q, k_cache, v_cache, tables, lengths, scale) -> torch.Tensor:
    seqs, heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    group = heads // kv_heads
    out = torch.empty_like(q)
    if seqs == 0:
        return out
    pages = max(1, 64 // block_size)                         # tokens per loop iteration: 64
    _decode_kernel[(seqs, kv_heads)](
        q, k_cache, v_cache, out, tables, lengths, scale,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), tables.stride(0), out.stride(0), out.stride(1),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        HEAD_DIM_PAD=triton.next_power_of_2(head_dim), BLOCK_SIZE=block_size, TILE=pages * block_size,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32", num_warps=4)
    return out


if triton is not None:
    @triton.jit
    def _decode_kernel(q_ptr, k_ptr, v_ptr, out_ptr, tables_ptr, lengths_ptr, scale,
                       stride_qs, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
                       stride_ts, stride_os, stride_oh,
                       GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                       HEAD_DIM_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr, TILE: tl.constexpr,
                       PRECISION: tl.constexpr):
        """One (sequence, KV head): its GROUP query heads against TILE cached tokens at a time."""
        seq = tl.program_id(0)
        kv_head = tl.program_id(1)
        length = tl.load(lengths_ptr + seq)
        g = tl.arange(0, GROUP_PAD)
        d = tl.arange(0, HEAD_DIM_PAD)
        t = tl.arange(0, TILE)
        rows = g < GROUP
        cols = d < HEAD_DIM
        head = kv_head * GROUP + g
        q = tl.load(q_ptr + seq * stride_qs + head[:, None] * stride_qh + d[None, :],
                    mask=rows[:, None] & cols[None, :], other=0.0)
        m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        l = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM_PAD], tl.float32)
        table = tables_ptr + seq * stride_ts
        for start in range(0, length, TILE):
            pos = start + t
            valid = pos < length
            block = tl.load(table + pos // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
            offset = pos % BLOCK_SIZE
            kv_mask = valid[:, None] & cols[None, :]
            k = tl.load(k_ptr + (block * stride_kb + offset * stride_kt + kv_head * stride_kh)[:, None] + d[None, :],
                        mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale                              # [GROUP_PAD, TILE], fp32
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m - m_new)
            l = l * alpha + tl.sum(p, 1)
            v = tl.load(v_ptr + (block * stride_vb + offset * stride_vt + kv_head * stride_vh)[:, None] + d[None, :],
                        mask=kv_mask, other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m = m_new
        o = acc / l[:, None]
        tl.store(out_ptr + seq * stride_os + head[:, None] * stride_oh + d[None, :], o.to(out_ptr.dtype.element_ty),
                 mask=rows[:, None] & cols[None, :])
