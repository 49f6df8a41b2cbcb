"""Triton segment gather-matmul kernels for ``sleepcore.ops.batched_lora`` (forward and backward).

Derivation. Row i uses adapter k = idx[i] (``A[k]: [r, d_in]``, ``B[k]: [d_out, r]``):

    t_i = A[k] x_i,  y_i = s B[k] t_i;   u_i = B[k]^T g_i,  dx_i = s A[k]^T u_i,
    dA[k] = s sum_{i: k} u_i x_i^T = s U_k^T X_k,   dB[k] = s sum_{i: k} g_i t_i^T = s (T_k^T G_k)^T,

where X_k, G_k, T_k, U_k stack the rows of adapter k. Every product is one of three shapes:

* ``shrink``: rows ``[m, D] -> [m, R]`` through ``W[k]`` seen as ``[R, D]`` (t from A, u from B^T);
* ``expand``: ``[m, R] -> [m, D']`` through ``W[k]`` seen as ``[D', R]`` (y from B, dx from A^T);
* ``segment outer``: ``s P_k^T Q_k -> [R, D]`` summed over adapter k's rows (dA; dB written transposed).

"Seen as" is a choice of strides, so B^T and A^T are never copied.

Layout (Punica's SGMV idea, built here without a host sync): the rows are sorted by adapter on the
device (stable argsort; -1 rows first and never touched); adapter k owns the sorted positions
``[start_k, end_k)``, cut into tiles of ``BLOCK_M`` rows that never cross a segment. The tile
count is at most ``ceil(N / BLOCK_M) + K``, so the grid has that static size; each program reads
its (adapter, first, stop) from a small table computed with cumsum/searchsorted on the device and
unused programs get an empty range. Tiles gather their rows through the sort order, so x, g and y
stay in the caller's row order. ``segment outer`` runs one program per (adapter, column tile) and
loops over the adapter's rows, so an adapter without rows writes a zero gradient.

Precision: every tile is converted to fp32 right after its load and multiplied with
``input_precision="ieee"`` (no TF32), the rank dimension is padded to ``BLOCK_R >= 16`` with
masked zeros, and the kernels write fp32 buffers that the wrapper casts to the inputs' dtype.
Index values outside ``[-1, K)`` are mapped to -1 (a zero row), not checked (that needs a sync).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M = 32
BLOCK_D = 64


@triton.jit
def _tile_rows(order_ptr, adapter_ptr, first_ptr, stop_ptr, BLOCK_M: tl.constexpr):
    """This program's adapter, its rows (original indices, int64) and their validity mask."""
    pid = tl.program_id(0)
    k = tl.load(adapter_ptr + pid)
    positions = tl.load(first_ptr + pid) + tl.arange(0, BLOCK_M)
    valid = positions < tl.load(stop_ptr + pid)
    rows = tl.load(order_ptr + positions, mask=valid, other=0).to(tl.int64)
    return k, rows, valid


