"""Plain-PyTorch fp32 references for the distillation ops.

Readable maths, no fusion, no chunking: these materialise every ``[N, V]`` tensor and are
meant for tests and benchmark baselines only. Every function upcasts its inputs to float32,
except that ``upcast=False`` runs the same maths in the inputs' own dtype: what a plain PyTorch
user runs, the baseline of the 16-bit error rule and of the benchmarks' ``torch`` provider.

Conventions (TRL's ``generalized_jsd_loss``):

* ``beta == 0``: forward KL(teacher || student); ``beta == 1``: reverse KL(student || teacher);
  otherwise ``beta * KL(T || M) + (1 - beta) * KL(S || M)`` with ``M = beta*T + (1-beta)*S``.
* temperature divides both sides' logits (no ``T**2`` factor).
* ``reduction`` of the fused ops (rows ``[N, H]``): ``"batchmean"`` divides the masked sum by the
  number of kept tokens, or by ``num_items_in_batch`` when given; ``"sum"``; ``"none"`` returns
  per-token values with zeros at ignored tokens. :func:`generalized_jsd` on logits follows TRL
  1.16's reductions instead (:func:`trl_reduce_token_losses`).
"""

from __future__ import annotations

import math

import torch

REST_LOG_FLOOR = math.log(1e-30)


def _xlogy_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Elementwise ``p * (log p - log q)``, zero where ``p == 0``."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))


