"""``generalized_jsd``: TRL's generalized JSD on given logits ``[..., V]``, one fused pass per row.

Same maths as :mod:`sleepcore.ops.fused_linear_jsd` (see there), applied to logits that already
exist. The row kernel (``_C`` on CPU, Triton on CUDA) reads each row of both logits a few times
and writes the per-row loss and, when a gradient is wanted, the ``[N, V]`` logit gradient: the
only ``[N, V]`` tensor the op allocates.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sleepcore.ops import _checks
from sleepcore.ops._reduction import keep_mask, row_scale as reduction_row_scale
from sleepcore.ops._row_weighted import RowWeightedSpec, register_row_weighted
from sleepcore.ops.divergence_rows import jsd_rows


def _run(student_logits, teacher_logits, row_scale, beta, temperature, backend, grad_logits):
    row_loss = torch.empty(student_logits.shape[0], dtype=torch.float32, device=student_logits.device)
    grad = torch.empty_like(student_logits) if grad_logits else None
    jsd_rows(student_logits, teacher_logits, row_scale, row_loss, grad, beta=beta, temperature=temperature,
             backend=backend)
    loss = torch.dot(row_loss, row_scale)
    return loss, row_loss, student_logits.new_empty(0) if grad is None else grad


@torch.library.custom_op("sleepcore::generalized_jsd", mutates_args=())
def _generalized_jsd(student_logits: Tensor, teacher_logits: Tensor, row_scale: Tensor, beta: float,
                     temperature: float, backend: str, grad_logits: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _run(student_logits, teacher_logits, row_scale, beta, temperature, backend, grad_logits)


@torch.library.custom_op("sleepcore::generalized_jsd_rows", mutates_args=())
def _generalized_jsd_rows(student_logits: Tensor, teacher_logits: Tensor, row_scale: Tensor, beta: float,
                          temperature: float, backend: str) -> Tensor:
    return _run(student_logits, teacher_logits, row_scale, beta, temperature, backend, False)[1]


register_row_weighted(_generalized_jsd, _generalized_jsd_rows,
                      RowWeightedSpec(grad_inputs=(0,), row_scale_input=2))


def generalized_jsd(student_logits, teacher_logits, labels=None, *, beta=0.5, temperature=1.0, ignore_index=-100,
                    reduction="batchmean", num_items_in_batch=None, backend="auto"):
    """Generalized JSD between student and teacher logits (TRL's ``generalized_jsd_loss``).

    Args:
        student_logits: ``[..., V]`` fp32/bf16/fp16. Gets a gradient (in its own dtype).
        teacher_logits: same shape and dtype. Never gets a gradient.
        labels: integer labels of the leading shape (``ignore_index`` marks ignored tokens),
            a bool keep-mask, or None.
        beta, temperature, reduction, num_items_in_batch, backend: as in
            :func:`sleepcore.ops.fused_linear_jsd`. ``"batchmean"`` without labels divides by the
            number of tokens (all leading dims), as TRL does for ``[N, V]`` inputs.

    Returns:
        A float32 scalar, or float32 per-token values of the leading shape for ``"none"``.
    """
    _checks.tensor("student_logits", student_logits, ndims=tuple(range(1, 9)))
    _checks.tensor("teacher_logits", teacher_logits, ndims=tuple(range(1, 9)))
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape (same V and tokens)")
    _checks.same_dtype(student_logits=student_logits, teacher_logits=teacher_logits)
    device = _checks.same_device(student_logits=student_logits, teacher_logits=teacher_logits)
    leading, vocab = student_logits.shape[:-1], student_logits.shape[-1]
    labels = _checks.labels(labels, leading, device)
    beta, temperature, reduction, backend = _checks.loss_options(beta, temperature, reduction, backend,
                                                                 num_items_in_batch)
    student = student_logits.reshape(-1, vocab).contiguous()
    teacher = teacher_logits.detach().reshape(-1, vocab).contiguous()
    mask = keep_mask(labels, student.shape[0], ignore_index, device)
    inputs = (student, teacher, reduction_row_scale(mask, reduction, num_items_in_batch), beta, temperature, backend)
    if reduction == "none":
        return torch.ops.sleepcore.generalized_jsd_rows(*inputs).reshape(leading)
    wants = torch.is_grad_enabled() and student.requires_grad
    return torch.ops.sleepcore.generalized_jsd(*inputs, wants)[0]
