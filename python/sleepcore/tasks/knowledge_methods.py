"""The knowledge suite's trained rows: how one row runs one sleep per group at a token budget.

* ``sft``, ``gkd``, ``ks``, ``ks-lti`` and ``ks-memory`` run a :class:`~sleepcore.sleep.sleeper.Sleeper`
  (wake on the group's documents, and with ``wake_questions`` its second phrasings; then sleep):
  ``sft`` is next-token training on the documents; ``ks`` is Knowledge Seeding as the suite's
  ``seeding`` config gives it (by default the library's: off-policy forward KL, no LTI);
  ``ks-lti`` the same with the paper's mix ``alpha = 0.5`` (LTI on); ``gkd`` the same replay
  distilled as TRL's ``GKDTrainer`` does by default (``lambda = 0.5`` on-policy, ``beta = 0.5``,
  ``alpha = 1``): the GKD anchor; ``ks-memory`` is ``ks`` from the memory teacher (the fast level
  learns the documents online while awake). All but ``ks-memory`` use the in-context teacher.
* ``oracle``, ``paraphrase-oracle`` and ``sentence-oracle`` are ceilings, not methods: SFT of a
  fresh expert of the consolidated level on the group's 1-hop facts asked closed-book with their
  gold answers, the loss on the answer only. ``oracle`` trains on the evaluation phrasing
  (``questions[0]``): can the expert hold the facts at this budget (capacity)?
  ``paraphrase-oracle`` trains on the wake phrasing (``questions[1]``) and is evaluated on the
  other: does a fact learned in one phrasing answer another (transfer)? ``sentence-oracle`` is
  ``paraphrase-oracle`` with each gold answer said as a sentence that names the person first
  (``Fact.answer_sentence``, one of the fact's own sentences, "Navin Hibrovrerd's hometown is
  Bevrohaven."), the form in which the teacher answers: is a fact learned in that form bound to
  its owner as well as a bare value is? Items are ``(qa_prompt ids, answer ids)`` with the answer
  tokenised as the model writes it after the prompt (right after a chat template's opened assistant turn,
  else after one space; :func:`~sleepcore.lm.answer_text`), then the
  end-of-turn token (:func:`~sleepcore.lm.end_of_turn`). Without it the expert learns the answer
  but not where it ends, and greedy answers run on into the next guess ("17 August 195619 August"):
  on SmolLM2-135M (10 people) the oracle held the facts (gold answer log-probability -0.12 per
  answer) yet scored 0.67 contains. They run :class:`~sleepcore.sleep.sft.NextTokenStage` through
  :func:`~sleepcore.sleep.stage.run_stage`, in ``<run folder>/sleep-<n>/sft``.

Every row's sleep stops at the same budget, ``tokens_per_document * multiplier * documents``
trained tokens (tokens that received a gradient); the step cap (``seeding.steps``) scales with the
multiplier, so the budget, not the cap, ends a sleep.
"""

from __future__ import annotations

import dataclasses
import math

from sleepcore.lm import end_of_turn, qa_examples, qa_prompt
from sleepcore.sleep.config import NextTokenConfig, SleepConfig
from sleepcore.sleep.sft import NextTokenStage
from sleepcore.sleep.sleeper import Sleeper
from sleepcore.sleep.stage import StageContext, run_stage
from sleepcore.tasks.biographies import BiographyDataset

SLEEPER_METHODS = ("sft", "gkd", "ks", "ks-lti", "ks-memory")
#: Knowledge Seeding settings a row imposes on the suite's ``seeding`` config.
ROW_SEEDING = {"gkd": {"alpha": 1.0, "on_policy": 0.5, "beta": 0.5}, "ks-lti": {"alpha": 0.5}}
ORACLE_METHODS = ("oracle", "paraphrase-oracle", "sentence-oracle")
FAST_LEVEL, CONSOLIDATED_LEVEL = 0, 1


def documents_of(group: BiographyDataset) -> list[str]:
    return group.passages + group.company_passages


def wake_questions_of(group: BiographyDataset) -> list[list[str]]:
    """Per document of :func:`documents_of`: the second phrasing of each of the person's facts
    (none for company passages)."""
    return [[fact.questions[1] for fact in person.facts] for person in group.people] + [[] for _ in group.companies]


