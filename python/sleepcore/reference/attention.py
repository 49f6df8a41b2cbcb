"""Plain-PyTorch fp32 reference of paged attention (``sleepcore.ops.paged_attention``).

Each sequence's K/V is gathered from the cache through its block table into contiguous
``[L, H_kv, D]``, kv heads are repeated for GQA, and every new query token attends to the
positions ``p <= position`` (and ``p > position - sliding_window`` when the window is > 0).
"""

from __future__ import annotations

import torch


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """``[L, H_kv, D]`` fp32: positions 0..length-1 of one sequence."""
    block_size = cache.shape[1]
    positions = torch.arange(length)
    return cache[block_table[positions // block_size].long(), positions % block_size].float()


def paged_attention(q, k_cache, v_cache, block_tables, context_lens, query_start, *, scale, sliding_window=0,
                    softcap=0.0):
    """fp32 ``[total_q, H_q, D]``; same arguments as the op (index tensors read on the host)."""
    out = torch.zeros(q.shape, dtype=torch.float32)
    group = q.shape[1] // k_cache.shape[2]
    for b in range(block_tables.shape[0]):
        start, end, length = int(query_start[b]), int(query_start[b + 1]), int(context_lens[b])
        if end == start:
            continue
        k = gather_kv(k_cache, block_tables[b], length).repeat_interleave(group, dim=1)  # [L, H_q, D]
        v = gather_kv(v_cache, block_tables[b], length).repeat_interleave(group, dim=1)
        logits = scale * torch.einsum("qhd,khd->hqk", q[start:end].float(), k)
        if softcap > 0:
            logits = softcap * torch.tanh(logits / softcap)
        position = torch.arange(length - (end - start), length)[:, None]
        keys = torch.arange(length)[None, :]
        keep = keys <= position
        if sliding_window > 0:
            keep &= keys > position - sliding_window
        probs = torch.softmax(logits.masked_fill(~keep, -float("inf")), dim=-1)
        out[start:end] = torch.einsum("hqk,khd->qhd", probs, v)
    return out
