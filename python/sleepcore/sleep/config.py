"""Configuration of a sleep: Knowledge Seeding's objective (METHOD.md §3) and the cycle around it.

Every "we decide" of METHOD.md is a field here, with the default METHOD.md gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields


def _check(condition: bool, name: str, rule: str, value) -> None:
    if not condition:
        raise ValueError(f"{name} must be {rule}, got {value!r}")


def _fraction(name: str, value) -> None:
    _check(isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0, name,
           "a number in [0, 1]", value)


def _positive_int(name: str, value) -> None:
    _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name, "an int >= 1", value)


def _positive(name: str, value) -> None:
    _check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0,
           name, "a finite number > 0", value)


@dataclass
class KnowledgeSeedingConfig:
    """The consolidation objective ``alpha * Div(teacher || student) + (1 - alpha) * LTI`` (loss form).

    Distillation (GKD): ``beta`` of the generalized JSD (0 forward KL, 1 reverse KL), ``on_policy``
    (METHOD.md's lambda: the fraction of sequences sampled from the student), ``temperature``.
    Learning to Imitate: ``completions`` per prefix (n), reward ``gamma * r_sem + (1 - gamma) *
    r_abs`` with the Levenshtein threshold ``z0`` (a fraction of the longer sequence), PPO clip
    ``clip_eps``; ``judge`` gives ``r_sem``: ``"exact_match"`` (normalised exact match) or
    ``"model"`` (the teacher asked "same meaning? yes/no",
    :class:`~sleepcore.sleep.judge.ModelJudge`). Replay set: ``samples_per_prompt`` teacher samples
    of ``max_new_tokens`` each, at ``sample_temperature``. Optimisation: ``steps`` AdamW steps of
    ``batch_size`` sequences at ``learning_rate`` on the new expert only; with ``token_budget`` the
    sleep stops as soon as that many tokens are trained (``steps`` is then an upper bound), which is
    how methods are compared at the same budget.
    """

    alpha: float = 0.5
    beta: float = 0.5
    on_policy: float = 0.5
    temperature: float = 1.0
    gamma: float = 0.5
    z0: float = 0.5
    completions: int = 4
    clip_eps: float = 0.2
    samples_per_prompt: int = 2
    max_new_tokens: int = 64
    sample_temperature: float = 1.0
    steps: int = 40
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    token_budget: int | None = None
    judge: str = "exact_match"

    def __post_init__(self):
        for name in ("alpha", "beta", "on_policy", "gamma", "z0"):
            _fraction(name, getattr(self, name))
        for name in ("completions", "samples_per_prompt", "max_new_tokens", "steps", "batch_size"):
            _positive_int(name, getattr(self, name))
        for name in ("temperature", "sample_temperature", "learning_rate", "clip_eps"):
            _positive(name, getattr(self, name))
        _check(self.weight_decay >= 0, "weight_decay", ">= 0", self.weight_decay)
        if self.token_budget is not None:
            _positive_int("token_budget", self.token_budget)
        _check(self.judge in ("exact_match", "model"), "judge", "'exact_match' or 'model'", self.judge)


@dataclass
class SleepConfig:
    """The cycle: which memory level receives the new expert, how prompts are built, where the
    running state is checkpointed, and the seed.

    ``teacher`` is ``"context"`` (the wake documents in the teacher's context: the zeroth memory
    level) or ``"memory"`` (the fast level's experts, without the documents; it needs
    ``wake_updates`` and a ``receiver_level`` other than ``wake_level``). ``prompt_builders`` name
    the replay prompt builders (see :mod:`sleepcore.sleep.prompts`). ``checkpoint_every``
    optimisation steps, the state is written atomically to ``output_dir``.

    Wake (METHOD.md §1): with ``wake_updates`` the fast level ``wake_level`` learns online, every
    ``wake_period`` tokens (``C_1``; None: that level's ``LevelConfig.period``) taking
    ``wake_steps`` AdamW steps at ``wake_learning_rate`` on batches of ``wake_batch_size``
    sequences of the recent window (see :mod:`sleepcore.sleep.wake`). Without it the fast memory
    is the context alone.
    """

    seeding: KnowledgeSeedingConfig = field(default_factory=KnowledgeSeedingConfig)
    receiver_level: int = 0
    teacher: str = "context"
    prompt_builders: tuple[str, ...] = ("continuation", "self_question", "wake_questions")
    max_prompts: int = 64
    checkpoint_every: int = 10
    output_dir: str | None = None
    seed: int = 0
    wake_updates: bool = False
    wake_level: int = 0
    wake_period: int | None = None
    wake_steps: int = 4
    wake_learning_rate: float = 1e-3
    wake_batch_size: int = 4

    def __post_init__(self):
        if isinstance(self.seeding, dict):
            self.seeding = KnowledgeSeedingConfig(**self.seeding)
        _check(isinstance(self.seeding, KnowledgeSeedingConfig), "seeding", "a KnowledgeSeedingConfig", self.seeding)
        _check(isinstance(self.receiver_level, int) and self.receiver_level >= 0, "receiver_level", "an int >= 0",
               self.receiver_level)
        _check(self.teacher in ("context", "memory"), "teacher", "'context' or 'memory'", self.teacher)
        self.prompt_builders = tuple(self.prompt_builders)
        _check(len(self.prompt_builders) > 0, "prompt_builders", "non-empty", self.prompt_builders)
        _positive_int("max_prompts", self.max_prompts)
        _positive_int("checkpoint_every", self.checkpoint_every)
        _check(isinstance(self.seed, int), "seed", "an int", self.seed)
        _check(isinstance(self.wake_updates, bool), "wake_updates", "a bool", self.wake_updates)
        _check(isinstance(self.wake_level, int) and not isinstance(self.wake_level, bool) and self.wake_level >= 0,
               "wake_level", "an int >= 0", self.wake_level)
        if self.wake_period is not None:
            _positive_int("wake_period", self.wake_period)
        _positive_int("wake_steps", self.wake_steps)
        _positive("wake_learning_rate", self.wake_learning_rate)
        _positive_int("wake_batch_size", self.wake_batch_size)
        if self.teacher == "memory":
            _check(self.wake_updates, "wake_updates", "True for teacher='memory' (a memory teacher needs a "
                   "trained fast level)", self.wake_updates)
            _check(self.receiver_level != self.wake_level, "receiver_level",
                   f"other than wake_level ({self.wake_level}) for teacher='memory'", self.receiver_level)

    @classmethod
    def from_dict(cls, values: dict) -> "SleepConfig":
        """From a TOML/YAML table; unknown keys raise ValueError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown sleep config field(s) {unknown}; known: {sorted(known)}")
        seeding = values.get("seeding", {})
        if isinstance(seeding, dict):
            known_seeding = {f.name for f in fields(KnowledgeSeedingConfig)}
            bad = sorted(set(seeding) - known_seeding)
            if bad:
                raise ValueError(f"unknown seeding field(s) {bad}; known: {sorted(known_seeding)}")
        return cls(**values)
