"""Per-row losses and logit gradients of the fused ops on one vocabulary shard, combined over the
ranks of a :class:`~sleepcore.ops._vocab_parallel.VocabShard`.

Each function mirrors a row function of :mod:`~sleepcore.ops.logprob_rows` or
:mod:`~sleepcore.ops.divergence_rows` (same buffers, same outputs, ``grad`` may alias the
logits) on a chunk's local logits ``[C, size]``, and every rank must call it on the same rows.

Derivation. Per row, ``z = logits / T`` over the vocabulary is split into the shards ``z^(r)``.
Each rank computes ``l_r = logsumexp(z^(r))``; after one all-gather of per-row statistics every
rank forms ``lse = logsumexp_r l_r`` and the shift ``s_r = l_r - lse <= 0`` (the log of shard
``r``'s probability mass), so ``p_j = exp(z_j - lse)`` is known on the shard that holds ``j``.

* Log-probs and entropy: the row kernel runs on the shard with shard-local ids and gives ``l_r``,
  ``logp_r = z_y - l_r`` and the shard's own entropy ``H_r``. With ``w_r = exp(s_r)``:
  ``logp = logp_o + s_o`` for the shard ``o`` that holds ``y``, and, since
  ``sum_{j in r} p_j z_j = w_r (l_r - H_r)`` and ``sum_r w_r = 1``,
  ``H = lse - sum_j p_j z_j = sum_r w_r (H_r - s_r)``, a sum of non-negative terms.
  Gradients: ``d logp / dz_j = [j == y] - p_j`` and ``d H / dz_j = -p_j (log p_j + H)`` need only
  the combined ``lse`` and ``H``, so the gradient kernel runs on the shard with them. A row whose
  target lies on another shard has no one-hot term here: the kernel gets local id 0, and column
  0 of that row is rewritten as ``-(g_logp + g_H (log p_0 + H)) p_0 / T``.
* Generalized JSD: ``log p = z_s - lse_s``, ``log q = z_t - lse_t`` from the gathered ``l`` of both
  sides. With the terms ``t_j`` and ``a_j = dL/d(log p_j)`` of ``csrc/cpu/divergence_rows.cpp``
  (``beta = 0``: ``t = q (log q - log p)``, ``a = -q``; ``beta = 1``: ``t = p (log p - log q)``,
  ``a = p (log p - log q + 1)``; otherwise, with ``m = (1 - beta) p + beta q``,
  ``t = beta q (log q - log m) + (1 - beta) p (log p - log m)``, ``a = (1 - beta) p (log p - log m)``),
  ``L = sum_j t_j`` and ``S = sum_j a_j`` add up over shards (one all-reduce of the two partial
  sums), and ``dL/dz_j = a_j - p_j S`` is local.
* Top-k teacher: each rank gathers ``l_r``, the log-sum-exp of its ids outside the row's top-k
  (``-inf`` when it holds none) and ``z`` at the top-k ids it holds (0 at the others): one
  all-gather gives ``lse``, the rest's ``lse_R`` and ``z`` at every top-k id. Every rank then forms
  the single-process op's k + 1 bins (rest log-probs floored at ``log(1e-30)``) and their ``L``,
  ``a_b`` and ``S = sum_b a_b`` (``a_R`` left out while the student's rest is floored); the
  gradient is ``a_i - P_i S`` at a top-k id on this shard and ``p_j (a_R / P_R - S)`` at the
  others (``-p_j S`` while floored).

Temperature and ``row_scale`` scale the raw-logit gradient by ``row_scale / T``; a row whose
``row_scale`` is 0 gets loss 0 and a zero gradient row.

Cost per chunk of C rows: log-probs one all-gather of ``[C, 3-4]`` floats (their gradient none),
the JSD an all-gather of ``[C, 2]`` and an all-reduce of ``[C, 2]``, the top-k JSD an all-gather
of ``[C, k + 2]``. The log-prob rows run the fused row kernels (``_C`` or Triton) on the shard;
the two divergences have no shard kernel and run as PyTorch ops, holding about six float32
``[C, size]`` temporaries (the JSD) or four (top-k): pass a smaller ``chunk_size`` when that is
too much.
"""

