"""Evaluation tasks: synthetic data a model reads while awake, and the metrics that score its answers."""

from sleepcore.tasks.biographies import (
    ATTRIBUTES,
    TWO_HOP_ATTRIBUTE,
    BiographyConfig,
    BiographyDataset,
    Company,
    Fact,
    Person,
    Question,
    generate_biographies,
    prompt_for,
)
from sleepcore.tasks.metrics import aggregate, contains_match, exact_match, normalize_answer, token_f1

__all__ = ["ATTRIBUTES", "TWO_HOP_ATTRIBUTE", "BiographyConfig", "BiographyDataset", "Company", "Fact", "Person",
           "Question", "aggregate", "contains_match", "exact_match", "generate_biographies", "normalize_answer",
           "prompt_for", "token_f1"]
