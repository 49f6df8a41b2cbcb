"""The row-chunk loop shared by the fused linear losses.

For each chunk of ``C`` rows: ``logits = hidden[chunk] @ weight.T (+ bias)`` into one reused
``[C, V]`` buffer, a per-row kernel turns the buffer into the per-row loss and, in place, the
loss gradient w.r.t. the logits; then ``grad_hidden[chunk] = G @ weight``,
``grad_weight += G.T @ hidden[chunk]`` and ``grad_bias += G.sum(0)``. Peak extra memory is the
buffer(s), O(C x V), never N x V. Weight and bias gradients accumulate in float32.
"""

from __future__ import annotations

from typing import Callable

import torch

# Per logits buffer: keep CPU chunks cache- and RSS-friendly, GPU chunks large enough that the
# GEMMs stay compute-bound (>= 1k rows at LLM widths).
_CPU_BUFFER_BYTES = 96 << 20
_GPU_BUFFER_BYTES = 1 << 30
_GPU_MAX_ROWS = 4096


def default_chunk_size(rows: int, vocab: int, dtype: torch.dtype, device: torch.device) -> int:
    """Rows per chunk chosen from V, the dtype and the device (capped at ``rows``)."""
    element_bytes = torch.empty((), dtype=dtype).element_size()
    if device.type == "cuda":
        chunk = min(_GPU_MAX_ROWS, _GPU_BUFFER_BYTES // (vocab * element_bytes))
    else:
        chunk = _CPU_BUFFER_BYTES // (vocab * element_bytes)
    chunk = max(32, chunk // 32 * 32)
    return max(1, min(rows, chunk))


def grad_flags(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[bool, bool, bool]:
    """Which of hidden, weight and bias need a gradient from this call (autograd on and requires_grad)."""
    wanted = torch.is_grad_enabled()
    return (wanted and hidden.requires_grad, wanted and weight.requires_grad,
            wanted and bias is not None and bias.requires_grad)


def _accumulate_outer(accumulator: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> None:
    """``accumulator (fp32) += left @ right`` for fp32 or 16-bit operands."""
    if left.dtype == torch.float32:
        accumulator.addmm_(left, right)
    elif left.is_cuda:
        torch.addmm(accumulator, left, right, out_dtype=torch.float32, out=accumulator)
    else:
        accumulator.add_(torch.mm(left, right))


def linear_divergence(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    row_scale: torch.Tensor,
    rows_kernel: Callable[[torch.Tensor, slice, torch.Tensor, torch.Tensor | None], None],
    *,
    chunk_size: int,
    grad_hidden: bool,
    grad_weight: bool,
    grad_bias: bool,
):
    """Run ``rows_kernel(logits, rows, loss, grad)`` over row chunks of ``hidden @ weight.T + bias``.

    Args:
        hidden: ``[N, H]`` contiguous; weight: ``[V, H]``; bias: ``[V]`` or None.
        row_scale: float32 ``[N]``; the weighted loss is ``sum(row_scale * row_loss)``.
        rows_kernel: fills ``loss`` (float32 ``[C]``) for the chunk's rows and, when ``grad`` is
            not None, writes the row-scaled logit gradient into it (it is the logits buffer).
        chunk_size: rows per chunk; grad_*: which gradients to compute.

    Returns:
        ``(loss, row_loss, grad_hidden, grad_weight, grad_bias)``: a float32 scalar, float32
        ``[N]``, then gradients in the inputs' dtypes, each an empty tensor when not requested.
    """
    rows, vocab = hidden.shape[0], weight.shape[0]
    compute_grad = grad_hidden or grad_weight or grad_bias
    row_loss = torch.zeros(rows, dtype=torch.float32, device=hidden.device)
    empty = hidden.new_empty(0)
    hidden_grad = torch.empty_like(hidden) if grad_hidden else empty
    weight_grad = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if grad_weight else empty
    bias_grad = torch.zeros(vocab, dtype=torch.float32, device=weight.device) if grad_bias else empty
    buffer = hidden.new_empty(min(chunk_size, rows), vocab)
    for start in range(0, rows, chunk_size):
        stop = min(rows, start + chunk_size)
        chunk_hidden = hidden[start:stop]
        logits = torch.mm(chunk_hidden, weight.t(), out=buffer[: stop - start])
        if bias is not None:
            logits += bias
        rows_kernel(logits, slice(start, stop), row_loss[start:stop], logits if compute_grad else None)
        if grad_hidden:
            torch.mm(logits, weight, out=hidden_grad[start:stop])
        if grad_weight:
            _accumulate_outer(weight_grad, logits.t(), chunk_hidden)
        if grad_bias:
            bias_grad += logits.sum(0, dtype=torch.float32)
    loss = torch.dot(row_loss, row_scale)
    weight_grad = weight_grad.to(weight.dtype) if grad_weight else empty
    bias_grad = bias_grad.to(bias.dtype) if grad_bias else empty
    return loss, row_loss, hidden_grad, weight_grad, bias_grad
