"""``nn.Module`` front ends over :mod:`sleepcore.ops` (options and reductions; no maths of their own)."""

from sleepcore.losses.distillation import FusedLinearJSDLoss
from sleepcore.losses.policy import FusedLinearPolicyLoss

__all__ = ["FusedLinearJSDLoss", "FusedLinearPolicyLoss"]
