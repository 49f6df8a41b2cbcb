"""Configuration of a sleep: its stages in order, one nested config per stage, and the cycle
around them (METHOD.md §2-3). Every "we decide" of METHOD.md is a field here, with the default
METHOD.md gives. TOML files map onto these dataclasses through :mod:`sleepcore.configuration`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sleepcore.sleep.dream_config import DreamingConfig
from sleepcore.sleep.prompts import HARD_LABEL_ITEMS, INSTRUCTION_KINDS, SENTENCE_ANSWERS, SENTENCE_CONTEXTS
from sleepcore.train import OptimizerConfig
from sleepcore.validation import boolean, choice, fraction, instance, integer, number, positive

#: Replay prompt builders (:mod:`sleepcore.sleep.prompts`).
PROMPT_BUILDERS = ("continuation", "self_question", "wake_questions", "wake_paraphrases", "entity_questions",
                   "sentence_questions", "rehearsal", "self_instructions")
#: Stages a sleep can run, in the order they may appear (consolidation before dreaming).
STAGE_NAMES = ("seeding", "sft", "dreaming")


def _loop_fields(config) -> None:
    integer("steps", config.steps, minimum=1)
    integer("batch_size", config.batch_size, minimum=1)
    integer("token_budget", config.token_budget, minimum=1, optional=True)
    instance("optimizer", config.optimizer, OptimizerConfig, what="an OptimizerConfig")


#: Knowledge Seeding's optimiser, as measured on SmolLM2-135M-Instruct (issue 11): lr 1e-2 with 5
#: warm-up steps and clipping at 1 (the oracle reached 0.96 contains with it; Gemma-3-270M diverged
#: at 1e-2 and learned at 2e-3), at a constant rate. A cosine over the token budget (``schedule =
#: "cosine"``) is better at 50 people (contains 0.037 vs 0.014, drift 0.39 vs 1.25, no lost fact of
#: the previous sleep vs -14 points) but worse at 10 (0.000 vs 0.157 at x4) and no better on the
#: 20-person demo (0.100 vs 0.114, half the drift): one seed each, so the constant rate stays.
MEASURED_OPTIMIZER = dict(learning_rate=1e-2, warmup_steps=5, max_grad_norm=1.0)


@dataclass
class KnowledgeSeedingConfig:
    """The consolidation objective ``alpha * Div(teacher || student) + (1 - alpha) * LTI`` (loss form).

    Distillation (GKD): ``beta`` of the generalized JSD (0 forward KL, 1 reverse KL; default 0:
    METHOD.md §3, the JSD's gradient on a token the teacher is sure of vanishes like ``q log q`` as
    the student's probability ``q`` falls, which is exactly a new fact's token), ``on_policy``
    (METHOD.md's lambda: the fraction of sequences sampled from the student), ``temperature``;
    ``hard_label_weight`` adds that times the student's cross-entropy on the response tokens (the
    teacher's samples: sequence-level KD on the off-policy items; or a fixed response such as
    ``sentence_answers``'; 0: the divergence alone), on every off-policy item
    (``hard_label_items = "all"``) or only on those whose response is fixed rather than sampled
    (``"fixed"``: the answers taken from the document). ``token_selection`` is
    the fraction of the replay set's response tokens that are trained: those where the teacher and
    the student as the sleep starts differ most (per-token KL(teacher || student) before the first
    step: the tokens the document adds, such as a new name's value; the selection of Rho-1, with
    the in-context teacher as the reference model); the other tokens get no gradient and do not
    count as trained tokens. 1.0 trains every token; below 1 needs ``on_policy = 0``, since the
    selection is made once, on the teacher's own samples.
    Learning to Imitate: ``completions`` per prefix (n), reward ``gamma * r_sem + (1 - gamma) *
    r_abs`` with the Levenshtein threshold ``z0`` (a fraction of the longer sequence), PPO clip
    ``clip_eps``; ``judge`` gives ``r_sem``: ``"exact_match"`` (normalised exact match) or
    ``"model"`` (the teacher asked "same meaning? yes/no",
    :class:`~sleepcore.sleep.judge.ModelJudge`). Replay set: prompts from ``prompt_builders``
    (:data:`PROMPT_BUILDERS`), at most ``prompts_per_document`` generated ones per document plus
    every wake question, at most ``max_prompts`` in all when set; ``questions_per_sentence``
    questions are sampled per sentence for ``sentence_questions`` (those its filter keeps, once
    each); ``sentence_context`` is what the teacher reads before a ``sentence_questions`` prompt
    (``"document"``, or ``"sentence"``: only the sentence the question was written about);
    ``question_writer_context`` is what the teacher reads before writing one: the sentence alone
    after the worked examples (``"sentence"``), or the whole document first (``"document"``, so
    that it knows whom the sentence is about; issue 12 session 38, span answers with hard labels at
    x16, with ``questions_per_sentence = 4``: Knowledge Seeding's contains 0.300 -> 0.509 over
    three seeds, the facts its items teach 35-43 -> 50-59 of 70; the default stays until it is
    measured with the teacher's answers);
    ``sentence_answers`` is what the student learns after a ``sentence_questions`` prompt: the
    teacher's samples (``"teacher"``), or the sentence the question was written about as the
    document says it (``"sentence"``: always right, whatever the question; the teacher's
    distribution is taken on it by one forward, and it counts as one sample), or the words of that
    sentence the question does not say (``"span"``, scored the same way:
    :func:`~sleepcore.sleep.extractive.answer_span`, the short-answer form); with
    ``questions_name_subject`` a sentence question is kept only when it names its document's subject
    (:func:`~sleepcore.sleep.extractive.document_subject`: "Where did Ada study?", not "Who attended
    Tarvik College?"); with ``questions_say_relation`` only when it says what it asks (a relation
    word, :func:`~sleepcore.sleep.extractive.relation_words`: not "Who is Ada?" or "What is Tarvik
    College?", which the 135M teacher writes about 40% of the time and whose one fixed answer is
    then learnt as the answer to any question about Ada; session 38: those questions carry a third
    of the facts the stage teaches, and dropping them lost 2-6 questions of 70); with
    ``round_trip_questions`` only when the teacher, reading the whole document, answers it
    greedily with its sentence's answer (a round trip:
    :func:`~sleepcore.sleep.extractive.confirms_answer`; one more teacher generation per written
    question), since the 135M teacher writes many questions that ask another sentence's fact
    ("What is Ada's occupation?" about her hobby); measured in session 18 it halved the replay and
    its coverage and did not help (seed 1 0.257-0.286 within the recipe's 0.257-0.343 run-to-run
    range, seed 0 0.214 -> 0.086), so it is off by default; with ``reader_confirms_questions``
    only when the teacher's sentence reader (:func:`~sleepcore.sleep.sentence_reader.likeliest_sentences`:
    among the document's sentences that could answer the question, the one under which the
    teacher finds the question likeliest, one teacher-forced forward per candidate and no
    generation) picks the sentence the question was written about (session 46, the shipped Sleep
    row on seed 1: the stage's fixed items whose question asks another attribute than their answer
    gives, by ``bench/taught_facts.py``'s keyword guess, fell from 22 to 1, its fixed items from 296
    to 224 and the facts they teach from 64 to 56; Sleep 0.757 against 0.771. With
    ``questions_per_sentence = 12`` instead of 8, so that as many items remain, Sleep answered
    0.857, 0.786 and 0.843 on seeds 1, 4 and 5 against 0.771, 0.800 and 0.800, its answers giving
    the person's other attribute 8 times against 20: within a row's noise per seed; the 12
    questions alone gave 0.871, 0.671 and 0.829, so it is off by default). Measured from the
    documents alone (sentence questions only, 16 per document, x8, 10 people after a 1-person
    sleep, one run per seed): ``"sentence"`` took contains from 0.057 to 0.143 (seed 1) and from
    0.100 to 0.143 (seed 0), sentence multiple choice 0.243 -> 0.443 and 0.257 -> 0.343, at about
    three times the drift; with the default builders and the wake questions it changed nothing
    (0.129 against 0.114), so ``"teacher"`` stays the default. A fixed answer needs
    ``hard_label_weight``: the 135M teacher opens every answer with "The ...", so distilled alone a
    span is learnt in that sentence form (0.086); with ``hard_label_weight = 1`` the spans give
    0.243 and the sentences 0.271, with 4 the spans 0.329 on seed 1 and 0.214 on seed 0 (the
    documents-alone recipe of the README's session 17, at about twice the drift).
    ``paraphrases_per_question`` rewrites of each wake question are sampled for
    ``wake_paraphrases`` (those that pass its filter are kept);
    ``rehearsal`` adds ``rehearsal_share`` times as many prompts again (at most all of them), drawn
    from the student prompts that earlier sleeps replayed (``WakeBuffer.earlier``), which the
    teacher answers closed-book like the student: the smaller self's weights hold those facts, so
    the new expert learns to leave its answers as they were (needs another builder for this sleep's
    own prompts); ``rehearsal_capacity`` bounds how many earlier prompts a ``Sleeper`` keeps (a
    uniform sample of all it has replayed, so a long-lived deployment's buffer stays bounded);
    ``self_instructions`` (off by default, on in the demo since session 50; session 49) adds
    ``self_instruction_share`` times as many generic requests as this sleep's own prompts (before
    rehearsal), written by the teacher itself from the opening of a user's turn
    (:func:`~sleepcore.sleep.prompts.instruction_opening`) and answered by it from its weights
    like the student (``self_instruction_kind``: ``"requests"``, user turns, ``"questions"``,
    short-answer questions in the format of the sleep's own questions, ``"both"``, half of each,
    or ``"openings"``, questions that start with the first two words of the sleep's questions,
    the teacher choosing the rest, so that their form is the sleep's and their subjects are not
    the documents' (session 50); at least ``self_instruction_minimum`` in all, since a sleep of
    one person has few prompts of its own): without them the new expert also changes the model's
    answers to requests that have nothing to do with the documents (after the shipped Sleep,
    SmolLM2-135M-Instruct answered "What is the capital of France?" with a made-up city and kept
    0-5 of 31 right common-knowledge answers over five seeds; with short-answer questions at 0.1,
    3-15, at about the same closed-book accuracy, so the demo uses them: README, Dreaming,
    sessions 49-50);
    ``samples_per_prompt`` teacher samples of ``max_new_tokens`` each at ``replay_temperature``
    (None: ``sample_temperature``, the temperature of the student's on-policy and LTI samples).
    The teacher reads a document (any prompt whose teacher text holds more than the student's)
    without the receiver level's earlier experts unless ``teacher_reads_with_earlier_experts``;
    rehearsal prompts are always answered with them. Measured on SmolLM2-135M-Instruct (10 people
    after a 1-person sleep at 8x, seed 1): with the first sleep's expert on, the teacher answered
    0.214 of the wake questions in context against 0.571 without it, giving that person's values
    to the new people; wake-question replay without it reached closed-book contains 0.257 against
    0.129, and 0.400 against 0.214 on sentence multiple choice (chance 0.182).
    Optimisation: shuffled epochs over the replay set in batches of ``batch_size`` sequences, at
    most ``steps`` steps of ``optimizer`` on the new expert only; with ``token_budget`` the stage
    stops at the first step that reaches that many trained tokens, which is how methods are
    compared at the same budget.

    Defaults chosen by measurement (issue 11; SmolLM2-135M-Instruct, 10 new people, the knowledge
    suite at 4x its base budget, about 11k trained tokens, one seed, so differences of 0.03 are
    noise): off-policy forward KL on the teacher's replay at temperature 0.3, without LTI, reached
    closed-book contains 0.129 (gap closure 0.39). Changing one setting at a time from there:
    ``on_policy = 0.5`` 0.100 at 2.3x the seconds; ``replay_temperature = 1.0`` 0.043;
    ``alpha = 0.5`` (LTI on; its reward rose from 0.01 to 0.25) 0.029; METHOD.md's first defaults
    (``alpha = 0.5``, ``on_policy = 0.5``, replay at temperature 1) 0.000. Replay builders, with
    the wake questions: adding ``continuation`` and ``self_question`` 0.071; adding
    ``sentence_questions`` and ``entity_questions`` 0.157 (and from the documents alone, no
    question asked while awake, those two reached 0.043, and 0.057 at 16x).
    ``sentence_context = "sentence"`` gave 0.171 against 0.143 (32-token answers; inside the
    run-to-run spread), so ``"document"`` stays: even a teacher reading each wake question's own
    sentence (0.83 of its answers right against 0.53) did not raise closed-book answers over two
    seeds (0.150 against 0.179 on average; README, Benchmarks). ``token_selection = 0.25`` (wake
    questions only, the same 260 steps as 16x the budget) gave 0.114 against 0.229 with every
    token trained, and 3x the drift, so the default trains every token.
    Adding ``wake_paraphrases`` to the wake questions (wake questions only otherwise): 0.314 against
    0.229 at 16x the budget (gap closure 0.67), 0.429 against 0.414 on a second seed, but 0.143
    against 0.200 at 4x, where each of the 2.5x more replay items gets too few passes. Added to the
    default builders after a 50-person sleep: gap closure 0.43 at 16x (0.26 without), 0.14 at 8x.
    It pays only near 16x the budget, so the default builders are unchanged; use it with one.
    ``rehearsal`` (a default since 2026-12-02; it does nothing in a first sleep): with the rewrites
    at 16x after the 50-person sleep, the first sleep's facts were kept (0 points on two seeds,
    against -14.3 and -28.6 without it; on seed 0 two facts lost and two gained), gap closure 0.37
    and 0.53 (0.43 and 0.39 without), at 21 of about 1,250 replay items.
    """

    alpha: float = 1.0
    beta: float = 0.0
    hard_label_weight: float = 0.0
    hard_label_items: str = "all"
    token_selection: float = 1.0
    on_policy: float = 0.0
    temperature: float = 1.0
    gamma: float = 0.5
    z0: float = 0.5
    completions: int = 4
    clip_eps: float = 0.2
    judge: str = "exact_match"
    prompt_builders: tuple[str, ...] = ("sentence_questions", "entity_questions", "wake_questions", "rehearsal")
    prompts_per_document: int = 4
    max_prompts: int | None = None
    sentence_context: str = "document"
    question_writer_context: str = "sentence"
    sentence_answers: str = "teacher"
    questions_name_subject: bool = False
    questions_say_relation: bool = False
    round_trip_questions: bool = False
    reader_confirms_questions: bool = False
    questions_per_sentence: int = 2
    paraphrases_per_question: int = 3
    rehearsal_share: float = 0.1
    rehearsal_capacity: int = 4096
    self_instruction_share: float = 0.1
    self_instruction_kind: str = "requests"
    self_instruction_minimum: int = 0
    samples_per_prompt: int = 2
    max_new_tokens: int = 64
    teacher_reads_with_earlier_experts: bool = False
    sample_temperature: float = 1.0
    replay_temperature: float | None = 0.3
    steps: int = 40
    batch_size: int = 8
    token_budget: int | None = None
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(**MEASURED_OPTIMIZER))

    def __post_init__(self):
        for name in ("alpha", "beta", "on_policy", "gamma", "z0"):
            fraction(name, getattr(self, name))
        number("hard_label_weight", self.hard_label_weight, minimum=0.0)
        choice("hard_label_items", self.hard_label_items, HARD_LABEL_ITEMS)
        number("token_selection", self.token_selection, above=0.0, maximum=1.0)
        if self.token_selection < 1 and self.on_policy > 0:
            raise ValueError(f"token_selection < 1 selects tokens of the teacher's own samples once, so it needs "
                             f"on_policy = 0 (got token_selection={self.token_selection}, on_policy={self.on_policy})")
        for name in ("completions", "samples_per_prompt", "max_new_tokens", "prompts_per_document",
                     "paraphrases_per_question", "questions_per_sentence", "rehearsal_capacity"):
            integer(name, getattr(self, name), minimum=1)
        integer("self_instruction_minimum", self.self_instruction_minimum, minimum=0)
        integer("max_prompts", self.max_prompts, minimum=1, optional=True)
        number("replay_temperature", self.replay_temperature, minimum=0.0, optional=True)
        boolean("teacher_reads_with_earlier_experts", self.teacher_reads_with_earlier_experts)
        boolean("questions_name_subject", self.questions_name_subject)
        boolean("questions_say_relation", self.questions_say_relation)
        boolean("round_trip_questions", self.round_trip_questions)
        boolean("reader_confirms_questions", self.reader_confirms_questions)
        for name in ("temperature", "sample_temperature", "clip_eps"):
            positive(name, getattr(self, name))
        choice("judge", self.judge, ("exact_match", "model"))
        choice("sentence_context", self.sentence_context, SENTENCE_CONTEXTS)
        choice("question_writer_context", self.question_writer_context, SENTENCE_CONTEXTS)
        choice("sentence_answers", self.sentence_answers, SENTENCE_ANSWERS)
        self.prompt_builders = tuple(instance("prompt_builders", self.prompt_builders, (list, tuple)))
        if not self.prompt_builders:
            raise ValueError("prompt_builders must not be empty")
        for builder in self.prompt_builders:
            choice("prompt_builders item", builder, PROMPT_BUILDERS)
        if set(self.prompt_builders) <= {"rehearsal", "self_instructions"}:
            raise ValueError("prompt_builders must hold a builder besides 'rehearsal' and 'self_instructions' "
                             "(they add prompts in proportion to this sleep's own)")
        for check in ("round_trip_questions", "reader_confirms_questions"):
            if getattr(self, check) and "sentence_questions" not in self.prompt_builders:
                raise ValueError(f"{check} checks the questions of the 'sentence_questions' builder, "
                                 "which prompt_builders does not hold")
        number("rehearsal_share", self.rehearsal_share, above=0.0, maximum=1.0)
        number("self_instruction_share", self.self_instruction_share, above=0.0, maximum=1.0)
        choice("self_instruction_kind", self.self_instruction_kind, (*INSTRUCTION_KINDS, "both"))
        _loop_fields(self)


@dataclass
class NextTokenConfig:
    """The SFT stage (the knowledge suite's baseline): next-token loss on the wake documents, in
    shuffled epochs of ``batch_size`` documents, at most ``steps`` steps of ``optimizer`` on the
    new expert, stopping at ``token_budget`` trained tokens when set."""

    steps: int = 1000
    batch_size: int = 4
    token_budget: int | None = None
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)

    def __post_init__(self):
        _loop_fields(self)


@dataclass
class SleepConfig:
    """The cycle: the stages a sleep runs, which memory level receives the new expert, the teacher,
    where the running state is checkpointed, and the seed.

    ``stages`` run in order, each with its nested config: ``seeding`` (Knowledge Seeding,
    :class:`KnowledgeSeedingConfig`) or ``sft`` (next-token training on the documents,
    :class:`NextTokenConfig`), then ``dreaming`` (:class:`DreamingConfig`, METHOD.md §4).
    ``teacher`` is ``"context"`` (the wake documents in the teacher's
    context: the zeroth memory level) or ``"memory"`` (the fast level's experts, without the
    documents; it needs ``wake_updates`` and a ``receiver_level`` other than ``wake_level``). Every
    ``checkpoint_every`` optimisation steps the state is written atomically to ``output_dir``.

    Wake (METHOD.md §1): with ``wake_updates`` the fast level ``wake_level`` learns online, every
    ``wake_period`` tokens (``C_1``; None: that level's ``LevelConfig.period``) taking
    ``wake_steps`` AdamW steps at ``wake_learning_rate`` on batches of ``wake_batch_size``
    sequences of the recent window (see :mod:`sleepcore.sleep.wake`). Without it the fast memory
    is the context alone.
    """

    stages: tuple[str, ...] = ("seeding",)
    seeding: KnowledgeSeedingConfig = field(default_factory=KnowledgeSeedingConfig)
    sft: NextTokenConfig = field(default_factory=NextTokenConfig)
    dreaming: DreamingConfig = field(default_factory=DreamingConfig)
    receiver_level: int = 0
    teacher: str = "context"
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
        self.stages = tuple(instance("stages", self.stages, (list, tuple)))
        if not self.stages:
            raise ValueError("stages must not be empty")
        for stage in self.stages:
            choice("stages item", stage, STAGE_NAMES)
        instance("seeding", self.seeding, KnowledgeSeedingConfig, what="a KnowledgeSeedingConfig")
        instance("sft", self.sft, NextTokenConfig, what="a NextTokenConfig")
        instance("dreaming", self.dreaming, DreamingConfig, what="a DreamingConfig")
        integer("receiver_level", self.receiver_level, minimum=0)
        choice("teacher", self.teacher, ("context", "memory"))
        integer("checkpoint_every", self.checkpoint_every, minimum=1)
        instance("output_dir", self.output_dir, (str, type(None)), what="a string or None")
        integer("seed", self.seed)
        boolean("wake_updates", self.wake_updates)
        integer("wake_level", self.wake_level, minimum=0)
        integer("wake_period", self.wake_period, minimum=1, optional=True)
        integer("wake_steps", self.wake_steps, minimum=1)
        positive("wake_learning_rate", self.wake_learning_rate)
        integer("wake_batch_size", self.wake_batch_size, minimum=1)
        if self.teacher == "memory":
            if not self.wake_updates:
                raise ValueError("wake_updates must be True for teacher='memory' (a memory teacher needs a trained "
                                 "fast level)")
            if self.receiver_level == self.wake_level:
                raise ValueError(f"receiver_level must differ from wake_level ({self.wake_level}) for "
                                 "teacher='memory'")