from __future__ import annotations

import math

import torch

from sleepcore.ops import logprob_rows as one_device
from sleepcore.ops._vocab_parallel import VocabShard

REST_LOG_FLOOR = math.log(1e-30)


def logprob_rows(logits, token_ids, logp, entropy, lse, *, temperature, backend, shard: VocabShard) -> None:
    """:func:`sleepcore.ops.logprob_rows.logprob_rows` over the vocabulary split across ranks.

    ``token_ids`` are global ids ``[C]`` (negative: ignored row); outputs as in the kernel (float32
    ``[C]``, 0 at ignored rows), identical on every rank.
    """
    local, on = shard.localise(token_ids)
    kept = token_ids >= 0
    make = lambda: torch.empty_like(logp)  # noqa: E731
    shard_logp, shard_lse, shard_entropy = make(), make(), None if entropy is None else make()
    local_ids = torch.where(on, local, torch.where(kept, 0, -1))
    one_device.logprob_rows(logits, local_ids, shard_logp, shard_entropy, shard_lse, temperature=temperature,
                            backend=backend)
    stats = [shard_lse, torch.where(on, shard_logp, 0.0), on.float()]
    gathered = shard.gather(torch.stack(stats if entropy is None else [*stats, shard_entropy], -1))
    row_lse = torch.logsumexp(gathered[..., 0], 0)
    shift = gathered[..., 0] - row_lse  # s_r, [world, C]
    lse.copy_(torch.where(kept, row_lse, 0.0))
    # logp <= 0 exactly; the rounding of the sum can leave 1 ulp above it
    logp.copy_(torch.where(kept, (gathered[..., 1] + gathered[..., 2] * shift).sum(0).clamp_max(0.0), 0.0))
    if entropy is not None:
        entropy.copy_(torch.where(kept, (shift.exp() * (gathered[..., 3] - shift)).sum(0), 0.0))


def logprob_grad_rows(logits, token_ids, lse, entropy, grad_logp, grad_entropy, grad, *, temperature, backend,
                      shard: VocabShard) -> None:
    """:func:`sleepcore.ops.logprob_rows.logprob_grad_rows` on a shard, given the combined ``lse`` and
    ``entropy`` of :func:`logprob_rows`; no collective."""
    local, on = shard.localise(token_ids)
    elsewhere = (token_ids >= 0) & ~on
    log_p0 = logits[:, 0].float() / temperature - lse  # read before the kernel overwrites the logits
    slope = grad_logp if grad_entropy is None else grad_logp + grad_entropy * (log_p0 + entropy)
    column0 = -slope * log_p0.exp() / temperature
    local_ids = torch.where(on, local, torch.where(elsewhere, 0, -1))
    one_device.logprob_grad_rows(logits, local_ids, lse, entropy, grad_logp, grad_entropy, grad,
                                 temperature=temperature, backend=backend)
    grad[:, 0] = torch.where(elsewhere, column0.to(grad.dtype), grad[:, 0])


def _weighted_log_ratio(weight, log_ratio):
    """``weight * log_ratio``, 0 where ``weight`` is 0 (xlogy)."""
    return torch.where(weight > 0, weight * log_ratio, 0.0)


def _terms(log_p, log_q, beta):
    """Per-entry loss terms ``t`` and ``a = dL/d(log p)`` of the generalized JSD (module docstring)."""
    p, q = log_p.exp(), log_q.exp()
    if beta == 0:
        return _weighted_log_ratio(q, log_q - log_p), -q
    if beta == 1:
        log_ratio = log_p - log_q
        return _weighted_log_ratio(p, log_ratio), p * (log_ratio + 1)
    log_m = torch.logaddexp(log_p + math.log1p(-beta), log_q + math.log(beta))
    student_term = (1 - beta) * _weighted_log_ratio(p, log_p - log_m)
    return beta * _weighted_log_ratio(q, log_q - log_m) + student_term, student_term


