"""Plain-PyTorch fp32 reference for :func:`sleepcore.ops.batched_lora`: one adapter at a time."""

from __future__ import annotations

import torch


def batched_lora(x, A, B, adapter_index, scale=1.0):
    """``y[i] = scale * B[k] @ A[k] @ x[i]`` with ``k = adapter_index[i]`` (``-1``: 0), in fp32.

    Args:
        x: ``[N, d_in]``; A: ``[K, r, d_in]``; B: ``[K, d_out, r]``; adapter_index: integer ``[N]``.

    Returns:
        float32 ``[N, d_out]``, differentiable w.r.t. x, A and B.
    """
    x, A, B = x.float(), A.float(), B.float()
    y = x.new_zeros(x.shape[0], B.shape[1])
    for k in range(A.shape[0]):
        rows = adapter_index == k
        y = torch.where(rows[:, None], scale * (x @ A[k].T) @ B[k].T, y)
    return y
