"""Helpers of the Dreaming tests: a tiny DreamingConfig, meta-training tasks and dreams with questions
about the tiny dataset's people."""

from __future__ import annotations

from sleepcore.sleep.dream_config import DreamingConfig
from sleepcore.sleep.dream_tasks import DreamTask
from sleepcore.sleep.dreams import Dream
from sleepcore.train import OptimizerConfig

from _sleepers import DATASET

FP32 = OptimizerConfig(compute_dtype="float32")


def tiny_dreaming(**options) -> DreamingConfig:
    values = dict(dreams_per_document=4, top_k=1, random_kept=1, max_new_tokens=16, inner_rank=4, inner_epochs=2,
                  inner_learning_rate=0.05, rounds=2, generator_steps=2, generator_batch_size=2, steps=3,
                  batch_size=4, min_questions=0, optimizer=FP32)  # a tiny model's dreams hold few questions
    return DreamingConfig(**{**values, **options})


def tasks(count: int = 3) -> list[DreamTask]:
    return [DreamTask(passage, tuple((q.text, q.answer) for q in DATASET.questions_of(person)[:2]))
            for passage, person in zip(DATASET.passages[:count], DATASET.people)]


QUESTION_DREAMS = ("Where was {name} born? In a city.\nWhat does {name} do?\n{name} likes tea.\nWhy?",
                   "{name} works hard.\nWhich company employs {name}? None.\nWhere did she work?")


def question_dreams(documents: list[str]) -> list[list[Dream]]:
    """Two dreams per document with questions about the document's own person in them (a random
    tiny model writes none)."""
    people = [next(person for person in DATASET.people if person.name in document) for document in documents]
    return [[Dream(index, k, [1], [1], text.format(name=person.name)) for k, text in enumerate(QUESTION_DREAMS)]
            for index, person in enumerate(people)]
