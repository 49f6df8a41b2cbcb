"""Triton kernels for the paged KV cache: cache writes, block copies and varlen causal attention.

Same contract as the C++ CPU kernels in ``csrc/cpu/paged_attention.h`` (see there for the cache
layout and the position convention); the fp32 maths is that of
``sleepcore.reference.attention.paged_attention``.

Derivation (one query token at position P, one head; window W > 0 or none):
* it attends to cache positions p with max(0, P - W + 1) <= p <= P (causal, sliding window);
  logits s_p = scale q.k_p, softcapped to c tanh(s_p / c) when c > 0, with
  tanh(x) = 1 - 2 / (e^(2x) + 1) (saturates to +-1, never NaN);
* online softmax over tiles of BLOCK_N positions (flash attention): m' = max(m, max s),
  a = 2^(m - m'), l' = a l + sum 2^(s - m'), acc' = a acc + sum 2^(s - m') v, out = acc / l.
  Logits are kept in base 2 (s * log2 e) so each one costs a single exp2.
  Every tile the loop visits holds at least one position of the window, so m' is finite after
  the first tile and l >= 1.

Kernel design: ``_paged_attention_kernel`` runs one program per (query token, query head); the
token's sequence comes from ``seq_of_token`` (a searchsorted over query_start, no host sync).
Each tile gathers BLOCK_N positions through the block table (block = table[p // block_size],
slot = block * block_size + p % block_size), so BLOCK_N need not match the block size. Decode
(one query per sequence) is the hot path; prefill reuses the same program per token (no tensor
cores yet). Index values are not checked here (that would need a host sync).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

_LOG2E = tl.constexpr(1.0 / math.log(2.0))


@triton.jit
def _write_kv_kernel(k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr, ROW, BLOCK: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + token)
    if slot >= 0:
        for start in range(0, ROW, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < ROW
            tl.store(kc_ptr + slot * ROW + cols, tl.load(k_ptr + token * ROW + cols, mask=mask), mask=mask)
            tl.store(vc_ptr + slot * ROW + cols, tl.load(v_ptr + token * ROW + cols, mask=mask), mask=mask)


@triton.jit
def _copy_blocks_kernel(kc_ptr, vc_ptr, pairs_ptr, BLOCK_ELEMS, BLOCK: tl.constexpr):
    pair = tl.program_id(0).to(tl.int64)
    src = tl.load(pairs_ptr + 2 * pair) * BLOCK_ELEMS
    dst = tl.load(pairs_ptr + 2 * pair + 1) * BLOCK_ELEMS
    for start in range(0, BLOCK_ELEMS, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < BLOCK_ELEMS
        tl.store(kc_ptr + dst + cols, tl.load(kc_ptr + src + cols, mask=mask), mask=mask)
        tl.store(vc_ptr + dst + cols, tl.load(vc_ptr + src + cols, mask=mask), mask=mask)


@triton.jit
def _paged_attention_kernel(q_ptr, kc_ptr, vc_ptr, out_ptr, tables_ptr, ctx_ptr, qstart_ptr, seq_ptr,
                            max_blocks, block_size, H_Q, H_KV, D, scale2, window, softcap,
                            SOFTCAP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    seq = tl.load(seq_ptr + token).to(tl.int64)
    first_q = tl.load(qstart_ptr + seq).to(tl.int64)
    n_q = tl.load(qstart_ptr + seq + 1).to(tl.int64) - first_q
    position = tl.load(ctx_ptr + seq).to(tl.int64) - n_q + (token - first_q)
    lo = tl.where(window > 0, tl.maximum(position - window + 1, 0), 0)
    kv_head = head // (H_Q // H_KV)
    d = tl.arange(0, BLOCK_D)
    d_mask = d < D
    q = tl.load(q_ptr + (token * H_Q + head) * D + d, mask=d_mask, other=0.0).to(tl.float32)
    row = H_KV * D
    m = -float("inf")
    l = 0.0
    acc = tl.zeros([BLOCK_D], tl.float32)
    for start in range(lo // BLOCK_N * BLOCK_N, position + 1, BLOCK_N):
        p = start + tl.arange(0, BLOCK_N)
        valid = (p >= lo) & (p <= position)
        block = tl.load(tables_ptr + seq * max_blocks + p // block_size, mask=valid, other=0).to(tl.int64)
        offs = (block * block_size + p % block_size) * row + kv_head * D
        kv_mask = valid[:, None] & d_mask[None, :]
        k = tl.load(kc_ptr + offs[:, None] + d[None, :], mask=kv_mask, other=0.0).to(tl.float32)
        s = tl.sum(k * q[None, :], axis=1)  # scale q.k, base 2 after the next line
        if SOFTCAP:
            x = s * (scale2 / _LOG2E) / softcap
            s = softcap * (1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)) * _LOG2E
        else:
            s = s * scale2
        s = tl.where(valid, s, -float("inf"))
        m_new = tl.maximum(m, tl.max(s, axis=0))
        a = tl.exp2(m - m_new)
        e = tl.exp2(s - m_new)
        v = tl.load(vc_ptr + offs[:, None] + d[None, :], mask=kv_mask, other=0.0).to(tl.float32)
        l = l * a + tl.sum(e, axis=0)
        acc = acc * a + tl.sum(e[:, None] * v, axis=0)
        m = m_new
    tl.store(out_ptr + (token * H_Q + head) * D + d, (acc / l).to(out_ptr.dtype.element_ty), mask=d_mask)


# ----------------------------------------------------------------------------- launchers
# The callers (sleepcore.ops.paged_attention) have checked shapes, dtypes and contiguity.


def write_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """k, v [N, H_kv, D] into the caches' slots (negative slot: skipped); all contiguous."""
    tokens = k.shape[0]
    if tokens == 0:
        return
    row = k.shape[1] * k.shape[2]
    _write_kv_kernel[(tokens,)](k, v, k_cache, v_cache, slot_mapping, row,
                                BLOCK=min(1024, triton.next_power_of_2(row)))


def copy_blocks(k_cache: torch.Tensor, v_cache: torch.Tensor, pairs: torch.Tensor) -> None:
    """Copy whole blocks ``pairs[i] = (src, dst)``; a dst must not be another pair's src."""
    if pairs.shape[0] == 0:
        return
    elems = k_cache[0].numel()
    _copy_blocks_kernel[(pairs.shape[0],)](k_cache, v_cache, pairs, elems,
                                           BLOCK=min(4096, triton.next_power_of_2(elems)))


def paged_attention(q, k_cache, v_cache, block_tables, context_lens, query_start, out, *, scale: float,
                    sliding_window: int, softcap: float) -> None:
    """Varlen causal attention of q [total_q, H_q, D] over the paged caches, into ``out``."""
    total_q, heads_q, head_dim = q.shape
    if total_q == 0:
        return
    _, block_size, heads_kv, _ = k_cache.shape
    tokens = torch.arange(total_q, device=q.device, dtype=query_start.dtype)
    seq_of_token = torch.searchsorted(query_start[1:].contiguous(), tokens, right=True)
    block_n = max(16, min(64, triton.next_power_of_2(block_size)))
    _paged_attention_kernel[(total_q, heads_q)](
        q, k_cache, v_cache, out, block_tables, context_lens, query_start, seq_of_token,
        block_tables.shape[1], block_size, heads_q, heads_kv, head_dim, scale * math.log2(math.e),
        sliding_window, softcap, SOFTCAP=softcap > 0, BLOCK_N=block_n,
        BLOCK_D=triton.next_power_of_2(head_dim), num_warps=4)
