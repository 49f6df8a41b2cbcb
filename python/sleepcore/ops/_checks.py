"""Argument checks shared by the ops. Every failure names the argument.

The rule is :mod:`sleepcore.validation`'s: a wrong type (or dtype) raises ``TypeError``, a bad
value (shape, device, range, option) raises ``ValueError``. Scalar options go through
:mod:`sleepcore.validation`; the tensor checks live here. Checks look only at metadata (shapes,
dtypes, devices, Python scalars): none reads tensor values, so none forces a host sync or breaks
``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import numbers

import torch

from sleepcore import validation

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
REDUCTIONS = ("batchmean", "sum", "none")
#: ``generalized_jsd`` also has TRL's ``"mean"`` (the mean of the per-element terms).
TRL_REDUCTIONS = ("batchmean", "sum", "mean", "none")
BACKENDS = ("auto", "cpu", "triton")


def tensor(name: str, value, *, ndims: tuple[int, ...], dtypes=FLOAT_DTYPES) -> torch.Tensor:
    """``value`` must be a tensor with one of ``ndims`` dimensions and one of ``dtypes``."""
    validation.instance(name, value, torch.Tensor, what="a torch.Tensor")
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


def _option(name: str, value, options: tuple[str, ...]) -> str:
    return validation.choice(name, validation.instance(name, value, str, what="a string"), options)


def beta(value) -> float:
    return validation.fraction("beta", value)


def temperature(value) -> float:
    return validation.positive("temperature", value)


def reduction(value, options: tuple[str, ...] = REDUCTIONS) -> str:
    return _option("reduction", value, options)


def chunk_size(value) -> int | None:
    return validation.integer("chunk_size", value, minimum=1, optional=True)


def backend(value) -> str:
    return _option("backend", value, BACKENDS)


def num_items(value) -> None:
    """None, a positive number or a 1-element tensor (its value is not read: no host sync)."""
    validation.instance("num_items_in_batch", value, (numbers.Real, torch.Tensor, type(None)),
                        what="None, a positive number or a 1-element tensor")
    if not isinstance(value, torch.Tensor):
        validation.positive("num_items_in_batch", value, optional=True)
    elif value.numel() != 1:
        raise ValueError(f"num_items_in_batch must be a 1-element tensor, got shape {tuple(value.shape)}")


def loss_options(beta_value, temperature_value, reduction_value, backend_value, num_items_in_batch,
                 reductions: tuple[str, ...] = REDUCTIONS):
    """Check the options every divergence op shares; returns ``(beta, temperature, reduction, backend)``."""
    num_items(num_items_in_batch)
    return (beta(beta_value), temperature(temperature_value), reduction(reduction_value, reductions),
            backend(backend_value))


def labels(value, leading_shape: torch.Size, device: torch.device) -> torch.Tensor | None:
    """Integer labels (``ignore_index`` marks ignored tokens) or a boolean keep-mask."""
    if value is None:
        return None
    validation.instance("labels", value, torch.Tensor, what="a torch.Tensor or None")
    if value.dtype.is_floating_point or value.dtype.is_complex:
        raise TypeError(f"labels must be an integer tensor or a bool mask, got {value.dtype}")
    if value.numel() != leading_shape.numel() or value.shape not in (leading_shape, (leading_shape.numel(),)):
        raise ValueError(f"labels must have shape {tuple(leading_shape)} (one per token), got {tuple(value.shape)}")
    if value.device != device:
        raise ValueError(f"labels must be on {device}, got {value.device}")
    return value
