"""Plain-PyTorch fp32 references for :func:`sleepcore.ops.policy_loss` and :func:`sleepcore.ops.group_advantages`.

Written for readability, straight from the specification: per-token maths on ``[B, T]`` tensors, then
a Python loop over sequences for the aggregation. Slow and obvious on purpose; the tests compare the
op against it.

Notation (per token): ``lr = clamp(logp - old_logp, -20, 20)``, ``rho = exp(lr)``, ``sg`` = stop-gradient.
"""

from __future__ import annotations

import torch

LOSS_TYPES = ("grpo", "dapo", "dr_grpo", "gspo", "cispo")
AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")

DEFAULT_AGG = {
    "grpo": "seq-mean-token-mean",
    "dapo": "token-mean",
    "cispo": "token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
    "gspo": "seq-mean-token-mean",
}


def _default_eps(loss_type, eps_low, eps_high):
    """Effective ``(eps_low, eps_high)``.

    ``eps_low=None`` means the loss type's default: 3e-4 for gspo, 0.2 for the others.
    ``eps_high=None`` means 0.28 for dapo, otherwise the effective ``eps_low``.
    """
    if eps_low is None:
        eps_low = 3e-4 if loss_type == "gspo" else 0.2
    if eps_high is None:
        eps_high = 0.28 if loss_type == "dapo" else eps_low
    return float(eps_low), float(eps_high)


def _check_mask(mask, shape):
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask must have shape {tuple(shape)} (like logp), got {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        return mask
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must be boolean or contain only 0 and 1")
    return mask != 0


def _check_count(name, value):
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, torch.Tensor)):
        raise TypeError(f"{name} must be an int or a 0-d tensor, got {type(value).__name__}")
    if isinstance(value, int) and value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    if isinstance(value, torch.Tensor) and value.dim() != 0:
        raise ValueError(f"{name} must be a 0-d tensor, got shape {tuple(value.shape)}")


def _masked_token_mean(x, mask):
    """Mean of ``x`` over the masked tokens of this call, dividing by ``max(count, 1)``."""
    count = mask.sum().clamp_min(1)
    return torch.where(mask, x, torch.zeros_like(x)).sum() / count


