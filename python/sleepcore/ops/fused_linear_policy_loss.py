"""``fused_linear_policy_loss``: hidden states straight to the policy loss, gradients in the forward pass.

For each chunk of whole sequences: one logits GEMM, the log-prob row kernel (logp, entropy,
log-sum-exp per token), the policy-loss terms of :mod:`sleepcore.ops.policy_loss` on those
tokens, whose gradient w.r.t. ``logp_t`` is local to the token (closed form in
``token_terms``), then the log-prob gradient kernel in place and the two gradient GEMMs. That is
three logits-sized GEMMs in all, against four for the primitive plus autograd, and ``N x V`` is
never materialised. Aggregation weights come precomputed from the mask and the global counts,
so chunking does not change the loss.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from sleepcore.ops._linear_chunks import linear_chunks
from sleepcore.ops.fused_linear_logprobs import MIN_GEMM_ROWS
from sleepcore.ops.logprob_rows import logprob_grad_rows, logprob_rows
from sleepcore.ops.policy_loss import PolicyLossConfig, token_terms


def _chunk_rows(chunk_size: int, seq_len: int) -> int:
    return max(1, chunk_size // seq_len) * seq_len


@torch.library.custom_op("sleepcore::fused_linear_policy_loss", mutates_args=())
def _fused_linear_policy_loss(
    hidden: Tensor, weight: Tensor, bias: Optional[Tensor], token_ids: Tensor, old_logp: Tensor, advantages: Tensor,
    mask: Tensor, weights: Tensor, ref_logp: Optional[Tensor], rollout_logp: Optional[Tensor], temperature: float,
    chunk_size: int, backend: str, loss_type: str, eps_low: float, eps_high: float, clip_ratio_c: Optional[float],
    kl_coef: float, kl_estimator: str, entropy_coef: float, tis_cap: Optional[float], grad_hidden: bool,
    grad_weight: bool, grad_bias: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    config = PolicyLossConfig(loss_type, eps_low, eps_high, clip_ratio_c, kl_coef, kl_estimator, entropy_coef,
                              tis_cap, "token-mean")
    seq_len = mask.shape[1]
    logp, entropy, lse = (hidden.new_empty(hidden.shape[0], dtype=torch.float32) for _ in range(3))
    total = hidden.new_zeros((), dtype=torch.float32)

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
    return (total, logp.view(mask.shape), entropy.view(mask.shape), *grads)


@_fused_linear_policy_loss.register_fake
def _(hidden, weight, bias, token_ids, old_logp, advantages, mask, weights, ref_logp, rollout_logp, temperature,
      chunk_size, backend, loss_type, eps_low, eps_high, clip_ratio_c, kl_coef, kl_estimator, entropy_coef, tis_cap,
      grad_hidden, grad_weight, grad_bias):
    empty = hidden.new_empty(0)
    return (hidden.new_empty((), dtype=torch.float32), old_logp.new_empty(mask.shape, dtype=torch.float32),
            old_logp.new_empty(mask.shape, dtype=torch.float32),
            hidden.new_empty(hidden.shape) if grad_hidden else empty,
            weight.new_empty(weight.shape) if grad_weight else empty,
            bias.new_empty(bias.shape) if grad_bias else empty)


def _setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(*output[1:])
    ctx.save_for_backward(*output[3:])


def _backward(ctx, grad_loss, *_unused):
    grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
    result = [None] * len(ctx.needs_input_grad)
    for position, grad in ((0, grad_hidden), (1, grad_weight), (2, grad_bias)):
        if ctx.needs_input_grad[position]:
            result[position] = grad * grad_loss
    return tuple(result)


_fused_linear_policy_loss.register_autograd(_backward, setup_context=_setup_context)
