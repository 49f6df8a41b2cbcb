"""``policy_loss``: the importance-weighted policy-gradient losses (GRPO, DAPO, Dr. GRPO, GSPO, CISPO)
on per-token log-probs, with dual clip, KL to a reference, an entropy bonus, truncated importance
sampling and global (gradient-accumulation-safe) normalisers; and ``group_advantages``.

Per token, ``lr = clamp(logp - old_logp, -20, 20)`` and ``rho = exp(lr)`` (GSPO: the sequence
ratio ``s = exp(masked mean of lr)`` with ``rho_t = sg(s) * exp(logp_t - sg(logp_t))``):

* clipped objective: ``pg = max(-A*rho, -A*clip(rho, 1-eps_low, 1+eps_high))``; with
  ``clip_ratio_c``, ``pg = min(pg, -A*clip_ratio_c)`` where ``A < 0``;
* CISPO: ``pg = -sg(min(rho, 1+eps_high)) * A * logp``;
* TIS: ``pg *= sg(min(exp(old_logp - rollout_logp), tis_cap))``;
* ``loss_t = pg + kl_coef * k(logp, ref) - entropy_coef * entropy``;
* ``loss = sum_t w_t * loss_t`` with aggregation weights ``w`` from the mask and the global counts.

The loss is a weighted sum of per-token terms whose gradient w.r.t. ``logp_t`` depends on token
``t`` alone (GSPO's sequence ratio is stop-gradient), so :func:`token_terms` gives it in
closed form: :func:`sleepcore.ops.fused_linear_policy_loss` uses it to compute gradients during its
forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sleepcore import validation

LOSS_TYPES = ("grpo", "dapo", "dr_grpo", "gspo", "cispo")
AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")
_DEFAULT_AGG = {"grpo": "seq-mean-token-mean", "dapo": "token-mean", "dr_grpo": "seq-mean-token-sum-norm",
                "gspo": "seq-mean-token-mean", "cispo": "token-mean"}
_LOG_RATIO_BOUND = 20.0


def _option(name, value, options):
    return validation.choice(name, validation.instance(name, value, str, what="a string"), options)


@dataclass(frozen=True)
class PolicyLossConfig:
    """The options of :func:`policy_loss`, validated, with loss-type defaults resolved.

    ``eps_low=None`` means the loss type's default (3e-4 for GSPO, else 0.2); ``eps_high=None``
    means ``eps_low`` (0.28 for DAPO); ``agg=None`` means the loss type's default aggregation.
    """

    loss_type: str = "grpo"
    eps_low: float | None = None
    eps_high: float | None = None
    clip_ratio_c: float | None = None
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    tis_cap: float | None = None
    agg: str | None = None

    def __post_init__(self):
        loss_type = _option("loss_type", self.loss_type, LOSS_TYPES)
        eps_low = (3e-4 if loss_type == "gspo" else 0.2) if self.eps_low is None else self.eps_low
        eps_low = validation.number("eps_low", eps_low, minimum=0.0)
        eps_high = (0.28 if loss_type == "dapo" else eps_low) if self.eps_high is None else self.eps_high
        resolved = dict(
            eps_low=eps_low, eps_high=validation.number("eps_high", eps_high, minimum=0.0),
            clip_ratio_c=validation.number("clip_ratio_c", self.clip_ratio_c, above=1.0, optional=True),
            kl_coef=validation.number("kl_coef", self.kl_coef),
            kl_estimator=_option("kl_estimator", self.kl_estimator, KL_ESTIMATORS),
            entropy_coef=validation.number("entropy_coef", self.entropy_coef),
            tis_cap=validation.positive("tis_cap", self.tis_cap, optional=True),
            agg=_option("agg", _DEFAULT_AGG[loss_type] if self.agg is None else self.agg, AGGREGATIONS))
        if resolved["clip_ratio_c"] is not None and loss_type == "cispo":
            raise ValueError("clip_ratio_c (dual clip) applies to the clipped objectives, not loss_type='cispo'")
        for name, value in resolved.items():
            object.__setattr__(self, name, value)


def _tensor(name, value, *, floating=True):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if floating and not value.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    return value


def _check_inputs(shape, config, old_logp, advantages, mask, *, has_entropy, **optional):
    """Check the inputs of a policy loss over ``[B, T] = shape`` (metadata only): float ``[B, T]``
    old_logp and ``optional`` tensors (None skipped), advantages ``[B]`` or ``[B, T]``, a bool or
    numeric ``[B, T]`` mask, and the inputs that ``config`` needs."""
    for name, value in (("old_logp", old_logp), ("advantages", advantages), ("mask", mask), *optional.items()):
        if value is None and name in optional:
            continue
        _tensor(name, value, floating=name != "mask")
        if value.shape != shape and not (name == "advantages" and value.shape == shape[:1]):
            allowed = f"{tuple(shape[:1])} or " if name == "advantages" else ""
            raise ValueError(f"{name} must have shape {allowed}{tuple(shape)} ([B, T]), got {tuple(value.shape)}")
    if mask.dtype.is_complex:
        raise TypeError(f"mask must be bool or 0/1 numbers, got {mask.dtype}")
    if config.kl_coef != 0 and optional.get("ref_logp") is None:
        raise ValueError("kl_coef != 0 needs ref_logp")
    if config.entropy_coef != 0 and not has_entropy:
        raise ValueError("entropy_coef != 0 needs entropy")


def aggregation_weights(mask, agg, global_tokens=None, global_seqs=None, max_len=None):
    """float32 ``[B, T]`` weights ``w`` with ``loss = sum(w * loss_t)`` for aggregation ``agg``."""
    mask = mask.to(torch.float32)
    seqs = mask.shape[0] if global_seqs is None else global_seqs
    if agg == "token-mean":
        tokens = mask.sum().clamp_min(1) if global_tokens is None else global_tokens
        return mask / tokens
    if agg == "seq-mean-token-sum":
        return mask / seqs
    if agg == "seq-mean-token-mean":
        return mask / (mask.sum(-1, keepdim=True).clamp_min(1) * seqs)
    return mask / (seqs * (mask.shape[1] if max_len is None else max_len))


def _check_count(name, value):
    """A normaliser: None, a number > 0, or a one-element tensor (its value is not read)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number or a one-element tensor, got shape {tuple(value.shape)}")
        return
    validation.positive(name, value, optional=True)


