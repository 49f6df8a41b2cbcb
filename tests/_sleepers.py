"""Tiny sleepers for the sleep tests: a sharpened random model over three biographies."""

from __future__ import annotations

import torch

from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
from sleepcore.models import tiny_model
from sleepcore.rollout import Engine
from sleepcore.sleep.config import KnowledgeSeedingConfig, SleepConfig
from sleepcore.sleep.sleeper import Sleeper
from sleepcore.tasks.biographies import BiographyConfig, generate_biographies
from sleepcore.train import OptimizerConfig

DATASET = generate_biographies(BiographyConfig(num_people=3, seed=1))


def seeding(learning_rate: float = 1e-3, **options) -> KnowledgeSeedingConfig:
    """A small Knowledge Seeding config (2 generated prompts per document, at most 6 in all)."""
    options = {"max_prompts": 6, "prompts_per_document": 2, **options}
    return KnowledgeSeedingConfig(optimizer=OptimizerConfig(learning_rate=learning_rate), **options)


def make_sleeper(seeding_config: KnowledgeSeedingConfig, *, levels: int = 1, **options) -> Sleeper:
    """A Sleeper on a tiny random model with ``levels`` memory levels of 2 slots. The head is left
    as it is: sharpened 20x, this model put almost all its mass on one token whatever the context,
    so the teacher (document in context) no longer differed from the student."""
    model, tokenizer = tiny_model(DATASET.passages + DATASET.company_passages, seed=0)
    torch.manual_seed(0)
    memory = ContinuumMemory.wrap(model, MemoryConfig(levels=tuple(
        LevelConfig(rank=8, slots=2, period=1024 * 8 ** level) for level in range(levels))))
    config = SleepConfig(seeding=seeding_config, **options)
    return Sleeper(model, tokenizer, memory, config, engine=Engine(model, tokenizer, kv_memory_bytes=32 << 20))


TINY_DREAMING = """
[dreaming]
dreams_per_document = 2
top_k = 1
random_kept = 0
max_new_tokens = 8
inner_rank = 4
inner_epochs = 1
rounds = 1
generator_steps = 1
[dreaming.optimizer]
compute_dtype = "float32"
"""


def tiny_dream_train_config(output_dir) -> str:
    """A ``sleepcore dream train`` TOML: the tiny model, 2 people, one short ReST-EM round."""
    return f'output_dir = "{output_dir}"\n[model]\nname = "tiny"\n[tasks]\npeople = 2\n[generator]\nrank = 4\n' \
        + TINY_DREAMING
