"""Distillation loss modules."""

from __future__ import annotations

import torch

from sleepcore import ops
from sleepcore.ops import _checks


class FusedLinearJSDLoss(torch.nn.Module):
    """Generalized JSD between student and teacher ``lm_head`` outputs, from hidden states.

    A module form of :func:`sleepcore.ops.fused_linear_jsd` holding the options. Unlike Liger's
    ``LigerFusedLinearJSDLoss`` there is no hidden hard-label cross-entropy term: the loss is the
    divergence alone.

    Example::

        loss_fn = FusedLinearJSDLoss(beta=0.5, temperature=1.0)
        loss = loss_fn(student_hidden, student.lm_head.weight, teacher_hidden, teacher.lm_head.weight, labels)

    Args:
        beta: in [0, 1] (TRL convention: 0 forward KL, 1 reverse KL).
        temperature: > 0.
        ignore_index: label value of ignored tokens.
        reduction: ``"batchmean"``, ``"sum"`` or ``"none"``.
        chunk_size: rows per chunk, or None to let the op choose.
    """

    def __init__(self, beta: float = 0.5, temperature: float = 1.0, ignore_index: int = -100,
                 reduction: str = "batchmean", chunk_size: int | None = None):
        super().__init__()
        self.beta = _checks.beta(beta)
        self.temperature = _checks.temperature(temperature)
        self.ignore_index = ignore_index
        self.reduction = _checks.reduction(reduction)
        self.chunk_size = _checks.chunk_size(chunk_size)

    def forward(self, student_hidden, student_weight, teacher_hidden, teacher_weight, labels=None, *,
                num_items_in_batch=None, student_bias=None, teacher_bias=None):
        """Shapes as in :func:`sleepcore.ops.fused_linear_jsd`; returns a float32 loss."""
        return ops.fused_linear_jsd(student_hidden, student_weight, teacher_hidden, teacher_weight, labels,
                                    beta=self.beta, temperature=self.temperature, ignore_index=self.ignore_index,
                                    reduction=self.reduction, num_items_in_batch=num_items_in_batch,
                                    student_bias=student_bias, teacher_bias=teacher_bias,
                                    chunk_size=self.chunk_size)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, temperature={self.temperature}, reduction={self.reduction!r}"
