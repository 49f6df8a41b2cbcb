"""The row-chunk loop shared by the fused linear ops.

For each chunk of ``C`` rows: ``logits = hidden[chunk] @ weight.T (+ bias)`` into one reused
``[C, V]`` buffer, a per-row kernel turns the buffer into the per-row loss and, in place, the
loss gradient w.r.t. the logits; then ``grad_hidden[chunk] = G @ weight``,
``grad_weight += G.T @ hidden[chunk]`` and ``grad_bias += G.sum(0)``. Peak extra memory is the
buffer(s), O(C x V), never N x V. Weight and bias gradients accumulate in float32.

On the CPU, the ops run 16-bit inputs through this loop in float32 (:func:`cpu_float32`, then
:func:`grads_in_dtypes`): CPU GEMMs cannot return fp32 from 16-bit operands, so the logits would
be rounded to 16 bits before the softmax.
"""

from __future__ import annotations

from typing import Callable

import torch

# Per logits buffer: keep CPU chunks cache- and RSS-friendly, GPU chunks large enough that the
# GEMMs stay compute-bound (>= 1k rows at LLM widths).
_CPU_BUFFER_BYTES = 96 << 20
_GPU_BUFFER_BYTES = 1 << 30
_GPU_MAX_ROWS = 4096
_SIXTEEN_BIT = (torch.bfloat16, torch.float16)


