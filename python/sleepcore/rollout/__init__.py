"""Rollout engine: paged-KV block manager (more pieces: sequence, scheduler, runner, sampler)."""

from __future__ import annotations

from sleepcore.rollout.block_manager import BlockManager

__all__ = ["BlockManager"]
