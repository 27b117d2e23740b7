"""Attention over the paged KV cache: one query token per sequence, all sequences at once.

`paged_decode_attention` is the decode half of the runner's attention. On CUDA with Triton it
is one kernel launch for the whole batch (a program per (sequence, KV head) walks that
sequence's block table with an online softmax, the query heads of the GQA group together); it
launches with no host sync, so it can be captured in a CUDA graph. Elsewhere it gathers the
blocks and calls SDPA, which is exact and fine for CPU-sized work.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

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
