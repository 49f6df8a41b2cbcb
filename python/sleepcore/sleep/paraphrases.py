"""Question rewrites: the ``wake_paraphrases`` replay builder (each wake question asked again in
the teacher's own words, :func:`paraphrase_prompts`) and the filter it shares with
``DreamingConfig.question_rewrites`` (:func:`kept_rewrites`: a rewrite is kept when it is a new
question naming every named entity of the original). The few-shot requests are generic: their
examples are about no document."""

from __future__ import annotations

import re

from sleepcore.lm import qa_prompt
from sleepcore.sleep.extractive import named_entities
from sleepcore.sleep.prompts import ReplayPrompt, first_line

#: The few-shot request of ``wake_paraphrases`` (generic examples; ``{question}`` is filled in).
PARAPHRASE_EXAMPLES = (
    "Question: Where was Marie Curie born?\nThe same question, asked differently: In which city was Marie Curie "
    "born?\n\nQuestion: Who designed the Eiffel Tower?\nThe same question, asked differently: The Eiffel Tower was "
    "designed by whom?\n\nQuestion: What is Tom's favourite food?\nThe same question, asked differently: Which "
    "food does Tom like best?\n\nQuestion: {question}\nThe same question, asked differently:")
#: The few-shot request of ``DreamingConfig.question_rewrites`` (``{question}`` is filled in). Unlike
#: ``PARAPHRASE_EXAMPLES`` its examples ask about no person's birth, work or study, so no rewrite is
#: copied from a phrasing that the biographies task's evaluation questions share.
QUESTION_REWRITE_EXAMPLES = (
    "Question: When did the Titanic sink?\nThe same question, asked differently: In what year did the Titanic go "
    "down?\n\nQuestion: Who painted the Mona Lisa?\nThe same question, asked differently: The Mona Lisa was "
    "painted by whom?\n\nQuestion: What does Tom keep in his garage?\nThe same question, asked differently: What "
    "is kept in Tom's garage?\n\nQuestion: {question}\nThe same question, asked differently:")


def paraphrase_requests(questions: list[list[str]]) -> list[tuple[int, str, str]]:
    """``(document, question, request)`` for every wake question (``questions[i]``: about document
    i), asking the teacher to rewrite it (``wake_paraphrases``)."""
    return [(index, question, PARAPHRASE_EXAMPLES.format(question=question.strip()))
            for index, asked in enumerate(questions) for question in asked]


def paraphrase_prompts(documents: list[str], requests: list[tuple[int, str, str]], rewritten: list[list[str]],
                       tokenizer=None) -> list[ReplayPrompt]:
    """Replay prompts from the rewrites of :func:`paraphrase_requests` (``rewritten[i]``: the samples
    for request i): each sample's first line up to its first question mark, kept when it is a new
    question (not the original, not a rewrite kept before, case and spacing ignored) that names
    every named entity of the original; the teacher reads the document before it."""
    prompts, seen = [], {}
    for (index, original, _), samples in zip(requests, rewritten):
        for question in kept_rewrites(original, samples, seen.setdefault(index, set())):
            prompts.append(ReplayPrompt(qa_prompt(tokenizer, question),
                                        qa_prompt(tokenizer, question, documents[index]), index, "wake_paraphrases"))
    return prompts


def kept_rewrites(original: str, samples: list[str], seen: set[str]) -> list[str]:
    """The sampled rewrites of question ``original`` worth asking: each sample's first line up to
    its first question mark, when it is 8 characters or longer, names every named entity of the
    original, and is new (neither the original nor in ``seen``, case, punctuation and spacing
    ignored). ``seen`` (normalised questions) is updated, so one set shared across the questions of
    a document keeps each rewrite once."""
    entities, kept = named_entities(original), []
    seen.add(_normalised(original))
    for sample in samples:
        question = first_line(sample)
        if "?" not in question:
            continue
        question = question[:question.index("?") + 1].strip()
        key = _normalised(question)
        if len(question) < 8 or key in seen or not all(entity in question for entity in entities):
            continue
        seen.add(key)
        kept.append(question)
    return kept


def _normalised(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())
