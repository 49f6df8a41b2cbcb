"""``fused_linear_jsd``: generalized JSD between a student's and a teacher's ``lm_head`` outputs,
straight from hidden states, without materialising ``N x V`` logits.

Maths (TRL's ``generalized_jsd_loss`` convention), per token with ``z = logits / T``,
``P = softmax(z_student)``, ``Q = softmax(z_teacher)``:

* ``beta == 0``: ``KL(Q || P)``; ``beta == 1``: ``KL(P || Q)``;
* otherwise ``beta * KL(Q || M) + (1 - beta) * KL(P || M)`` with ``M = beta*Q + (1-beta)*P``.

The op runs the chunk loop of :mod:`sleepcore.ops._linear_chunks`: per row chunk, both logits
GEMMs into reused buffers, the per-row kernel (``_C`` on CPU, Triton on CUDA) writing the loss and,
in place, the logit gradient, then the two gradient GEMMs. Gradients are computed during the
forward pass (for the scalar reductions) so backward only scales them.

16-bit inputs on the CPU, student and teacher alike, are computed in float32 as in
:mod:`sleepcore.ops.fused_linear_logprobs` (fp32 copies of both weights per call, gradients cast
back): CPU GEMMs cannot return fp32 from 16-bit operands, so both sides' logits would otherwise be
rounded to 16 bits before the softmax.

With a ``process_group`` (or DTensor weights) both weights are this rank's vocabulary shard: the
``sleepcore::vocab_parallel_linear_jsd`` ops run the same loop with
:func:`sleepcore.ops.vocab_parallel_rows.jsd_rows` (per chunk, one all-gather of both sides'
log-normalisers and one all-reduce of the loss and gradient sums) and all-reduce the student's
hidden-state gradient; see :mod:`sleepcore.ops._vocab_parallel`.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from sleepcore.ops import _checks, _vocab_parallel, vocab_parallel_rows
from sleepcore.ops._linear_chunks import (cpu_float32, default_chunk_size, grad_flags, grads_in_dtypes,
                                         linear_divergence)
from sleepcore.ops._reduction import keep_mask, row_scale as reduction_row_scale
from sleepcore.ops._row_weighted import RowWeightedSpec, register_row_weighted
from sleepcore.ops._vocab_parallel import VocabShard
from sleepcore.ops.divergence_rows import jsd_rows


def _run(student_hidden, student_weight, teacher_hidden, teacher_weight, row_scale, student_bias, teacher_bias,
         beta, temperature, chunk_size, backend, grad_hidden, grad_weight, grad_bias, shard=None):
    student = (student_hidden, student_weight, student_bias)
    student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight, teacher_bias = cpu_float32(
        *student, teacher_hidden, teacher_weight, teacher_bias)
    teacher_buffer = teacher_hidden.new_empty(min(chunk_size, teacher_hidden.shape[0]), teacher_weight.shape[0])

    def rows_kernel(student_logits, rows, loss, grad):
        teacher_logits = torch.mm(teacher_hidden[rows], teacher_weight.t(), out=teacher_buffer[: rows.stop - rows.start])
        if teacher_bias is not None:
            teacher_logits += teacher_bias
        if shard is None:
            jsd_rows(student_logits, teacher_logits, row_scale[rows], loss, grad, beta=beta, temperature=temperature,
                     backend=backend)
        else:
            vocab_parallel_rows.jsd_rows(student_logits, teacher_logits, row_scale[rows], loss, grad, beta=beta,
                                         temperature=temperature, shard=shard)

    loss, row_loss, *grads = linear_divergence(student_hidden, student_weight, student_bias, row_scale, rows_kernel,
                                               shard=shard, chunk_size=chunk_size, grad_hidden=grad_hidden,
                                               grad_weight=grad_weight, grad_bias=grad_bias)
    return loss, row_loss, *grads_in_dtypes(grads, *student)


@torch.library.custom_op("sleepcore::fused_linear_jsd", mutates_args=())
def _fused_linear_jsd(
    student_hidden: Tensor, student_weight: Tensor, teacher_hidden: Tensor, teacher_weight: Tensor,
    row_scale: Tensor, student_bias: Optional[Tensor], teacher_bias: Optional[Tensor], beta: float,
    temperature: float, chunk_size: int, backend: str, grad_hidden: bool, grad_weight: bool, grad_bias: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    with torch.no_grad():
        return _run(student_hidden, student_weight, teacher_hidden, teacher_weight, row_scale, student_bias,
                    teacher_bias, beta, temperature, chunk_size, backend, grad_hidden, grad_weight, grad_bias)


@torch.library.custom_op("sleepcore::fused_linear_jsd_rows", mutates_args=())
def _fused_linear_jsd_rows(
    student_hidden: Tensor, student_weight: Tensor, teacher_hidden: Tensor, teacher_weight: Tensor,
    row_scale: Tensor, student_bias: Optional[Tensor], teacher_bias: Optional[Tensor], beta: float,
    temperature: float, chunk_size: int, backend: str,
) -> Tensor:
    with torch.no_grad():
        return _run(student_hidden, student_weight, teacher_hidden, teacher_weight, row_scale, student_bias,
                    teacher_bias, beta, temperature, chunk_size, backend, False, False, False)[1]


@torch.library.custom_op("sleepcore::vocab_parallel_linear_jsd", mutates_args=())
def _vocab_parallel_linear_jsd(
    student_hidden: Tensor, student_weight: Tensor, teacher_hidden: Tensor, teacher_weight: Tensor,
    row_scale: Tensor, student_bias: Optional[Tensor], teacher_bias: Optional[Tensor], beta: float,
    temperature: float, chunk_size: int, backend: str, group_name: str, vocab_start: int, vocab_size: int,
    grad_hidden: bool, grad_weight: bool, grad_bias: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    shard = VocabShard(group_name, vocab_start, student_weight.shape[0], vocab_size)
    with torch.no_grad():
        return _run(student_hidden, student_weight, teacher_hidden, teacher_weight, row_scale, student_bias,
                    teacher_bias, beta, temperature, chunk_size, backend, grad_hidden, grad_weight, grad_bias, shard)


@torch.library.custom_op("sleepcore::vocab_parallel_linear_jsd_rows", mutates_args=())
def _vocab_parallel_linear_jsd_rows(
    student_hidden: Tensor, student_weight: Tensor, teacher_hidden: Tensor, teacher_weight: Tensor,
    row_scale: Tensor, student_bias: Optional[Tensor], teacher_bias: Optional[Tensor], beta: float,
    temperature: float, chunk_size: int, backend: str, group_name: str, vocab_start: int, vocab_size: int,
) -> Tensor:
    shard = VocabShard(group_name, vocab_start, student_weight.shape[0], vocab_size)
    with torch.no_grad():
        return _run(student_hidden, student_weight, teacher_hidden, teacher_weight, row_scale, student_bias,
                    teacher_bias, beta, temperature, chunk_size, backend, False, False, False, shard)[1]


for _main, _rows in ((_fused_linear_jsd, _fused_linear_jsd_rows),
                     (_vocab_parallel_linear_jsd, _vocab_parallel_linear_jsd_rows)):
    register_row_weighted(_main, _rows, RowWeightedSpec(grad_inputs=(0, 1, 5), row_scale_input=4))


def prepare_linear_inputs(hidden, weight, bias, *, hidden_name: str, weight_name: str, bias_name: str):
    """Check one side's ``hidden [N, H] | [B, T, H]``, ``weight [V, H]`` and ``bias [V]``; flatten hidden."""
    _checks.tensor(hidden_name, hidden, ndims=(2, 3))
    _checks.tensor(weight_name, weight, ndims=(2,))
    if bias is not None:
        _checks.tensor(bias_name, bias, ndims=(1,))
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"{bias_name} must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"{hidden_name} has hidden size {hidden.shape[-1]} but {weight_name} is "
                         f"{tuple(weight.shape)} ([V, H] expected, H={hidden.shape[-1]})")
    _checks.same_dtype(**{hidden_name: hidden, weight_name: weight, bias_name: bias})
    return hidden.reshape(-1, hidden.shape[-1]).contiguous(), weight.contiguous()


