"""``fused_linear_policy_loss``: hidden states straight to the policy loss, gradients in the forward pass.

For each chunk of whole sequences: one logits GEMM, the log-prob row kernel (logp, entropy,
log-sum-exp per token), the policy-loss terms of :mod:`sleepcore.ops.policy_loss` on those
tokens, whose gradient w.r.t. ``logp_t`` is local to the token (closed form in
``token_terms``), then the log-prob gradient kernel in place and the two gradient GEMMs. That is
three logits-sized GEMMs in all, against four for the primitive plus autograd, and ``N x V`` is
never materialised. Aggregation weights come precomputed from the mask and the global counts,
so chunking does not change the loss.

16-bit inputs on the CPU are computed in float32 as in :mod:`sleepcore.ops.fused_linear_logprobs`
(an fp32 copy of the weight per call, gradients cast back): CPU GEMMs cannot return fp32 from
16-bit operands, so the logits would otherwise be rounded to 16 bits before the softmax.

With a ``process_group`` (or a DTensor weight) the weight is this rank's vocabulary shard: the
``sleepcore::vocab_parallel_linear_policy_loss`` op uses the vocab-parallel log-prob rows of
:mod:`sleepcore.ops.vocab_parallel_rows` (one all-gather per chunk; the policy terms are then
computed identically on every rank) and all-reduces the hidden-state gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from sleepcore.ops import _checks, _vocab_parallel
from sleepcore.ops._linear_chunks import (cpu_float32, default_chunk_size, grad_flags, grads_in_dtypes,
                                         linear_chunks)
from sleepcore.ops._vocab_parallel import VocabShard
from sleepcore.ops.fused_linear_jsd import prepare_linear_inputs
from sleepcore.ops.fused_linear_logprobs import MIN_GEMM_ROWS, row_functions
from sleepcore.ops.policy_loss import (PolicyLossConfig, _check_count, _check_inputs, _check_mask,
                                       aggregation_weights, metrics, token_terms)


@dataclass(frozen=True)
class FusedLinearPolicyLossConfig(PolicyLossConfig):
    """The scalar options of :func:`fused_linear_policy_loss`, validated, loss-type defaults resolved.

    The fields of :class:`PolicyLossConfig`, then ``temperature`` (> 0), ``chunk_size`` (an int
    >= 1 or None) and ``backend``. ``dataclasses.asdict`` of it gives the op's keyword options.
    """

    temperature: float = 1.0
    chunk_size: int | None = None
    backend: str = "auto"

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "temperature", _checks.temperature(self.temperature))
        object.__setattr__(self, "chunk_size", _checks.chunk_size(self.chunk_size))
        _checks.backend(self.backend)


def _chunk_rows(chunk_size: int, seq_len: int) -> int:
    seq_len = max(seq_len, 1)
    return max(1, chunk_size // seq_len) * seq_len


def _policy_loss(hidden, weight, bias, token_ids, old_logp, advantages, mask, weights, ref_logp, rollout_logp,
                 temperature, chunk_size, backend, loss_type, eps_low, eps_high, clip_ratio_c, kl_coef, kl_estimator,
                 entropy_coef, tis_cap, grad_hidden, grad_weight, grad_bias, shard=None):
    config = PolicyLossConfig(loss_type, eps_low, eps_high, clip_ratio_c, kl_coef, kl_estimator, entropy_coef,
                              tis_cap, "token-mean")
    inputs = (hidden, weight, bias)
    hidden, weight, bias = cpu_float32(*inputs)
    seq_len = mask.shape[1]
    logp, entropy, lse = (hidden.new_empty(hidden.shape[0], dtype=torch.float32) for _ in range(3))
    total = hidden.new_zeros((), dtype=torch.float32)
    logprob_rows, logprob_grad_rows = row_functions(shard)

    def rows_kernel(logits, rows, grad):
        nonlocal total
        logprob_rows(logits, token_ids[rows], logp[rows], entropy[rows], lse[rows], temperature=temperature,
                     backend=backend)
        seqs = slice(rows.start // seq_len, rows.stop // seq_len)
        pick = lambda t: None if t is None else t[seqs]  # noqa: E731
        shape = (-1, seq_len)
        per_token, slope, _, _ = token_terms(logp[rows].view(shape), old_logp[seqs], advantages[seqs], mask[seqs],
                                             config, pick(ref_logp), pick(rollout_logp), entropy[rows].view(shape))
        total = total + (per_token * weights[seqs]).sum()
        if grad is not None:
            grad_entropy = (-entropy_coef * weights[seqs]).reshape(-1).contiguous() if entropy_coef else None
            logprob_grad_rows(logits, token_ids[rows], lse[rows], entropy[rows],
                              (slope * weights[seqs]).reshape(-1).contiguous(), grad_entropy, grad,
                              temperature=temperature, backend=backend)

    with torch.no_grad():
        grads = linear_chunks(hidden, weight, bias, rows_kernel, chunk_size=_chunk_rows(chunk_size, seq_len),
                              grad_hidden=grad_hidden, grad_weight=grad_weight, grad_bias=grad_bias,
                              min_gemm_rows=MIN_GEMM_ROWS)
    if shard is not None:
        shard.sum_(grads[0])
    return (total, logp.view(mask.shape), entropy.view(mask.shape), *grads_in_dtypes(grads, *inputs))


@torch.library.custom_op("sleepcore::fused_linear_policy_loss", mutates_args=())
def _fused_linear_policy_loss(
    hidden: Tensor, weight: Tensor, bias: Optional[Tensor], token_ids: Tensor, old_logp: Tensor, advantages: Tensor,
    mask: Tensor, weights: Tensor, ref_logp: Optional[Tensor], rollout_logp: Optional[Tensor], temperature: float,
    chunk_size: int, backend: str, loss_type: str, eps_low: float, eps_high: float, clip_ratio_c: Optional[float],
    kl_coef: float, kl_estimator: str, entropy_coef: float, tis_cap: Optional[float], grad_hidden: bool,
    grad_weight: bool, grad_bias: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _policy_loss(hidden, weight, bias, token_ids, old_logp, advantages, mask, weights, ref_logp, rollout_logp,
                        temperature, chunk_size, backend, loss_type, eps_low, eps_high, clip_ratio_c, kl_coef,
                        kl_estimator, entropy_coef, tis_cap, grad_hidden, grad_weight, grad_bias)


@torch.library.custom_op("sleepcore::vocab_parallel_linear_policy_loss", mutates_args=())
def _vocab_parallel_linear_policy_loss(
    hidden: Tensor, weight: Tensor, bias: Optional[Tensor], token_ids: Tensor, old_logp: Tensor, advantages: Tensor,
    mask: Tensor, weights: Tensor, ref_logp: Optional[Tensor], rollout_logp: Optional[Tensor], temperature: float,
    chunk_size: int, backend: str, loss_type: str, eps_low: float, eps_high: float, clip_ratio_c: Optional[float],
    kl_coef: float, kl_estimator: str, entropy_coef: float, tis_cap: Optional[float], group_name: str,
    vocab_start: int, vocab_size: int, grad_hidden: bool, grad_weight: bool, grad_bias: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    shard = VocabShard(group_name, vocab_start, weight.shape[0], vocab_size)
    return _policy_loss(hidden, weight, bias, token_ids, old_logp, advantages, mask, weights, ref_logp, rollout_logp,
                        temperature, chunk_size, backend, loss_type, eps_low, eps_high, clip_ratio_c, kl_coef,
                        kl_estimator, entropy_coef, tis_cap, grad_hidden, grad_weight, grad_bias, shard)


def _fake(hidden, weight, bias, token_ids, old_logp, advantages, mask, *options_shard_and_flags):
    grad_hidden, grad_weight, grad_bias = options_shard_and_flags[-3:]
    empty = hidden.new_empty(0)
    return (hidden.new_empty((), dtype=torch.float32), old_logp.new_empty(mask.shape, dtype=torch.float32),
            old_logp.new_empty(mask.shape, dtype=torch.float32),
            hidden.new_empty(hidden.shape) if grad_hidden else empty,
            weight.new_empty(weight.shape) if grad_weight else empty,
            bias.new_empty(bias.shape) if grad_bias else empty)


def _setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # no zero-filled [V, H] gradient for the non-differentiable outputs
    ctx.save_for_backward(*output[3:])


def _backward(ctx, grad_loss, *_unused):
    grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
    result = [None] * len(ctx.needs_input_grad)
    for position, grad in ((0, grad_hidden), (1, grad_weight), (2, grad_bias)):
        if ctx.needs_input_grad[position]:
            result[position] = grad * grad_loss
    return tuple(result)


for _op in (_fused_linear_policy_loss, _vocab_parallel_linear_policy_loss):
    _op.register_fake(_fake)
    _op.register_autograd(_backward, setup_context=_setup_context)


def _check_tensors(hidden, weight, bias, token_ids, old_logp, advantages, mask, config, ref_logp, rollout_logp):
    """Check the tensors; returns ``(flat hidden [N, H], weight, bool mask [B, T])``."""
    _checks.tensor("hidden", hidden, ndims=(3,))
    flat_hidden, weight = prepare_linear_inputs(hidden, weight, bias, hidden_name="hidden", weight_name="weight",
                                                bias_name="bias")
    _checks.tensor("token_ids", token_ids, ndims=(2,), dtypes=(torch.int64, torch.int32))
    if token_ids.shape != hidden.shape[:2]:
        raise ValueError(f"token_ids must have shape {tuple(hidden.shape[:2])} ([B, T] of hidden), "
                         f"got {tuple(token_ids.shape)}")
    if mask is None:
        mask = torch.ones(token_ids.shape, dtype=torch.bool, device=token_ids.device)
    _check_inputs(token_ids.shape, config, old_logp, advantages, mask, has_entropy=True, ref_logp=ref_logp,
                  rollout_logp=rollout_logp)
    _checks.same_device(hidden=hidden, weight=weight, bias=bias, token_ids=token_ids, old_logp=old_logp,
                        advantages=advantages, mask=mask, ref_logp=ref_logp, rollout_logp=rollout_logp)
    return flat_hidden, weight, _check_mask(mask)


def fused_linear_policy_loss(hidden, weight, token_ids, old_logp, advantages, mask=None, *, bias=None, ref_logp=None,
                             rollout_logp=None, loss_type="grpo", temperature=1.0, eps_low=None, eps_high=None,
                             clip_ratio_c=None, kl_coef=0.0, kl_estimator="k3", entropy_coef=0.0, tis_cap=None,
                             agg=None, global_tokens=None, global_seqs=None, max_len=None, chunk_size=None,
                             backend="auto", process_group=None, vocab_start=None):
    """GRPO / DAPO / Dr. GRPO / GSPO / CISPO loss straight from hidden states, without ``N x V``.

    The maths of :func:`sleepcore.ops.policy_loss` on ``fused_linear_logprobs(hidden, weight,
    token_ids, temperature=temperature, bias=bias)`` and its entropy. The gradients w.r.t. hidden,
    weight and bias are computed during the forward pass (three logits-sized GEMMs); backward
    only scales them by the incoming gradient.

    Args:
        hidden: ``[B, T, H]`` final hidden states, fp32/bf16/fp16. weight: ``[V, H]``
            (``nn.Linear`` layout), same dtype; bias: optional ``[V]``. All three get gradients.
        token_ids: int64/int32 ``[B, T]``, the sampled tokens; each kept one must lie in ``[0, V)``.
        old_logp: float ``[B, T]``, the behaviour policy's log-probs (no gradient).
        advantages: float ``[B]`` (per sequence) or ``[B, T]`` (per token).
        mask: bool or 0/1 ``[B, T]``, the tokens that count; None keeps every token. A numeric
            mask is validated with one host read (skipped under ``torch.compile``).
        ref_logp, kl_coef, kl_estimator: KL penalty ``kl_coef * k`` (``"k1"``, ``"k2"``, ``"k3"``)
            to a reference's float ``[B, T]`` log-probs; ``kl_coef != 0`` needs ``ref_logp``.
        rollout_logp, tis_cap: truncated importance sampling against the rollout engine's float
            ``[B, T]`` log-probs, weight ``min(exp(old_logp - rollout_logp), tis_cap)``.
        loss_type: ``"grpo"``, ``"dapo"``, ``"dr_grpo"``, ``"gspo"`` or ``"cispo"``.
        temperature: > 0, divides the logits (use the sampling temperature).
        eps_low, eps_high, clip_ratio_c: clip range ``[1 - eps_low, 1 + eps_high]`` (None: the
            loss type's defaults) and dual clip (> 1; not with ``"cispo"``).
        entropy_coef: weight of the entropy bonus (the entropy is computed by the op).
        agg: ``"token-mean"``, ``"seq-mean-token-sum"``, ``"seq-mean-token-mean"`` or
            ``"seq-mean-token-sum-norm"``; None: the loss type's default.
        global_tokens, global_seqs, max_len: normalisers (numbers > 0 or one-element tensors),
            by default this call's kept-token count, B and T. Pass the totals of a
            gradient-accumulation step so the summed micro-batch gradients equal the full batch's.
        chunk_size: tokens per chunk, rounded down to whole sequences (at least one); None lets
            the op choose from V, the dtype and the device. The result does not depend on it.
        backend: ``"auto"`` (CPU: ``_C``; CUDA: Triton), ``"cpu"`` or ``"triton"``.
        process_group, vocab_start: vocabulary-parallel ``lm_head`` as in
            :func:`sleepcore.ops.fused_linear_logprobs`: ``weight`` and ``bias`` are this rank's
            rows, every rank passes the same other inputs and gets the same loss and metrics.

    Returns:
        ``(loss, metrics)``: a float32 scalar, differentiable w.r.t. hidden, weight and bias, and
        a dict of detached float32 0-d tensors ``clip_frac``, ``approx_kl``, ``entropy``,
        ``ratio_mean``, ``ratio_max`` (over this call's kept tokens). A batch with no kept token
        gives loss 0 and zero gradients.

    Raises:
        TypeError for an argument of the wrong type or dtype, ValueError for a wrong shape,
        device or value; the message names the argument. On CPU (and on every device with
        ``process_group``), ValueError for a kept token id outside ``[0, V)``.
    """
    config = FusedLinearPolicyLossConfig(loss_type, eps_low, eps_high, clip_ratio_c, kl_coef, kl_estimator,
                                         entropy_coef, tis_cap, agg, temperature, chunk_size, backend)
    group, (weight, bias) = _vocab_parallel.local_shards(process_group, vocab_start, {"hidden": hidden},
                                                         {"weight": weight, "bias": bias})
    flat_hidden, weight, mask = _check_tensors(hidden, weight, bias, token_ids, old_logp, advantages, mask, config,
                                               ref_logp, rollout_logp)
    for name, value in (("global_tokens", global_tokens), ("global_seqs", global_seqs), ("max_len", max_len)):
        _check_count(name, value)
    weights = aggregation_weights(mask, config.agg, global_tokens, global_seqs, max_len)
    ids = torch.where(mask, token_ids, torch.full_like(token_ids, -1)).reshape(-1).to(torch.int64).contiguous()
    shard = _vocab_parallel.layout(group, vocab_start, weight.shape[0], hidden=flat_hidden, hidden_name="hidden",
                                   weight_name="weight", chunk_size=config.chunk_size, ids=ids)
    vocab = weight.shape[0] if shard is None else shard.vocab
    chunk = config.chunk_size or default_chunk_size(flat_hidden.shape[0], vocab, flat_hidden.dtype, flat_hidden.device)
    as_float = lambda t: None if t is None else t.detach().float().contiguous()  # noqa: E731
    old_logp, ref_logp, rollout_logp = as_float(old_logp), as_float(ref_logp), as_float(rollout_logp)
    inputs = (flat_hidden, weight, bias, ids, old_logp, as_float(advantages), mask.contiguous(), weights, ref_logp,
              rollout_logp, config.temperature, chunk, config.backend, config.loss_type, config.eps_low,
              config.eps_high, config.clip_ratio_c, config.kl_coef, config.kl_estimator, config.entropy_coef,
              config.tis_cap)
    if shard is None:
        op = torch.ops.sleepcore.fused_linear_policy_loss
    else:
        op, inputs = torch.ops.sleepcore.vocab_parallel_linear_policy_loss, inputs + shard.op_args
    loss, logp, entropy, *_ = op(*inputs, *grad_flags(flat_hidden, weight, bias))
    with torch.no_grad():
        _, _, clipped, rho = token_terms(logp, old_logp, advantages, mask, config, ref_logp, rollout_logp, entropy)
    return loss, metrics(rho, clipped, mask, old_logp, logp, entropy)
