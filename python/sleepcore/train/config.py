"""Optimiser settings shared by every training stage."""

from __future__ import annotations

from dataclasses import dataclass

from sleepcore.validation import choice, fraction, integer, number, positive

SCHEDULES = ("constant", "cosine")


@dataclass
class OptimizerConfig:
    """AdamW with a warm-up and a schedule, and optional gradient clipping.

    Args:
        learning_rate: the peak learning rate (> 0).
        weight_decay: AdamW's decoupled weight decay (>= 0).
        beta1, beta2: AdamW's moment coefficients, in [0, 1).
        warmup_steps: steps of linear warm-up from ``learning_rate / warmup_steps`` to the peak.
        schedule: ``"constant"`` (the peak after warm-up) or ``"cosine"`` (down to
            ``min_learning_rate_ratio * learning_rate`` at the stage's last step).
        max_grad_norm: clip the global gradient norm to this (> 0); None: no clipping (the norm is
            still measured and reported).
    """

    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 0
    schedule: str = "constant"
    min_learning_rate_ratio: float = 0.0
    max_grad_norm: float | None = None

    def __post_init__(self):
        positive("learning_rate", self.learning_rate)
        number("weight_decay", self.weight_decay, minimum=0.0)
        for name in ("beta1", "beta2"):
            number(name, getattr(self, name), minimum=0.0, maximum=0.999999)
        integer("warmup_steps", self.warmup_steps, minimum=0)
        choice("schedule", self.schedule, SCHEDULES)
        fraction("min_learning_rate_ratio", self.min_learning_rate_ratio)
        positive("max_grad_norm", self.max_grad_norm, optional=True)
