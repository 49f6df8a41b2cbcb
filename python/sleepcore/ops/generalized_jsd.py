"""``generalized_jsd``: TRL 1.16's generalized JSD on given logits ``[..., V]``, one fused pass per row.

Same maths as :mod:`sleepcore.ops.fused_linear_jsd` (see there), applied to logits that already
exist. The row kernel (``_C`` on CPU, Triton on CUDA) reads each row of both logits a few times
and writes the per-row loss and, when a gradient is wanted, the ``[N, V]`` logit gradient: the
only ``[N, V]`` tensor the op allocates.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sleepcore.ops import _checks
from sleepcore.ops._reduction import keep_mask, trl_row_scale
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
    """Generalized JSD between student and teacher logits: TRL 1.16's ``generalized_jsd_loss``.

    The value and gradient of ``trl.experimental.gkd.GKDTrainer.generalized_jsd_loss`` for every
    scalar reduction, computed per row in fp32 without TRL's ``[..., V]`` temporaries.

    Args:
        student_logits: ``[..., V]`` (e.g. ``[B, S, V]`` or ``[N, V]``) fp32/bf16/fp16. Gets a
            gradient (in its own dtype).
        teacher_logits: same shape and dtype. Never gets a gradient.
        labels: integer labels of the leading shape (``ignore_index`` marks ignored tokens),
            a bool keep-mask, or None (every token counts).
        beta: in [0, 1]; 0 is KL(teacher || student), 1 is KL(student || teacher).
        temperature: > 0, divides both sides' logits.
        reduction: as in TRL:

            * ``"batchmean"``: the sum over kept tokens divided by their count with labels, and
              without labels by ``student_logits.shape[0]`` (``B`` for ``[B, S, V]``: a
              per-sequence sum; ``N`` for ``[N, V]``: a per-token mean);
            * ``"sum"``: the sum over kept tokens;
            * ``"mean"``: the mean over every element of TRL's per-element terms, i.e. the sum
              divided by (kept tokens x ``V``);
            * ``"none"``: **per-token** float32 values of the leading shape, 0 at ignored tokens.
              This differs from TRL by design: TRL returns the per-element terms (``[..., V]``,
              or ``[kept tokens, V]`` with labels); their sum over ``V`` is our value.
        num_items_in_batch: None, a number > 0 or a 1-element tensor (not read on the host). As
            in TRL, when given, every scalar reduction (``"batchmean"``, ``"sum"``, ``"mean"``)
            is the sum over kept tokens divided by it (gradient-accumulation-correct); it does
            not scale ``"none"`` (TRL returns a scalar there).
        ignore_index: the label of ignored tokens (TRL: -100).
        backend: ``"auto"`` (CPU: ``_C``; CUDA: Triton), ``"cpu"`` or ``"triton"``.

    Returns:
        A float32 scalar, or float32 per-token values of the leading shape for ``"none"``. A batch
        with no kept token gives 0 and zero gradients (TRL's ``"mean"`` gives NaN there).

    Raises:
        TypeError / ValueError naming the argument on a bad shape, dtype, device or option.
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
                                                                 num_items_in_batch, _checks.TRL_REDUCTIONS)
    student = student_logits.reshape(-1, vocab).contiguous()
    teacher = teacher_logits.detach().reshape(-1, vocab).contiguous()
    mask = keep_mask(labels, student.shape[0], ignore_index, device)
    scale = trl_row_scale(mask, reduction, num_items_in_batch, labelled=labels is not None,
                          batch_size=student_logits.shape[0], vocab=vocab)
    inputs = (student, teacher, scale, beta, temperature, backend)
    if reduction == "none":
        return torch.ops.sleepcore.generalized_jsd_rows(*inputs).reshape(leading)
    wants = torch.is_grad_enabled() and student.requires_grad
    return torch.ops.sleepcore.generalized_jsd(*inputs, wants)[0]
