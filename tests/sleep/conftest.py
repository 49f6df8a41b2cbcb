"""Fixtures of the sleep tests."""

from __future__ import annotations

import pytest
import torch

from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
from sleepcore.models import tiny_model
from sleepcore.rollout import Engine

from _sleepers import DATASET


@pytest.fixture
def wrapped():
    """``(model, tokenizer, memory, engine)``: a tiny model of the biographies dataset with one
    memory level (rank 4, two slots) and a rollout engine with 32 MiB of KV cache."""
    model, tokenizer = tiny_model(DATASET.passages + DATASET.company_passages, seed=0)
    torch.manual_seed(0)
    memory = ContinuumMemory.wrap(model, MemoryConfig(levels=(LevelConfig(rank=4, slots=2),)))
    return model, tokenizer, memory, Engine(model, tokenizer, kv_memory_bytes=32 << 20)
