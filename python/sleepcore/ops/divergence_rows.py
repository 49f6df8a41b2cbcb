"""Device dispatch for the per-row divergence kernels (CPU: ``_C`` with OpenMP; CUDA: Triton).

Contract (shared by ``csrc/cpu/divergence_rows.h`` and ``kernels/jsd.py``): the kernels take
row chunks of raw logits ``[R, V]`` (unit column stride), a float32 ``row_scale [R]`` (0 marks
an ignored row), write float32 per-row losses ``loss [R]`` and, when ``grad`` is given,
``grad = row_scale / T * dloss/dz`` in the logits' dtype. ``grad`` may be the student buffer.
"""

from __future__ import annotations

import os

import torch

from sleepcore._core import _C, address, cpu_threads, dtype_code


def use_triton(device: torch.device, backend: str) -> bool:
    """Whether ``backend`` ("auto", "cpu" or "triton") runs the Triton kernels for ``device``."""
    if backend == "auto":
        return device.type == "cuda"
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"backend='cpu' needs CPU tensors, got tensors on {device}")
        return False
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before sleepcore is imported")
    return True


def row_stride(tensor: torch.Tensor) -> int:
    if tensor.stride(-1) != 1:
        raise ValueError("divergence row kernels need a unit stride along the vocab dimension")
    return tensor.stride(0)


def jsd_rows(student, teacher, row_scale, loss, grad, *, beta: float, temperature: float, backend: str) -> None:
    """Generalized JSD per row (and its gradient into ``grad``); see the module docstring."""
    if use_triton(student.device, backend):
        from sleepcore.kernels import jsd as triton_jsd

        triton_jsd.jsd_rows(student, teacher, row_scale, loss, grad, beta=beta, temperature=temperature)
        return
    rows, vocab = student.shape
    _C.jsd_rows(address(student), row_stride(student), address(teacher), row_stride(teacher), address(grad),
                0 if grad is None else row_stride(grad), dtype_code(student), rows, vocab, address(row_scale),
                address(loss), beta, temperature, cpu_threads())


def topk_jsd_rows(student, teacher_ids, teacher_logprobs, row_scale, loss, grad, *, beta: float,
                  temperature: float, backend: str) -> None:
    """JSD per row against a top-k teacher over k + 1 bins (and its gradient into ``grad``)."""
    if use_triton(student.device, backend):
        from sleepcore.kernels import jsd as triton_jsd

        triton_jsd.topk_jsd_rows(student, teacher_ids, teacher_logprobs, row_scale, loss, grad, beta=beta,
                                 temperature=temperature)
        return
    rows, vocab = student.shape
    _C.topk_jsd_rows(address(student), row_stride(student), address(teacher_ids), row_stride(teacher_ids),
                     address(teacher_logprobs), row_stride(teacher_logprobs), address(grad),
                     0 if grad is None else row_stride(grad), dtype_code(student), rows, vocab,
                     teacher_ids.shape[1], address(row_scale), address(loss), beta, temperature, cpu_threads())
