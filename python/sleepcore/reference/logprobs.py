"""Plain-PyTorch fp32 reference for :func:`sleepcore.ops.fused_linear_logprobs` (materialises ``[N, V]``)."""

from __future__ import annotations

import torch


def logprobs_from_logits(logits, token_ids, *, temperature=1.0, ignore_index=-100):
    """Per-token ``log_softmax(logits / T)[token]`` and entropy, float32, 0 at ignored tokens.

    Args:
        logits: ``[..., V]``; token_ids: integer ``[...]``.

    Returns:
        ``(logp, entropy)``, each float32 of ``token_ids``' shape.
    """
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    keep = token_ids != ignore_index
    safe_ids = torch.where(keep, token_ids, torch.zeros_like(token_ids))
    logp = logp_all.gather(-1, safe_ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    zero = torch.zeros_like(logp)
    return torch.where(keep, logp, zero), torch.where(keep, entropy, zero)


def fused_linear_logprobs(hidden, weight, token_ids, *, temperature=1.0, bias=None, ignore_index=-100):
    """Reference: ``logits = hidden @ weight.T + bias`` in fp32, then :func:`logprobs_from_logits`."""
    logits = hidden.float() @ weight.float().T
    if bias is not None:
        logits = logits + bias.float()
    return logprobs_from_logits(logits, token_ids, temperature=temperature, ignore_index=ignore_index)