@triton.jit
def _shrink_kernel(x_ptr, w_ptr, out_ptr, order_ptr, adapter_ptr, first_ptr, stop_ptr, D, R,
                   stride_xm, stride_wk, stride_wr, stride_wd,
                   BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
    """out[row, :R] = W[k] @ x[row] for the tile's rows (out: fp32 ``[N, BLOCK_R]``)."""
    k, rows, valid = _tile_rows(order_ptr, adapter_ptr, first_ptr, stop_ptr, BLOCK_M)
    ranks = tl.arange(0, BLOCK_R)
    acc = tl.zeros([BLOCK_M, BLOCK_R], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=valid[:, None] & (cols[None, :] < D),
                    other=0.0).to(tl.float32)
        w = tl.load(w_ptr + k * stride_wk + ranks[None, :] * stride_wr + cols[:, None] * stride_wd,
                    mask=(ranks[None, :] < R) & (cols[:, None] < D), other=0.0).to(tl.float32)
        acc += tl.dot(x, w, input_precision="ieee")
    tl.store(out_ptr + rows[:, None] * BLOCK_R + ranks[None, :], acc, mask=valid[:, None])


@triton.jit
def _expand_kernel(t_ptr, w_ptr, out_ptr, order_ptr, adapter_ptr, first_ptr, stop_ptr, D, R, scale,
                   stride_wk, stride_wd, stride_wr,
                   BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
    """out[row, cols] = scale * W[k][cols] @ t[row] for the tile's rows and this column tile (out: fp32 ``[N, D]``)."""
    k, rows, valid = _tile_rows(order_ptr, adapter_ptr, first_ptr, stop_ptr, BLOCK_M)
    ranks = tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    t = tl.load(t_ptr + rows[:, None] * BLOCK_R + ranks[None, :], mask=valid[:, None], other=0.0)
    w = tl.load(w_ptr + k * stride_wk + ranks[:, None] * stride_wr + cols[None, :] * stride_wd,
                mask=(ranks[:, None] < R) & (cols[None, :] < D), other=0.0).to(tl.float32)
    out = tl.dot(t, w, input_precision="ieee") * scale
    tl.store(out_ptr + rows[:, None] * D + cols[None, :], out, mask=valid[:, None] & (cols[None, :] < D))


@triton.jit
def _segment_outer_kernel(p_ptr, q_ptr, out_ptr, order_ptr, start_ptr, end_ptr, D, R, scale,
                          stride_qm, stride_ok, stride_or, stride_od,
                          BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
    """out[k][:R, cols] = scale * sum over adapter k's rows of p[row, :R] q[row, cols]^T (p: fp32 ``[N, BLOCK_R]``)."""
    k = tl.program_id(0)
    ranks = tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    end = tl.load(end_ptr + k)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    for m0 in range(tl.load(start_ptr + k), end, BLOCK_M):
        positions = m0 + tl.arange(0, BLOCK_M)
        valid = positions < end
        rows = tl.load(order_ptr + positions, mask=valid, other=0).to(tl.int64)
        p = tl.load(p_ptr + rows[:, None] * BLOCK_R + ranks[None, :], mask=valid[:, None], other=0.0)
        q = tl.load(q_ptr + rows[:, None] * stride_qm + cols[None, :], mask=valid[:, None] & (cols[None, :] < D),
                    other=0.0).to(tl.float32)
        acc += tl.dot(tl.trans(p), q, input_precision="ieee")
    tl.store(out_ptr + k * stride_ok + ranks[:, None] * stride_or + cols[None, :] * stride_od, acc * scale,
             mask=(ranks[:, None] < R) & (cols[None, :] < D))


class _Layout:
    """Rows sorted by adapter and the tile table, all on the device (no host sync)."""

    def __init__(self, adapter_index: torch.Tensor, adapters: int):
        rows = adapter_index.shape[0]
        index = torch.where((adapter_index >= 0) & (adapter_index < adapters), adapter_index, -1)
        self.order = torch.argsort(index, stable=True)
        counts = torch.zeros(adapters + 1, dtype=torch.int64, device=index.device)
        counts = counts.index_add_(0, index + 1, torch.ones_like(index))[1:]
        self.end = torch.cumsum(counts, 0) + (rows - counts.sum())  # -1 rows come first in the order
        self.start = self.end - counts
        tiles = (counts + BLOCK_M - 1) // BLOCK_M
        tile_end = torch.cumsum(tiles, 0)
        self.grid = triton.cdiv(rows, BLOCK_M) + adapters
        program = torch.arange(self.grid, device=index.device)
        adapter = torch.searchsorted(tile_end, program, right=True)
        used = adapter < adapters
        self.adapter = adapter.clamp_max(adapters - 1)
        first = self.start[self.adapter] + (program - tile_end[self.adapter] + tiles[self.adapter]) * BLOCK_M
        self.first = torch.where(used, first, 0)
        self.stop = torch.where(used, torch.minimum(first + BLOCK_M, self.end[self.adapter]), 0)

    def tables(self):
        return self.order, self.adapter, self.first, self.stop


def _block_r(rank: int) -> int:
    return max(16, triton.next_power_of_2(rank))


def _shrink(layout, rows, weight, rank, strides):
    """fp32 ``[N, BLOCK_R]``: each row times its adapter's ``weight[k]`` seen as ``[rank, D]`` by ``strides``."""
    out = rows.new_zeros(rows.shape[0], _block_r(rank), dtype=torch.float32)
    _shrink_kernel[(layout.grid,)](rows, weight, out, *layout.tables(), rows.shape[1], rank, rows.stride(0),
                                   *strides, BLOCK_M=BLOCK_M, BLOCK_D=BLOCK_D, BLOCK_R=out.shape[1])
    return out


def _expand(layout, t, weight, rank, width, scale, strides):
    """fp32 ``[N, width]``: ``scale * weight[k] @ t[row]`` with ``weight[k]`` seen as ``[width, rank]``; 0 for -1 rows."""
    out = t.new_zeros(t.shape[0], width)
    _expand_kernel[(layout.grid, triton.cdiv(width, BLOCK_D))](t, weight, out, *layout.tables(), width, rank, scale,
                                                               *strides, BLOCK_M=BLOCK_M, BLOCK_D=BLOCK_D,
                                                               BLOCK_R=t.shape[1])
    return out


def _segment_outer(layout, p, q, out, rank, scale, strides):
    """``out[k]`` (fp32, seen as ``[rank, D]`` by ``strides``) = ``scale * P_k^T Q_k`` over adapter k's rows."""
    adapters, width = out.shape[0], q.shape[1]
    _segment_outer_kernel[(adapters, triton.cdiv(width, BLOCK_D))](
        p, q, out, layout.order, layout.start, layout.end, width, rank, scale, q.stride(0), out.stride(0), *strides,
        BLOCK_M=BLOCK_M, BLOCK_D=BLOCK_D, BLOCK_R=p.shape[1])
    return out


def forward(x, A, B, adapter_index, scale: float):
    """``y [N, d_out]`` in x's dtype; x ``[N, d_in]``, A ``[K, r, d_in]``, B ``[K, d_out, r]`` contiguous."""
    adapters, rank, _ = A.shape
    layout = _Layout(adapter_index, adapters)
    t = _shrink(layout, x, A, rank, (A.stride(0), A.stride(1), A.stride(2)))
    y = _expand(layout, t, B, rank, B.shape[1], scale, (B.stride(0), B.stride(1), B.stride(2)))
    return y.to(x.dtype)


def backward(grad_y, x, A, B, adapter_index, scale: float, grad_x: bool, grad_A: bool, grad_B: bool):
    """``(dx, dA, dB)`` in the inputs' dtypes (an empty tensor where not wanted); see the derivation."""
    adapters, rank, d_in = A.shape
    layout = _Layout(adapter_index, adapters)
    dx, dA, dB = x.new_empty(0), A.new_empty(0), B.new_empty(0)  # distinct: custom op outputs may not alias
    if grad_x or grad_A:
        u = _shrink(layout, grad_y, B, rank, (B.stride(0), B.stride(2), B.stride(1)))  # B[k]^T seen as [r, d_out]
        if grad_x:  # A[k]^T seen as [d_in, r]
            dx = _expand(layout, u, A, rank, d_in, scale, (A.stride(0), A.stride(2), A.stride(1))).to(x.dtype)
        if grad_A:
            out = A.new_empty(A.shape, dtype=torch.float32)
            dA = _segment_outer(layout, u, x, out, rank, scale, (out.stride(1), out.stride(2))).to(A.dtype)
    if grad_B:
        t = _shrink(layout, x, A, rank, (A.stride(0), A.stride(1), A.stride(2)))
        out = B.new_empty(B.shape, dtype=torch.float32)  # dB[k]^T = s T_k^T G_k: written transposed
        dB = _segment_outer(layout, t, grad_y, out, rank, scale, (out.stride(2), out.stride(1))).to(B.dtype)
    return dx, dA, dB
