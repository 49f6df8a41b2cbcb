"""Replay prompts built from the wake buffer (METHOD.md §3: no external data during sleep).

A :class:`ReplayPrompt` is the same request seen by the two selves: the teacher's prompt holds
the knowledge to consolidate (the wake document in context, for the in-context teacher), the
student's prompt does not. Builders:

* ``continuation``: a document's first sentences; the teacher, having read the whole document,
  continues it.
* ``self_question``: the teacher writes a question about the document (sampled through the
  rollout engine); the replay prompt asks it, closed-book for the student.
* ``wake_questions``: the questions asked about the document while awake (``Sleeper.wake``'s
  ``questions``), replayed the same way.
* ``entity_questions``: self-study in the manner of Cartridges, without relying on the model to
  write good questions: for each named entity of a document (a capitalised phrase that does not
  merely open a sentence), "What do you know about <entity>?"; the teacher answers with the
  document in context, the student learns the answer without it. Every sentence naming such an
  entity is reached by some prompt, which is what replay coverage counts.
* ``sentence_questions``: self-study sentence by sentence: the teacher, shown one sentence of a
  document after three worked examples (:data:`SENTENCE_QUESTION_EXAMPLES`, about no document),
  writes a question that the sentence answers; a question is kept when it names one of the
  sentence's named entities (one about nothing in the sentence teaches nothing). The teacher then
  answers it with the whole document in context, or with that sentence alone
  (``KnowledgeSeedingConfig.sentence_context``); the student learns the answer without it. With
  ``KnowledgeSeedingConfig.sentence_answers = "sentence"`` the answer is the sentence itself, as
  the document says it (the teacher's distribution is taken on it): right whatever the question;
  with ``"span"`` it is the part of the sentence the question does not say ("Tarvik College").
  Coverage counts each sentence with a kept question. Measured on SmolLM2-135M-Instruct: asked
  zero-shot ("Write one question that the sentence above answers") it wrote questions about
  nothing in the sentence ("What is the base of the femur?"); with the examples most questions
  name the sentence's person, company or place ("Who attended University of Vubaron?").
* ``wake_paraphrases`` (:mod:`sleepcore.sleep.paraphrases`): each wake question asked again in
  the teacher's own words (several phrasings of one fact are what makes a stored fact answerable
  to a new phrasing: Physics of Language Models 3.1). The teacher, after three worked examples
  (:data:`~sleepcore.sleep.paraphrases.PARAPHRASE_EXAMPLES`, about no document), rewrites the
  question; a rewrite is kept when it is a question, differs from the original and every rewrite
  kept so far, and names every named entity of the original (so that it still asks about the same
  person; SmolLM2-135M-Instruct misspells invented names in some samples and drifts to another
  subject in others). The teacher answers it with the document in context, the student learns the
  answer without it.
* ``rehearsal``: student prompts that earlier sleeps replayed (``WakeBuffer.earlier``: texts, no
  answers), asked of both selves without any document. The teacher (the smaller self) answers
  from the weights that earlier sleeps left, so the new expert is trained to keep those answers
  instead of overwriting them with this sleep's facts (retention).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from sleepcore.lm import chat_turn, encode, qa_prompt
from sleepcore.sleep.extractive import (answer_span, candidate_sentences, confirms_answer, document_subject,
                                        named_entities, names_entity, relation_words, split_sentences)
from sleepcore.sleep.sentence_reader import SentenceReader
from sleepcore.validation import choice

QUESTION_REQUEST = "Write one short question about a fact in the text above."
#: The few-shot request of ``sentence_questions`` (generic examples; ``{sentence}`` is filled in).
SENTENCE_QUESTION_EXAMPLES = (
    "Sentence: Marie Curie was born in Warsaw in 1867.\nQuestion: Where was Marie Curie born?\n\n"
    "Sentence: The Eiffel Tower was designed by the company of Gustave Eiffel.\n"
    "Question: Whose company designed the Eiffel Tower?\n\n"
    "Sentence: Tom's favourite food is lasagne.\nQuestion: What is Tom's favourite food?\n\n"
    "Sentence: {sentence}\nQuestion:")
ENTITY_REQUEST = "What do you know about {entity}?"
#: What the teacher reads before a ``sentence_questions`` prompt: the whole document, or only the
#: sentence the question was written about.
SENTENCE_CONTEXTS = ("document", "sentence")
#: The answer a ``sentence_questions`` prompt is trained on: the teacher's samples, or the sentence
#: the question was written about, as the document says it.
SENTENCE_ANSWERS = ("teacher", "sentence", "span")
#: Which replay items ``hard_label_weight`` adds cross-entropy on: every off-policy item, or only
#: those whose response is fixed (an answer taken from the document, ``ReplaySample.fixed``).
HARD_LABEL_ITEMS = ("all", "fixed")


@dataclass(frozen=True)
class ReplayPrompt:
    """``student`` and ``teacher`` prompt texts; ``document`` is the wake document it came from and
    ``sentence`` the index of the sentence it asks about, where the builder knows it. ``response``:
    the answer the student learns when it is fixed (the document's own sentence,
    ``KnowledgeSeedingConfig.sentence_answers = "sentence"``; the teacher's distribution is taken
    on it), None when the teacher samples it. ``question``: the written question alone, where the
    builder wrote one about a sentence (``sentence_questions``)."""

    student: str
    teacher: str
    document: int  # -1: none (rehearsal)
    builder: str
    sentence: int | None = None
    response: str | None = None
    question: str | None = None


def with_context(document: str, prompt: str) -> str:
    return f"{document}\n\n{prompt}"


def after_context(context_ids: list[int], prompt_ids: list[int], bos_id: int | None) -> list[int]:
    """Token ids of a prompt read after a context (``encode(with_context(document, ""))``): the
    context's ids, then the prompt's, without the prompt's leading BOS when the context opens with
    that BOS too (one BOS per sequence). A tokenizer whose BOS is also its chat template's opening
    token (SmolLM2: ``<|im_start|>``) adds none to plain text, so a chat prompt keeps it."""
    doubled = bos_id is not None and context_ids[:1] == [bos_id] and prompt_ids[:1] == [bos_id]
    return context_ids + (prompt_ids[1:] if doubled else prompt_ids)


def document_reader(tokenizer, document: str, questions: dict | None = None):
    """``read(prompt_ids) -> ids``: what the teacher reads in place of a student's prompt, having read
    ``document``. A prompt among ``questions`` (``{tuple(student prompt ids): teacher prompt ids}``:
    closed-book questions whose teacher prompt holds the document in the question's own turn, as
    :func:`~sleepcore.lm.qa_prompt` with a context writes it) reads as its own teacher prompt; any
    other prompt reads after the document (:func:`after_context`, the document encoded once).
    Measured on SmolLM2-135M-Instruct (78 self-written questions about 10 passages): with the
    passage inside the question's turn the teacher's greedy answer names a fact of the person for
    56% of them, with the passage before the chat prompt for 23%."""
    context, bos = encode(tokenizer, with_context(document, "")), getattr(tokenizer, "bos_token_id", None)
    questions = questions or {}

    def read(prompt_ids: list[int]) -> list[int]:
        own = questions.get(tuple(prompt_ids))
        return list(own) if own is not None else after_context(context, prompt_ids, bos)
    return read


def continuation_prompts(documents: list[str], rng: random.Random, per_document: int) -> list[ReplayPrompt]:
    prompts = []
    for index, document in enumerate(documents):
        sentences = split_sentences(document)
        for _ in range(per_document):
            cut = rng.randint(1, max(1, len(sentences) - 1))
            prefix = " ".join(sentences[:cut])
            prompts.append(ReplayPrompt(prefix, with_context(document, prefix), index, "continuation"))
    return prompts


def question_requests(documents: list[str], tokenizer=None) -> list[str]:
    """Teacher prompts asking for a question about each document (for ``self_question``)."""
    requests = []
    for document in documents:
        content = with_context(document, QUESTION_REQUEST)
        chat = chat_turn(tokenizer, content)
        requests.append(chat if chat is not None else content + "\nQuestion:")
    return requests


def self_question_prompts(documents: list[str], questions: list[list[str]], tokenizer=None, *,
                          builder: str = "self_question") -> list[ReplayPrompt]:
    """Replay prompts from questions about the documents (``questions[i]``: about document i; the
    first line of each), asked closed-book of the student and after the document of the teacher."""
    prompts = []
    for index, (document, asked) in enumerate(zip(documents, questions)):
        for question in asked:
            question = first_line(question)
            if len(question) < 8:  # an empty or broken sample is no question
                continue
            prompts.append(ReplayPrompt(qa_prompt(tokenizer, question), qa_prompt(tokenizer, question, document),
                                        index, builder))
    return prompts


def rehearsal_prompts(earlier: list[str], count: int, rng: random.Random) -> list[ReplayPrompt]:
    """``count`` (at most all) of the earlier sleeps' student prompts, drawn without replacement;
    the teacher sees the same text as the student (no document: it answers from its weights)."""
    return [ReplayPrompt(text, text, -1, "rehearsal") for text in rng.sample(earlier, min(count, len(earlier)))]


#: Where the user's words go in :func:`instruction_opening` (a character pair no request holds).
REQUEST_MARKER = "\u2063request\u2063"
#: What the teacher writes for ``self_instructions``: user requests, short-answer questions in the
#: format of the sleep's own questions (:func:`~sleepcore.lm.qa_prompt`), or such questions that
#: open with the first words of the sleep's own questions (:func:`question_openings`).
INSTRUCTION_KINDS = ("requests", "questions", "openings")


def instruction_opening(tokenizer, kind: str = "requests") -> str:
    """The text that opens a user's turn, so that the teacher writes the request itself (Magpie's
    idea: an instruction-tuned model asked nothing writes what users ask it): the chat template's
    prompt up to where the user's words go (``"questions"`` and ``"openings"``: the short-answer
    question format up to its question), or ``"Question:"`` without a template."""
    choice("kind", kind, INSTRUCTION_KINDS)
    opened = qa_prompt(tokenizer, REQUEST_MARKER) if kind != "requests" else chat_turn(tokenizer, REQUEST_MARKER)
    return opened.split(REQUEST_MARKER)[0].rstrip(" ") if opened is not None else "Question:"


def question_openings(tokenizer, prompts: list[ReplayPrompt], words: int = 2) -> list[str]:
    """The distinct first ``words`` words ("Where was", "What is") of the questions that
    ``prompts`` ask in the short-answer format (:func:`~sleepcore.lm.qa_prompt`; other prompts are
    skipped), most frequent first. The ``"openings"`` kind of ``self_instructions`` has the teacher
    continue each, so that its generic questions have the forms of the sleep's own questions about
    subjects of its own choosing: the form of a question alone should not call up the documents."""
    head, _, tail = qa_prompt(tokenizer, REQUEST_MARKER).partition(REQUEST_MARKER)
    counts: Counter = Counter()
    for prompt in prompts:
        text = prompt.student
        if text.startswith(head) and text.endswith(tail):
            question = text[len(head):len(text) - len(tail)].split()
            if len(question) > words:
                counts[" ".join(question[:words])] += 1
    return [opening for opening, _ in counts.most_common()]


def self_instruction_prompts(texts: list[str], tokenizer, count: int, kind: str = "requests") -> list[ReplayPrompt]:
    """The first ``count`` distinct requests among the teacher's ``texts`` written after
    :func:`instruction_opening` (at least 3 words), each asked as it was written, the teacher's
    words in the user's place (``"Question: ...\\nAnswer:"`` without a template). A request is cut
    at its first blank line, or its first line without a chat template; a question (``kind``
    ``"questions"`` or ``"openings"``, whose texts start with the opening the teacher continued) at
    its first line and its first question mark, and dropped without one. The
    teacher answers them from its weights, like the student: generic rehearsal that keeps the new
    expert from changing answers that have nothing to do with the documents."""
    choice("kind", kind, INSTRUCTION_KINDS)
    chat = bool(getattr(tokenizer, "chat_template", None))  # as chat_turn decides
    prompts, seen = [], set()
    for text in texts:
        request = text.split("\n\n")[0].strip() if chat and kind == "requests" else first_line(text)
        if kind != "requests":
            request = request[:request.index("?") + 1] if "?" in request else ""
        key = " ".join(request.lower().split())
        if len(request.split()) < 3 or key in seen:
            continue
        seen.add(key)
        turn = (qa_prompt(tokenizer, request) if kind != "requests"
                else chat_turn(tokenizer, request) or f"Question: {request}\nAnswer:")
        prompts.append(ReplayPrompt(turn, turn, -1, "self_instructions"))
        if len(prompts) == count:
            break
    return prompts


def sentence_question_requests(documents: list[str], *, context: str = "sentence") -> list[tuple[int, int, str]]:
    """``(document, sentence, request)`` for every sentence of every document (``sentence_questions``):
    the worked examples then the sentence (``context="sentence"``), or the whole document first
    (``"document"``: "Passage: <document>", then the same request), so that the writer knows whom
    a sentence is about and what the rest of the document says
    (``KnowledgeSeedingConfig.question_writer_context``)."""
    choice("context", context, SENTENCE_CONTEXTS)
    return [(index, position, (f"Passage: {document}\n\n" if context == "document" else "")
             + SENTENCE_QUESTION_EXAMPLES.format(sentence=sentence))
            for index, document in enumerate(documents) for position, sentence in enumerate(split_sentences(document))]


def sentence_question_prompts(documents: list[str], requests: list[tuple[int, int, str]], asked: list[list[str]],
                              tokenizer=None, *, context: str = "document",
                              answers: str = "teacher", name_subject: bool = False,
                              say_relation: bool = False) -> list[ReplayPrompt]:
    """Replay prompts from the questions written for the requests of :func:`sentence_question_requests`
    (``asked[i]``: the samples for request i): the first line of each, kept when it names a named
    entity of its sentence (or the sentence names none), and with ``name_subject`` also the
    document's subject (:func:`~sleepcore.sleep.extractive.document_subject`: a question about the
    person, not one that asks who owns a value), with ``say_relation`` also a question that says
    what it asks (a :func:`~sleepcore.sleep.extractive.relation_words` word: "Where was Ada born?",
    not "Who is Ada?", whose one answer would be learnt as the answer to every question about Ada),
    once per distinct question and document.
    The teacher reads the whole document before the question (``context="document"``) or only the
    sentence the question was written about (``"sentence"``). With ``answers="sentence"`` the
    prompt's ``response`` is that sentence (the teacher then only scores it), with ``"span"`` the
    words of it that answer the question (:func:`~sleepcore.sleep.extractive.answer_span`; a
    question it says everything of is dropped); with ``"teacher"`` the teacher samples the answer."""
    choice("context", context, SENTENCE_CONTEXTS)
    choice("answers", answers, SENTENCE_ANSWERS)
    prompts, seen = [], set()
    subjects = [document_subject(document) for document in documents] if name_subject else [None] * len(documents)
    for (index, position, _), questions in zip(requests, asked):
        sentence = split_sentences(documents[index])[position]
        entities, subject = named_entities(sentence), subjects[index]
        read = documents[index] if context == "document" else sentence
        for question in questions:
            question = first_line(question)
            if len(question) < 8 or (index, question) in seen:
                continue
            if entities and not any(entity in question for entity in entities):
                continue
            if subject is not None and not names_entity(question, [subject]):
                continue
            if say_relation and not relation_words(question):
                continue
            response = answer_span(question, sentence) if answers == "span" else (
                sentence if answers == "sentence" else None)
            if answers == "span" and response is None:
                continue
            seen.add((index, question))
            prompts.append(ReplayPrompt(qa_prompt(tokenizer, question), qa_prompt(tokenizer, question, read),
                                        index, "sentence_questions", position, response, question))
    return prompts


def round_trip_requests(documents: list[str], prompts: list[ReplayPrompt], tokenizer=None) -> list[str]:
    """For each prompt of :func:`sentence_question_prompts`: its question after the whole document
    (what a reader of the document is asked in the round trip of :func:`round_trip_confirmed`)."""
    return [qa_prompt(tokenizer, prompt.question, documents[prompt.document]) for prompt in prompts]


def round_trip_confirmed(documents: list[str], prompts: list[ReplayPrompt], answers: list[str]) -> list[ReplayPrompt]:
    """The prompts of :func:`sentence_question_prompts` whose reader's answer (``answers[i]``, to
    :func:`round_trip_requests`'s request i) gives the answer of the sentence the question was
    written about (:func:`~sleepcore.sleep.extractive.confirms_answer`)."""
    if len(answers) != len(prompts):
        raise ValueError(f"answers: expected one per prompt ({len(prompts)}), got {len(answers)}")
    return [prompt for prompt, answer in zip(prompts, answers)
            if confirms_answer(answer, prompt.question, split_sentences(documents[prompt.document])[prompt.sentence])]


def reader_confirmed(documents: list[str], prompts: list[ReplayPrompt], reader: SentenceReader) -> list[ReplayPrompt]:
    """The prompts of :func:`sentence_question_prompts` whose question ``reader`` answers from the
    sentence it was written about: among the document's
    :func:`~sleepcore.sleep.extractive.candidate_sentences` for the question (naming its entity,
    holding an answer of the kind it asks), the reader's choice is that sentence. A question whose
    sentence is no candidate (a "when" question written about a sentence without a date) is
    dropped, and one whose sentence is the only candidate is kept without reading."""
    candidates = [candidate_sentences(prompt.question, documents[prompt.document]) for prompt in prompts]
    written = [split_sentences(documents[prompt.document])[prompt.sentence] for prompt in prompts]
    ask = [index for index, (own, sentence) in enumerate(zip(candidates, written)) if len(own) > 1 and sentence in own]
    choices = dict(zip(ask, reader([(prompts[index].question, candidates[index]) for index in ask]) if ask else []))
    return [prompt for index, (prompt, own, sentence) in enumerate(zip(prompts, candidates, written))
            if sentence in own and (len(own) == 1 or own[choices[index]] == sentence)]


def first_line(text: str) -> str:
    """A sampled text's first line, without surrounding whitespace."""
    return text.strip().split("\n")[0].strip()