def _ratio(logp, old_logp, mask, loss_type):
    """(rho, d rho / d logp as a local factor) with GSPO's sequence ratio stop-gradient."""
    log_ratio = torch.where(mask, logp - old_logp, torch.zeros_like(logp))
    clamped = log_ratio.clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)
    if loss_type != "gspo":
        return clamped.exp(), (log_ratio.abs() <= _LOG_RATIO_BOUND).float()
    counts = mask.sum(-1, keepdim=True).clamp_min(1)
    sequence_ratio = ((clamped * mask).sum(-1, keepdim=True) / counts).exp().detach()
    return sequence_ratio * (logp - logp.detach()).exp(), torch.ones_like(logp)


def _kl(logp, ref_logp, estimator):
    diff = logp - ref_logp
    if estimator == "k1":
        return diff, torch.ones_like(diff)
    if estimator == "k2":
        return 0.5 * diff**2, diff
    return torch.expm1(-diff) + diff, 1 - torch.exp(-diff)


def token_terms(logp, old_logp, advantages, mask, config, ref_logp=None, rollout_logp=None, entropy=None):
    """Per-token loss ``[B, T]`` (0 at masked tokens), its local derivative d loss_t / d logp_t,
    and the clip indicator and ratio used by the metrics."""
    keep = mask.bool()
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    adv = adv.to(torch.float32)
    rho, rho_slope = _ratio(logp, old_logp, keep, config.loss_type)
    if config.loss_type == "cispo":
        weight = rho.clamp(max=1 + config.eps_high).detach()
        pg, slope = -weight * adv * logp, -weight * adv
        clipped = rho > 1 + config.eps_high
    else:
        unclipped = -adv * rho
        bounded = rho.clamp(1 - config.eps_low, 1 + config.eps_high)
        clipped_value = -adv * bounded
        pg = torch.maximum(unclipped, clipped_value)
        inside = ((rho >= 1 - config.eps_low) & (rho <= 1 + config.eps_high)).float()
        tie = (unclipped == clipped_value).float()
        share = (unclipped > clipped_value).float() + 0.5 * tie + ((clipped_value > unclipped).float() + 0.5 * tie) * inside
        slope = -adv * share * rho * rho_slope
        clipped = clipped_value > unclipped
        if config.clip_ratio_c is not None:
            dual = -adv * config.clip_ratio_c
            use_dual = adv < 0
            pg_dual = torch.minimum(pg, dual)
            slope = torch.where(use_dual, slope * ((pg < dual).float() + 0.5 * (pg == dual).float()), slope)
            pg = torch.where(use_dual, pg_dual, pg)
    if rollout_logp is not None:
        tis = torch.where(keep, old_logp - rollout_logp, torch.zeros_like(logp)).exp()
        tis = (tis if config.tis_cap is None else tis.clamp(max=config.tis_cap)).detach()
        pg, slope = pg * tis, slope * tis
    loss = pg
    if config.kl_coef != 0:
        kl, kl_slope = _kl(logp, torch.where(keep, ref_logp, logp.detach()), config.kl_estimator)
        loss, slope = loss + config.kl_coef * kl, slope + config.kl_coef * kl_slope
    if config.entropy_coef != 0:
        loss = loss - config.entropy_coef * entropy
    zero = torch.zeros_like(loss)
    return torch.where(keep, loss, zero), torch.where(keep, slope, zero).detach(), clipped & keep, rho


def _masked_mean(values, mask):
    return (values * mask).sum() / mask.sum().clamp_min(1)


