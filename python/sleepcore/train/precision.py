"""Which dtype the frozen base computes in during training forwards (``OptimizerConfig.compute_dtype``).

bf16 autocast pays where the hardware multiplies bf16 natively: on a 2-core AMD EPYC with
``avx512_bf16`` a bf16 matmul of SmolLM2-135M's shapes runs about 4x faster than fp32 (see
``bench/bench_sleep_step.py``, which measures both). Without native support (plain AVX2/AVX-512)
oneDNN emulates bf16 and gains little, so ``"auto"`` stays fp32 there.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from pathlib import Path

import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 natively (a CUDA GPU with bf16, or a CPU with avx512_bf16/amx_bf16)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)


def autocast_dtype(compute_dtype: str, parameter: torch.Tensor) -> torch.dtype | None:
    """The autocast dtype for a model whose parameters look like ``parameter`` (None: no autocast).
    Only fp32 models are autocast; ``compute_dtype`` is ``"auto"``, ``"float32"`` or ``"bfloat16"``."""
    if parameter.dtype != torch.float32 or compute_dtype == "float32":
        return None
    if compute_dtype == "auto" and not native_bf16(parameter.device):
        return None
    return torch.bfloat16


def autocast(dtype: torch.dtype | None, device: torch.device):
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or a null context for None."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
