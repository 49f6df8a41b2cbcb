"""The sentence that answers a question, found by its words and, where they find none, by the model
reading (``DreamingConfig.sentence_finder = "words_then_model"``)."""

from __future__ import annotations

import pytest
import torch

from sleepcore.lm import encode
from sleepcore.lm.answers import gold_logprobs
from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
from sleepcore.models import tiny_model
from sleepcore.sleep import sentence_reader
from sleepcore.sleep.extractive import answering_sentence, candidate_sentences
from sleepcore.sleep.sentence_reader import READING, answering_sentences, likeliest_sentences, model_reader
from _sleepers import DATASET

DOCUMENT = ("Ada Quell was born on 2 May 1950. Ada Quell has a career as a glassblower. "
            "Ada Quell has a passion for chess. Tarvik is where Ada Quell was born. Bo Dunn is a baker.")


class ChoosesLast:
    """A fake reader: picks the last candidate and records what it was asked."""

    def __init__(self):
        self.asked = []

    def __call__(self, requests):
        self.asked += requests
        return [len(candidates) - 1 for _, candidates in requests]


def test_the_words_answer_first_and_the_reader_only_where_they_find_none():
    questions = ["Where was Ada Quell born?", "What is Ada Quell's occupation?", "What does Cy Oot do?"]
    reader = ChoosesLast()
    found = answering_sentences(questions, [DOCUMENT] * 3, reader)
    assert found[0] == answering_sentence(questions[0], DOCUMENT) == "Tarvik is where Ada Quell was born."
    # the words find no sentence saying "occupation": the reader chooses among Ada's candidates
    assert answering_sentence(questions[1], DOCUMENT) is None
    assert reader.asked == [(questions[1], candidate_sentences(questions[1], DOCUMENT))]
    assert found[1] == candidate_sentences(questions[1], DOCUMENT)[-1]
    assert found[2] is None  # no sentence names Cy Oot: nothing to read
    assert answering_sentences(questions, [DOCUMENT] * 3) == [found[0], None, None]  # the words alone


def test_candidates_name_the_question_s_entity_and_hold_an_answer_of_its_kind():
    assert candidate_sentences("Where was Ada Quell born?", DOCUMENT) == ["Tarvik is where Ada Quell was born."]
    assert candidate_sentences("When was Ada Quell born?", DOCUMENT) == ["Ada Quell was born on 2 May 1950."]
    assert "Bo Dunn is a baker." not in candidate_sentences("What does Ada Quell do?", DOCUMENT)
    assert len(candidate_sentences("What does Ada Quell do?", DOCUMENT)) == 4


def test_bad_input_raises_naming_the_argument():
    with pytest.raises(ValueError, match="questions and documents"):
        answering_sentences(["Where was Ada born?"], [])
    model, tokenizer = tiny_model(DATASET.passages, seed=0)
    with pytest.raises(ValueError, match=r"requests\[1\]"):
        likeliest_sentences(model, tokenizer, [("Q?", ["A."]), ("Where?", [])])


def test_the_model_chooses_the_sentence_under_which_the_question_is_likeliest(monkeypatch):
    model, tokenizer = tiny_model(DATASET.passages, seed=0)
    requests = [("What is Ada Quell's occupation?", candidate_sentences("What is Ada Quell's occupation?", DOCUMENT)),
                ("Where was Ada Quell born?", ["Tarvik is where Ada Quell was born."]),
                ("What does Ada Quell like?", ["Ada Quell has a passion for chess.",
                                               "Ada Quell has a career as a glassblower."])]
    choices = likeliest_sentences(model, tokenizer, requests)
    for (question, candidates), choice in zip(requests, choices):
        scores = [sum(row) for row in gold_logprobs(model, tokenizer, [
            (encode(tokenizer, READING.format(sentence=sentence)), encode(tokenizer, " " + question))
            for sentence in candidates])]
        assert choice == max(range(len(scores)), key=scores.__getitem__)
    # one candidate is chosen without a forward
    monkeypatch.setattr(sentence_reader, "gold_logprobs", lambda *a, **k: pytest.fail("scored a single candidate"))
    assert likeliest_sentences(model, tokenizer, requests[1:2]) == [0]


def test_the_model_reader_reads_with_every_memory_expert_off():
    model, tokenizer = tiny_model(DATASET.passages, seed=0)
    memory = ContinuumMemory.wrap(model, MemoryConfig(levels=(LevelConfig(rank=4, slots=2),)))
    slot = memory.new_expert(0, seed=1)
    with torch.no_grad():
        for mlp in memory.layers.values():
            mlp.levels[0].B[slot].normal_(0, 5.0)  # an expert that changes the model's reading
    question = "What is Ada Quell's occupation?"
    requests = [(question, candidate_sentences(question, DOCUMENT))] * 2
    with memory.switched_off():
        base = likeliest_sentences(model, tokenizer, requests)
    assert model_reader(model, tokenizer, memory.switched_off)(requests) == base
    assert slot in memory.active_slots(0)  # on again after reading
