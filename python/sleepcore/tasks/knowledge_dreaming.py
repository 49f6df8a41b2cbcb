"""The knowledge suite's Dreaming rows (issue 12): SEAL, Sleep and its ablations, and Dreaming with
the untrained generator, on the held-out people, from documents alone (no question is asked while
awake in these rows).

* **Generators**, meta-trained once per suite run (:func:`train_generators`) by
  :class:`~sleepcore.sleep.dreamer.Dreamer` (ReST-EM, "contains" as the reward metric) on
  ``dream_training.people`` training people of another biography seed, any of them whose name is an
  evaluation person's dropped (so the two sets are disjoint by name). The generator is an expert of
  the suite's fast level (level 0, unused by these rows), so it has the sleep experts' rank. Two
  generators: Sleep's (the suite's ``dreaming`` config as it is) and SEAL's (the same without noise
  and without selection: every dream kept, ``top_k = dreams_per_document``, ``random_kept = 0``;
  SEAL's reward, the task's metric against the unadapted model; its dreams learnt as written,
  ``answers = "dream"``, ``objective = "sft"``).
  After the last round the trained generator is measured once more (``Dreamer.measured``), so
  ``reward_per_round`` is round 0 (the untrained model) ... round R (after R updates); with
  ``dream_training.final_measurement = false`` it stops at round R - 1 (after R - 1 updates: the
  last update is used at sleep time unmeasured), which saves one round's measurement per generator.
* **Rows** (:class:`DreamingRow`, each a :class:`~sleepcore.sleep.sleeper.Sleeper`):
  ``sleep`` = Knowledge Seeding then Dreaming with Sleep's generator; ``sleep-no-selection`` the
  same with ``selection = "random"``; ``sleep-no-noise`` with ``noise = False`` (both ablations
  switch the component off at sleep time; the generator is Sleep's); ``dreaming-round0`` the same
  as ``sleep`` with the untrained generator (SEAL reports its base model's self-edits the same
  way); ``seal`` = Dreaming alone with SEAL's generator, without noise or selection;
  ``sleep-no-seeding`` = Dreaming alone with Sleep's generator, noise and selection (Sleep without
  its consolidation stage: SEAL's shape with Sleep's dreams, so the two rows part what SEAL's
  dreams lack from what Knowledge Seeding adds).
* **Budget**: the other rows' rule, ``tokens_per_document * multiplier * documents`` trained tokens
  per sleep. A Sleep row gives ``dream_training.share`` of it to the dreaming stage and the rest to
  Knowledge Seeding; ``seal`` and ``sleep-no-seeding`` give it all to dreaming. Each stage stops at the first step that
  reaches its share (so a sleep may pass the budget by one batch per stage, as the other rows pass
  it by one batch); the step caps scale with the multiplier as the other rows' do, so the budget,
  not the cap, ends a sleep. Dream writing and selection are forward-only: not in the budget, and
  not in the table's forward tokens either (the stage does not count them); their time is in the
  sleep's seconds.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass

from sleepcore.sleep.config import SleepConfig
from sleepcore.sleep.dream_config import IMPLICATIONS, QUESTION_ANSWERS, REWRITE, DreamingConfig
from sleepcore.sleep.dream_tasks import DreamTask
from sleepcore.sleep.dreamer import GENERATOR_FILE, Dreamer
from sleepcore.sleep.sleeper import Sleeper
from sleepcore.tasks.biographies import BiographyConfig, generate_biographies
from sleepcore.tasks.knowledge_methods import FAST_LEVEL, TrainedRow, documents_of, step_cap
from sleepcore.tasks.metrics import contains_match
from sleepcore.train import OptimizerConfig
from sleepcore.validation import choice, instance, integer, number

DREAMING_METHODS = ("seal", "sleep", "sleep-no-selection", "sleep-no-noise", "sleep-no-seeding", "dreaming-round0")
#: The rows whose sleep is the dreaming stage alone, at the whole budget (no Knowledge Seeding).
DREAMING_ALONE = ("seal", "sleep-no-seeding")
#: The generator each row dreams with (None: the untrained model).
GENERATOR_OF = {"seal": "seal", "sleep": "sleep", "sleep-no-selection": "sleep", "sleep-no-noise": "sleep",
                "sleep-no-seeding": "sleep", "dreaming-round0": None}
#: The self-edit prompts the ``seal`` row may write with: SEAL's own (a list of implications) and the
#: variants its paper also compares (a rewrite of the passage, question-answer pairs), each learnt
#: as written.
SEAL_PROMPTS = {"implications": IMPLICATIONS, "rewrite": REWRITE, "question_answers": QUESTION_ANSWERS}
#: ``--tiny``'s Dreaming: a few short dreams, one ReST-EM round (seconds on the tiny model).
TINY_DREAMING = DreamingConfig(dreams_per_document=2, top_k=1, random_kept=0, max_new_tokens=16, inner_rank=4,
                               inner_epochs=1, rounds=1, generator_steps=1, generator_batch_size=2, batch_size=4,
                               optimizer=OptimizerConfig(compute_dtype="float32"))


@dataclass
class DreamTraining:
    """How the suite meta-trains its generators and shares a Sleep row's budget.

    Args:
        people: training people (biographies of ``seed``; any sharing an evaluation person's name is dropped).
        seed: their biography seed (the suite's evaluation people use ``KnowledgeSuiteConfig.seed``).
        share: the fraction of a Sleep row's budget for the dreaming stage (the rest: Knowledge Seeding).
        dreaming_first: a Sleep row dreams before Knowledge Seeding instead of after it (both train
            the sleep's expert; the rows of ``DREAMING_ALONE`` have no seeding stage).
        final_measurement: measure each trained generator once more after its last round (the
            reward after R updates); False needs ``dreaming.rounds >= 2`` (a reward curve of two points).
        seal_prompt: the ``seal`` row's self-edit prompt, a key of ``SEAL_PROMPTS`` (default
            ``"implications"``, SEAL's own); its generator is meta-trained with the same prompt.
    """

    people: int = 20
    seed: int = 1000
    share: float = 0.5
    dreaming_first: bool = False
    final_measurement: bool = True
    seal_prompt: str = "implications"

    def __post_init__(self):
        integer("dream_training.people", self.people, minimum=1)
        integer("dream_training.seed", self.seed)
        number("dream_training.share", self.share, above=0.0, maximum=1.0)
        if self.share >= 1.0:
            raise ValueError(f"dream_training.share must be strictly between 0 and 1, got {self.share!r}")
        instance("dream_training.dreaming_first", self.dreaming_first, bool)
        instance("dream_training.final_measurement", self.final_measurement, bool)
        choice("dream_training.seal_prompt", self.seal_prompt, tuple(SEAL_PROMPTS))


def check_suite_dreaming(dreaming: DreamingConfig, training: DreamTraining) -> None:
    """The suite's ``dreaming`` and ``dream_training``: their types, a generator that lives on the
    fast level and is trained by the suite, and every row's sleep-time config (built here, so a
    setting a row cannot take fails before any row runs)."""
    instance("dreaming", dreaming, DreamingConfig, what="a DreamingConfig")
    instance("dream_training", training, DreamTraining, what="a DreamTraining")
    if dreaming.generator_level != FAST_LEVEL:
        raise ValueError(f"dreaming.generator_level must be {FAST_LEVEL} (the suite's fast level holds the "
                         f"generator), got {dreaming.generator_level}")
    if dreaming.generator_path is not None:
        raise ValueError("dreaming.generator_path must be unset: the suite meta-trains its own generators")
    if not training.final_measurement and dreaming.rounds < 2:
        raise ValueError(f"dream_training.final_measurement = false needs dreaming.rounds >= 2 (the reward of "
                         f"round 0 and a later one), got rounds = {dreaming.rounds}")
    for method in DREAMING_METHODS:
        row_dreaming(dreaming, method, None, training.seal_prompt)


def experts_per_sleep(config) -> int:
    """Consolidated-level slots one sleep takes: 2 when a Dreaming row trains a new expert, else 1."""
    dreams = any(method in DREAMING_METHODS for method in config.methods)
    return 2 if dreams and config.dreaming.expert == "new" else 1


def seal_dreaming(dreaming: DreamingConfig, prompt: str = "implications") -> DreamingConfig:
    """SEAL's variant: the self-edit prompt ``SEAL_PROMPTS[prompt]`` (SEAL's own by default: a list
    of implications), no noise, no selection,
    every dream kept and learnt as written (its own answers, next-token training alone: no
    ``hard_label_weight``), rewarded by the task's metric against the unadapted model, no
    rehearsal of earlier sleeps' questions (``rehearse_earlier_dreams``, ``rehearse_earlier_seeding``
    and ``rehearse_draw``: ours) and no balancing of the
    questions by answer (``balance_answers``: ours, and it needs answers from the document) nor of
    repeated questions (``distinct_questions``) or of the lines its generator learns
    (``generator_distinct_lines``; both ours), no repair
    of the questions' names (``repair_names``: ours; a dream learnt as written asks none), no
    rewrites of them (``question_rewrites``: ours, for the same reason) and no filter on whom they
    name (``questions_name_subject``: ours, likewise). The prompt
    is SEAL's whatever the suite's: a dream learnt as written must say its facts, which a list of
    questions (``QUESTIONS``) does not."""
    return dataclasses.replace(dreaming, prompts=(SEAL_PROMPTS[prompt],), noise=False, selection="random",
                               top_k=dreaming.dreams_per_document, random_kept=0, answers="dream", objective="sft",
                               hard_label_weight=0.0, reward_score="metric", reward_baseline="unadapted",
                               rehearse_earlier_dreams=0.0, rehearse_earlier_seeding=False, rehearse_draw="uniform",
                               balance_answers=False, distinct_questions=False, generator_distinct_lines=False,
                               repair_names=False, question_rewrites=0, questions_name_subject=False)


def row_dreaming(dreaming: DreamingConfig, method: str, generator_path: str | None,
                 seal_prompt: str = "implications") -> DreamingConfig:
    """The sleep-time Dreaming config of ``method`` (``seal_prompt``: the ``seal`` row's, see
    ``DreamTraining.seal_prompt``)."""
    changes = {"seal": {}, "sleep": {}, "sleep-no-selection": {"selection": "random"},
               "sleep-no-noise": {"noise": False}, "sleep-no-seeding": {}, "dreaming-round0": {}}[method]
    base = seal_dreaming(dreaming, seal_prompt) if method == "seal" else dreaming
    return dataclasses.replace(base, generator_path=generator_path, **changes)


def training_tasks(training: DreamTraining, excluded: set[str]) -> list[DreamTask]:
    """Meta-training tasks (passage, its 1-hop questions) of the training people not named in ``excluded``."""
    dataset = generate_biographies(BiographyConfig(num_people=training.people, seed=training.seed))
    tasks = [DreamTask(passage, tuple((q.text, q.answer) for q in dataset.questions if q.person == person.name))
             for person, passage in zip(dataset.people, dataset.passages) if person.name not in excluded]
    if not tasks:
        raise ValueError("dream_training.people: every training person is also an evaluation person")
    return tasks


def train_generators(suite) -> dict:
    """Meta-trains the generators the suite's rows need, each from the unchanged model, into
    ``<output_dir>/generators/<name>/`` (afresh, or resumed with the suite's ``resume``). Returns the
    report's ``dreaming`` entry: ``training_people``, ``share`` and per generator ``rounds``
    (Dreamer's per-round metrics), ``final`` (the trained generator measured after the last round;
    None without ``dream_training.final_measurement``),
    ``reward_per_round``, ``path`` and ``seconds`` (the meta-training and the final measurement: in
    no row's sleep costs; a resumed generator's are the resuming process's, and it says ``resumed``)."""
    c = suite.config
    names = sorted({GENERATOR_OF[m] for m in c.methods if m in DREAMING_METHODS} - {None})
    excluded = {person.name for group in suite.groups for person in group.people}
    tasks = training_tasks(c.dream_training, excluded)
    generators = {}
    for name in names:
        entry = suite.results.cached(f"generators/{name}", lambda name=name: train_generator(suite, name, tasks))
        # the path is where the generator is now, not where it was saved (a resumed folder may have moved)
        generators[name] = {**entry, "path": str(suite.output_dir / "generators" / name / GENERATOR_FILE)}
    suite._reset()
    return {"training_people": len(tasks), "share": c.dream_training.share, "generators": generators}


def train_generator(suite, name: str, tasks: list[DreamTask]) -> dict:
    """One generator of :func:`train_generators`: ReST-EM, then the trained generator measured once more."""
    c, started = suite.config, time.perf_counter()
    suite._reset()
    folder = suite.output_dir / "generators" / name
    resumed = suite.results.resume and folder.is_dir()
    if not suite.results.resume:
        shutil.rmtree(folder, ignore_errors=True)
    config = seal_dreaming(c.dreaming, c.dream_training.seal_prompt) if name == "seal" else c.dreaming
    dreamer = Dreamer(suite.model, suite.tokenizer, suite.memory, config, metric=contains_match,
                      output_dir=folder, engine=suite.engine, seed=c.seed)
    fitted = dreamer.fit(tasks, progress=suite.progress)
    final = dreamer.measured(tasks, fitted["base_scores"], config.rounds, base_questions=fitted["base_question_scores"],
                             progress=suite.progress)["summary"] if c.dream_training.final_measurement else None
    rounds = fitted["rounds"]
    return {"rounds": rounds, "final": final,
            "reward_per_round": [r["reward"] for r in rounds + ([final] if final else [])],
            "seconds": time.perf_counter() - started, "resumed": resumed}


def merge_stages(stages: dict) -> dict:
    """One summary of a sleep's stages (the suite's costs read it): tokens, steps, history and
    forward tokens summed over the stages, Knowledge Seeding's own figures as they are, and
    ``dreaming``: per stage its tokens and steps, and the dreaming stage's dreams, kept, examples,
    question items (and how many of them are rewrites, ``question_rewrites``), rehearsed items (the
    consolidation replay's, earlier sleeps' dream questions) and samples."""
    merged = {key: value for summary in stages.values() for key, value in summary.items() if key != "examples"}
    merged.update(tokens=sum(s["tokens"] for s in stages.values()), steps=sum(s["steps"] for s in stages.values()),
                  history=[step for s in stages.values() for step in s["history"]],
                  prepare_forward_tokens=sum(s.get("prepare_forward_tokens") or 0 for s in stages.values()))
    dreams = stages["dreaming"]
    merged["dreaming"] = {"stages": {name: {"tokens": s["tokens"], "steps": s["steps"]} for name, s in stages.items()},
                          **{key: dreams[key] for key in ("dreams", "kept", "examples", "questions",
                                                          "question_rewrites", "kept_score_mean",
                                                          "rehearsed", "rehearsed_dreams", "samples", "dream_kl_before",
                                                          "dream_kl_after")
                             if key in dreams}}
    return merged


class DreamingRow(TrainedRow):
    """A Dreaming row of ``suite`` at one budget ``multiplier`` (see the module docstring)."""

    methods = DREAMING_METHODS

    def _sleeper(self, group, budget: int) -> dict:
        s = self.suite
        config = self.sleep_config(budget)
        if self.sleeper is None:
            self.sleeper = Sleeper(s.model, s.tokenizer, s.memory, config, engine=s.engine)
        self.sleeper.config = config
        self.sleeper.wake(documents_of(group))  # documents alone: no question asked while awake
        return merge_stages(self.sleeper.sleep(progress=s.progress)["stages"])

    def sleep_config(self, budget: int) -> SleepConfig:
        c, method = self.suite.config, self.method
        name = GENERATOR_OF[method]
        path = self.suite.dreaming["generators"][name]["path"] if name else None
        dreaming_budget = budget if method in DREAMING_ALONE else max(1, round(budget * c.dream_training.share))
        dreaming = dataclasses.replace(row_dreaming(c.dreaming, method, path, c.dream_training.seal_prompt),
                                       token_budget=dreaming_budget, steps=step_cap(c, self.multiplier))
        seeding = super().sleep_config(max(1, budget - dreaming_budget))  # Knowledge Seeding as the ks row's
        stages = ("dreaming",) if method in DREAMING_ALONE else \
            ("dreaming", "seeding") if c.dream_training.dreaming_first else ("seeding", "dreaming")
        return dataclasses.replace(seeding, stages=stages, dreaming=dreaming)

