"""Policy-gradient loss modules."""

from __future__ import annotations

import torch

from sleepcore.ops import _checks
from sleepcore.ops._linear_chunks import default_chunk_size, grad_flags
from sleepcore.ops.fused_linear_jsd import prepare_linear_inputs
from sleepcore.ops.policy_loss import (PolicyLossConfig, _check_count, _check_inputs, _check_mask,
                                       aggregation_weights, metrics, token_terms)


class FusedLinearPolicyLoss(torch.nn.Module):
    """Hidden states to a GRPO/DAPO/Dr. GRPO/GSPO/CISPO loss through the fused log-prob kernels.

    Same maths as :func:`sleepcore.ops.policy_loss` applied to
    ``fused_linear_logprobs(hidden, weight, token_ids, temperature=T)``, but the gradients w.r.t.
    hidden, weight and bias are computed during the forward pass (three logits-sized GEMMs, no
    ``N x V`` tensor), and backward only scales them.

    Example::

        loss_fn = FusedLinearPolicyLoss(loss_type="dapo")
        loss, metrics = loss_fn(hidden, model.lm_head.weight, completion_ids, old_logp, advantages, mask)

    Args:
        loss_type, eps_low, eps_high, clip_ratio_c, kl_coef, kl_estimator, entropy_coef, tis_cap, agg:
            as in :func:`sleepcore.ops.policy_loss`.
        temperature: > 0, divides the logits (use the sampling temperature).
        chunk_size: tokens per chunk (rounded down to whole sequences, at least one); None lets
            the op choose from V and the device.
        backend: ``"auto"``, ``"cpu"`` or ``"triton"``.
    """

    def __init__(self, loss_type="grpo", *, temperature=1.0, eps_low=None, eps_high=None, clip_ratio_c=None,
                 kl_coef=0.0, kl_estimator="k3", entropy_coef=0.0, tis_cap=None, agg=None, chunk_size=None,
                 backend="auto"):
        super().__init__()
        self.config = PolicyLossConfig(loss_type, eps_low, eps_high, clip_ratio_c, kl_coef, kl_estimator,
                                       entropy_coef, tis_cap, agg)
        self.temperature = _checks.temperature(temperature)
        self.chunk_size = _checks.chunk_size(chunk_size)
        self.backend = _checks.backend(backend)

    def forward(self, hidden, weight, token_ids, old_logp, advantages, mask, *, bias=None, ref_logp=None,
                rollout_logp=None, global_tokens=None, global_seqs=None, max_len=None):
        """Loss and metrics for ``B`` sequences of ``T`` tokens.

        Args:
            hidden: ``[B, T, H]`` final hidden states (fp32/bf16/fp16); weight ``[V, H]``; bias ``[V]``.
            token_ids: int ``[B, T]``, the sampled tokens whose log-probs are trained.
            old_logp, advantages (``[B]`` or ``[B, T]``), mask, ref_logp, rollout_logp, global_tokens,
                global_seqs, max_len: as in :func:`sleepcore.ops.policy_loss`.

        Returns:
            ``(loss, metrics)``: float32 scalar and the metrics dict of :func:`sleepcore.ops.policy_loss`.
        """
        config = self.config
        _checks.tensor("hidden", hidden, ndims=(3,))
        flat_hidden, weight = prepare_linear_inputs(hidden, weight, bias, hidden_name="hidden", weight_name="weight",
                                                    bias_name="bias")
        _checks.tensor("token_ids", token_ids, ndims=(2,), dtypes=(torch.int64, torch.int32))
        if token_ids.shape != hidden.shape[:2]:
            raise ValueError(f"token_ids must have shape {tuple(hidden.shape[:2])}, got {tuple(token_ids.shape)}")
        _check_inputs(old_logp, old_logp, advantages, mask, ref_logp, rollout_logp, None, config,
                      computes_entropy=True)
        if old_logp.shape != token_ids.shape:
            raise ValueError(f"old_logp must have shape {tuple(token_ids.shape)}, got {tuple(old_logp.shape)}")
        for name, value in (("global_tokens", global_tokens), ("global_seqs", global_seqs), ("max_len", max_len)):
            _check_count(name, value)
        device = _checks.same_device(hidden=hidden, weight=weight, token_ids=token_ids, old_logp=old_logp,
                                     advantages=advantages, mask=mask)
        mask = _check_mask(mask)
        weights = aggregation_weights(mask, config.agg, global_tokens, global_seqs, max_len)
        chunk = self.chunk_size or default_chunk_size(flat_hidden.shape[0], weight.shape[0], flat_hidden.dtype, device)
        ids = torch.where(mask, token_ids, torch.full_like(token_ids, -1)).reshape(-1).to(torch.int64).contiguous()
        as_float = lambda t: None if t is None else t.detach().float().contiguous()  # noqa: E731
        loss, logp, entropy, *_ = torch.ops.sleepcore.fused_linear_policy_loss(
            flat_hidden, weight, bias, ids, as_float(old_logp), as_float(advantages), mask.contiguous(), weights,
            as_float(ref_logp), as_float(rollout_logp), self.temperature, chunk, self.backend, config.loss_type,
            config.eps_low, config.eps_high, config.clip_ratio_c, config.kl_coef, config.kl_estimator,
            config.entropy_coef, config.tis_cap, *grad_flags(flat_hidden, weight, bias))
        with torch.no_grad():
            _, _, clipped, rho = token_terms(logp, old_logp.float(), advantages, mask, config, as_float(ref_logp),
                                             as_float(rollout_logp), entropy)
        return loss, metrics(rho, clipped, mask, old_logp.float(), logp, entropy)

    def extra_repr(self) -> str:
        return f"loss_type={self.config.loss_type!r}, agg={self.config.agg!r}, temperature={self.temperature}"
