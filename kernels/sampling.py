"""Triton token sampler: temperature, top-k, top-p, min-p and a seeded Gumbel-max draw, per row.

Same contract as the CPU kernel in ``csrc/cpu/sampling.h`` (and the same random stream: the hash
below is the C++ one). Per row, with x the raw logits, T > 0, z = x / T, d_j = z_j - max z (<= 0)
and p_j = e^{d_j} (unnormalised, max p = 1):

* Order key: for d <= 0, the bits of -d as int32 grow as d falls (-inf -> 0x7f800000), so "the n
  largest d" is {key <= K} for an integer K, and thresholds are found exactly by bisection on K
  in [-1, 0x7f800000]: 31 iterations, each a masked count or sum over the row. No sort.
* top-k: K_k = min K with #{key <= K} >= k (ties at the boundary kept).
* top-p on the top-k set: K_p = min K <= K_k with sum_{key <= K} p >= top_p * sum_{key <= K_k} p
  (both sums run the same tile loop, so K = K_k always qualifies).
* min-p: p_j >= min_p (max p = 1).
* Draw: argmax over the allowed set of d_j + G_j, G_j = -log(-log U_j), U_j = (2u + 1) 2^-24 with u
  the top 23 bits of fmix32(fmix32(j ^ k0) + k1), (k0, k1) mixed from (seed, step): a row's draw
  depends on its (seed, step) and logits only. Greedy rows (T = 0): the first argmax of x.
* truncated log-prob = d_token - log sum_allowed p (0 for greedy rows).
* A row with NaN or +inf (or no finite entry) sets bad[row] = 1 (checked by the ops layer).

Layout: ROWS rows per program ([ROWS, BLOCK_V] tiles, looped along V): 1 on a GPU, more under the
interpreter, where the cost is per operation rather than per element.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_NEG_INF = tl.constexpr(-float("inf"))
_KEY_INF = tl.constexpr(0x7F800000)  # key of d = -inf


@triton.jit
def _fmix(h):
    """murmur3's 32-bit finaliser (uint32 in, uint32 out)."""
    h ^= h >> 16
    h *= 0x85EBCA6B
    h ^= h >> 13
    h *= 0xC2B2AE35
    h ^= h >> 16
    return h


@triton.jit
def _row_key(seeds_ptr, steps_ptr, rows, rmask, ROWS: tl.constexpr):
    seed = tl.load(seeds_ptr + rows, mask=rmask, other=0)
    step = tl.load(steps_ptr + rows, mask=rmask, other=0)
    a = tl.full([ROWS], 0x243F6A88, tl.uint32)
    b = tl.full([ROWS], 0x85A308D3, tl.uint32)
    for i in tl.static_range(4):
        word = seed if i < 2 else step
        w = ((word >> (32 * (i % 2))) & 0xFFFFFFFF).to(tl.uint32)
        a = _fmix(a ^ w) + 0x9E3779B9
        b = _fmix(b + w) ^ 0x7F4A7C15
    return a, b


@triton.jit
def _tile(base, v0, V, rmask, scale, zmax, BLOCK_V: tl.constexpr):
    """Columns, mask, d (<= 0; -inf where masked), p = e^d and the order key of one tile."""
    cols = v0 + tl.arange(0, BLOCK_V)
    mask = rmask[:, None] & (cols < V)[None, :]
    x = tl.load(base + cols[None, :], mask=mask, other=-float("inf")).to(tl.float32)
    d = tl.minimum(x * scale[:, None] - zmax[:, None], 0.0)
    key = (-d).to(tl.int32, bitcast=True) & 0x7FFFFFFF
    return cols, mask, d, tl.exp(d), key


