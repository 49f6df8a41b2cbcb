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
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from sleepcore.lm import chat_turn, qa_prompt

QUESTION_REQUEST = "Write one short question about a fact in the text above."


@dataclass(frozen=True)
class ReplayPrompt:
    """``student`` and ``teacher`` prompt texts; ``document`` is the wake document it came from."""

    student: str
    teacher: str
    document: int
    builder: str


def split_sentences(text: str) -> list[str]:
    return [part.strip() for part in re.split(r"(?<=[.!?])\s+", text.strip()) if part.strip()]


def with_context(document: str, prompt: str) -> str:
    return f"{document}\n\n{prompt}"


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
            question = question.strip().split("\n")[0].strip()
            if len(question) < 8:  # an empty or broken sample is no question
                continue
            prompts.append(ReplayPrompt(qa_prompt(tokenizer, question), qa_prompt(tokenizer, question, document),
                                        index, builder))
    return prompts