def fused_linear_jsd(student_hidden, student_weight, teacher_hidden, teacher_weight, labels=None, *, beta=0.5,
                     temperature=1.0, ignore_index=-100, reduction="batchmean", num_items_in_batch=None,
                     student_bias=None, teacher_bias=None, chunk_size=None, backend="auto", process_group=None,
                     vocab_start=None):
    """Generalized JSD between student and teacher ``lm_head`` distributions, fused with the GEMMs.

    Args:
        student_hidden: ``[N, Hs]`` or ``[B, T, Hs]``, fp32/bf16/fp16. Gets a gradient.
        student_weight: ``[V, Hs]`` (``nn.Linear`` layout), same dtype. Gets a gradient.
        teacher_hidden: ``[N, Ht]`` or ``[B, T, Ht]`` with the same token count; ``Ht != Hs`` is fine.
        teacher_weight: ``[V, Ht]``. The teacher side never gets a gradient.
        labels: ``[N]`` / ``[B, T]`` integer labels (``ignore_index`` marks ignored tokens) or a
            bool keep-mask; None keeps every token.
        beta: in [0, 1]; 0 is KL(teacher || student), 1 is KL(student || teacher).
        temperature: > 0, divides both sides' logits.
        reduction: ``"batchmean"`` (sum over kept tokens / their count, or / ``num_items_in_batch``),
            ``"sum"`` or ``"none"`` (float32 per-token values of the input's leading shape, 0 at
            ignored tokens).
        num_items_in_batch: optional int, float or 1-element tensor: the batchmean denominator
            (the full batch's token count under gradient accumulation).
        student_bias, teacher_bias: optional ``[V]``.
        chunk_size: rows per chunk; default from V, the dtype and the device.
        backend: ``"auto"`` (CPU: ``_C``; CUDA: Triton), ``"cpu"`` or ``"triton"``.
        process_group, vocab_start: vocabulary-parallel ``lm_head`` as in
            :func:`sleepcore.ops.fused_linear_logprobs`: both weights and biases are this rank's
            rows ``[V_local, ...]`` of the same split (or DTensors placed ``(Shard(0),)``), and
            every rank passes the same hidden states and labels. The divergence maths then runs
            as PyTorch ops on the shard (``backend`` chooses no kernel there).

    Returns:
        A float32 scalar (or per-token tensor for ``"none"``).

    Raises:
        TypeError / ValueError naming the argument on a bad shape, dtype, device or option.
    """
    group, (student_weight, student_bias, teacher_weight, teacher_bias) = _vocab_parallel.local_shards(
        process_group, vocab_start, {"student_hidden": student_hidden, "teacher_hidden": teacher_hidden},
        {"student_weight": student_weight, "student_bias": student_bias, "teacher_weight": teacher_weight,
         "teacher_bias": teacher_bias})
    s_hidden, s_weight = prepare_linear_inputs(student_hidden, student_weight, student_bias,
                                               hidden_name="student_hidden", weight_name="student_weight",
                                               bias_name="student_bias")
    t_hidden, t_weight = prepare_linear_inputs(teacher_hidden, teacher_weight, teacher_bias,
                                               hidden_name="teacher_hidden", weight_name="teacher_weight",
                                               bias_name="teacher_bias")
    if s_weight.shape[0] != t_weight.shape[0]:
        raise ValueError(f"student_weight and teacher_weight must share V, got {s_weight.shape[0]} and {t_weight.shape[0]}")
    if s_hidden.shape[0] != t_hidden.shape[0]:
        raise ValueError(f"student_hidden and teacher_hidden must have the same number of tokens, "
                         f"got {s_hidden.shape[0]} and {t_hidden.shape[0]}")
    _checks.same_dtype(student_hidden=student_hidden, teacher_hidden=teacher_hidden)
    device = _checks.same_device(student_hidden=student_hidden, student_weight=student_weight,
                                 teacher_hidden=teacher_hidden, teacher_weight=teacher_weight,
                                 student_bias=student_bias, teacher_bias=teacher_bias)
    leading = student_hidden.shape[:-1]
    labels = _checks.labels(labels, leading, device)
    beta, temperature, reduction, backend = _checks.loss_options(beta, temperature, reduction, backend,
                                                                 num_items_in_batch)
    chunk = _checks.chunk_size(chunk_size)
    shard = _vocab_parallel.layout(group, vocab_start, s_weight.shape[0], hidden=s_hidden,
                                   hidden_name="student_hidden", weight_name="student_weight", chunk_size=chunk)
    rows, vocab = s_hidden.shape[0], s_weight.shape[0] if shard is None else shard.vocab
    chunk = chunk or default_chunk_size(rows, vocab, s_hidden.dtype, device)
    mask = keep_mask(labels, rows, ignore_index, device)
    inputs = (s_hidden, s_weight, t_hidden.detach(), t_weight.detach(),
              reduction_row_scale(mask, reduction, num_items_in_batch), student_bias,
              None if teacher_bias is None else teacher_bias.detach(), beta, temperature, chunk, backend)
    if shard is None:
        main, per_row = torch.ops.sleepcore.fused_linear_jsd, torch.ops.sleepcore.fused_linear_jsd_rows
    else:
        main, per_row = (torch.ops.sleepcore.vocab_parallel_linear_jsd,
                         torch.ops.sleepcore.vocab_parallel_linear_jsd_rows)
        inputs += shard.op_args
    if reduction == "none":
        return per_row(*inputs).reshape(leading)
    return main(*inputs, *grad_flags(s_hidden, s_weight, student_bias))[0]