def policy_loss(logp, old_logp, advantages, mask, *, loss_type="grpo", ref_logp=None, rollout_logp=None,
                entropy=None, eps_low=None, eps_high=None, clip_ratio_c=None, kl_coef=0.0, kl_estimator="k3",
                entropy_coef=0.0, tis_cap=None, agg=None, global_tokens=None, global_seqs=None, max_len=None):
    """Clipped policy-gradient loss (GRPO / DAPO / Dr. GRPO / GSPO / CISPO) with KL, entropy and TIS terms.

    Args:
        logp: ``[B, T]`` log-probabilities of the sampled tokens under the current policy (differentiable).
        old_logp: ``[B, T]`` log-probabilities under the policy that produced the behaviour ratios.
        advantages: ``[B]`` (one per sequence) or ``[B, T]`` (per token).
        mask: ``[B, T]``, bool or 0/1 float; True marks the tokens that count.
        loss_type: ``"grpo" | "dapo" | "dr_grpo" | "gspo" | "cispo"``.
        ref_logp: ``[B, T]`` reference-model log-probabilities for the KL penalty (needed when ``kl_coef != 0``).
        rollout_logp: ``[B, T]`` log-probabilities of the rollout engine; enables truncated importance
            sampling with weight ``sg(min(exp(old_logp - rollout_logp), tis_cap))``.
        entropy: ``[B, T]`` per-token entropy (differentiable); needed when ``entropy_coef != 0``.
        eps_low, eps_high: clip range ``[1 - eps_low, 1 + eps_high]``. ``eps_low=None`` is the loss type's
            default (3e-4 for gspo, 0.2 otherwise); ``eps_high=None`` is 0.28 for dapo, else ``eps_low``.
        clip_ratio_c: dual-clip constant (> 1); where ``A < 0`` the token loss is capped at
            ``-A * clip_ratio_c``. Applies to the clipped objectives (gspo included); with cispo it is a ValueError.
        kl_coef, kl_estimator: KL penalty weight and estimator (``"k1" | "k2" | "k3"``) against ``ref_logp``.
        entropy_coef: weight of the entropy bonus (subtracted).
        tis_cap: cap of the truncated-importance-sampling weight (None: no cap).
        agg: ``"token-mean" | "seq-mean-token-sum" | "seq-mean-token-mean" | "seq-mean-token-sum-norm"``;
            None picks the loss type's default.
        global_tokens, global_seqs: denominators (int or 0-d tensor); default to this call's
            ``mask.sum()`` and ``B``.
        max_len: length normaliser of ``seq-mean-token-sum-norm`` (default ``T``).

    Returns:
        ``(loss, metrics)``: ``loss`` a 0-d float32 tensor; ``metrics`` a dict of detached 0-d tensors
        ``clip_frac``, ``approx_kl``, ``entropy``, ``ratio_mean``, ``ratio_max``.
    """
    # ---- argument checks -------------------------------------------------------------------------
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if agg is None:
        agg = DEFAULT_AGG[loss_type]
    if agg not in AGG_MODES:
        raise ValueError(f"agg must be one of {AGG_MODES}, got {agg!r}")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {kl_estimator!r}")
    if not isinstance(logp, torch.Tensor):
        raise TypeError(f"logp must be a tensor, got {type(logp).__name__}")
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B, T], got shape {tuple(logp.shape)}")
    B, T = logp.shape
    for name, value in (("old_logp", old_logp), ("ref_logp", ref_logp), ("rollout_logp", rollout_logp),
                        ("entropy", entropy)):
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
        if tuple(value.shape) != (B, T):
            raise ValueError(f"{name} must have shape {(B, T)} (like logp), got {tuple(value.shape)}")
    if old_logp is None:
        raise TypeError("old_logp must be a tensor, got None")
    if not isinstance(advantages, torch.Tensor):
        raise TypeError(f"advantages must be a tensor, got {type(advantages).__name__}")
    if tuple(advantages.shape) not in ((B,), (B, T)):
        raise ValueError(f"advantages must have shape {(B,)} or {(B, T)}, got {tuple(advantages.shape)}")
    mask = _check_mask(mask, (B, T))
    eps_low, eps_high = _default_eps(loss_type, eps_low, eps_high)
    if eps_low < 0:
        raise ValueError(f"eps_low must be >= 0, got {eps_low}")
    if eps_high < 0:
        raise ValueError(f"eps_high must be >= 0, got {eps_high}")
    if clip_ratio_c is not None and not clip_ratio_c > 1:
        raise ValueError(f"clip_ratio_c must be > 1 (dual clip), got {clip_ratio_c}")
    if clip_ratio_c is not None and loss_type == "cispo":
        raise ValueError("clip_ratio_c (dual clip) does not apply to loss_type='cispo'")
    if tis_cap is not None and tis_cap <= 0:
        raise ValueError(f"tis_cap must be positive, got {tis_cap}")
    if kl_coef != 0 and ref_logp is None:
        raise ValueError("kl_coef != 0 needs ref_logp")
    if entropy_coef != 0 and entropy is None:
        raise ValueError("entropy_coef != 0 needs entropy")
    _check_count("global_tokens", global_tokens)
    _check_count("global_seqs", global_seqs)

    # ---- per-token loss --------------------------------------------------------------------------
    logp = logp.float()
    old_logp = old_logp.float()
    A = advantages.float()
    if A.dim() == 1:
        A = A[:, None].expand(B, T)
    m = mask.float()

    lr = torch.clamp(logp - old_logp, -20.0, 20.0)
    rho = torch.exp(lr)

    if loss_type == "cispo":
        weight = torch.clamp(rho, max=1.0 + eps_high).detach()
        pg = -weight * A * logp
        ratio_for_metrics = rho
        clipped = rho > 1.0 + eps_high
    else:
        if loss_type == "gspo":
            # Sequence ratio s_i = exp(mean over the sequence's tokens of lr); s = 1 for an empty sequence.
            seq_log_ratio = torch.zeros(B)
            for i in range(B):
                n_i = m[i].sum()
                if n_i > 0:
                    seq_log_ratio[i] = (lr[i] * m[i]).sum() / n_i
            s = torch.exp(seq_log_ratio).detach()[:, None].expand(B, T)
            # value s, gradient d ratio / d logp_t = s (like exp(logp)).
            ratio = s * torch.exp(logp - logp.detach())
        else:
            ratio = rho
        clipped_ratio = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
        unclipped_loss = -A * ratio
        clipped_loss = -A * clipped_ratio
        pg = torch.maximum(unclipped_loss, clipped_loss)
        clipped = clipped_loss.detach() > unclipped_loss.detach()
        if clip_ratio_c is not None:
            dual = torch.minimum(pg, -A * clip_ratio_c)
            pg = torch.where(A < 0, dual, pg)
        ratio_for_metrics = ratio.detach()

    if rollout_logp is not None:
        tis = torch.exp(old_logp - rollout_logp.float())
        if tis_cap is not None:
            tis = torch.clamp(tis, max=float(tis_cap))
        pg = pg * tis.detach()

    loss_tok = pg
    if ref_logp is not None and kl_coef != 0:
        d = logp - ref_logp.float()
        if kl_estimator == "k1":
            kl = d
        elif kl_estimator == "k2":
            kl = 0.5 * d ** 2
        else:
            kl = torch.exp(-d) - (-d) - 1.0
        loss_tok = loss_tok + kl_coef * kl
    if entropy is not None and entropy_coef != 0:
        loss_tok = loss_tok - entropy_coef * entropy.float()

    # ---- aggregation -----------------------------------------------------------------------------
    n_tokens = global_tokens if global_tokens is not None else mask.sum()
    n_seqs = global_seqs if global_seqs is not None else B
    L = max_len if max_len is not None else T
    masked = torch.where(mask, loss_tok, torch.zeros_like(loss_tok))
    if agg == "token-mean":
        loss = masked.sum() / n_tokens
    elif agg == "seq-mean-token-sum":
        loss = sum(masked[i].sum() for i in range(B)) / n_seqs
    elif agg == "seq-mean-token-mean":
        total = torch.zeros(())
        for i in range(B):
            n_i = m[i].sum()
            if n_i > 0:
                total = total + masked[i].sum() / n_i
        loss = total / n_seqs
    else:  # seq-mean-token-sum-norm
        loss = masked.sum() / (n_seqs * L)
    loss = torch.as_tensor(loss, dtype=torch.float32)

    # ---- metrics (this call's tokens only, detached) ---------------------------------------------
    with torch.no_grad():
        r = ratio_for_metrics.detach()
        masked_r = r[mask]
        metrics = {
            "clip_frac": _masked_token_mean(clipped.float(), mask),
            "approx_kl": _masked_token_mean((old_logp - logp).detach(), mask),
            "entropy": _masked_token_mean(entropy.detach().float(), mask) if entropy is not None
            else torch.zeros(()),
            "ratio_mean": _masked_token_mean(r, mask),
            "ratio_max": masked_r.max() if masked_r.numel() > 0 else torch.zeros(()),
        }
    return loss, metrics


