"""Rollout engine: paged KV cache, prefix sharing, continuous batching and a seeded sampler
whose log-probs are the trainer's (see :class:`Engine`)."""

from __future__ import annotations

from sleepcore.rollout.block_manager import BlockManager
from sleepcore.rollout.engine import Engine
from sleepcore.rollout.model_runner import SUPPORTED_MODEL_TYPES, ForwardBatch
from sleepcore.rollout.params import CompletionOutput, RequestOutput, SamplingParams

__all__ = ["BlockManager", "CompletionOutput", "Engine", "ForwardBatch", "RequestOutput", "SamplingParams",
           "SUPPORTED_MODEL_TYPES"]