def default_chunk_size(rows: int, vocab: int, dtype: torch.dtype, device: torch.device) -> int:
    """Rows per chunk chosen from V, the dtype and the device (capped at ``rows``); on the CPU the
    logits buffer is fp32 for 16-bit inputs too (:func:`cpu_float32`), so it is sized as fp32."""
    element_bytes = torch.empty((), dtype=dtype).element_size()
    if device.type == "cuda":
        chunk = min(_GPU_MAX_ROWS, _GPU_BUFFER_BYTES // (vocab * element_bytes))
    else:
        chunk = _CPU_BUFFER_BYTES // (vocab * max(element_bytes, 4))
    chunk = max(32, chunk // 32 * 32)
    return max(1, min(rows, chunk))


def grad_flags(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[bool, bool, bool]:
    """Which of hidden, weight and bias need a gradient from this call (autograd on and requires_grad)."""
    wanted = torch.is_grad_enabled()
    return (wanted and hidden.requires_grad, wanted and weight.requires_grad,
            wanted and bias is not None and bias.requires_grad)


def cpu_float32(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """The tensors, those that are bf16/fp16 on a CPU as float32 copies (others and None as they are)."""
    return tuple(t.float() if t is not None and t.device.type == "cpu" and t.dtype in _SIXTEEN_BIT else t
                 for t in tensors)


def grads_in_dtypes(grads, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """:func:`linear_chunks`' ``(grad_hidden, grad_weight, grad_bias)`` cast to the dtypes these
    (original, not :func:`cpu_float32`) inputs give them: the fake ops' dtypes."""
    dtypes = (hidden.dtype, weight.dtype, hidden.dtype if bias is None else bias.dtype)
    return tuple(grad if grad.dtype == dtype else grad.to(dtype) for grad, dtype in zip(grads, dtypes))


def _chunk_logits(chunk_hidden, weight, buffer, min_gemm_rows):
    rows = chunk_hidden.shape[0]
    if rows >= min_gemm_rows:
        return torch.mm(chunk_hidden, weight.t(), out=buffer[:rows])
    padded = chunk_hidden.new_zeros(min_gemm_rows, chunk_hidden.shape[1])
    padded[:rows] = chunk_hidden
    return buffer[:rows].copy_(torch.mm(padded, weight.t())[:rows])


def _accumulate_outer(accumulator: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> None:
    """``accumulator (fp32) += left @ right`` for fp32 or 16-bit operands."""
    if left.dtype == torch.float32:
        accumulator.addmm_(left, right)
    elif left.is_cuda:
        torch.addmm(accumulator, left, right, out_dtype=torch.float32, out=accumulator)
    else:
        accumulator.add_(torch.mm(left, right))


def linear_chunks(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    rows_kernel: Callable[[torch.Tensor, slice, torch.Tensor | None], None],
    *,
    chunk_size: int,
    grad_hidden: bool = False,
    grad_weight: bool = False,
    grad_bias: bool = False,
    min_gemm_rows: int = 0,
):
    """Run ``rows_kernel(logits, rows, grad)`` over row chunks of ``hidden @ weight.T + bias``.

    Args:
        hidden: ``[N, H]`` contiguous; weight: ``[V, H]``; bias: ``[V]`` or None.
        rows_kernel: reads the chunk's logits (``[C, V]``, rows ``rows`` of the batch) and, when
            ``grad`` is not None, writes d(loss)/d(logits) into it (``grad`` is the logits buffer).
        chunk_size: rows per chunk; grad_*: which gradients to compute.
        min_gemm_rows: compute the logits of a smaller chunk on zero-padded rows. BLAS GEMMs
            take other code paths (other rounding) for very few rows, so padding keeps each
            row's logits independent of how many rows share its chunk (batch invariance).

    Returns:
        ``(grad_hidden, grad_weight, grad_bias)`` in the inputs' dtypes, each an empty tensor
        when not requested.
    """
    rows, vocab = hidden.shape[0], weight.shape[0]
    compute_grad = grad_hidden or grad_weight or grad_bias
    # a fresh empty tensor per absent gradient: custom-op outputs must not alias one another
    hidden_grad = torch.empty_like(hidden) if grad_hidden else hidden.new_empty(0)
    weight_grad = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if grad_weight else hidden.new_empty(0)
    bias_grad = torch.zeros(vocab, dtype=torch.float32, device=weight.device) if grad_bias else hidden.new_empty(0)
    buffer = hidden.new_empty(min(chunk_size, rows), vocab)
    for start in range(0, rows, chunk_size):
        stop = min(rows, start + chunk_size)
        chunk_hidden = hidden[start:stop]
        logits = _chunk_logits(chunk_hidden, weight, buffer, min_gemm_rows)
        if bias is not None:
            logits += bias
        rows_kernel(logits, slice(start, stop), logits if compute_grad else None)
        if grad_hidden:
            torch.mm(logits, weight, out=hidden_grad[start:stop])
        if grad_weight:
            _accumulate_outer(weight_grad, logits.t(), chunk_hidden)
        if grad_bias:
            bias_grad += logits.sum(0, dtype=torch.float32)
    weight_grad = weight_grad.to(weight.dtype) if grad_weight else weight_grad
    bias_grad = bias_grad.to(bias.dtype) if grad_bias else bias_grad
    return hidden_grad, weight_grad, bias_grad


def linear_divergence(hidden, weight, bias, row_scale, rows_kernel, *, shard=None, **chunk_options):
    """A row-weighted divergence over :func:`linear_chunks`.

    ``rows_kernel(logits, rows, loss, grad)`` also fills ``loss`` (float32 ``[C]``, the chunk's
    per-row losses) and writes the row-scaled logit gradient when ``grad`` is given. With a
    vocab-parallel ``shard`` (:mod:`sleepcore.ops._vocab_parallel`) the hidden-state gradient, a
    sum of partial products over the vocabulary shards, is all-reduced over them.

    Returns:
        ``(loss, row_loss, grad_hidden, grad_weight, grad_bias)``: ``loss = sum(row_scale * row_loss)``
        (float32 scalar), float32 ``[N]``, then the gradients of :func:`linear_chunks`.
    """
    row_loss = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    grads = linear_chunks(hidden, weight, bias, lambda logits, rows, grad: rows_kernel(logits, rows, row_loss[rows], grad),
                          **chunk_options)
    if shard is not None:
        shard.sum_(grads[0])
    return (torch.dot(row_loss, row_scale), row_loss, *grads)
