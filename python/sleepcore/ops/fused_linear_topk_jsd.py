"""``fused_linear_topk_jsd``: distillation from a stored top-k teacher, fused with the student's
``lm_head``, without materialising ``N x V``.

The teacher arrives as its top-k token ids and log-probs per token (``[N, k]``), as stored by
an inference server. The divergence is taken over k + 1 bins: the k ids, plus a "rest" bin with
the remaining mass on each side (``1 - sum`` for the teacher, clamped at 0; the exact
log-sum-exp over the other ids for the student). Both rest log-probs are floored at
``log(1e-30)`` so an empty rest bin (k = V) is harmless. Beta and temperature follow
:func:`sleepcore.ops.fused_linear_jsd`; the temperature divides the student's logits only, so
store the teacher's log-probs at the distillation temperature.

16-bit student inputs on the CPU are computed in float32 as in
:mod:`sleepcore.ops.fused_linear_logprobs` (an fp32 copy of the weight per call, gradients cast
back): CPU GEMMs cannot return fp32 from 16-bit operands, so the logits would otherwise be rounded
to 16 bits before the softmax.

With a ``process_group`` (or a DTensor weight) the student's weight is this rank's vocabulary
shard and the top-k ids may fall on any shard: the ``sleepcore::vocab_parallel_linear_topk_jsd``
ops run :func:`sleepcore.ops.vocab_parallel_rows.topk_jsd_rows` (one all-gather per chunk) and
all-reduce the hidden-state gradient; see :mod:`sleepcore.ops._vocab_parallel`.
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
from sleepcore.ops.divergence_rows import topk_jsd_rows
from sleepcore.ops.fused_linear_jsd import prepare_linear_inputs


def _run(student_hidden, student_weight, teacher_ids, teacher_logprobs, row_scale, student_bias, beta, temperature,
         chunk_size, backend, grad_hidden, grad_weight, grad_bias, shard=None):
    student = (student_hidden, student_weight, student_bias)
    student_hidden, student_weight, student_bias = cpu_float32(*student)

    def rows_kernel(student_logits, rows, loss, grad):
        if shard is None:
            topk_jsd_rows(student_logits, teacher_ids[rows], teacher_logprobs[rows], row_scale[rows], loss, grad,
                          beta=beta, temperature=temperature, backend=backend)
        else:
            vocab_parallel_rows.topk_jsd_rows(student_logits, teacher_ids[rows], teacher_logprobs[rows],
                                              row_scale[rows], loss, grad, beta=beta, temperature=temperature,
                                              shard=shard)

    loss, row_loss, *grads = linear_divergence(student_hidden, student_weight, student_bias, row_scale, rows_kernel,
                                               shard=shard, chunk_size=chunk_size, grad_hidden=grad_hidden,
                                               grad_weight=grad_weight, grad_bias=grad_bias)
    return loss, row_loss, *grads_in_dtypes(grads, *student)


@torch.library.custom_op("sleepcore::fused_linear_topk_jsd", mutates_args=())
def _fused_linear_topk_jsd(
    student_hidden: Tensor, student_weight: Tensor, teacher_ids: Tensor, teacher_logprobs: Tensor,
    row_scale: Tensor, student_bias: Optional[Tensor], beta: float, temperature: float, chunk_size: int,
    backend: str, grad_hidden: bool, grad_weight: bool, grad_bias: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    with torch.no_grad():
        return _run(student_hidden, student_weight, teacher_ids, teacher_logprobs, row_scale, student_bias, beta,
                    temperature, chunk_size, backend, grad_hidden, grad_weight, grad_bias)


@torch.library.custom_op("sleepcore::fused_linear_topk_jsd_rows", mutates_args=())
def _fused_linear_topk_jsd_rows(
    student_hidden: Tensor, student_weight: Tensor, teacher_ids: Tensor, teacher_logprobs: Tensor,
    row_scale: Tensor, student_bias: Optional[Tensor], beta: float, temperature: float, chunk_size: int,
    backend: str,
) -> Tensor:
    with torch.no_grad():
        return _run(student_hidden, student_weight, teacher_ids, teacher_logprobs, row_scale, student_bias, beta,
                    temperature, chunk_size, backend, False, False, False)[1]


@torch.library.custom_op("sleepcore::vocab_parallel_linear_topk_jsd", mutates_args=())
def _vocab_parallel_linear_topk_jsd(
    student_hidden: Tensor, student_weight: Tensor, teacher_ids: Tensor, teacher_logprobs: Tensor,
    row_scale: Tensor, student_bias: Optional[Tensor], beta: float, temperature: float, chunk_size: int,
    backend: str, group_name: str, vocab_start: int, vocab_size: int, grad_hidden: bool, grad_weight: bool,
    grad_bias: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    shard = VocabShard(group_name, vocab_start, student_weight.shape[0], vocab_size)
    with torch.no_grad():
        return _run(student_hidden, student_weight, teacher_ids, teacher_logprobs, row_scale, student_bias, beta,
                    temperature, chunk_size, backend, grad_hidden, grad_weight, grad_bias, shard)


@torch.library.custom_op("sleepcore::vocab_parallel_linear_topk_jsd_rows", mutates_args=())
def _vocab_parallel_linear_topk_jsd_rows(
    student_hidden: Tensor, student_weight: Tensor, teacher_ids: Tensor, teacher_logprobs: Tensor,
    row_scale: Tensor, student_bias: Optional[Tensor], beta: float, temperature: float, chunk_size: int,
    backend: str, group_name: str, vocab_start: int, vocab_size: int,
) -> Tensor:
    shard = VocabShard(group_name, vocab_start, student_weight.shape[0], vocab_size)
    with torch.no_grad():
        return _run(student_hidden, student_weight, teacher_ids, teacher_logprobs, row_scale, student_bias, beta,
                    temperature, chunk_size, backend, False, False, False, shard)[1]


for _main, _rows in ((_fused_linear_topk_jsd, _fused_linear_topk_jsd_rows),
                     (_vocab_parallel_linear_topk_jsd, _vocab_parallel_linear_topk_jsd_rows)):
    register_row_weighted(_main, _rows, RowWeightedSpec(grad_inputs=(0, 1, 5), row_scale_input=4))


def _prepare_teacher(teacher_topk_ids, teacher_topk_logprobs, leading):
    _checks.tensor("teacher_topk_ids", teacher_topk_ids, ndims=(2, 3), dtypes=(torch.int64, torch.int32))
    _checks.tensor("teacher_topk_logprobs", teacher_topk_logprobs, ndims=(2, 3))
    if teacher_topk_ids.shape != teacher_topk_logprobs.shape:
        raise ValueError(f"teacher_topk_ids {tuple(teacher_topk_ids.shape)} and teacher_topk_logprobs "
                         f"{tuple(teacher_topk_logprobs.shape)} must have the same shape")
    k = teacher_topk_ids.shape[-1]
    if teacher_topk_ids.shape[:-1] != leading:
        raise ValueError(f"teacher_topk_ids must have shape {(*leading, k)} (one row per token), "
                         f"got {tuple(teacher_topk_ids.shape)}")
    ids = teacher_topk_ids.reshape(-1, k).to(torch.int64).contiguous()
    logprobs = teacher_topk_logprobs.detach().reshape(-1, k).to(torch.float32).contiguous()
    return ids, logprobs


def fused_linear_topk_jsd(student_hidden, student_weight, teacher_topk_ids, teacher_topk_logprobs, labels=None, *,
                          beta=0.5, temperature=1.0, ignore_index=-100, reduction="batchmean",
                          num_items_in_batch=None, student_bias=None, chunk_size=None, backend="auto",
                          process_group=None, vocab_start=None):
    """Generalized JSD against a stored top-k teacher, over k + 1 bins, fused with the student's GEMMs.

    Args:
        student_hidden: ``[N, H]`` or ``[B, T, H]``, fp32/bf16/fp16; student_weight ``[V, H]``;
            student_bias optional ``[V]``. These get gradients.
        teacher_topk_ids: int64/int32 ``[N, k]`` or ``[B, T, k]``, distinct ids in ``[0, V)`` per
            token (out-of-range ids raise ``ValueError`` on CPU, and on every device with
            ``process_group``; on CUDA they are clamped).
        teacher_topk_logprobs: float ``[N, k]`` / ``[B, T, k]``, the teacher's log-probs of those ids
            at the distillation temperature (used as given).
        labels, beta, temperature, ignore_index, reduction, num_items_in_batch, chunk_size, backend:
            as in :func:`sleepcore.ops.fused_linear_jsd`; temperature divides the student only.
        process_group, vocab_start: vocabulary-parallel ``lm_head`` as in
            :func:`sleepcore.ops.fused_linear_logprobs`; the top-k ids are global ids, on any shard.
            The divergence maths then runs as PyTorch ops (``backend`` chooses no kernel there).

    Returns:
        A float32 scalar (or per-token values for ``"none"``).
    """
    group, (student_weight, student_bias) = _vocab_parallel.local_shards(
        process_group, vocab_start, {"student_hidden": student_hidden},
        {"student_weight": student_weight, "student_bias": student_bias})
    s_hidden, s_weight = prepare_linear_inputs(student_hidden, student_weight, student_bias,
                                               hidden_name="student_hidden", weight_name="student_weight",
                                               bias_name="student_bias")
    leading = student_hidden.shape[:-1]
    ids, logprobs = _prepare_teacher(teacher_topk_ids, teacher_topk_logprobs, leading)
    device = _checks.same_device(student_hidden=student_hidden, student_weight=student_weight,
                                 student_bias=student_bias, teacher_topk_ids=teacher_topk_ids,
                                 teacher_topk_logprobs=teacher_topk_logprobs)
    labels = _checks.labels(labels, leading, device)
    beta, temperature, reduction, backend = _checks.loss_options(beta, temperature, reduction, backend,
                                                                 num_items_in_batch)
    chunk = _checks.chunk_size(chunk_size)
    shard = _vocab_parallel.layout(group, vocab_start, s_weight.shape[0], hidden=s_hidden,
                                   hidden_name="student_hidden", weight_name="student_weight", chunk_size=chunk,
                                   ids=ids, ids_name="teacher_topk_ids", negative_ids_allowed=False)
    rows, vocab = s_hidden.shape[0], s_weight.shape[0] if shard is None else shard.vocab
    if not 1 <= ids.shape[1] <= vocab:
        raise ValueError(f"k = teacher_topk_ids.shape[-1] must be in [1, V={vocab}], got {ids.shape[1]}")
    chunk = chunk or default_chunk_size(rows, vocab, s_hidden.dtype, device)
    mask = keep_mask(labels, rows, ignore_index, device)
    inputs = (s_hidden, s_weight, ids, logprobs, reduction_row_scale(mask, reduction, num_items_in_batch),
              student_bias, beta, temperature, chunk, backend)
    if shard is None:
        main, per_row = torch.ops.sleepcore.fused_linear_topk_jsd, torch.ops.sleepcore.fused_linear_topk_jsd_rows
    else:
        main = torch.ops.sleepcore.vocab_parallel_linear_topk_jsd
        per_row = torch.ops.sleepcore.vocab_parallel_linear_topk_jsd_rows
        inputs += shard.op_args
    if reduction == "none":
        return per_row(*inputs).reshape(leading)
    return main(*inputs, *grad_flags(s_hidden, s_weight, student_bias))[0]
