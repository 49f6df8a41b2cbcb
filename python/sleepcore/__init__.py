"""sleepcore: fused kernels and a sleep-cycle orchestrator that turn what a language model
learned in context into lasting weights.

Public entry points: :mod:`sleepcore.ops` (tensor ops), :mod:`sleepcore.losses` (``nn.Module``
front ends), :mod:`sleepcore.reference` (plain fp32 PyTorch references) and :func:`build_info`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from sleepcore._build_info import build_info
from sleepcore import ops, losses, reference

__all__ = ["__version__", "build_info", "ops", "losses", "reference"]
