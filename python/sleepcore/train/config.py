"""Optimiser and precision settings shared by every training stage."""

from __future__ import annotations

from dataclasses import dataclass

from sleepcore.validation import choice, fraction, integer, number, positive

SCHEDULES = ("constant", "cosine")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
TRAIN_ATTENTIONS = ("model", "eager", "sdpa")


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
        compute_dtype: what the frozen base model computes in during the runtime's forwards (student
            and teacher) of an fp32 model: ``"float32"`` (exact), ``"bfloat16"`` (autocast: its
            matmuls and attention in bf16 with fp32 accumulation; the experts, their gradients,
            the fp32 masters, the optimiser, the final hidden states and every loss stay fp32) or
            ``"auto"`` (bfloat16 where the hardware multiplies bf16 natively: a CUDA GPU with bf16,
            or a CPU with ``avx512_bf16``/``amx_bf16``; else float32). A model loaded in bf16/fp16
            computes in its own dtype whatever this says. The rollout engine (sampling) is not
            affected.
        train_attention: the attention of the runtime's forwards whose backward runs (gradient
            enabled; no-grad forwards such as a cached teacher keep the model's own): ``"model"``
            (the default: the model config's, usually ``"sdpa"``), or transformers' ``"eager"`` or
            ``"sdpa"``. Under bf16 on a CPU, SDPA's backward is slow for many short rows and eager
            is faster there, slower for long ones (``bench/bench_train_attention.py``); both are
            as close to fp32. Not the default: the shipped results were measured without it.
    """

    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 0
    schedule: str = "constant"
    min_learning_rate_ratio: float = 0.0
    max_grad_norm: float | None = None
    compute_dtype: str = "auto"
    train_attention: str = "model"

    def __post_init__(self):
        positive("learning_rate", self.learning_rate)
        number("weight_decay", self.weight_decay, minimum=0.0)
        for name in ("beta1", "beta2"):
            number(name, getattr(self, name), minimum=0.0, maximum=0.999999)
        integer("warmup_steps", self.warmup_steps, minimum=0)
        choice("schedule", self.schedule, SCHEDULES)
        fraction("min_learning_rate_ratio", self.min_learning_rate_ratio)
        positive("max_grad_norm", self.max_grad_norm, optional=True)
        choice("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
        choice("train_attention", self.train_attention, TRAIN_ATTENTIONS)
