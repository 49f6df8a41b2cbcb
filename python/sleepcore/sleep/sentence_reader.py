"""Which sentence of a document answers a question, found by the words first and by the model
when the words do not say (``DreamingConfig.sentence_finder = "words_then_model"``).

:func:`~sleepcore.sleep.extractive.answering_sentence` finds the sentence that repeats the
question's relation words: precise when it finds one, but a document that says "has a career as"
never answers "What is Ada's occupation?" by its words. Then the model reads: among the
document's :func:`~sleepcore.sleep.extractive.candidate_sentences` (naming the question's entity,
holding an answer of the kind it asks), the one under which the model finds the question likeliest,
``log p(question | "Sentence: <s>\\nA question this sentence answers:")`` summed over the question's
tokens (teacher-forced, no grad; one forward row per candidate, and none when one candidate is left).

Measured on SmolLM2-135M-Instruct, the base model reading (the 10 held-out people of the knowledge
suite's seeds 0/1/2, both phrasings of the 70 facts' evaluation questions, 140 per seed; a span
counts when it holds the gold value; README, Dreaming, session 22): the words alone give a right
span for 78 / 85 / 78 (the sentence they find is always the right one, but they find none for
55-62 questions: occupation, university and hobby, 2-6 right of 20 each, are worded otherwise in
the documents), the words then the model 124 / 128 / 121 (occupation 8-11 of 20, the rest 15-20).
The model alone over every sentence naming the entity gave 105 / 112 / 106 (worse than the words
where they find a sentence), and the reverse reading, ``log p(sentence | question) - log
p(sentence)``, 82 / 69 / 70 (``bench/extractive_answer_probe.py --sentence-finder``). In the
Sleep row of that session, the dreams' facts grew by 1-8 of 70 but its closed-book answers did not
(0.386 / 0.514 / 0.257 against 0.357 / 0.543 / 0.329), so the words alone stay the default.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from sleepcore.lm import encode, gold_logprobs
from sleepcore.sleep.extractive import answering_sentence, candidate_sentences

#: The reading prompt: the question is scored after it.
READING = "Sentence: {sentence}\nA question this sentence answers:"

#: ``reader(requests) -> choices``: for each ``(question, candidates)`` the index of the candidate that answers it.
SentenceReader = Callable[[list[tuple[str, list[str]]]], list[int]]


@torch.no_grad()
def likeliest_sentences(model, tokenizer, requests: list[tuple[str, list[str]]]) -> list[int]:
    """For each ``(question, candidates)`` (at least one candidate), the index of the candidate under
    which ``model`` finds the question likeliest (:data:`READING`); 0 without scoring when there is
    one. Raises ``ValueError`` for a request without candidates."""
    examples = []
    for index, (question, candidates) in enumerate(requests):
        if not candidates:
            raise ValueError(f"requests[{index}] has no candidate sentence for {question!r}")
        if len(candidates) > 1:
            asked = encode(tokenizer, " " + question.strip())
            examples += [(encode(tokenizer, READING.format(sentence=sentence)), asked) for sentence in candidates]
    scores = iter([sum(row) for row in gold_logprobs(model, tokenizer, examples)] if examples else [])
    choices = []
    for _, candidates in requests:
        own = [next(scores) for _ in candidates] if len(candidates) > 1 else [0.0]
        choices.append(max(range(len(own)), key=own.__getitem__))
    return choices


def model_reader(model, tokenizer, reading: Callable[[], AbstractContextManager]) -> SentenceReader:
    """A :data:`SentenceReader` by :func:`likeliest_sentences` of ``model`` inside ``reading()`` (e.g.
    ``memory.switched_off``: the base model reads; or a stage's teacher context)."""
    def read(requests: list[tuple[str, list[str]]]) -> list[int]:
        with reading():
            return likeliest_sentences(model, tokenizer, requests)
    return read


def reader_for(finder: str, model, tokenizer, reading: Callable[[], AbstractContextManager]) -> SentenceReader | None:
    """The reader a ``sentence_finder`` setting asks for: :func:`model_reader` for
    ``"words_then_model"``, None (the words alone) otherwise."""
    return model_reader(model, tokenizer, reading) if finder == "words_then_model" else None


def answering_sentences(questions: list[str], documents: list[str],
                        reader: SentenceReader | None = None) -> list[str | None]:
    """The sentence of ``documents[i]`` that answers ``questions[i]``: by its words
    (:func:`~sleepcore.sleep.extractive.answering_sentence`), else (with ``reader``) the reader's choice
    among its :func:`~sleepcore.sleep.extractive.candidate_sentences`; None when neither finds one."""
    if len(questions) != len(documents):
        raise ValueError(f"questions and documents must have the same length, got {len(questions)} and "
                         f"{len(documents)}")
    found = [answering_sentence(question, document) for question, document in zip(questions, documents)]
    if reader is None:
        return found
    pending = [(index, candidate_sentences(questions[index], documents[index]))
               for index, sentence in enumerate(found) if sentence is None]
    pending = [(index, candidates) for index, candidates in pending if candidates]
    if pending:
        choices = reader([(questions[index], candidates) for index, candidates in pending])
        for (index, candidates), choice in zip(pending, choices):
            found[index] = candidates[choice]
    return found

