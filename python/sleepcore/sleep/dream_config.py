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

    Writing: for each document ``dreams_per_document`` (m) dreams are sampled from ``prompts``
    (each holds ``{document}``; dream i uses prompt ``i % len(prompts)``), at ``temperature``, at
    most ``max_new_tokens`` tokens each, with random-expert ``noise`` of ``noise_scale`` redrawn
    every engine step (``noise_resample = "step"``) or once per generate call (``"call"``). A dream
    is split into lines, each its own example, the document last (SEAL's sequence builder).
    The noise expert's ``A`` and ``B`` are both ``N(0, (init_std * noise_scale)^2)``, so its effect
    grows as the square of the scale. Measured on SmolLM2-135M-Instruct (one draw, a biography
    passage; KL(base || noisy) per token of the next-token distribution): scale 1: 3e-4 nats
    (dreams identical token for token to those without noise), 2: 0.005, 3: 0.02, 4: 0.065,
    5: 0.14, 10: 5.0 (gibberish). The default 4 is a perturbation a sampler notices; its effect
    on the reward is not measured yet.

    Answers: with ``answers = "dream"`` a dream's lines are learnt as written. With ``"teacher"``
    each line holding a question mark is cut after it into a question, asked closed-book in the
    question-answer format (:func:`~sleepcore.lm.qa_prompt`), and the example's response is the
    teacher's answer: the model without the expert being trained (at sleep time) or without any
    adapter (meta-training) reads the question with the document in its turn and samples at
    ``answer_temperature``, at most ``answer_max_tokens`` tokens. The dream supplies the
    questions, the teacher the answers (Cartridges' self-study); lines without a question stay as
    written. It needs ``objective = "distill"`` (the teacher that answers is the one distilled).
    With ``"sentence"`` the same questions are answered by the document's sentence that answers
    them (:func:`~sleepcore.sleep.extractive.answering_sentence`: it names the question's entity and
    repeats the most of what it asks; a question no sentence answers is dropped): the answer is the
    document's own words, right whatever the generator's questions (Knowledge Seeding's
    ``sentence_answers = "sentence"`` for the dream's questions). With ``"span"`` the answer is the
    part of that sentence the question does not say
    (:func:`~sleepcore.sleep.extractive.answer_span`: the short-answer form; a question it says all
    of is dropped). ``sentence_finder``: ``"words"`` (default) finds that sentence by the words it
    shares with the question; ``"words_then_model"`` also lets the base model choose, among the
    sentences that name the question's entity, the one under which it finds the question likeliest
    when the words find none (:mod:`sleepcore.sleep.sentence_reader`): on the knowledge suite's
    held-out people the words alone give the right answer to 56-61% of the evaluation questions
    (2-6 of 20 for occupation, university and hobby, which the documents word otherwise), the
    words then the model 86-91%. End to end it is not a default: in session 21's best Sleep row
    its dreams taught 1-8 more of the 70 facts on seeds 0-2 but closed-book contains was 0.386 /
    0.514 / 0.257 against 0.357 / 0.543 / 0.329 with the words alone (more items at the same
    budget are learnt fewer times; README, Dreaming, session 22).
    With ``statement_lines`` the answered questions come with the dream's lines that hold no
    question, learnt as written (distilled or not, by ``objective``); False (the default) learns the
    answered questions and the document alone (no effect with ``answers = "dream"``). Measured on
    SmolLM2-135M-Instruct (10 people after a 1-person sleep, the base model writing, answers by span,
    Knowledge Seeding x8 then Dreaming x8): a question dream's other lines are mostly invented or
    copied from the prompt's worked example ("Marie Curie: She studied physics ... and is a pastry
    chef."); without them "contains" rose on every seed (README, Dreaming, session 20).
    With ``min_questions`` (default 8) and answers other than ``"dream"``, a sleep whose kept dreams
    hold fewer answered questions trains nothing in this stage (its summary says ``skipped`` and why;
    0: always train). Measured on SmolLM2-135M-Instruct (a 1-person sleep, 2 documents, Knowledge
    Seeding x8 then Dreaming x8, seeds 0-2): the dreams gave 1, 5 and 1 answered questions, and
    every greedy answer of the person became one of them ("1983, Baidran Furnishings" to all 7
    questions), at 17-22 passes over the items and at 4 (seed 0: 4 steps); the 10-person sleeps
    after it gave 24-65 and did not collapse (README, Dreaming, session 21). The count is of the
    kept dreams' questions as selected, before ``distinct_questions`` and ``balance_answers``
    (those change what the stage learns, not whether it trains; counted after them, a 1-person
    sleep's 20 and 12 questions became 5 and 7 distinct ones and its Dreaming trained nothing:
    session 35).
    With ``rehearse_consolidation`` the stage learns the sleep's earlier stages' replay samples
    (Knowledge Seeding's, with their cached teacher states; as (prompt, response) pairs with
    ``objective = "sft"``) beside its dreams, in one shuffled item set at the stage's budget.
    Measured on SmolLM2-135M-Instruct (10 people after a 1-person sleep, Knowledge Seeding x8 then
    Dreaming x8, seeds 0-2; README, Dreaming, session 21): without it, the facts that only
    Knowledge Seeding's replay taught were answered right 10-17% of the time after Dreaming, against
    44-50% after Knowledge Seeding alone; with it, "contains" 0.286 / 0.500 / 0.243 against
    0.300 / 0.300 / 0.229 without it and 0.257 / 0.300 / 0.157 for Knowledge Seeding x16 alone; with
    it and 8 dreams per document (4 + 2 kept) 0.357 / 0.543 / 0.329. One run per seed, so it
    stays off by default until more runs confirm it.
    With ``rehearse_earlier_dreams`` (a share; 0, the default, is off) the stage also relearns the
    questions that earlier sleeps' Dreaming stages learnt, with the answers they were taught
    (``WakeBuffer.earlier_dreams``, kept by the :class:`~sleepcore.sleep.sleeper.Sleeper` as a
    uniform sample of at most ``earlier_dreams_capacity``): that share of this sleep's own dream
    items, drawn at random (at most all of them), joins the items. Distilled, their teacher is the
    model without the expert being trained and with the earlier experts on (what it knows of them
    now), their answers hard-labelled as this sleep's document answers are. No document is kept:
    only the questions and answers the model wrote and learnt. Needs ``answers`` other than
    ``"dream"`` (the questions must be told from the dreams' other lines).
    Measured on SmolLM2-135M-Instruct (a 5-person sleep, then 10 people; share 0.5, which drew
    every earlier question; seeds 1 and 0, one run each): the first people's "contains" went
    0.543 -> 0.486 and 0.314 -> 0.229, against 0.543 -> 0.171 and 0.314 -> 0.171 without it, and
    the new people's was 0.06 and 0.09 lower (README, Dreaming, session 23). Off by default until
    more runs confirm it.
    With ``rehearse_earlier_seeding`` (off by default; needs ``rehearse_earlier_dreams``) the
    questions that earlier sleeps' Knowledge Seeding learnt with a fixed answer (its
    ``sentence_questions`` items with ``sentence_answers`` "span" or "sentence":
    :meth:`~sleepcore.sleep.knowledge_seeding.KnowledgeSeeding.fixed_questions`) join that pool
    too, so the share is drawn from both stages' questions. Why: read fact by fact over two sleeps
    (README, Dreaming, session 31), of the first sleep's right facts those that an earlier
    Dreaming question covered were mostly kept (seed 4: 18 of 22, seed 5: 4 of 6) and those none
    covered were all lost (1 and 5): the pool of Dreaming's questions alone covered 26 and 16 of
    the 35 facts. With both pools (session 32, same runs otherwise: shipped config, 5 people then
    10, x16, seeds 4 and 5) the rehearsal covered 29 and 26 facts, and the first people's
    "contains" went 0.657 -> 0.600 and 0.314 -> 0.429 (-5.7 and +11.4 points, against -8.6 and
    -8.6 with Dreaming's pool alone), the new people's 0.486 and 0.443 (against 0.371 and 0.414).
    One run per seed, so it stays off by default; turn it on with ``rehearse_earlier_dreams``.
    ``rehearse_draw`` says how the share is drawn from that pool: ``"uniform"`` (the default: at
    random) or ``"answers"`` (:func:`~sleepcore.sleep.dreaming.spread_by_answer`: one question per
    distinct answer in turn, so a draw smaller than the pool rehearses as many of the earlier facts
    as it can). Why: with ``distinct_questions`` a sleep's own items are fewer, so the share draws
    fewer earlier questions; measured over a 5-person first sleep (seed 4, session 36) the pool of
    111 questions covered 31 of the first people's 35 facts and the uniform draw of 41 covered 21,
    and the facts no drawn question covered were mostly lost. End to end (seeds 4 and 5, one run
    each): the spread draw at share 0.5 moved the first people's loss from -8.6 / -8.6 points to
    -8.6 / +5.7; at share 1.0 to +2.9 / +2.9, the new people answering 5 and 1 questions of 70
    fewer (README, Dreaming, session 36; ``bench/configs/issue12-retention.toml``). One run per
    seed, so the default stays ``"uniform"``.
    With ``balance_answers`` (off by default; needs ``answers`` "sentence" or "span") the sleep's
    Dreaming stage resamples each document's kept question items so that every distinct answer is
    asked about equally often (:func:`~sleepcore.sleep.dreaming.balanced_questions`; meta-training's
    inner loops learn each dream as it is): the dreams ask about some
    facts many times and others once or twice, and read fact by fact a fact taught by 8 or more
    items was answered right 24 times of 26, one taught by 2-3 items 16 of 58. Measured end to end
    (12 dreams, Knowledge Seeding x4 then Dreaming x12, seeds 0-2, one run each): "contains"
    0.457 / 0.386 / 0.414 against 0.400 / 0.586 / 0.429 without it, at lower drift (2.5-2.8
    against 2.6-3.4): the correlation was not a cause (and the resampling also repeats answers
    that are no fact), so it stays off (README, Dreaming, session 24).
    With ``distinct_questions`` (off by default; needs ``answers`` other than "dream") the sleep's
    Dreaming stage learns each question of a document once, however many kept dreams ask it
    (:func:`~sleepcore.sleep.dreaming.distinct_questions`, applied before ``balance_answers``):
    a ReST-EM-trained generator writes the same questions in many of a document's dreams (session
    34: 68 distinct questions in 125 kept items on seed 4 and 77 in 216 on seed 1, against 96 in
    105 and 165 in 205 for the untrained generator), which spends the stage's budget on repeats.
    Measured end to end (README, Dreaming, sessions 34-35; one run each): Sleep 0.400 -> 0.429
    (bf16) and 0.443 -> 0.486 (fp32) on seed 4, 0.500 -> 0.586 on seed 1, 0.371 -> 0.471 on seed
    5, drift lower in all four.
    With ``questions_name_entity`` (default) a question is asked only when it names an entity of its
    document (a capitalised word of :func:`~sleepcore.sleep.prompts.named_entities`): "Where did she
    work?" or the prompt's worked example ("Where was Marie Curie born?") would teach an answer
    bound to no one. With ``answers_restate_question`` (default) an answer is learnt only when it
    repeats a word of what its question asks (:func:`~sleepcore.sleep.extractive.restates_question`):
    the 135M teacher often answers another question of the same person ("Where was X born?" -> "The
    name of X's first pet is Y"), which the student would learn as the answer to the one asked.
    Measured on SmolLM2-135M-Instruct (question dreams, untrained generator, 10 held-out people,
    seed 1, one run each): the most repeated value filled 29 of 70 greedy answers at x8 with
    neither filter, 15 with the entity filter, 9 with both; at x16, 50 with neither and 13 with
    both (gold log-prob per token -3.23 -> -2.95, drift 1.04 -> 0.65). Neither filter makes the
    expert tell one person's value from another's (multiple-choice accuracy at chance: README,
    Dreaming); they stop wrong pairs from concentrating the answers on one value.

    With ``repair_names`` (off by default; not for ``answers = "dream"``) a question's misspelt
    words of a multi-word name of its document are put right before it is asked and answered
    (:func:`~sleepcore.sleep.extractive.repaired_names`: "Tililo Drapoboth" -> "Tililo Drapobith"):
    in the untrained generator's kept dreams of 10 held-out people (seed 4) about one question
    item in ten named a person or place misspelt, and learnt its answer under that name (README,
    Dreaming, session 27). Measured end to end (session 28, the untrained generator's row, seed
    4): 0.500 "contains" against 0.586 without it, 22 of 32 distinct people's facts against 20;
    within one seed's noise, not a gain.

    With ``question_rewrites`` (0, the default, is off; needs ``answers`` "sentence" or "span") the
    sleep's Dreaming stage, after selection, samples that many rewrites of each kept question from
    the base model and learns every new one that names the question's entities and that the
    document answers as it answers the question, with the question's answer
    (:mod:`sleepcore.sleep.question_rewrites`; meta-training's inner loops learn each dream as it is):
    read fact by fact, a taught fact was recalled more often the more items taught it, and more
    often when an item used the evaluation's own wording (README, Dreaming, session 28). Measured
    end to end (session 29, the untrained generator's row, 8 rewrites, seeds 4 and 5): "contains"
    0.414 and 0.429 against 0.586 and 0.500 without: in the same budget the extra items leave fewer
    passes over the documents and the consolidation replay, and many of the 135M model's rewrites
    ask something else with the same answer, so it stays off.

    Selection: each dream's SFT-loss gradient on a fresh inner-loop adapter, scalarised by
    ``selection``: ``"norm"`` (default), ``"cosine"`` (with the document's gradient) or ``"random"``
    (no gradient: the ablation); the ``top_k`` best plus ``random_kept`` (b) others at random are kept.

    Inner loop (meta-training): one fresh adapter of rank ``inner_rank`` (scale numerator
    ``inner_alpha``; None: level 0's scale times the rank) per kept dream, SFT on its lines plus
    the document for ``inner_epochs`` epochs of ``inner_batch_size`` examples (at most
    ``inner_steps`` steps when set) at ``inner_learning_rate``; ``inner_adapters`` adapters train
    at once, in chunks of at most ``inner_max_tokens`` padded tokens.

    Reward (meta-training): a score of the adapted model on the document's questions, closed-book,
    against a baseline's. ``reward_score``: ``"metric"`` (the greedy answers scored by the task's
    metric, e.g. "contains": SEAL's) or ``"gold_log_prob"`` (the mean log-probability per token of
    the gold answers, teacher-forced: dense, so it ranks dreams that greedy answers score alike).
    ``reward_baseline``: ``"unadapted"`` (the model as it is: SEAL's) or ``"document"`` (a fresh
    adapter trained the same way on the document alone, so that a dream is rewarded for what it
    adds to reading the document; computed once per run, the generator plays no part in it).
    ``reward``: ``"improves"`` rewards every dream that beats its baseline by more than
    ``reward_margin``, ``"best_of_m"`` (SEAL) the best dream of each document when it does,
    ``"covers"`` the fewest dreams of each document that together cover every question some dream
    lifts by more than ``reward_margin`` on that question's own score (a greedy set cover; it pays
    for teaching more of the document's facts, where the other two pay for one answerable
    question as much as for seven). Measured
    noise floor (SmolLM2-135M-Instruct, 12 training people, document-only adapters from 4 seeds):
    a document's gold log-prob per token varies by 0.03-0.18 nats (``objective = "sft"``) or
    0.02-0.14 (``"distill"``) with the adapter's seed alone, so with ``"gold_log_prob"`` against
    ``"document"`` a margin of 0.1-0.15 keeps most seed luck from being rewarded. ReST-EM: ``rounds`` (R) rounds, each
    ending with ``generator_epochs`` epochs of SFT (batches of ``generator_batch_size``, at
    ``generator_learning_rate``, at most ``generator_steps`` steps) of the generator's own expert on
    (dream prompt, rewarded dream). Epochs, not a fixed step count: with one or two rewarded dreams
    a fixed 20 steps of 4 trained the generator 40 times on each and it collapsed onto them
    (measured: SEAL's reward 0.062 -> 0.031, generator loss 0.05). With ``generator_distinct_lines``
    (off by default) each rewarded dream is learnt without the lines an earlier rewarded dream of
    its document wrote (:func:`~sleepcore.sleep.dreamer.rewarded_pairs`): trained on every rewarded
    dream as written, the generator asks the same questions in all of a document's dreams
    (session 34). Measured (README, Dreaming, session 35; seeds 1, 4, 5, one run each): the
    sleep-time generator's kept question items were more often distinct (77 -> 149 of 216 -> 263
    on seed 1), but the Sleep row moved -2, -4 and +2 questions of 70: no gain, so it stays off.

    Sleep time: the generator is ``generator_path`` (a file ``Dreamer`` wrote; None: the untrained
    model, SEAL's round 0), loaded into a free slot of ``generator_level`` while it writes, on top of
    the ``writer``: ``"base"`` (the default: every memory expert off; writing is the base model's
    skill, or the trained generator's, and the document it writes about is in its prompt) or
    ``"model"`` (the model as it is: every active memory expert on, the one consolidation just
    trained included).
    Measured on SmolLM2-135M-Instruct (10 people after a 1-person sleep, seed 1, the question prompt,
    answers by span, Knowledge Seeding x8 first): written by the model after consolidation, the
    dreams held no answerable question in either sleep (0 question items; the base model's dreams:
    60 for the same documents), only statements, many invented ("The place where X was born is:
    Zaibiwick"); with the new expert off but the first sleep's expert on, still none in the second
    sleep (5 in the first, where that is the base model); with the base model writing, Sleep's
    "contains" rose on all three seeds (README, Dreaming, session 20). The kept dreams train the
    ``expert``: ``"consolidated"`` (the sleep's expert, after consolidation) or
    ``"new"`` (a new expert of the same level), for at most ``steps`` steps of ``batch_size``
    examples of ``optimizer``, stopping at ``token_budget`` trained tokens or after ``max_epochs``
    passes over the items, whichever comes first, when set. ``objective``:
    ``"sft"`` (next-token training on the dreams' lines and the document) or ``"distill"`` (forward
    KL to the sleep's teacher, which reads the document, at every token of the same lines: a fact
    the dream invents is corrected by the teacher's distribution instead of learnt as written).
    Measured on SmolLM2-135M-Instruct (10 people, documents only, after Knowledge Seeding): the
    gold answers' log-prob per token with ``"distill"`` against ``"sft"``: -3.29 vs -3.91 (seed 0)
    and -3.53 vs -3.78 (seed 1) at x8, -4.01 vs -5.21 at x4 (temperature 0.3), with less drift
    each time; greedy answers at most three questions apart. So ``"distill"`` is the default;
    ``"sft"`` is SEAL's (the suite's ``seal`` row uses it). ``hard_label_weight`` adds that times the
    cross-entropy on the items' own tokens to the distillation (as
    :class:`~sleepcore.sleep.config.KnowledgeSeedingConfig`'s): the teacher, asked a question,
    starts its answer with "The ..." whatever the answer given, so a short answer (``answers =
    "span"``) distilled alone is learnt in the teacher's sentence form. ``hard_label_items``:
    ``"all"`` the items, or ``"fixed"`` only the questions' answers taken from the document
    (``answers`` "sentence" or "span"), so the dreams' statements and the document stay distilled.
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
        boolean("answers_restate_question", self.answers_restate_question)
        boolean("statement_lines", self.statement_lines)
        boolean("rehearse_consolidation", self.rehearse_consolidation)
        boolean("balance_answers", self.balance_answers)
        if self.balance_answers and self.answers not in DOCUMENT_ANSWERS:
            raise ValueError(f"balance_answers needs answers in {DOCUMENT_ANSWERS} (it groups the questions by the "
                             f"document's answer to them), got answers = {self.answers!r}")
        boolean("distinct_questions", self.distinct_questions)
        boolean("generator_distinct_lines", self.generator_distinct_lines)
        if self.distinct_questions and self.answers == "dream":
            raise ValueError("distinct_questions acts on the questions a dream asks, so it needs answers other than "
                             "'dream' (a dream learnt as written asks none)")
        boolean("repair_names", self.repair_names)
        if self.repair_names and self.answers == "dream":
            raise ValueError("repair_names corrects the questions a dream asks, so it needs answers other than "
                             "'dream' (a dream learnt as written asks none)")
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