@triton.jit
def _masked_mass(base, V, rmask, scale, zmax, bound, ROWS: tl.constexpr, BLOCK_V: tl.constexpr):
    """sum over {key <= bound} of p, per row."""
    mass = tl.zeros([ROWS], tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols, mask, d, p, key = _tile(base, v0, V, rmask, scale, zmax, BLOCK_V)
        mass += tl.sum(tl.where(key <= bound[:, None], p, 0.0), axis=1)
    return mass


@triton.jit
def _sample_kernel(x_ptr, x_stride, temp_ptr, topk_ptr, topp_ptr, minp_ptr, seeds_ptr, steps_ptr, ids_ptr,
                   trunc_ptr, bad_ptr, R, V, ROWS: tl.constexpr, BLOCK_V: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    rmask = rows < R
    base = x_ptr + rows.to(tl.int64)[:, None] * x_stride

    # pass 1: max and validity
    # Tile-shaped accumulators, reduced once after the loop: Triton 3.6's thread-locality pass
    # asserts on a loop-carried row reduction whose result has more than one use (H200, 2026-12-04).
    xmax_tile = tl.full([ROWS, BLOCK_V], -float("inf"), tl.float32)
    bad_tile = tl.zeros([ROWS, BLOCK_V], tl.int32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        mask = rmask[:, None] & (cols < V)[None, :]
        x = tl.load(base + cols[None, :], mask=mask, other=-float("inf")).to(tl.float32)
        bad_tile |= ((x != x) | (x == float("inf"))).to(tl.int32)
        xmax_tile = tl.maximum(xmax_tile, x)
    xmax = tl.max(xmax_tile, axis=1)
    bad = tl.max(bad_tile, axis=1) | (xmax == -float("inf")).to(tl.int32)
    tl.store(bad_ptr + rows, bad, mask=rmask)

    temperature = tl.load(temp_ptr + rows, mask=rmask, other=1.0)
    greedy = temperature == 0.0
    scale = (1.0 / tl.where(greedy, 1.0, temperature)).to(tl.float32)
    zmax = tl.where(bad != 0, 0.0, xmax * scale)

    # top-k threshold
    top_k = tl.load(topk_ptr + rows, mask=rmask, other=0)
    need_k = (top_k > 0) & (top_k < V) & ~greedy & rmask
    k_key = tl.full([ROWS], _KEY_INF, tl.int32)
    if tl.max(need_k.to(tl.int32), axis=0) > 0:
        lo = tl.full([ROWS], -1, tl.int32)
        hi = tl.full([ROWS], _KEY_INF, tl.int32)
        for _ in range(31):
            mid = lo + (hi - lo) // 2
            count = tl.zeros([ROWS], tl.int32)
            for v0 in range(0, V, BLOCK_V):
                cols, mask, d, p, key = _tile(base, v0, V, rmask, scale, zmax, BLOCK_V)
                count += tl.sum(((key <= mid[:, None]) & mask).to(tl.int32), axis=1)
            ok = count >= top_k
            hi = tl.where(ok, mid, hi)
            lo = tl.where(ok, lo, mid)
        k_key = tl.where(need_k, hi, k_key)

    # top-p threshold on the top-k set
    top_p = tl.load(topp_ptr + rows, mask=rmask, other=1.0)
    need_p = (top_p < 1.0) & ~greedy & rmask
    p_key = k_key
    if tl.max(need_p.to(tl.int32), axis=0) > 0:
        target = top_p * _masked_mass(base, V, rmask, scale, zmax, k_key, ROWS, BLOCK_V)
        lo = tl.full([ROWS], -1, tl.int32)
        hi = k_key
        for _ in range(31):
            mid = lo + (hi - lo) // 2
            ok = _masked_mass(base, V, rmask, scale, zmax, mid, ROWS, BLOCK_V) >= target
            hi = tl.where(ok, mid, hi)
            lo = tl.where(ok, lo, mid)
        p_key = tl.where(need_p, hi, k_key)

    # draw: Gumbel-max over the allowed set
    min_p = tl.where(greedy, 0.0, tl.load(minp_ptr + rows, mask=rmask, other=0.0))
    k0, k1 = _row_key(seeds_ptr, steps_ptr, rows, rmask, ROWS)
    best = tl.full([ROWS], -float("inf"), tl.float32)
    best_j = tl.zeros([ROWS], tl.int32)
    mass = tl.zeros([ROWS], tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols, mask, d, p, key = _tile(base, v0, V, rmask, scale, zmax, BLOCK_V)
        allowed = (key <= p_key[:, None]) & (p >= min_p[:, None]) & (d > _NEG_INF)
        bits = _fmix(_fmix(cols.to(tl.uint32)[None, :] ^ k0[:, None]) + k1[:, None])
        u = (bits >> 9).to(tl.int32).to(tl.float32) * 1.1920928955078125e-07 + 5.960464477539063e-08
        gumbel = -tl.log(-tl.log(u))
        score = tl.where(allowed, tl.where(greedy[:, None], d, d + gumbel), _NEG_INF)
        tile_best = tl.max(score, axis=1)
        tile_j = tl.argmax(score, axis=1).to(tl.int32) + v0
        better = tile_best > best
        best = tl.where(better, tile_best, best)
        best_j = tl.where(better, tile_j, best_j)
        mass += tl.sum(tl.where(allowed, p, 0.0), axis=1)
    x_tok = tl.load(base + best_j[:, None], mask=rmask[:, None], other=0.0).to(tl.float32)
    d_tok = tl.sum(tl.minimum(x_tok * scale[:, None] - zmax[:, None], 0.0), axis=1)
    trunc = tl.where(greedy, 0.0, d_tok - tl.log(tl.where(rmask, mass, 1.0)))
    tl.store(ids_ptr + rows, best_j.to(tl.int64), mask=rmask)
    tl.store(trunc_ptr + rows, trunc, mask=rmask)


def sample_rows(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                min_p: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor, token_ids: torch.Tensor,
                truncated_logp: torch.Tensor, bad: torch.Tensor) -> None:
    """Sample one token per row of ``logits`` ([R, V], fp32/bf16/fp16, unit column stride).

    Per-row inputs [R], contiguous: temperature float64 (0 = greedy), top_k int64 (0 = off),
    top_p float32 (1 = off), min_p float32 (0 = off), seeds and steps int64. Outputs [R]:
    token_ids int64, truncated_logp float32, bad int32 (1: the row has NaN/+inf or no finite
    logit; its other outputs are then meaningless). The ops layer has checked every argument.
    """
    rows, vocab = logits.shape
    if rows == 0:
        return
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    block_v = min(1024 if interpret else 4096, triton.next_power_of_2(vocab))
    per_program = min(1024, triton.next_power_of_2(rows)) if interpret else 1
    _sample_kernel[(triton.cdiv(rows, per_program),)](
        logits, logits.stride(0), temperature, top_k, top_p, min_p, seeds, steps, token_ids, truncated_logp, bad,
        rows, vocab, ROWS=per_program, BLOCK_V=block_v, num_warps=8 if block_v >= 2048 else 4)