def _write_loss(loss, row_loss, row_scale):
    loss.copy_(torch.where(row_scale != 0, row_loss, 0.0))


def jsd_rows(student, teacher, row_scale, loss, grad, *, beta, temperature, shard: VocabShard) -> None:
    """:func:`sleepcore.ops.divergence_rows.jsd_rows` on a shard: one all-gather and one all-reduce."""
    log_p, log_q = student.float() / temperature, teacher.float() / temperature
    gathered = shard.gather(torch.stack([log_p.logsumexp(-1), log_q.logsumexp(-1)], -1))
    log_p -= torch.logsumexp(gathered[..., 0], 0)[:, None]
    log_q -= torch.logsumexp(gathered[..., 1], 0)[:, None]
    terms, a = _terms(log_p, log_q, beta)
    sums = shard.sum_(torch.stack([terms.sum(-1), a.sum(-1)], -1))
    _write_loss(loss, sums[:, 0], row_scale)
    if grad is not None:
        grad.copy_(a.sub_(log_p.exp_() * sums[:, 1:]).mul_((row_scale / temperature)[:, None]))


def _topk_bins(student_topk, student_rest, teacher_logprobs):
    """The k + 1 bins' log-probs ``[C, k+1]`` of both sides and whether the student's rest is floored."""
    floored = ~(student_rest >= REST_LOG_FLOOR)
    # as the kernels do: float32 exps, their sum and 1 - sum in float64
    teacher_rest = (1 - teacher_logprobs.exp().double().sum(-1)).clamp_min(0).log().clamp_min(REST_LOG_FLOOR)
    student_bins = torch.cat([student_topk, student_rest.clamp_min(REST_LOG_FLOOR)[:, None]], -1)
    return student_bins, torch.cat([teacher_logprobs, teacher_rest.float()[:, None]], -1), floored


def topk_jsd_rows(student, teacher_ids, teacher_logprobs, row_scale, loss, grad, *, beta, temperature,
                  shard: VocabShard) -> None:
    """:func:`sleepcore.ops.divergence_rows.topk_jsd_rows` on a shard: one all-gather.

    ``teacher_ids`` are global ids ``[C, k]``, any of them on any shard.
    """
    z = student.float() / temperature
    count, size = z.shape
    local, on = shard.localise(teacher_ids)
    spare = torch.where(on, local, size)  # ids held elsewhere point at a spare column past the shard
    in_topk = torch.zeros(count, size + 1, dtype=torch.bool, device=z.device).scatter_(1, spare, True)[:, :size]
    z_topk = torch.where(on, z.gather(1, local.clamp(0, size - 1)), 0.0)
    stats = torch.cat([z.logsumexp(-1, keepdim=True), z.masked_fill(in_topk, -math.inf).logsumexp(-1, keepdim=True),
                       z_topk], -1)
    gathered = shard.gather(stats)
    lse = torch.logsumexp(gathered[..., 0], 0)
    student_bins, teacher_bins, floored = _topk_bins(gathered[..., 2:].sum(0) - lse[:, None],
                                                     torch.logsumexp(gathered[..., 1], 0) - lse, teacher_logprobs)
    terms, a = _terms(student_bins, teacher_bins, beta)
    _write_loss(loss, terms.sum(-1), row_scale)
    if grad is None:
        return
    a_rest = torch.where(floored, 0.0, a[:, -1])
    a_sum = a[:, :-1].sum(-1) + a_rest
    scale = row_scale / temperature
    rest_slope = (a_rest / student_bins[:, -1].exp() - a_sum) * scale
    padded = z.new_empty(count, size + 1)
    torch.sub(z, lse[:, None], out=padded[:, :size]).exp_().mul_(rest_slope[:, None])
    padded.scatter_(1, spare, (a[:, :-1] - student_bins[:, :-1].exp() * a_sum[:, None]) * scale[:, None])
    grad.copy_(padded[:, :size])
