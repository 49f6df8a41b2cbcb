"""``sleepcore eval knowledge``: how well each way of updating a model turns new passages into
closed-book knowledge, at the same sleep budget (issue 5 §3).

Protocol:

* One biography dataset (fixed seed) of ``sum(sleeps)`` fictional people, split in order into one
  group per sleep (default: 1 person, then 50). A sleep's documents are its people's passages and
  their employers' company passages (2-hop answers live only in the latter). With
  ``wake_questions`` the user also asks, while awake, each fact's *second* phrasing (the wake
  buffer's questions, which the ``wake_questions`` replay builder uses); the evaluation asks the
  first phrasing, which no method ever sees.
* Methods: ``base`` (no update) and ``in-context`` (passages in the prompt: the ceiling) are
  evaluated without training. The trained methods each start from the unchanged model and run the
  sleeps in order, each sleep adding one expert to memory level 0 and keeping the earlier ones:
  ``sft`` (next-token loss on the documents), ``gkd`` (Knowledge Seeding with ``alpha = 1``: the
  distillation term alone) and ``ks`` (full Knowledge Seeding), all with the in-context teacher;
  ``ks-memory`` (not run by default) is full Knowledge Seeding from the memory teacher: the fast
  level learns the documents online while awake (every ``fast_period`` tokens) and teaches
  without them in context. Every trained method stops at the same token budget per sleep,
  ``tokens_per_document * documents``; the fast level's wake training is not counted in it.
* After each sleep: closed-book EM / token-F1 / containment on that group's 1-hop questions and
  EM / containment on its 2-hop questions. After the last sleep, every earlier group is asked again:
  retention is that score minus the score right after its own sleep.
* Drift: mean per-token KL(original || updated) on the original model's own greedy answers to
  generic chat prompts (none about the biographies), after the last sleep.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sleepcore.configuration import to_dict
from sleepcore.lm import chat_turn, encode, head_weight, pad_id, response_hidden
from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
from sleepcore.ops import fused_linear_jsd
from sleepcore.rollout import Engine, SamplingParams
from sleepcore.sleep.config import KnowledgeSeedingConfig, NextTokenConfig, SleepConfig
from sleepcore.sleep.sleeper import Sleeper
from sleepcore.train import OptimizerConfig
from sleepcore.tasks.biographies import BiographyConfig, BiographyDataset, generate_biographies
from sleepcore.tasks.knowledge_eval import evaluate

UNTRAINED_METHODS = ("base", "in-context")
TRAINED_METHODS = ("sft", "gkd", "ks", "ks-memory")
METHODS = UNTRAINED_METHODS + TRAINED_METHODS
DEFAULT_METHODS = ("base", "in-context", "sft", "gkd", "ks")
FAST_LEVEL, CONSOLIDATED_LEVEL = 0, 1
DRIFT_PROMPTS = (
    "Give me three tips for staying healthy.", "Explain what photosynthesis is.", "Write a haiku about autumn.",
    "What is the capital of France?", "How do I boil an egg?", "Why is the sky blue?",
    "Name three programming languages.", "Describe a cat in one sentence.", "What is 12 times 7?",
    "Suggest a name for a bakery.", "How does a bicycle work?", "What causes rain?",
    "Tell me a fun fact about the ocean.", "Translate 'good morning' into Spanish.",
    "What should I pack for a beach trip?", "Summarise the plot of Cinderella.")


@dataclass
class KnowledgeSuiteConfig:
    """What ``sleepcore eval knowledge`` runs.

    Args:
        sleeps: people consolidated per sleep, in order (retention is measured on all but the last).
        methods: a subset of :data:`METHODS` (default :data:`DEFAULT_METHODS`).
        tokens_per_document: the sleep budget: trained tokens per document in the sleep.
        seeding: Knowledge Seeding's settings for ``ks``; ``gkd`` is the same with ``alpha = 1``.
            Its ``optimizer`` is SFT's too; ``steps`` only caps a sleep (the budget ends it); its
            ``max_prompts`` is replaced by ``prompts_per_document`` per document plus every wake
            question.
        sft_batch_size: documents per step of ``sft``.
        wake_questions: whether the second phrasing of each fact is asked while awake.
        fast_period, fast_steps, fast_learning_rate: ``ks-memory``'s fast level (``C_1`` in tokens,
            AdamW steps per update, learning rate).
        rank: the experts' rank (None: the memory's default for the model's size).
        drift_prompts, drift_tokens: how many generic prompts (of :data:`DRIFT_PROMPTS`) and the
            length of the original model's answers that drift is measured on.
    """

    sleeps: tuple[int, ...] = (1, 50)
    methods: tuple[str, ...] = DEFAULT_METHODS
    tokens_per_document: int = 200
    seeding: KnowledgeSeedingConfig = field(default_factory=lambda: KnowledgeSeedingConfig(
        steps=5000, batch_size=8, max_new_tokens=40, completions=4, samples_per_prompt=1,
        optimizer=OptimizerConfig(learning_rate=2e-3)))
    sft_batch_size: int = 4
    prompts_per_document: int = 4
    wake_questions: bool = True
    fast_period: int = 256
    fast_steps: int = 4
    fast_learning_rate: float = 3e-3
    rank: int | None = None
    drift_prompts: int = len(DRIFT_PROMPTS)
    drift_tokens: int = 48
    seed: int = 0

    def __post_init__(self):
        self.sleeps, self.methods = tuple(self.sleeps), tuple(self.methods)
        if not self.sleeps or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in self.sleeps):
            raise ValueError(f"sleeps must be a non-empty list of ints >= 1, got {self.sleeps!r}")
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {self.methods!r}")
        for name in ("tokens_per_document", "prompts_per_document", "drift_prompts", "drift_tokens", "fast_period",
                     "fast_steps", "sft_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.drift_prompts > len(DRIFT_PROMPTS):
            raise ValueError(f"drift_prompts must be at most {len(DRIFT_PROMPTS)}, got {self.drift_prompts}")


def sleep_groups(config: KnowledgeSuiteConfig) -> list[BiographyDataset]:
    """One dataset per sleep: consecutive people of one seeded dataset."""
    dataset = generate_biographies(BiographyConfig(num_people=sum(config.sleeps), seed=config.seed))
    starts = [sum(config.sleeps[:i]) for i in range(len(config.sleeps))]
    return [dataset.subset(n, start) for n, start in zip(config.sleeps, starts)]


def documents_of(group: BiographyDataset) -> list[str]:
    return group.passages + group.company_passages


def wake_questions_of(group: BiographyDataset) -> list[list[str]]:
    """Per document of :func:`documents_of`: the second phrasing of each of the person's facts
    (none for company passages)."""
    return [[fact.questions[1] for fact in person.facts] for person in group.people] + [[] for _ in group.companies]


class KnowledgeSuite:
    """Runs the protocol on one model, wrapped here with two memory levels: the fast level (one
    slot, used by ``ks-memory`` only) and the consolidated level (one slot per sleep).

    Args:
        model, tokenizer: a Hugging Face causal LM of a supported family, and its tokenizer.
        config: :class:`KnowledgeSuiteConfig`.
        output_dir: sleep checkpoints and metrics go to ``<output_dir>/<method>/``.
    """

    def __init__(self, model, tokenizer, config: KnowledgeSuiteConfig, output_dir, *, kv_memory_bytes: int = 1 << 30,
                 progress: bool = True):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.output_dir, self.progress = Path(output_dir), progress
        levels = (LevelConfig(rank=config.rank, slots=1, period=config.fast_period),
                  LevelConfig(rank=config.rank, slots=len(config.sleeps)))
        self.memory = ContinuumMemory.wrap(model, MemoryConfig(levels=levels))
        self.engine = Engine(model, tokenizer, kv_memory_bytes=kv_memory_bytes)
        self.groups = sleep_groups(config)

    def run(self) -> dict:
        """Every method; returns the report (also what :func:`write_report` writes)."""
        started = time.perf_counter()
        drift_set = self._drift_set()
        results = {}
        for method in self.config.methods:
            if method in UNTRAINED_METHODS:
                results[method] = {"sleeps": [self._scores(group, in_context=method == "in-context")
                                              for group in self.groups]}
            else:
                results[method] = self._trained(method, drift_set)
        return {"config": to_dict(self.config), "groups": [len(g.people) for g in self.groups],
                "documents": [len(documents_of(g)) for g in self.groups], "results": results,
                "seconds": time.perf_counter() - started}

    # ------------------------------------------------------------------ methods
    def _trained(self, method: str, drift_set) -> dict:
        self.memory.reset(FAST_LEVEL)
        self.memory.reset(CONSOLIDATED_LEVEL)
        shutil.rmtree(self.output_dir / method, ignore_errors=True)  # a run starts afresh (its own folder only)
        sleeps, started = [], time.perf_counter()
        sleeper = None
        for group in self.groups:
            documents = documents_of(group)
            budget = self.config.tokens_per_document * len(documents)
            began = time.perf_counter()
            questions = wake_questions_of(group) if self.config.wake_questions and method != "sft" else None
            config = self._sleep_config(method, len(documents), sum(map(len, questions or [])))
            if sleeper is None:
                sleeper = Sleeper(self.model, self.tokenizer, self.memory, config, engine=self.engine)
            sleeper.config = config
            sleeper.wake(documents, questions=questions)
            summary = sleeper.sleep(progress=self.progress)["stages"][config.stages[0]]
            tokens = summary["tokens"]
            extra = {key: summary[key] for key in ("kl_before", "kl_after", "replay_samples", "steps") if key in summary}
            sleeps.append({"tokens": tokens, "budget": budget, "train_seconds": time.perf_counter() - began, **extra,
                           **self._scores(group)})
        retention = [{"group": index, **self._scores(group)} for index, group in enumerate(self.groups[:-1])]
        return {"sleeps": sleeps, "retention": retention, "drift_kl": self._drift(drift_set),
                "seconds": time.perf_counter() - started}

    def _sleep_config(self, method: str, documents: int, questions: int) -> SleepConfig:
        """``sft``, ``ks``, ``gkd`` (alpha = 1) or ``ks-memory`` at this sleep's budget and prompt count."""
        c = self.config
        budget = c.tokens_per_document * documents
        seeding = dataclasses.replace(c.seeding, alpha=1.0 if method == "gkd" else c.seeding.alpha,
                                      token_budget=budget, max_prompts=c.prompts_per_document * documents + questions)
        sft = NextTokenConfig(steps=c.seeding.steps, batch_size=c.sft_batch_size, token_budget=budget,
                              optimizer=c.seeding.optimizer)
        memory_teacher = {"teacher": "memory", "wake_updates": True, "wake_level": FAST_LEVEL,
                          "wake_steps": c.fast_steps, "wake_learning_rate": c.fast_learning_rate}
        return SleepConfig(stages=("sft",) if method == "sft" else ("seeding",), seeding=seeding, sft=sft,
                           receiver_level=CONSOLIDATED_LEVEL, output_dir=str(self.output_dir / method), seed=c.seed,
                           **(memory_teacher if method == "ks-memory" else {}))

    def _scores(self, group: BiographyDataset, *, in_context: bool = False) -> dict:
        scores = evaluate(self.engine, self.tokenizer, group, in_context=in_context, progress=self.progress)
        return {"people": len(group.people), **scores}

    # ------------------------------------------------------------------ drift
    def _drift_set(self) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, the original model's greedy answer ids) per generic prompt."""
        prompts = [chat_turn(self.tokenizer, text) or f"{text}\n" for text in DRIFT_PROMPTS[:self.config.drift_prompts]]
        ids = [encode(self.tokenizer, prompt) for prompt in prompts]
        params = SamplingParams(temperature=0.0, max_tokens=self.config.drift_tokens)
        with self.memory.switched_off():
            outputs = self.engine.generate(ids, params, progress=False)
        return [(prompt, list(output.completions[0].token_ids)) for prompt, output in zip(ids, outputs)
                if output.completions[0].token_ids]

    @torch.no_grad()
    def _drift(self, drift_set) -> float:
        """Mean per-token KL(original || current) on ``drift_set``."""
        prompts, answers = [p for p, _ in drift_set], [a for _, a in drift_set]
        pad, head = pad_id(self.tokenizer), head_weight(self.model)
        with self.memory.switched_off():
            original = response_hidden(self.model, prompts, answers, pad)
        current = response_hidden(self.model, prompts, answers, pad)
        return float(fused_linear_jsd(current, head, original, head, beta=0.0))

