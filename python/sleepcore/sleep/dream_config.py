"""Configuration of Dreaming (METHOD.md §4): the dream prompts, how many dreams are written and
kept, the random-expert noise, the selection score, the inner loop, the reward rule and ReST-EM,
and the sleep-time training of the expert on the kept dreams. Nested in ``SleepConfig.dreaming``
(``[sleep.dreaming]`` in TOML) and read by ``sleepcore dream train``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sleepcore.sleep.prompts import HARD_LABEL_ITEMS
from sleepcore.train import OptimizerConfig
from sleepcore.validation import boolean, choice, instance, integer, number, positive, text

DOCUMENT = "{document}"
#: A dream prompt holding it spreads a document's dreams over the document's sentences, one
#: sentence in its place per dream (the document stays in ``{document}``; ``dreams.prompt_counts``).
SENTENCE = "{sentence}"

#: The default dream prompts (our wording; SEAL's "implications" prompt is the model for the first).
IMPLICATIONS = ("Read the passage below and write a list of implications that follow from it, directly or "
                "indirectly. Put each implication on its own line as a complete sentence that names who or what "
                "it is about.\n\n" + DOCUMENT)
REWRITE = ("Rewrite the passage below in your own words, one fact per line. Each line must be a full sentence "
           "that names the person or thing it is about.\n\n" + DOCUMENT)
QUESTION_ANSWERS = ("Write questions about the passage below, each followed by its answer on the same line, "
                    "in the form 'Question? Answer.' Name the person in every question.\n\n" + DOCUMENT)
#: Questions only, after a worked example about no document (for ``answers = "teacher"``: the
#: teacher answers them with the document in context). Zero-shot, SmolLM2-135M-Instruct's question
#: dreams are mostly not questions; with the example most lines are.
QUESTIONS = ("Write questions that the passage below answers, one per line. Each question names the person or "
             "thing it asks about.\n\nExample passage: Marie Curie was born in Warsaw in 1867. She studied physics "
             "in Paris and worked at the Radium Institute.\nExample questions:\nWhere was Marie Curie born?\n"
             "When was Marie Curie born?\nWhat did Marie Curie study?\nWhere did Marie Curie work?\n\n"
             "Passage: " + DOCUMENT + "\nQuestions:")

SELECTION_SCORES = ("norm", "cosine", "random")
REWARD_RULES = ("improves", "best_of_m", "covers")
#: What the reward scores: the greedy answers by the task's metric, or the gold answers' log-probability.
REWARD_SCORES = ("metric", "gold_log_prob")
#: What a dream's adapted model must beat: the model as it is, or an adapter trained on the document alone.
REWARD_BASELINES = ("unadapted", "document")
EXPERTS = ("consolidated", "new")
NOISE_RESAMPLING = ("step", "call")
#: How rehearse_earlier_dreams draws from the pool of earlier questions: uniformly at random, or one
#: question per distinct answer in turn (the answers spread as far as the count allows).
REHEARSE_DRAWS = ("uniform", "answers")
#: How the sleep-time expert learns the kept dreams: next-token training on their text, or
#: distillation of the in-context teacher (the document in its context) along their text.
OBJECTIVES = ("sft", "distill")
#: Who answers a dream's questions: the dream itself (its lines learnt as written), the teacher
#: reading the document (each question asked closed-book, with the teacher's answer: self-study), or
#: the document (each question answered by its own sentence that answers it), or the words of that
#: sentence that answer it.
ANSWERS = ("dream", "teacher", "sentence", "span")
#: Who writes the dreams at sleep time: the model as it is (its memory experts on, the one
#: consolidation just trained included), or the base model (every memory expert off).
WRITERS = ("model", "base")
#: The ``ANSWERS`` taken from the document (fixed responses, nothing sampled).
DOCUMENT_ANSWERS = ("sentence", "span")
#: How the sentence that answers a dream's question is found: by its words alone, or by its words
#: and, where they find none, by the base model reading (:mod:`sleepcore.sleep.sentence_reader`).
SENTENCE_FINDERS = ("words", "words_then_model")


@dataclass
class DreamingConfig:
    """Dreaming: write, select, learn (METHOD.md §4; every "we decide" of issue 12 is a field).

    Each measured claim below names the README section (Dreaming) and the session that holds its
    numbers (SmolLM2-135M-Instruct, the knowledge suite's held-out people, one run per seed).

    **Writing.** For each document ``dreams_per_document`` (m) dreams are sampled from ``prompts``
    (each holds ``{document}``; dream i uses prompt ``i % len(prompts)``) at ``temperature``, at most
    ``max_new_tokens`` tokens each, with random-expert ``noise`` of ``noise_scale``, redrawn every
    engine step (``noise_resample = "step"``) or once per generate call (``"call"``). A prompt that
    also holds ``{sentence}`` gives its j-th dream of a document the document's sentence
    ``j % sentences``, so that its dreams spread over the whole document (with SmolLM2-135M-Instruct
    they reach fewer facts before selection: 0.400 of 70 against the shipped whole-document
    prompt's 0.700, session 45). The noise
    expert's ``A`` and ``B`` are both ``N(0, (init_std * noise_scale)^2)``, so its effect grows as the
    square of the scale: KL(base || noisy) per token 3e-4 nats at scale 1, 0.065 at the default 4,
    5.0 (gibberish) at 10. A dream is split into lines, each its own example, the document last
    (SEAL's sequence builder). At sleep time the generator is ``generator_path`` (a file ``Dreamer``
    wrote; None: the untrained model, SEAL's round 0), loaded into a free slot of
    ``generator_level`` on top of the ``writer``: ``"base"`` (default: every memory expert off) or
    ``"model"`` (every active expert on; its dreams held no answerable question: session 20).

    **Answers** (who answers a dream's questions; a question is a line holding a question mark, cut
    after it and asked closed-book in :func:`~sleepcore.lm.qa_prompt`'s format):
    ``"dream"`` (default) learns the lines as written; ``"teacher"`` takes the teacher's sampled
    answer (the model without the expert being trained, or without any adapter in meta-training,
    reading the document; ``answer_temperature``, ``answer_max_tokens``; needs ``objective =
    "distill"``); ``"sentence"`` the document's sentence that answers it
    (:func:`~sleepcore.sleep.extractive.answering_sentence`), ``"span"`` the part of that sentence the
    question does not say (:func:`~sleepcore.sleep.extractive.answer_span`); a question no sentence
    answers, or one that says all of it, is dropped. ``sentence_finder``: ``"words"`` (default) finds
    that sentence by shared words, ``"words_then_model"`` lets the base model choose where the words
    find none (:mod:`sleepcore.sleep.sentence_reader`; more facts taught, no gain end to end:
    session 22). ``questions_name_entity`` (default on) asks only questions naming an entity of
    their document (:func:`~sleepcore.sleep.prompts.named_entities`); ``answers_restate_question``
    (default on) learns an answer only when it repeats a word of its question
    (:func:`~sleepcore.sleep.extractive.restates_question`): together they cut the answers that one
    repeated value filled from 29 to 9 of 70. ``questions_name_subject`` (default off) asks only
    questions naming the document's subject (:func:`~sleepcore.sleep.extractive.document_subject`:
    the person a biography is about; a document without one keeps the entity filter), as
    Knowledge Seeding's option of that name does. Few of the dreams' own questions name no one (2-4
    of about 75 on seed 1, session 40); the many such items in a Sleep row's Dreaming stage ("What
    is Gishux Furnishings?" -> "Shikrais Fopavren's employer") are Knowledge Seeding's, rehearsed
    (``rehearse_consolidation``). ``statement_lines`` (default off) also learns the
    dream's lines that hold no question (mostly invented: off raised "contains" on every seed,
    session 20). ``repair_names`` (default off) puts misspelt words of the document's multi-word
    names right in a question (:func:`~sleepcore.sleep.extractive.repaired_names`; no gain: session
    28).

    **Selection.** Each dream's SFT-loss gradient on a fresh inner-loop adapter, scalarised by
    ``selection``: ``"norm"`` (default), ``"cosine"`` (with the document's gradient) or ``"random"``
    (the ablation); the ``top_k`` best plus ``random_kept`` (b) others at random are kept.

    **Inner loop** (meta-training). One fresh adapter of rank ``inner_rank`` (scale numerator
    ``inner_alpha``; None: level 0's scale times the rank) per kept dream, SFT on its lines plus the
    document for ``inner_epochs`` epochs of ``inner_batch_size`` examples (at most ``inner_steps``
    steps when set) at ``inner_learning_rate``; ``inner_adapters`` adapters train at once, in chunks
    of at most ``inner_max_tokens`` padded tokens.

    **Reward and ReST-EM** (meta-training). ``reward_score``: ``"metric"`` (greedy closed-book answers
    to the document's questions, scored by the task's metric: SEAL's) or ``"gold_log_prob"`` (the
    gold answers' mean log-prob per token, teacher-forced: dense). ``reward_baseline``:
    ``"unadapted"`` (SEAL's) or ``"document"`` (a fresh adapter trained the same way on the document
    alone, computed once per run). ``reward``: ``"improves"`` rewards every dream that beats its
    baseline by more than ``reward_margin``; ``"best_of_m"`` (SEAL) the best dream per document when
    it does; ``"covers"`` the fewest dreams per document that together cover every question some
    dream lifts by more than the margin (a greedy set cover). The adapter's seed alone moves a
    document's gold log-prob by 0.02-0.18 nats, so a margin of 0.1-0.15 keeps most seed luck
    unrewarded. Each of ``rounds`` (R) rounds ends with ``generator_epochs`` epochs of SFT (batches
    of ``generator_batch_size`` at ``generator_learning_rate``, at most ``generator_steps`` steps) of
    the generator's own expert on (dream prompt, rewarded dream): epochs, since a fixed step count
    trained one or two rewarded dreams 40 times each and the generator collapsed onto them.
    ``generator_distinct_lines`` (default off) drops the lines an earlier rewarded dream of the same
    document wrote (:func:`~sleepcore.sleep.rest_em.rewarded_pairs`; no gain: session 35).

    **Learning at sleep time.** The kept dreams train the ``expert``: ``"consolidated"`` (default:
    the sleep's expert, after consolidation) or ``"new"`` (a new expert of the same level), for at
    most ``steps`` steps of ``batch_size`` examples of ``optimizer``, stopping earlier at
    ``token_budget`` trained tokens or after ``max_epochs`` passes, when set. ``objective``:
    ``"sft"`` (next-token training on the lines and the document: SEAL's, the suite's ``seal`` row)
    or ``"distill"`` (default: forward KL to the teacher reading the document along the same lines,
    so an invented fact is corrected; gold log-prob -3.29 vs -3.91 and -3.53 vs -3.78 against
    ``"sft"``, with less drift). ``hard_label_weight`` adds that times the cross-entropy on the
    items' own tokens (as :class:`~sleepcore.sleep.config.KnowledgeSeedingConfig`'s: distilled
    alone, a short span answer is learnt in the teacher's "The ..." sentence form);
    ``hard_label_items``: ``"all"`` items or ``"fixed"`` only the answers taken from the document.
    ``min_questions`` (default 8; 0: always train) skips the stage when the kept dreams hold fewer
    answered questions, counted as selected (a 1-person sleep's 1-5 questions became every answer
    of the person: session 21). With ``token_budget`` set, ``optimizer.schedule = "cosine"`` decays
    the rate over the stage's budget: at lr 1e-2 on the biographies task it raised the Sleep row
    from 0.505 to 0.576 over three seeds and halved its drift; at a constant 1e-2 Dreaming lost
    more of the facts Knowledge Seeding had taught, and a constant 3e-3 did as well as the cosine
    on one seed (session 41; ``bench/configs/issue12-dreaming.toml``).

    **What the stage's items hold** (answers other than ``"dream"`` unless said):
    ``rehearse_consolidation`` (any answers) adds the sleep's earlier stages' replay samples
    (Knowledge Seeding's, with their cached teacher states) to the shuffled items (session 21).
    ``distinct_questions`` learns each question of a document once however many kept dreams ask it
    (:func:`~sleepcore.sleep.dreaming.distinct_questions`; Sleep +2 to +7 questions of 70 on three
    seeds: sessions 34-35). ``balance_answers`` (needs "sentence" or "span") resamples each
    document's question items so every distinct answer is asked equally often
    (:func:`~sleepcore.sleep.dreaming.balanced_questions`, after ``distinct_questions``; no gain:
    session 24). ``question_rewrites`` (needs "sentence" or "span"; 0: off) samples that many
    base-model rewrites of each kept question and learns those that name its entities and that the
    document answers alike (:mod:`sleepcore.sleep.question_rewrites`; lower: session 29).
    ``rehearse_earlier_dreams`` (a share, 0: off) adds that share of this sleep's own dream items,
    drawn from the questions earlier sleeps' Dreaming learnt with the answers they were taught
    (``WakeBuffer.earlier_dreams``, a uniform sample of at most ``earlier_dreams_capacity``; no
    document is kept); distilled, their teacher is the model without the expert being trained and
    with the earlier experts on. ``rehearse_earlier_seeding`` (needs ``rehearse_earlier_dreams``)
    adds earlier sleeps' Knowledge Seeding fixed-answer questions
    (:meth:`~sleepcore.sleep.knowledge_seeding.KnowledgeSeeding.fixed_questions`) to that pool.
    ``rehearse_draw``: ``"uniform"`` (default) or ``"answers"`` (one question per distinct answer in
    turn: :func:`~sleepcore.sleep.dreaming.spread_by_answer`). With the three at 1.0, on and
    "answers", a second sleep kept the first 5 people within 5 points on two seeds (sessions 31-36,
    ``bench/configs/issue12-retention.toml``).
    """

    prompts: tuple[str, ...] = (IMPLICATIONS, REWRITE, QUESTION_ANSWERS)
    dreams_per_document: int = 6
    top_k: int = 2
    random_kept: int = 1
    noise: bool = True
    noise_scale: float = 4.0
    noise_resample: str = "step"
    selection: str = "norm"
    max_new_tokens: int = 192
    temperature: float = 1.0
    inner_rank: int = 16
    inner_alpha: float | None = None
    inner_epochs: int = 3
    inner_batch_size: int = 4
    inner_steps: int | None = None
    inner_learning_rate: float = 1e-3
    inner_adapters: int = 16
    inner_max_tokens: int | None = 4096
    reward: str = "improves"
    reward_score: str = "metric"
    reward_baseline: str = "unadapted"
    reward_margin: float = 0.0
    rounds: int = 2
    generator_learning_rate: float = 1e-3
    generator_epochs: int = 2
    generator_steps: int = 20
    generator_batch_size: int = 4
    generator_distinct_lines: bool = False
    generator_path: str | None = None
    generator_level: int = 0
    writer: str = "base"
    expert: str = "consolidated"
    objective: str = "distill"
    hard_label_weight: float = 0.0
    hard_label_items: str = "all"
    answers: str = "dream"
    sentence_finder: str = "words"
    answer_temperature: float = 0.3
    answer_max_tokens: int = 48
    questions_name_entity: bool = True
    questions_name_subject: bool = False
    answers_restate_question: bool = True
    statement_lines: bool = False
    min_questions: int = 8
    rehearse_consolidation: bool = False
    balance_answers: bool = False
    distinct_questions: bool = False
    repair_names: bool = False
    question_rewrites: int = 0
    rehearse_earlier_dreams: float = 0.0
    rehearse_earlier_seeding: bool = False
    rehearse_draw: str = "uniform"
    earlier_dreams_capacity: int = 4096
    steps: int = 40
    batch_size: int = 8
    token_budget: int | None = None
    max_epochs: int | None = None
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)

    def __post_init__(self):
        if isinstance(self.prompts, str) or not isinstance(self.prompts, (list, tuple)):
            raise TypeError(f"prompts must be a list of strings, got {type(self.prompts).__name__}")
        self.prompts = tuple(self.prompts)
        if not self.prompts:
            raise ValueError("prompts must not be empty")
        for index, prompt in enumerate(self.prompts):
            text(f"prompts[{index}]", prompt)
            if DOCUMENT not in prompt:
                raise ValueError(f"prompts[{index}] must contain {DOCUMENT} (where the document goes), got {prompt!r}")
        for name in ("dreams_per_document", "top_k", "max_new_tokens", "inner_rank", "inner_epochs",
                     "inner_batch_size", "inner_adapters", "rounds", "generator_epochs", "generator_steps", "generator_batch_size",
                     "steps", "batch_size", "answer_max_tokens"):
            integer(name, getattr(self, name), minimum=1)
        integer("random_kept", self.random_kept, minimum=0)
        integer("min_questions", self.min_questions, minimum=0)
        integer("earlier_dreams_capacity", self.earlier_dreams_capacity, minimum=1)
        number("rehearse_earlier_dreams", self.rehearse_earlier_dreams, minimum=0.0)
        if self.rehearse_earlier_dreams > 0 and self.answers == "dream":
            raise ValueError("rehearse_earlier_dreams needs answers other than 'dream' (it relearns the dreams' "
                             "answered questions, which answers = 'dream' does not tell from their other lines)")
        boolean("rehearse_earlier_seeding", self.rehearse_earlier_seeding)
        if self.rehearse_earlier_seeding and self.rehearse_earlier_dreams <= 0:
            raise ValueError("rehearse_earlier_seeding adds to the pool that rehearse_earlier_dreams draws from, so it "
                             f"needs rehearse_earlier_dreams > 0, got {self.rehearse_earlier_dreams}")
        choice("rehearse_draw", self.rehearse_draw, REHEARSE_DRAWS)
        if self.rehearse_draw != "uniform" and self.rehearse_earlier_dreams <= 0:
            raise ValueError(f"rehearse_draw chooses how rehearse_earlier_dreams draws, so rehearse_draw = "
                             f"{self.rehearse_draw!r} needs rehearse_earlier_dreams > 0, got {self.rehearse_earlier_dreams}")
        if self.top_k + self.random_kept > self.dreams_per_document:
            raise ValueError(f"top_k + random_kept must be <= dreams_per_document ({self.dreams_per_document}), got "
                             f"{self.top_k} + {self.random_kept}")
        for name in ("inner_steps", "inner_max_tokens", "token_budget", "max_epochs"):
            integer(name, getattr(self, name), minimum=1, optional=True)
        integer("generator_level", self.generator_level, minimum=0)
        boolean("noise", self.noise)
        boolean("questions_name_entity", self.questions_name_entity)
        boolean("questions_name_subject", self.questions_name_subject)
        boolean("answers_restate_question", self.answers_restate_question)
        boolean("statement_lines", self.statement_lines)
        boolean("rehearse_consolidation", self.rehearse_consolidation)
        boolean("balance_answers", self.balance_answers)
        if self.balance_answers and self.answers not in DOCUMENT_ANSWERS:
            raise ValueError(f"balance_answers needs answers in {DOCUMENT_ANSWERS} (it groups the questions by the "
                             f"document's answer to them), got answers = {self.answers!r}")
        boolean("distinct_questions", self.distinct_questions)
        boolean("generator_distinct_lines", self.generator_distinct_lines)
        boolean("repair_names", self.repair_names)
        for name, verb in (("questions_name_subject", "filters"), ("distinct_questions", "acts on"),
                           ("repair_names", "corrects")):
            if getattr(self, name) and self.answers == "dream":
                raise ValueError(f"{name} {verb} the questions a dream asks, so it needs answers other than 'dream' "
                                 "(a dream learnt as written asks none)")
        integer("question_rewrites", self.question_rewrites, minimum=0)
        if self.question_rewrites and self.answers not in DOCUMENT_ANSWERS:
            raise ValueError(f"question_rewrites keeps a rewrite when the document answers it as it answers its "
                             f"question, so it needs answers in {DOCUMENT_ANSWERS}, got answers = {self.answers!r}")
        number("reward_margin", self.reward_margin, minimum=0.0)
        for name in ("noise_scale", "inner_learning_rate", "generator_learning_rate"):
            positive(name, getattr(self, name))
        positive("inner_alpha", self.inner_alpha, optional=True)
        number("temperature", self.temperature, minimum=0.0)
        number("answer_temperature", self.answer_temperature, minimum=0.0)
        choice("noise_resample", self.noise_resample, NOISE_RESAMPLING)
        choice("selection", self.selection, SELECTION_SCORES)
        choice("reward", self.reward, REWARD_RULES)
        choice("reward_score", self.reward_score, REWARD_SCORES)
        choice("reward_baseline", self.reward_baseline, REWARD_BASELINES)
        choice("expert", self.expert, EXPERTS)
        choice("objective", self.objective, OBJECTIVES)
        choice("answers", self.answers, ANSWERS)
        choice("sentence_finder", self.sentence_finder, SENTENCE_FINDERS)
        choice("writer", self.writer, WRITERS)
        number("hard_label_weight", self.hard_label_weight, minimum=0.0)
        choice("hard_label_items", self.hard_label_items, HARD_LABEL_ITEMS)
        if self.hard_label_weight > 0 and self.objective != "distill":
            raise ValueError(f"hard_label_weight adds cross-entropy to the distillation, so it needs objective = "
                             f"'distill' ('sft' is cross-entropy alone), got objective = {self.objective!r}")
        if self.answers == "teacher" and self.objective != "distill":
            raise ValueError(f"answers = 'teacher' needs objective = 'distill' (the teacher that answers is the one "
                             f"distilled), got objective = {self.objective!r}")
        instance("generator_path", self.generator_path, (str, type(None)), what="a string or None")
        instance("optimizer", self.optimizer, OptimizerConfig, what="an OptimizerConfig")

    @property
    def kept(self) -> int:
        """Dreams kept per document: ``top_k + random_kept``."""
        return self.top_k + self.random_kept
