"""``nn.Module`` front ends over :mod:`sleepcore.ops` (options and reductions; no maths of their own)."""

from sleepcore.losses.distillation import FusedLinearJSDLoss

__all__ = ["FusedLinearJSDLoss"]