def oracle_examples(tokenizer, group: BiographyDataset, method: str) -> list[tuple[list[int], list[int]]]:
    """``(prompt ids, gold answer ids + end of turn)`` per 1-hop fact of ``group`` for an oracle
    ``method`` of :data:`ORACLE_METHODS`: asked closed-book in the evaluation phrasing (``oracle``)
    or the wake phrasing (the others), answered with the bare value or (``sentence-oracle``) with
    ``Fact.answer_sentence``."""
    facts = [fact for person in group.people for fact in person.facts]
    prompts = [qa_prompt(tokenizer, fact.questions[0 if method == "oracle" else 1]) for fact in facts]
    answers = [f.answer_sentence if method == "sentence-oracle" else f.value for f in facts]
    closing = end_of_turn(tokenizer)
    return [(prompt, answer + closing) for prompt, answer in qa_examples(tokenizer, prompts, answers)]


def sleep_budget(config, documents: int, multiplier: float) -> int:
    """Trained tokens of one sleep: ``tokens_per_document * multiplier * documents`` (at least 1)."""
    return max(1, round(config.tokens_per_document * multiplier * documents))


def step_cap(config, multiplier: float) -> int:
    return math.ceil(config.seeding.steps * max(1.0, multiplier))


class TrainedRow:
    """One trained row of ``suite`` at one budget ``multiplier``, checkpointing under ``folder``:
    :meth:`sleep` runs the next group's sleep and returns ``(stage summary, budget)``. The suite
    resets the memory levels before a row starts."""

    methods = SLEEPER_METHODS + ORACLE_METHODS  # a subclass's rows (the Dreaming rows) name their own

    def __init__(self, suite, method: str, multiplier: float, folder):
        if method not in self.methods:
            raise ValueError(f"method must be one of {self.methods}, got {method!r}")
        self.suite, self.method, self.multiplier, self.folder = suite, method, multiplier, folder
        self.sleeper, self.sleeps = None, 0

    def sleep(self, group: BiographyDataset) -> tuple[dict, int]:
        budget = sleep_budget(self.suite.config, len(documents_of(group)), self.multiplier)
        summary = self._oracle(group, budget) if self.method in ORACLE_METHODS else self._sleeper(group, budget)
        self.sleeps += 1
        return summary, budget

    def _sleeper(self, group: BiographyDataset, budget: int) -> dict:
        s, c = self.suite, self.suite.config
        documents = documents_of(group)
        questions = wake_questions_of(group) if c.wake_questions and self.method != "sft" else None
        config = self.sleep_config(budget)
        if self.sleeper is None:
            self.sleeper = Sleeper(s.model, s.tokenizer, s.memory, config, engine=s.engine)
        self.sleeper.config = config
        self.sleeper.wake(documents, questions=questions)
        return self.sleeper.sleep(progress=s.progress)["stages"][config.stages[0]]

    def _oracle(self, group: BiographyDataset, budget: int) -> dict:
        s, c = self.suite, self.suite.config
        seed = c.seed + self.sleeps
        slot = s.memory.new_expert(CONSOLIDATED_LEVEL, seed=seed)
        context = StageContext(s.model, s.tokenizer, s.memory, s.engine, CONSOLIDATED_LEVEL, slot, seed=seed)
        stage = NextTokenStage(context, self.next_token_config(budget))
        examples = oracle_examples(s.tokenizer, group, self.method)
        return run_stage(stage, examples, memory=s.memory, root=self.folder / f"sleep-{self.sleeps:03d}" / "sft",
                         seed=c.seed, progress=s.progress, desc=f"sleep {self.sleeps} {self.method}")

    def next_token_config(self, budget: int) -> NextTokenConfig:
        c = self.suite.config
        return NextTokenConfig(steps=step_cap(c, self.multiplier), batch_size=c.sft_batch_size, token_budget=budget,
                               optimizer=c.seeding.optimizer)

    def sleep_config(self, budget: int) -> SleepConfig:
        """``sft``, ``ks``, ``ks-lti``, ``gkd`` (:data:`ROW_SEEDING`) or ``ks-memory`` at this sleep's
        budget, without a global cap on the replay prompts (every wake question on top of the
        seeding config's quota per document)."""
        c, method = self.suite.config, self.method
        seeding = dataclasses.replace(c.seeding, **ROW_SEEDING.get(method, {}),
                                      steps=step_cap(c, self.multiplier), token_budget=budget, max_prompts=None)
        memory_teacher = {"teacher": "memory", "wake_updates": True, "wake_level": FAST_LEVEL,
                          "wake_steps": c.fast_steps, "wake_learning_rate": c.fast_learning_rate}
        return SleepConfig(stages=("sft",) if method == "sft" else ("seeding",), seeding=seeding,
                           sft=self.next_token_config(budget), receiver_level=CONSOLIDATED_LEVEL,
                           output_dir=str(self.folder), seed=c.seed, **(memory_teacher if method == "ks-memory" else {}))