def jsd_from_logprobs(student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-row generalized JSD from log-probs ``[..., K]`` (any bins), summed over the last dim."""
    if beta == 0:
        terms = _xlogy_kl(teacher_logp, student_logp)
    elif beta == 1:
        terms = _xlogy_kl(student_logp, teacher_logp)
    else:
        mixture_logp = torch.logaddexp(student_logp + math.log(1 - beta), teacher_logp + math.log(beta))
        terms = beta * _xlogy_kl(teacher_logp, mixture_logp) + (1 - beta) * _xlogy_kl(student_logp, mixture_logp)
    return terms.sum(-1)


def jsd_per_token(student_logits, teacher_logits, beta: float, temperature: float) -> torch.Tensor:
    """Per-token generalized JSD ``[...]`` of logits ``[..., V]`` at ``temperature``."""
    return jsd_from_logprobs(torch.log_softmax(student_logits / temperature, dim=-1),
                             torch.log_softmax(teacher_logits / temperature, dim=-1), beta)


def token_mask(labels: torch.Tensor | None, shape: torch.Size, ignore_index: int) -> torch.Tensor:
    """Boolean keep-mask of ``shape`` from integer labels (``!= ignore_index``) or a bool mask."""
    if labels is None:
        return torch.ones(shape, dtype=torch.bool)
    if labels.dtype == torch.bool:
        return labels.reshape(shape)
    return (labels != ignore_index).reshape(shape)


def reduce_token_losses(per_token, mask, reduction, num_items_in_batch=None):
    """Apply ``reduction`` to masked per-token losses (float32)."""
    per_token = torch.where(mask.to(per_token.device), per_token, torch.zeros_like(per_token))
    if reduction == "none":
        return per_token.float()
    total = per_token.float().sum()
    if reduction == "sum":
        return total
    denominator = num_items_in_batch if num_items_in_batch is not None else mask.sum()
    if not torch.is_tensor(denominator):
        denominator = torch.tensor(float(denominator))
    return total / denominator.to(total.device).float().clamp_min(1)


def trl_reduce_token_losses(per_token, mask, reduction, num_items_in_batch, *, labelled, vocab):
    """TRL 1.16's reductions of masked per-token losses ``[...]`` (float32): with
    ``num_items_in_batch`` every scalar reduction divides the sum by it; otherwise ``"batchmean"``
    divides by the kept tokens (labelled) or by the first dimension (no labels: ``B`` of
    ``[B, S]``), ``"mean"`` by the kept tokens times ``vocab``, ``"sum"`` not at all. No kept
    token gives 0. ``"none"``: per-token values, zero at ignored tokens."""
    per_token = torch.where(mask.to(per_token.device), per_token, torch.zeros_like(per_token)).float()
    if reduction == "none":
        return per_token
    total = per_token.sum()
    if num_items_in_batch is not None:
        return total / torch.as_tensor(num_items_in_batch, dtype=torch.float32).reshape(())
    kept = mask.sum().float().clamp_min(1)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / (kept * vocab)
    return total / kept if labelled else total / max(per_token.shape[0] if per_token.dim() else 1, 1)


def generalized_jsd(student_logits, teacher_logits, labels=None, *, beta=0.5, temperature=1.0,
                    ignore_index=-100, reduction="batchmean", num_items_in_batch=None, upcast=True):
    """Reference for :func:`sleepcore.ops.generalized_jsd`; logits ``[..., V]``."""
    if upcast:
        student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    per_token = jsd_per_token(student_logits, teacher_logits, beta, temperature)
    mask = token_mask(labels, per_token.shape, ignore_index)
    return trl_reduce_token_losses(per_token, mask, reduction, num_items_in_batch, labelled=labels is not None,
                                   vocab=student_logits.shape[-1])


def _logits(hidden, weight, bias, upcast=True):
    if upcast:
        hidden, weight, bias = hidden.float(), weight.float(), None if bias is None else bias.float()
    logits = hidden.reshape(-1, hidden.shape[-1]) @ weight.T
    return logits if bias is None else logits + bias


def fused_linear_jsd(student_hidden, student_weight, teacher_hidden, teacher_weight, labels=None, *,
                     beta=0.5, temperature=1.0, ignore_index=-100, reduction="batchmean",
                     num_items_in_batch=None, student_bias=None, teacher_bias=None, upcast=True):
    """Reference for :func:`sleepcore.ops.fused_linear_jsd`: materialises both ``[N, V]`` logits."""
    student_logits = _logits(student_hidden, student_weight, student_bias, upcast)
    with torch.no_grad():
        teacher_logits = _logits(teacher_hidden, teacher_weight, teacher_bias, upcast)
    per_token = jsd_per_token(student_logits, teacher_logits, beta, temperature)
    mask = token_mask(None if labels is None else labels.reshape(-1), per_token.shape, ignore_index)
    loss = reduce_token_losses(per_token, mask, reduction, num_items_in_batch)
    return loss.reshape(student_hidden.shape[:-1]) if reduction == "none" else loss


def topk_bins(student_logits, teacher_topk_ids, teacher_topk_logprobs, temperature):
    """Student and teacher log-probs over the k + 1 bins (top-k ids, then the rest): two ``[N, k+1]``."""
    z = student_logits.float() / temperature
    log_normaliser = torch.logsumexp(z, dim=-1, keepdim=True)
    student_topk = z.gather(-1, teacher_topk_ids) - log_normaliser
    rest_logits = z.scatter(-1, teacher_topk_ids, float("-inf"))
    student_rest = torch.logsumexp(rest_logits, dim=-1, keepdim=True) - log_normaliser
    teacher_topk = teacher_topk_logprobs.float()
    teacher_rest_mass = (1 - teacher_topk.exp().sum(-1, keepdim=True)).clamp_min(0)
    teacher_rest = teacher_rest_mass.log()
    student_rest = student_rest.clamp_min(REST_LOG_FLOOR)
    teacher_rest = teacher_rest.clamp_min(REST_LOG_FLOOR)
    return torch.cat([student_topk, student_rest], -1), torch.cat([teacher_topk, teacher_rest], -1)


def fused_linear_topk_jsd(student_hidden, student_weight, teacher_topk_ids, teacher_topk_logprobs, labels=None, *,
                          beta=0.5, temperature=1.0, ignore_index=-100, reduction="batchmean",
                          num_items_in_batch=None, student_bias=None):
    """Reference for :func:`sleepcore.ops.fused_linear_topk_jsd` over k + 1 bins."""
    student_logits = _logits(student_hidden, student_weight, student_bias)
    k = teacher_topk_ids.shape[-1]
    student_bins, teacher_bins = topk_bins(student_logits, teacher_topk_ids.reshape(-1, k),
                                           teacher_topk_logprobs.reshape(-1, k), temperature)
    per_token = jsd_from_logprobs(student_bins, teacher_bins, beta)
    mask = token_mask(labels, per_token.shape, ignore_index)
    return reduce_token_losses(per_token, mask, reduction, num_items_in_batch)