def entity_prompts(documents: list[str], tokenizer=None, *, per_document: int) -> list[ReplayPrompt]:
    """Up to ``per_document`` "What do you know about <entity>?" prompts per document, one per named
    entity in order of appearance: a chat turn for the student, the document first for the teacher."""
    prompts = []
    for index, document in enumerate(documents):
        for entity in named_entities(document)[:per_document]:
            request = ENTITY_REQUEST.format(entity=entity)
            student, teacher = chat_turn(tokenizer, request), chat_turn(tokenizer, with_context(document, request))
            if student is None:
                student, teacher = f"Question: {request}\nAnswer:", f"{with_context(document, request)}\nAnswer:"
            prompts.append(ReplayPrompt(student, teacher, index, "entity_questions"))
    return prompts


def replay_coverage(documents: list[str], prompts: list[ReplayPrompt]) -> float:
    """Fraction of the documents' sentences that some prompt reaches: the sentence right after a
    continuation prompt's prefix, every sentence naming the entity of an entity prompt, and the
    sentence a prompt was written about (``sentence_questions``). Prompts of other builders are not
    counted (their reach is not known)."""
    reached, total = 0, 0
    for index, document in enumerate(documents):
        sentences = split_sentences(document)
        mine = [p for p in prompts if p.document == index]
        prefixes = [p.student for p in mine if p.builder == "continuation"]
        asked = [p.student for p in mine if p.builder == "entity_questions"]
        for position, sentence in enumerate(sentences):
            after_prefix = any(prefix == " ".join(sentences[:position]) for prefix in prefixes) and position > 0
            named = any(entity in sentence and ENTITY_REQUEST.format(entity=entity) in question
                        for question in asked for entity in named_entities(sentence))
            about = any(p.sentence == position for p in mine)
            reached += after_prefix or named or about
        total += len(sentences)
    return reached / max(total, 1)
