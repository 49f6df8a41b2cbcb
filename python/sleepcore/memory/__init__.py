"""Continuum Memory: low-rank expert levels beside a frozen MLP (METHOD.md section 1).

:class:`ContinuumMemory` ``.wrap(model, config)`` replaces each chosen decoder layer's MLP by a
:class:`MemoryMLP` holding pre-allocated, masked expert slots per :class:`LevelConfig` of a
:class:`MemoryConfig`.
"""

from __future__ import annotations

from sleepcore.memory.config import LevelConfig, MemoryConfig
from sleepcore.memory.continuum import ContinuumMemory
from sleepcore.memory.layer import ExpertSlots, MemoryMLP

__all__ = ["ContinuumMemory", "ExpertSlots", "LevelConfig", "MemoryConfig", "MemoryMLP"]
