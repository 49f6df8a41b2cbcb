"""Policy-gradient loss modules."""

from __future__ import annotations

from dataclasses import asdict

import torch

from sleepcore import ops
from sleepcore.ops.fused_linear_policy_loss import FusedLinearPolicyLossConfig


class FusedLinearPolicyLoss(torch.nn.Module):
    """Hidden states to a GRPO/DAPO/Dr. GRPO/GSPO/CISPO loss: a module form of
    :func:`sleepcore.ops.fused_linear_policy_loss` holding its options (checked on construction).

    Example::

        loss_fn = FusedLinearPolicyLoss(loss_type="dapo")
        loss, metrics = loss_fn(hidden, model.lm_head.weight, completion_ids, old_logp, advantages, mask)

    Args:
        loss_type, temperature, eps_low, eps_high, clip_ratio_c, kl_coef, kl_estimator, entropy_coef,
            tis_cap, agg, chunk_size, backend: as in :func:`sleepcore.ops.fused_linear_policy_loss`.
    """

    def __init__(self, loss_type="grpo", *, temperature=1.0, eps_low=None, eps_high=None, clip_ratio_c=None,
                 kl_coef=0.0, kl_estimator="k3", entropy_coef=0.0, tis_cap=None, agg=None, chunk_size=None,
                 backend="auto"):
        super().__init__()
        self.options = asdict(FusedLinearPolicyLossConfig(
            loss_type, eps_low, eps_high, clip_ratio_c, kl_coef, kl_estimator, entropy_coef, tis_cap, agg,
            temperature, chunk_size, backend))

    def forward(self, hidden, weight, token_ids, old_logp, advantages, mask=None, *, bias=None, ref_logp=None,
                rollout_logp=None, global_tokens=None, global_seqs=None, max_len=None):
        """``(loss, metrics)`` of :func:`sleepcore.ops.fused_linear_policy_loss` (same shapes and arguments)."""
        return ops.fused_linear_policy_loss(hidden, weight, token_ids, old_logp, advantages, mask, bias=bias,
                                            ref_logp=ref_logp, rollout_logp=rollout_logp,
                                            global_tokens=global_tokens, global_seqs=global_seqs, max_len=max_len,
                                            **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={value!r}" for name, value in self.options.items())
