"""``sleepcore eval knowledge``: how well each way of updating a model turns new passages into
closed-book knowledge, at the same sleep budget (issue 5 §3, issue 11's instruments).

Protocol:

* One biography dataset (fixed seed) of ``sum(sleeps)`` fictional people, split in order into one
  group per sleep (default: 1 person, then 50). A sleep's documents are its people's passages and
  their employers' company passages (2-hop answers live only in the latter). With
  ``wake_questions`` the user also asks, while awake, each fact's *second* phrasing (the wake
  buffer's questions, which the ``wake_questions`` replay builder uses); the evaluation asks the
  first phrasing, which no method ever sees (the ``oracle`` ceiling trains on it on purpose).
* Rows: ``base`` (no update) and ``in-context`` (passages in the prompt: the ceiling) are
  evaluated without training, first. The trained rows (:mod:`sleepcore.tasks.knowledge_methods`:
  ``sft``, ``gkd``, ``ks``, ``ks-memory`` and the ceilings ``oracle``, ``paraphrase-oracle`` and
  ``sentence-oracle``) each start from the unchanged model and run the sleeps in order, each sleep
  adding one expert to the consolidated memory level and keeping the earlier ones. Every trained row stops at the same
  token budget per sleep, ``tokens_per_document * multiplier * documents``; it runs once per
  multiplier of ``budgets`` (the budget curves), each run from the unchanged model. The fast
  level's wake training (``ks-memory``) is not counted in the budget. The Dreaming rows (issue 12:
  ``seal``, ``sleep``, its ablations, ``dreaming-round0``; :mod:`sleepcore.tasks.knowledge_dreaming`)
  see documents only, at the same budget, with generators meta-trained once per run on training
  people disjoint from these (their ReST-EM rewards per round are the report's ``dreaming``).
* After each sleep, on that group's questions (:mod:`sleepcore.tasks.knowledge_eval`): closed-book
  contains (the primary score), EM and token F1 on the 1-hop questions and contains/EM on the 2-hop
  ones, each question's contains, and the gold answers' teacher-forced log-probability. Then
  (:func:`~sleepcore.tasks.knowledge_metrics.add_derived`) gap closure and the teachable subset
  against ``base`` and ``in-context``. After the last sleep, every earlier group is asked again:
  retention is that score minus the score right after its own sleep.
* Costs per sleep: trained tokens, forward-only tokens, seconds, and the stage's per-step history.
* Drift: mean per-token KL(original || updated) on the original model's own greedy answers to
  generic chat prompts (none about the biographies), after the last sleep.

Resume (``resume=True``, :mod:`sleepcore.tasks.knowledge_resume`): finished rows and generators
are read back from the output folder; the report's ``resumed`` lists them, and its ``seconds`` is
this process's (each row's and generator's own ``seconds`` are those of the run that made it).

Report: ``results[row]`` holds ``sleeps`` (and for trained rows ``retention``, ``drift_kl``,
``seconds``, ``budget``) of its run at the largest multiplier, the one the table's targets use;
trained rows also hold ``runs``, every multiplier's run in order, each with its ``history``.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sleepcore import validation
from sleepcore.configuration import to_dict
from sleepcore.lm import chat_turn, encode, head_weight, pad_id, response_hidden
from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
from sleepcore.memory.config import ROUTERS
from sleepcore.ops import fused_linear_jsd
from sleepcore.rollout import Engine, SamplingParams
from sleepcore.sleep.config import KnowledgeSeedingConfig
from sleepcore.sleep.dream_config import DreamingConfig
from sleepcore.tasks.biographies import BiographyConfig, BiographyDataset, generate_biographies
from sleepcore.tasks.general_knowledge import general_answers, kept_share, right_answers
from sleepcore.tasks.knowledge_dreaming import (DREAMING_METHODS, DreamingRow, DreamTraining, check_suite_dreaming,
                                                experts_per_sleep, train_generators)
from sleepcore.tasks.knowledge_eval import evaluate
from sleepcore.tasks.knowledge_methods import (CONSOLIDATED_LEVEL, FAST_LEVEL, ORACLE_METHODS, SLEEPER_METHODS,
                                               TrainedRow, documents_of, wake_questions_of)
from sleepcore.tasks.knowledge_metrics import add_derived, compact_history, sleep_costs
from sleepcore.tasks.knowledge_resume import SuiteResults

__all__ = ["DEFAULT_METHODS", "METHODS", "TRAINED_METHODS", "UNTRAINED_METHODS",
           "KnowledgeSuite", "KnowledgeSuiteConfig", "documents_of", "sleep_groups", "wake_questions_of"]

UNTRAINED_METHODS = ("base", "in-context")
TRAINED_METHODS = SLEEPER_METHODS + ORACLE_METHODS + DREAMING_METHODS
METHODS = UNTRAINED_METHODS + TRAINED_METHODS
DEFAULT_METHODS = ("base", "in-context", "sft", "gkd", "ks")
DRIFT_PROMPTS = (
    "Give me three tips for staying healthy.", "Explain what photosynthesis is.", "Write a haiku about autumn.",
    "What is the capital of France?", "How do I boil an egg?", "Why is the sky blue?",
    "Name three programming languages.", "Describe a cat in one sentence.", "What is 12 times 7?",
    "Suggest a name for a bakery.", "How does a bicycle work?", "What causes rain?",
    "Tell me a fun fact about the ocean.", "Translate 'good morning' into Spanish.",
    "What should I pack for a beach trip?", "Summarise the plot of Cinderella.")


def drift_prompts(tokenizer, count: int = len(DRIFT_PROMPTS)) -> list[str]:
    """The first ``count`` of :data:`DRIFT_PROMPTS` as the model is asked them: a chat turn, or
    the text and a line break without a chat template."""
    return [chat_turn(tokenizer, text) or f"{text}\n" for text in DRIFT_PROMPTS[:count]]


@dataclass
class KnowledgeSuiteConfig:
    """What ``sleepcore eval knowledge`` runs.

    Args:
        sleeps: people consolidated per sleep, in order (retention is measured on all but the last).
        methods: a subset of :data:`METHODS` (default :data:`DEFAULT_METHODS`); ``oracle`` and
            ``paraphrase-oracle`` are the capacity and transfer ceilings.
        tokens_per_document: the sleep budget: trained tokens per document in the sleep.
        budgets: multipliers of ``tokens_per_document`` (> 0, distinct); each trained row runs once
            per multiplier, from the unchanged model (the budget curves).
        seeding: Knowledge Seeding's settings for ``ks``; ``ks-lti`` and ``gkd`` change a few
            (:data:`~sleepcore.tasks.knowledge_methods.ROW_SEEDING`). Its ``optimizer`` (the library's
            default, :data:`~sleepcore.sleep.config.MEASURED_OPTIMIZER`: tuned on SmolLM2-135M;
            Gemma-3-270M diverged at lr 1e-2 and learned at 2e-3) is SFT's and the oracles' too; ``steps`` only caps a sleep at
            multiplier 1 (the cap scales with the multiplier; the budget ends a sleep); its
            ``prompts_per_document`` is the replay quota (every wake question on top); ``max_prompts``
            is not used (no global cap).
        sft_batch_size: examples per step of ``sft`` (documents) and of the oracles (questions).
        wake_questions: whether the second phrasing of each fact is asked while awake.
        fast_period, fast_steps, fast_learning_rate: ``ks-memory``'s fast level (``C_1`` in tokens,
            AdamW steps per update, learning rate).
        rank: the experts' rank (None: the memory's default for the model's size).
        router: the sleeps' experts' ``LevelConfig.router`` (``"sum"`` or ``"gate"``: a learnt
            per-token gate on each expert; the fast level, which also holds the Dreaming
            generators, is always a plain sum).
        drift_prompts, drift_tokens: how many generic prompts (of :data:`DRIFT_PROMPTS`) and the
            length of the original model's answers that drift is measured on.
        dreaming, dream_training: the Dreaming rows' config (their generators are meta-trained with it
            and it runs at sleep time) and how the generators are meta-trained and a Sleep row's budget
            shared (:mod:`sleepcore.tasks.knowledge_dreaming`).
    """

    sleeps: tuple[int, ...] = (1, 50)
    methods: tuple[str, ...] = DEFAULT_METHODS
    tokens_per_document: int = 200
    budgets: tuple[float, ...] = (1.0,)
    seeding: KnowledgeSeedingConfig = field(default_factory=lambda: KnowledgeSeedingConfig(
        steps=5000, batch_size=8, max_new_tokens=40, completions=4, samples_per_prompt=1))
    sft_batch_size: int = 16
    wake_questions: bool = True
    fast_period: int = 256
    fast_steps: int = 4
    fast_learning_rate: float = 3e-3
    rank: int | None = None
    router: str = "sum"
    drift_prompts: int = len(DRIFT_PROMPTS)
    drift_tokens: int = 48
    seed: int = 0
    dreaming: DreamingConfig = field(default_factory=DreamingConfig)
    dream_training: DreamTraining = field(default_factory=DreamTraining)

    def __post_init__(self):
        self.sleeps, self.methods = tuple(self.sleeps), tuple(self.methods)
        if not self.sleeps or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in self.sleeps):
            raise ValueError(f"sleeps must be a non-empty list of ints >= 1, got {self.sleeps!r}")
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {self.methods!r}")
        budgets = tuple(self.budgets) if isinstance(self.budgets, (list, tuple)) else ()
        if (not budgets or len(set(budgets)) != len(budgets)
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and b > 0 for b in budgets)):
            raise ValueError(f"budgets must be a non-empty list of distinct numbers > 0, got {self.budgets!r}")
        self.budgets = tuple(float(b) for b in budgets)
        for name in ("tokens_per_document", "drift_prompts", "drift_tokens", "fast_period",
                     "fast_steps", "sft_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.drift_prompts > len(DRIFT_PROMPTS):
            raise ValueError(f"drift_prompts must be at most {len(DRIFT_PROMPTS)}, got {self.drift_prompts}")
        validation.choice("router", self.router, ROUTERS)
        check_suite_dreaming(self.dreaming, self.dream_training)


def sleep_groups(config: KnowledgeSuiteConfig) -> list[BiographyDataset]:
    """One dataset per sleep: consecutive people of one seeded dataset."""
    dataset = generate_biographies(BiographyConfig(num_people=sum(config.sleeps), seed=config.seed))
    starts = [sum(config.sleeps[:i]) for i in range(len(config.sleeps))]
    return [dataset.subset(n, start) for n, start in zip(config.sleeps, starts)]


class KnowledgeSuite:
    """Runs the protocol on one model, wrapped here with two memory levels: the fast level (one
    slot, used by ``ks-memory`` only) and the consolidated level (one slot per sleep).

    Args:
        model, tokenizer: a Hugging Face causal LM of a supported family, and its tokenizer.
        config: :class:`KnowledgeSuiteConfig`.
        output_dir: sleep checkpoints and metrics go to ``<output_dir>/<method>/x<multiplier>/``.
        resume: read the rows and generators an earlier run of the same config finished in
            ``output_dir`` back instead of redoing them (see the module docstring).
    """

    def __init__(self, model, tokenizer, config: KnowledgeSuiteConfig, output_dir, *, kv_memory_bytes: int = 1 << 30,
                 progress: bool = True, resume: bool = False):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.output_dir, self.progress = Path(output_dir), progress
        levels = (LevelConfig(rank=config.rank, slots=1, period=config.fast_period),
                  LevelConfig(rank=config.rank, slots=len(config.sleeps) * experts_per_sleep(config),
                              router=config.router))
        self.memory = ContinuumMemory.wrap(model, MemoryConfig(levels=levels))
        self.engine = Engine(model, tokenizer, kv_memory_bytes=kv_memory_bytes)
        self.groups = sleep_groups(config)
        self.dreaming = None  # the Dreaming rows' generators (train_generators), once per run
        self.general_base: list[bool] = []  # the base model's right general answers, once per run
        self.results = SuiteResults(self.output_dir, to_dict(config), resume=resume,
                                    defaults=to_dict(type(config)()))

    def run(self) -> dict:
        """Every row (the untrained ones first); returns the report (also what
        :func:`~sleepcore.tasks.knowledge_report.write_report` writes)."""
        started = time.perf_counter()
        methods = self.config.methods
        results = {method: self.results.cached(method, lambda method=method: self._untrained(method))
                   for method in methods if method in UNTRAINED_METHODS}
        trained = [method for method in methods if method in TRAINED_METHODS]
        drift_set = self._drift_set() if trained else []
        if trained:
            with self.memory.switched_off():
                self.general_base = right_answers(general_answers(self.engine, self.tokenizer))
        if any(method in DREAMING_METHODS for method in trained):
            self.dreaming = train_generators(self)
        for method in trained:
            runs = [self.results.cached(f"{method}/x{multiplier:g}",
                                        lambda method=method, multiplier=multiplier: self._run(method, multiplier,
                                                                                               drift_set))
                    for multiplier in self.config.budgets]
            primary = max(runs, key=lambda run: run["budget"])
            results[method] = {**{k: v for k, v in primary.items() if k != "history"}, "runs": runs}
        report = {"config": to_dict(self.config), "groups": [len(g.people) for g in self.groups],
                  "documents": [len(documents_of(g)) for g in self.groups],
                  "results": {method: results[method] for method in methods},
                  "seconds": time.perf_counter() - started}
        if self.dreaming is not None:
            report["dreaming"] = self.dreaming
        if self.results.loaded:
            report["resumed"] = list(self.results.loaded)
        add_derived(report)
        return report

    # ------------------------------------------------------------------ rows
    def _reset(self) -> None:
        self.memory.reset(FAST_LEVEL)
        self.memory.reset(CONSOLIDATED_LEVEL)

    def _untrained(self, method: str) -> dict:
        self._reset()
        return {"sleeps": [self._scores(group, in_context=method == "in-context") for group in self.groups]}

    def _run(self, method: str, multiplier: float, drift_set) -> dict:
        """One trained row at one budget multiplier, from the unchanged model."""
        self._reset()
        folder = self.output_dir / method / f"x{multiplier:g}"
        shutil.rmtree(folder, ignore_errors=True)  # a run starts afresh (its own folder only)
        row = (DreamingRow if method in DREAMING_METHODS else TrainedRow)(self, method, multiplier, folder)
        sleeps, history, started = [], [], time.perf_counter()
        for group in self.groups:
            began = time.perf_counter()
            summary, budget = row.sleep(group)
            sleeps.append({**sleep_costs(summary, budget, time.perf_counter() - began), **self._scores(group)})
            history.append(compact_history(summary["history"]))
        retention = [{"group": index, **self._scores(group)} for index, group in enumerate(self.groups[:-1])]
        return {"budget": multiplier, "tokens_per_document": self.config.tokens_per_document * multiplier,
                "sleeps": sleeps, "retention": retention, "drift_kl": self._drift(drift_set),
                "general_kept": kept_share(self.general_base, right_answers(general_answers(self.engine,
                                                                                            self.tokenizer))),
                "seconds": time.perf_counter() - started, "history": history}

    def _scores(self, group: BiographyDataset, *, in_context: bool = False) -> dict:
        scores = evaluate(self.engine, self.tokenizer, group, in_context=in_context, progress=self.progress)
        return {"people": len(group.people), **scores}

    # ------------------------------------------------------------------ drift
    def _drift_set(self) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, the original model's greedy answer ids) per generic prompt."""
        ids = [encode(self.tokenizer, prompt) for prompt in drift_prompts(self.tokenizer, self.config.drift_prompts)]
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