def group_advantages(rewards, group_size, *, scale="std", eps=1e-6):
    """Group-relative advantages (GRPO): ``(r - group mean) / (group std + eps)``.

    Args:
        rewards: ``[B]``, grouped consecutively (``[g0 g0 g0 g1 g1 g1 ...]``), ``B % group_size == 0``.
        group_size: completions per prompt.
        scale: ``"std"`` (divide by the unbiased group std + eps, like TRL) or ``"none"``
            (mean-centred only, Dr. GRPO).
        eps: added to the std.

    Returns:
        ``[B]`` float32 advantages.
    """
    if not isinstance(rewards, torch.Tensor):
        raise TypeError(f"rewards must be a tensor, got {type(rewards).__name__}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be [B], got shape {tuple(rewards.shape)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if rewards.shape[0] % group_size != 0:
        raise ValueError(f"group_size {group_size} does not divide the number of rewards {rewards.shape[0]}")
    if scale not in ("std", "none"):
        raise ValueError(f"scale must be 'std' or 'none', got {scale!r}")
    r = rewards.float()
    out = torch.empty_like(r)
    for start in range(0, r.shape[0], group_size):
        g = r[start:start + group_size]
        centred = g - g.mean()
        if scale == "std":
            centred = centred / (g.std() + eps)
        out[start:start + group_size] = centred
    return out
