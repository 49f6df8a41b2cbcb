"""``batched_lora``: ``K`` low-rank adapters applied row by row in one call (multi-adapter LoRA).

Row ``i`` goes through adapter ``k = adapter_index[i]`` (``-1``: no adapter, the row's output is 0):

    t_i = A[k] x_i    [r],        y_i = scale * B[k] t_i    [d_out].

With ``g_i = dL/dy_i`` and ``u_i = B[k]^T g_i``:

    dx_i = scale * A[k]^T u_i,    dA[k] = scale * sum_{i: k} u_i x_i^T,    dB[k] = scale * sum_{i: k} g_i t_i^T.

A row's result depends on its adapter's weights only, so ``K`` adapters trained on disjoint rows
get exactly the gradients of ``K`` separate runs (Punica's SGMV and mLoRA build on the same
identity).

CPU: the rows are sorted by adapter (a stable argsort) and every non-empty segment costs two
small GEMMs in fp32. At SmolLM2-135M's shapes (N = 2048 rows, d 576 -> 576 or 576 -> 1536,
r 16/32, 1 thread) this took 2-13 ms for K = 1..16, against 1-42 ms for one dense pass over all
``K * r`` rank rows with a one-hot mask (faster only at K = 1) and 90-340 ms for a per-row gather
of the adapter matrices and ``bmm``. Reading the index values (segment sizes) is the CPU kernel's
own business, as in the ``_C`` kernels; nothing on the op path syncs with a device. CUDA: the
Triton segment kernels of ``kernels/batched_lora.py`` (index values there are not checked: an
index outside ``[-1, K)`` gives a zero row).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sleepcore import validation
from sleepcore.ops import _checks
from sleepcore.ops.divergence_rows import use_triton


def _segments(adapter_index: Tensor, adapters: int) -> tuple[Tensor, list[tuple[int, int, int]]]:
    """``order`` (rows sorted by adapter, ``-1`` first) and ``(k, start, end)`` of each non-empty segment."""
    if adapter_index.numel() and (adapter_index.min() < -1 or adapter_index.max() >= adapters):
        raise ValueError(f"adapter_index values must be in [-1, {adapters}) (K = {adapters} adapters)")
    order = torch.argsort(adapter_index, stable=True)
    counts = torch.bincount(adapter_index + 1, minlength=adapters + 1).tolist()
    segments, start = [], counts[0]
    for k, count in enumerate(counts[1:]):
        if count:
            segments.append((k, start, start + count))
        start += count
    return order, segments


def _cpu_forward(x, A, B, adapter_index, scale):
    order, segments = _segments(adapter_index, A.shape[0])
    xs = x.index_select(0, order).float()
    ys = xs.new_zeros(x.shape[0], B.shape[1])
    for k, start, end in segments:
        torch.mm(torch.mm(xs[start:end], A[k].float().T), B[k].float().T, out=ys[start:end])
    return torch.empty_like(ys).index_copy_(0, order, ys.mul_(scale)).to(x.dtype)


def _cpu_backward(grad_y, x, A, B, adapter_index, scale, grad_x, grad_A, grad_B):
    order, segments = _segments(adapter_index, A.shape[0])
    xs, gs = x.index_select(0, order).float(), grad_y.index_select(0, order).float()
    dxs = xs.new_zeros(xs.shape) if grad_x else None
    dA = A.new_zeros(A.shape, dtype=torch.float32) if grad_A else None
    dB = B.new_zeros(B.shape, dtype=torch.float32) if grad_B else None
    for k, start, end in segments:
        a, b, x_k, g_k = A[k].float(), B[k].float(), xs[start:end], gs[start:end]
        u = g_k @ b  # [n_k, r]
        if grad_x:
            torch.mm(u, a, out=dxs[start:end])
        if grad_A:
            torch.mm(u.T, x_k, out=dA[k])
        if grad_B:
            torch.mm(g_k.T, x_k @ a.T, out=dB[k])
    dx = None if dxs is None else torch.empty_like(dxs).index_copy_(0, order, dxs.mul_(scale)).to(x.dtype)
    return (x.new_empty(0) if dx is None else dx,
            x.new_empty(0) if dA is None else dA.mul_(scale).to(A.dtype),
            x.new_empty(0) if dB is None else dB.mul_(scale).to(B.dtype))


@torch.library.custom_op("sleepcore::batched_lora", mutates_args=())
def _batched_lora(x: Tensor, A: Tensor, B: Tensor, adapter_index: Tensor, scale: float, backend: str) -> Tensor:
    if use_triton(x.device, backend):
        from sleepcore.kernels import batched_lora as triton_lora

        return triton_lora.forward(x, A, B, adapter_index, scale)
    return _cpu_forward(x, A, B, adapter_index, scale)


@_batched_lora.register_fake
def _(x, A, B, adapter_index, scale, backend):
    return x.new_empty(x.shape[0], B.shape[1])


@torch.library.custom_op("sleepcore::batched_lora_backward", mutates_args=())
def _batched_lora_backward(grad_y: Tensor, x: Tensor, A: Tensor, B: Tensor, adapter_index: Tensor, scale: float,
                           backend: str, grad_x: bool, grad_A: bool, grad_B: bool) -> tuple[Tensor, Tensor, Tensor]:
    if use_triton(x.device, backend):
        from sleepcore.kernels import batched_lora as triton_lora

        return triton_lora.backward(grad_y, x, A, B, adapter_index, scale, grad_x, grad_A, grad_B)
    return _cpu_backward(grad_y, x, A, B, adapter_index, scale, grad_x, grad_A, grad_B)


@_batched_lora_backward.register_fake
def _(grad_y, x, A, B, adapter_index, scale, backend, grad_x, grad_A, grad_B):
    return (x.new_empty(x.shape if grad_x else 0), A.new_empty(A.shape if grad_A else 0),
            B.new_empty(B.shape if grad_B else 0))


def _setup_context(ctx, inputs, output):
    x, A, B, adapter_index, scale, backend = inputs
    ctx.options = (scale, backend)
    ctx.save_for_backward(x, A, B, adapter_index)


def _backward(ctx, grad_y):
    x, A, B, adapter_index = ctx.saved_tensors
    flags = tuple(ctx.needs_input_grad[:3])
    grads = torch.ops.sleepcore.batched_lora_backward(grad_y.contiguous(), x, A, B, adapter_index, *ctx.options,
                                                      *flags)
    return (*(g if wanted else None for g, wanted in zip(grads, flags)), None, None, None)


_batched_lora.register_autograd(_backward, setup_context=_setup_context)


def batched_lora(x: Tensor, A: Tensor, B: Tensor, adapter_index: Tensor, scale: float = 1.0, *,
                 backend: str = "auto") -> Tensor:
    """``y[i] = scale * B[k] @ A[k] @ x[i]`` with ``k = adapter_index[i]``; rows with ``k = -1`` give 0.

    Args:
        x: ``[N, d_in]``, fp32/bf16/fp16 (any strides: non-contiguous inputs are copied).
        A: ``[K, r, d_in]`` and B: ``[K, d_out, r]``, x's dtype and device (``K, r >= 1``).
        adapter_index: int64/int32 ``[N]``, each row's adapter in ``[-1, K)``; -1: no adapter.
        scale: a finite number multiplying every output (LoRA's ``alpha / r``).
        backend: ``"auto"`` (CPU: torch segment GEMMs; CUDA: Triton), ``"cpu"`` or ``"triton"``
            (on CPU tensors only under ``TRITON_INTERPRET=1``).

    Returns:
        ``[N, d_out]`` in x's dtype, accumulated in fp32; differentiable w.r.t. x, A and B (their
        gradients in their dtype).

    Raises:
        TypeError / ValueError naming the argument; on CPU also ``ValueError`` for an index value
        outside ``[-1, K)`` (on CUDA such a row gives 0).
    """
    _checks.tensor("x", x, ndims=(2,))
    _checks.tensor("A", A, ndims=(3,))
    _checks.tensor("B", B, ndims=(3,))
    _checks.tensor("adapter_index", adapter_index, ndims=(1,), dtypes=(torch.int64, torch.int32))
    _checks.same_dtype(x=x, A=A, B=B)
    _checks.same_device(x=x, A=A, B=B, adapter_index=adapter_index)
    adapters, rank, d_in = A.shape
    if adapters == 0 or rank == 0:
        raise ValueError(f"A must be [K, r, d_in] with K >= 1 and r >= 1, got {tuple(A.shape)}")
    if x.shape[1] != d_in:
        raise ValueError(f"x's last dimension {x.shape[1]} must match A's d_in {d_in} (A is [K, r, d_in])")
    if B.shape[0] != adapters or B.shape[2] != rank:
        raise ValueError(f"B must be [K, d_out, r] = [{adapters}, d_out, {rank}] to match A, got {tuple(B.shape)}")
    if adapter_index.shape[0] != x.shape[0]:
        raise ValueError(f"adapter_index must have shape [{x.shape[0]}] (one per row of x), "
                         f"got {tuple(adapter_index.shape)}")
    scale = validation.number("scale", scale)
    return torch.ops.sleepcore.batched_lora(x.contiguous(), A.contiguous(), B.contiguous(),
                                            adapter_index.to(torch.int64).contiguous(), scale,
                                            _checks.backend(backend))


__all__ = ["batched_lora"]
