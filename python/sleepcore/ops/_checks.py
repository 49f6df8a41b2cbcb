"""Argument checks shared by the ops. Every failure names the argument.

Checks look only at metadata (shapes, dtypes, devices, Python scalars): none reads tensor
values, so none forces a host sync or breaks ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import numbers

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
REDUCTIONS = ("batchmean", "sum", "none")


def tensor(name: str, value, *, ndims: tuple[int, ...], dtypes=FLOAT_DTYPES) -> torch.Tensor:
    """``value`` must be a tensor with one of ``ndims`` dimensions and one of ``dtypes``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() not in ndims:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndims))} dimensions, got shape {tuple(value.shape)}")
    if value.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {value.dtype}")
    return value


def _shared(kind: str, attribute: str, error, tensors: dict):
    present = {name: t for name, t in tensors.items() if t is not None}
    values = {getattr(t, attribute) for t in present.values()}
    if len(values) > 1:
        listing = ", ".join(f"{name} {getattr(t, attribute)}" for name, t in present.items())
        raise error(f"all tensors must share one {kind}, got {listing}")
    return values.pop()


def same_device(**tensors: torch.Tensor | None) -> torch.device:
    """All given tensors (``None`` skipped) live on one device; returns it."""
    return _shared("device", "device", ValueError, tensors)


def same_dtype(**tensors: torch.Tensor | None) -> torch.dtype:
    """All given tensors (``None`` skipped) share one dtype; returns it."""
    return _shared("dtype", "dtype", TypeError, tensors)


def beta(value) -> float:
    if not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"beta must be a number in [0, 1], got {value!r}")
    return float(value)


def temperature(value) -> float:
    if not isinstance(value, numbers.Real) or not float(value) > 0.0:
        raise ValueError(f"temperature must be a number > 0, got {value!r}")
    return float(value)


def reduction(value) -> str:
    if value not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {value!r}")
    return value


def chunk_size(value) -> int | None:
    if value is not None and (not isinstance(value, numbers.Integral) or value < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {value!r}")
    return value


def backend(value) -> str:
    if value not in ("auto", "cpu", "triton"):
        raise ValueError(f"backend must be 'auto', 'cpu' or 'triton', got {value!r}")
    return value


def num_items(value) -> None:
    if value is None or isinstance(value, torch.Tensor) and value.numel() == 1:
        return
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0:
        return
    raise ValueError(f"num_items_in_batch must be None, a positive number or a 1-element tensor, got {value!r}")


def loss_options(beta_value, temperature_value, reduction_value, backend_value, num_items_in_batch):
    """Check the options every divergence op shares; returns ``(beta, temperature, reduction, backend)``."""
    num_items(num_items_in_batch)
    return beta(beta_value), temperature(temperature_value), reduction(reduction_value), backend(backend_value)


def labels(value, leading_shape: torch.Size, device: torch.device) -> torch.Tensor | None:
    """Integer labels (``ignore_index`` marks ignored tokens) or a boolean keep-mask."""
    if value is None:
        return None
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor or None, got {type(value).__name__}")
    if value.dtype.is_floating_point or value.dtype.is_complex:
        raise TypeError(f"labels must be an integer tensor or a bool mask, got {value.dtype}")
    if value.numel() != leading_shape.numel() or value.shape not in (leading_shape, (leading_shape.numel(),)):
        raise ValueError(f"labels must have shape {tuple(leading_shape)} (one per token), got {tuple(value.shape)}")
    if value.device != device:
        raise ValueError(f"labels must be on {device}, got {value.device}")
    return value