def metrics(rho, clipped, mask, old_logp, logp, entropy):
    """Detached 0-d metrics: clip_frac, approx_kl (mean of old - new log-prob), entropy, ratio_mean, ratio_max."""
    mask = mask.float()
    with torch.no_grad():
        return {
            "clip_frac": _masked_mean(clipped.float(), mask),
            "approx_kl": _masked_mean(old_logp - logp, mask),
            "entropy": _masked_mean(entropy, mask) if entropy is not None else mask.new_zeros(()),
            "ratio_mean": _masked_mean(rho, mask),
            "ratio_max": torch.where(mask.bool(), rho, torch.zeros_like(rho)).max() if rho.numel() else mask.new_zeros(()),
        }


def policy_loss(logp, old_logp, advantages, mask, *, loss_type="grpo", ref_logp=None, rollout_logp=None,
                entropy=None, eps_low=None, eps_high=None, clip_ratio_c=None, kl_coef=0.0, kl_estimator="k3",
                entropy_coef=0.0, tis_cap=None, agg=None, global_tokens=None, global_seqs=None, max_len=None):
    """Importance-weighted policy-gradient loss over ``[B, T]`` tokens.

    Args:
        logp: float ``[B, T]`` current log-probs (differentiable); old_logp: the behaviour policy's.
        advantages: ``[B]`` (per sequence) or ``[B, T]``.
        mask: bool or 0/1 ``[B, T]``: the tokens that count (a numeric mask is validated with one
            host read; a bool mask needs none).
        loss_type: "grpo", "dapo", "dr_grpo", "gspo" or "cispo".
        ref_logp, kl_coef, kl_estimator: KL penalty ``kl_coef * k`` with k1/k2/k3 to a reference.
        rollout_logp, tis_cap: truncated importance sampling against the rollout policy.
        entropy, entropy_coef: entropy bonus (``entropy`` ``[B, T]``, differentiable).
        eps_low, eps_high, clip_ratio_c: clipping (None: the loss type's defaults, see
            :class:`PolicyLossConfig`).
        agg: "token-mean", "seq-mean-token-sum", "seq-mean-token-mean" or "seq-mean-token-sum-norm"
            (None: the loss type's default).
        global_tokens, global_seqs, max_len: normalisers (ints or 0-d tensors); default to this
            call's kept-token count, its B and its T. Pass the totals over all micro-batches of a
            gradient-accumulation step so the summed gradients equal the full batch's.

    Returns:
        ``(loss, metrics)``: a float32 scalar and a dict of detached 0-d tensors ``clip_frac``,
        ``approx_kl``, ``entropy``, ``ratio_mean``, ``ratio_max`` (means over this call's kept tokens).
    """
    config = PolicyLossConfig(loss_type, eps_low, eps_high, clip_ratio_c, kl_coef, kl_estimator, entropy_coef,
                              tis_cap, agg)
    _tensor("logp", logp)
    if logp.dim() != 2:
        raise ValueError(f"logp must be a [B, T] tensor, got shape {tuple(logp.shape)}")
    _check_inputs(logp.shape, config, old_logp, advantages, mask, has_entropy=entropy is not None,
                  ref_logp=ref_logp, rollout_logp=rollout_logp, entropy=entropy)
    for name, value in (("global_tokens", global_tokens), ("global_seqs", global_seqs), ("max_len", max_len)):
        _check_count(name, value)
    mask = _check_mask(mask)
    per_token, _, clipped, rho = token_terms(logp.float(), old_logp.float(), advantages, mask, config,
                                             _float(ref_logp), _float(rollout_logp), _float(entropy))
    weights = aggregation_weights(mask, config.agg, global_tokens, global_seqs, max_len)
    loss = (per_token * weights).sum()
    return loss, metrics(rho, clipped, mask, old_logp.float(), logp.float(), _float(entropy))


def _float(value):
    return None if value is None else value.float()


def _check_mask(mask):
    """The mask as bool. A numeric mask must hold only 0 and 1: checking that costs one host read
    (skipped under ``torch.compile``), so pass a bool mask on hot paths."""
    if mask.dtype == torch.bool:
        return mask
    if not torch.compiler.is_compiling() and bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("mask must be boolean or hold only 0 and 1")
    return mask != 0


def group_advantages(rewards, group_size, *, scale="std", eps=1e-6):
    """Group-normalised advantages: rewards ``[B]`` in consecutive groups of ``group_size``.

    Returns float32 ``[B]``: ``(r - group mean) / (group std + eps)`` (unbiased std) for
    ``scale="std"``, or ``r - group mean`` for ``scale="none"`` (Dr. GRPO).
    """
    if _tensor("rewards", rewards, floating=False).dim() != 1:
        raise ValueError(f"rewards must be a 1-D tensor [B], got shape {tuple(rewards.shape)}")
    group_size = validation.integer("group_size", group_size, minimum=1)
    if rewards.shape[0] % group_size:
        raise ValueError(f"group_size must be a positive int dividing B={rewards.shape[0]}, got {group_size!r}")
    _option("scale", scale, ("std", "none"))
    eps = validation.number("eps", eps, minimum=0.0)
    groups = rewards.float().reshape(-1, group_size)
    centred = groups - groups.mean(-1, keepdim=True)
    if scale == "std":
        std = groups.std(-1, keepdim=True) if group_size > 1 else torch.zeros_like(centred[:, :1])
        centred = centred / (std + eps)
    return centred.reshape(-1)

