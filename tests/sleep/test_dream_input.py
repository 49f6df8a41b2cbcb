"""Dreaming (issue 12) on tiny models: the config and the meta-training tasks refuse bad input by
field; a dream's lines, its questions, and the teacher's answers to them after reading the document."""

from __future__ import annotations

import contextlib

import pytest

from sleepcore.configuration import from_dict
from sleepcore.lm import as_examples, encode, end_of_turn, qa_prompt
from sleepcore.lm.answers import answer_ids
from sleepcore.rollout import SamplingParams
from sleepcore.sleep.config import SleepConfig
from sleepcore.sleep.dream_config import DreamingConfig
from sleepcore.sleep.dream_tasks import DreamTask, check_tasks
from sleepcore.sleep.dreams import (Dream, answered_examples, asked_questions, dream_examples, dream_lines,
                                    dream_questions, with_answers_joined)
from sleepcore.sleep.extractive import answer_span, restates_question
from sleepcore.sleep.prompts import (after_context, document_reader, named_entities, names_entity, split_sentences,
                                     with_context)

from _dreamers import tiny_dreaming, question_dreams
from _sleepers import DATASET


@pytest.mark.parametrize("options, error, field", [
    (dict(dreams_per_document=3, top_k=2, random_kept=2), ValueError, "top_k + random_kept"),
    (dict(prompts=("Summarise this.",)), ValueError, "prompts[0]"),
    (dict(prompts=()), ValueError, "prompts"),
    (dict(prompts="{document}"), TypeError, "prompts"),
    (dict(dreams_per_document="4"), TypeError, "dreams_per_document"),
    (dict(top_k=0), ValueError, "top_k"),
    (dict(noise=1), TypeError, "noise"),
    (dict(noise_scale=0.0), ValueError, "noise_scale"),
    (dict(selection="entropy"), ValueError, "selection"),
    (dict(reward="always"), ValueError, "reward"),
    (dict(reward_score="f1"), ValueError, "reward_score"),
    (dict(reward_baseline="sft"), ValueError, "reward_baseline"),
    (dict(reward_margin=-0.1), ValueError, "reward_margin"),
    (dict(expert="old"), ValueError, "expert"),
    (dict(objective="cross_entropy"), ValueError, "objective"),
    (dict(answers="model"), ValueError, "answers"),
    (dict(answers="teacher", objective="sft"), ValueError, "answers"),
    (dict(sentence_finder="model"), ValueError, "sentence_finder"),
    (dict(hard_label_weight=-1.0), ValueError, "hard_label_weight"),
    (dict(hard_label_weight=1.0, objective="sft"), ValueError, "hard_label_weight"),
    (dict(hard_label_items="answers"), ValueError, "hard_label_items"),
    (dict(answer_temperature=-0.5), ValueError, "answer_temperature"),
    (dict(answer_max_tokens=0), ValueError, "answer_max_tokens"),
    (dict(questions_name_entity="yes"), TypeError, "questions_name_entity"),
    (dict(answers_restate_question=1), TypeError, "answers_restate_question"),
    (dict(statement_lines="no"), TypeError, "statement_lines"),
    (dict(writer="generator"), ValueError, "writer"),
    (dict(max_epochs=0), ValueError, "max_epochs"),
    (dict(min_questions=-1), ValueError, "min_questions"),
    (dict(rehearse_consolidation="yes"), TypeError, "rehearse_consolidation"),
    (dict(repair_names="yes", answers="span"), TypeError, "repair_names"),
    (dict(repair_names=True), ValueError, "repair_names"),
    (dict(rehearse_earlier_dreams=-0.5, answers="span"), ValueError, "rehearse_earlier_dreams"),
    (dict(rehearse_earlier_dreams="all", answers="span"), TypeError, "rehearse_earlier_dreams"),
    (dict(rehearse_earlier_dreams=0.5), ValueError, "rehearse_earlier_dreams"),  # answers = "dream"
    (dict(earlier_dreams_capacity=0), ValueError, "earlier_dreams_capacity"),
    (dict(rehearse_earlier_seeding="yes", rehearse_earlier_dreams=0.5, answers="span"), TypeError,
     "rehearse_earlier_seeding"),
    (dict(rehearse_earlier_seeding=True, answers="span"), ValueError, "rehearse_earlier_seeding"),  # no share
    (dict(rehearse_draw="fact", rehearse_earlier_dreams=0.5, answers="span"), ValueError, "rehearse_draw"),
    (dict(rehearse_draw="answers", answers="span"), ValueError, "rehearse_draw"),  # no share
    (dict(balance_answers=True), ValueError, "balance_answers"),  # answers = "dream"
    (dict(balance_answers="yes", answers="span"), TypeError, "balance_answers"),
    (dict(distinct_questions=True), ValueError, "distinct_questions"),  # answers = "dream"
    (dict(questions_name_subject=True), ValueError, "questions_name_subject"),  # answers = "dream"
    (dict(questions_name_subject="yes", answers="span"), TypeError, "questions_name_subject"),
    (dict(distinct_questions=1, answers="span"), TypeError, "distinct_questions"),
    (dict(generator_distinct_lines="yes"), TypeError, "generator_distinct_lines"),
    (dict(question_rewrites=-1, answers="span"), ValueError, "question_rewrites"),
    (dict(question_rewrites=1.5, answers="span"), TypeError, "question_rewrites"),
    (dict(question_rewrites=2), ValueError, "question_rewrites"),  # answers = "dream"
    (dict(question_rewrites=2, answers="teacher", objective="distill"), ValueError, "question_rewrites"),
    (dict(rounds=0), ValueError, "rounds"),
    (dict(inner_learning_rate=-1.0), ValueError, "inner_learning_rate"),
    (dict(generator_path=3), TypeError, "generator_path"),
])
def test_bad_config_raises_naming_the_field(options, error, field):
    with pytest.raises(error, match=field.replace("[", r"\[").replace("+", r"\+")):
        DreamingConfig(**options)


def test_dreaming_is_a_sleep_stage_read_from_toml():
    config = from_dict(SleepConfig, {"stages": ["seeding", "dreaming"], "dreaming": {"top_k": 1, "selection": "cosine"}})
    assert config.stages == ("seeding", "dreaming") and config.dreaming.selection == "cosine"
    with pytest.raises(ValueError, match="dreaming.top_kk"):
        from_dict(SleepConfig, {"dreaming": {"top_kk": 1}})
    with pytest.raises(ValueError, match="dreaming.*top_k \\+ random_kept"):
        from_dict(SleepConfig, {"dreaming": {"dreams_per_document": 2, "top_k": 2, "random_kept": 1}})


def test_bad_tasks_raise_naming_the_field():
    with pytest.raises(ValueError, match="tasks must not be empty"):
        check_tasks([])
    with pytest.raises(ValueError, match=r"tasks\[1\].questions"):
        check_tasks([DreamTask("A.", (("Q?", "a"),)), DreamTask("B.", ())])
    with pytest.raises(ValueError, match=r"tasks\[0\].document"):
        check_tasks([DreamTask(" ", (("Q?", "a"),))])
    with pytest.raises(TypeError, match=r"tasks\[0\]"):
        check_tasks(["a document"])


def test_a_dream_is_split_into_lines_with_the_document_last(wrapped):
    _, tokenizer, _, _ = wrapped
    assert dream_lines("- Ada was born in Lyon.\n\n2. She moved.\n  \n* Done") == ["Ada was born in Lyon.", "She moved.",
                                                                                  "Done"]
    examples = dream_examples(tokenizer, "First line here.\nSecond line here.", "The document.")
    decoded = [tokenizer.decode(p + r) for p, r in examples]
    assert decoded == ["First line here.", "Second line here.", "The document."]


def test_a_question_and_the_line_that_answers_it_are_one_example(wrapped):
    _, tokenizer, _, _ = wrapped
    lines = dream_lines("1. Question: Where was Ada born?\nAnswer: In Lyon.\nQ: Who is Ada?\nA: A poet.\n"
                        "Where did she work?\nShe moved.\nAnswer: to Paris.\nWhat?\nWhy?\nanswer : no reason.")
    assert with_answers_joined(lines) == ["Question: Where was Ada born?\nAnswer: In Lyon.",
                                          "Q: Who is Ada?\nA: A poet.", "Where did she work?", "She moved.", "Answer: to Paris.", "What?",
                                          "Why?\nanswer : no reason."]
    assert with_answers_joined(["Ada was born in Lyon.", "She moved."]) == ["Ada was born in Lyon.", "She moved."]
    examples = dream_examples(tokenizer, "Question: Where was Ada born?\nAnswer: In Lyon.\nAda likes tea.")
    decoded = [tokenizer.decode(p + r) for p, r in examples]
    assert decoded == ["Question: Where was Ada born?\nAnswer: In Lyon.", "Ada likes tea."]

def test_a_dream_s_questions_are_its_lines_cut_after_the_question_mark():
    text = "1. Where was Ada born? In Lyon.\nAda likes tea.\n- Who? Ada.\nWhere was Ada born? Lyon again."
    assert dream_questions(text) == ["Where was Ada born?"]  # "Who?" is too short; the repeat is dropped
    assert dream_questions("No question here.") == []
    # with its document's entities, a question must name one of them (a word of it, case and whole word)
    text = "Where was Ada born?\nWhere did she work?\nWhat is Adams Street?\nWho is ada?\nWhere was Marie Curie born?"
    assert dream_questions(text, ["Ada Lovelace", "London"]) == ["Where was Ada born?"]
    assert dream_questions(text, []) == [] and len(dream_questions(text)) == 5


def test_a_dream_s_questions_answered_by_the_document_s_sentences(wrapped):
    _, tokenizer, _, engine = wrapped
    documents, person = DATASET.passages[:1], DATASET.people[0]
    config = tiny_dreaming(answers="sentence", statement_lines=True)
    examples, asked = answered_examples(engine, tokenizer, question_dreams(documents), documents, config,
                                        teacher=None, seed=5)  # the teacher is never called
    # the first sentence repeating "born" whose answer is a name: the question asks where, not when
    born = next(s for s in split_sentences(documents[0]) if "born" in s and not any(c.isdigit() for c in s))
    text = qa_prompt(tokenizer, f"Where was {person.name} born?")
    prompt = encode(tokenizer, text)
    assert examples[0][0][0] == (prompt, answer_ids(tokenizer, text, born) + end_of_turn(tokenizer))
    # "What does X do?" asks nothing a sentence repeats, "Which company employs X?" is said with "job": dropped
    assert examples[0][0][1:] == as_examples(tokenizer, [f"{person.name} likes tea."])
    assert examples[0][1] == as_examples(tokenizer, [f"{person.name} works hard."])
    assert tuple(prompt) in asked[0]  # the teacher prompts of the questions, for distillation
    short, _ = answered_examples(engine, tokenizer, question_dreams(documents), documents,
                                 tiny_dreaming(answers="span", statement_lines=True), teacher=None, seed=5)
    assert short[0][0][0] == (prompt, answer_ids(tokenizer, text, answer_span(f"Where was {person.name} born?", born))
                              + end_of_turn(tokenizer))
    assert short[0][0][1:] == examples[0][0][1:] and short[0][1] == examples[0][1]
    # without the statement lines (the default) only the answered questions are left
    bare, _ = answered_examples(engine, tokenizer, question_dreams(documents), documents,
                                tiny_dreaming(answers="span"), teacher=None, seed=5)
    assert bare[0][0] == short[0][0][:1] and bare[0][1] == []
    # a reader answers the questions the words cannot place ("What does X do?", "Which company employs X?")
    chosen = {}

    def reader(requests):
        chosen.update((question, candidates[-1]) for question, candidates in requests)
        return [len(candidates) - 1 for _, candidates in requests]
    read, _ = answered_examples(engine, tokenizer, question_dreams(documents), documents,
                                tiny_dreaming(answers="span"), teacher=None, seed=5, reader=reader)
    assert list(chosen) == [f"What does {person.name} do?", f"Which company employs {person.name}?"]

    def item(question):
        text = qa_prompt(tokenizer, question)
        return encode(tokenizer, text), answer_ids(tokenizer, text, answer_span(question, chosen[question])) + \
            end_of_turn(tokenizer)
    assert read[0][0] == bare[0][0] + [item(f"What does {person.name} do?")]
    assert read[0][1] == [item(f"Which company employs {person.name}?")]


def test_a_dream_s_misspelt_names_are_repaired_before_its_questions_are_answered(wrapped):
    _, tokenizer, _, engine = wrapped
    documents, person = DATASET.passages[:1], DATASET.people[0]
    first, last = person.name.split(" ", 1)
    misspelt = first[:-1] + ("x" if first[-1] != "x" else "y")  # one letter off: alike, not equal
    dreams = [[Dream(0, 0, [1], [1], f"Where was {misspelt} {last} born?\nWhere was {person.name} born?")]]
    plain, asked_plain = answered_examples(engine, tokenizer, dreams, documents, tiny_dreaming(answers="span"),
                                           teacher=None, seed=5)
    repaired, asked = answered_examples(engine, tokenizer, dreams, documents,
                                        tiny_dreaming(answers="span", repair_names=True), teacher=None, seed=5)
    right = tuple(encode(tokenizer, qa_prompt(tokenizer, f"Where was {person.name} born?")))
    assert len(plain[0][0]) == 2 and len(asked_plain[0]) == 2  # the misspelt question is learnt as it is
    assert list(asked[0]) == [right] and repaired[0][0] == plain[0][0][1:]  # repaired: one question, once


@pytest.mark.parametrize("name_subject", [False, True])
def test_questions_name_subject_keeps_the_questions_about_the_document_s_subject(wrapped, name_subject):
    tokenizer = wrapped[1]
    documents = ["Ada Quell was born in Lyon. Ada Quell works for Tarvik Mills. Tarvik Mills makes rope.",
                 "The river is long. It is wide."]  # no named entity: no subject
    text = ("Where was Ada Quell born?\nWhat is Tarvik Mills?\nWho works for Tarvik Mills?\n"
            "Where does Quell work?\nWhat is the river?")
    dreams = [[Dream(index, 0, [1], [1], text)] for index in range(len(documents))]
    config = tiny_dreaming(answers="span", questions_name_subject=name_subject)
    asked = asked_questions(tokenizer, dreams, documents, config)
    first, second = ([question for _, question in own[0]] for own in asked)
    about_ada = ["Where was Ada Quell born?", "Where does Quell work?"]
    assert first == (about_ada if name_subject else
                     ["Where was Ada Quell born?", "What is Tarvik Mills?", "Who works for Tarvik Mills?",
                      "Where does Quell work?"])
    assert second == []  # without a subject the entity filter still applies, and the document names none
    assert all(prompt == tuple(encode(tokenizer, qa_prompt(tokenizer, question))) for own in asked for prompt, question in own[0])

def test_a_question_names_an_entity_when_it_holds_a_word_of_it():
    assert names_entity("Where did Ilsa-Mae go?", ["Ilsa Varkonen"]) and names_entity("Is Varkonen here?", ["Ilsa Varkonen"])
    assert not names_entity("Where did Ilsabel go?", ["Ilsa Varkonen"]) and not names_entity("Who?", [])


@pytest.mark.parametrize("answers,questions_name_entity,restate", [("dream", True, False), ("teacher", True, False),
                                                                   ("teacher", False, False), ("teacher", True, True)])
def test_the_teacher_answers_a_dream_s_questions_after_reading_its_document(wrapped, answers, questions_name_entity,
                                                                            restate):
    model, tokenizer, memory, engine = wrapped
    documents = DATASET.passages[:2]
    dreams = question_dreams(documents)
    entered = []

    @contextlib.contextmanager
    def teacher():
        entered.append(True)
        yield

    config = tiny_dreaming(answers=answers, answer_max_tokens=6, questions_name_entity=questions_name_entity,
                           answers_restate_question=restate, statement_lines=True)
    examples, asked = answered_examples(engine, tokenizer, dreams, documents, config, teacher=teacher, seed=5)
    if answers == "dream":
        assert examples == [[dream_examples(tokenizer, dream.text) for dream in own] for own in dreams]
        assert asked == [{}, {}] and not entered
        return
    assert entered == [True]  # one engine call, under the teacher
    params = SamplingParams(n=1, temperature=config.answer_temperature, max_tokens=6, seed=5)
    dropped = 0
    for own, owned, questions, document in zip(dreams, examples, asked, documents):
        for dream, got in zip(own, owned):
            texts = dream_questions(dream.text, named_entities(document) if questions_name_entity else None)
            assert ("Where did she work?" in texts) is ("she" in dream.text and not questions_name_entity)  # no one
            prompts = [encode(tokenizer, qa_prompt(tokenizer, q)) for q in texts]
            teachers = [encode(tokenizer, qa_prompt(tokenizer, q, document)) for q in texts]  # the document in the turn
            assert all(questions[tuple(p)] == t for p, t in zip(prompts, teachers))
            alone = engine.generate(teachers, params, progress=False)  # a prompt's answer depends on its seed alone
            answered = [(p, list(o.completions[0].token_ids), q) for p, o, q in zip(prompts, alone, texts)]
            kept = [(p, r) for p, r, q in answered if len(r) >= 2 and (
                not restate or restates_question(q, tokenizer.decode(r, skip_special_tokens=True)))]
            dropped += sum(len(r) >= 2 for _, r, _ in answered) - len(kept)
            statements = [line for line in dream_lines(dream.text) if "?" not in line]
            assert got == kept + as_examples(tokenizer, statements) and len(got) >= len(statements) + (not restate)
    assert (dropped > 0) is restate  # a random model's answers repeat no "born", "employs", "does"


def test_the_teacher_reads_a_registered_question_as_its_own_prompt_and_the_rest_after_the_document(wrapped):
    _, tokenizer, _, _ = wrapped
    document, question = DATASET.passages[0], (5, 6, 7)
    read = document_reader(tokenizer, document, {question: [9, 9]})
    assert read(list(question)) == [9, 9]
    head = encode(tokenizer, with_context(document, ""))
    assert read([5, 6]) == after_context(head, [5, 6], tokenizer.bos_token_id)
    # one BOS per sequence: a prompt's BOS is dropped only after a context that opens with it (SmolLM2's
    # BOS is its chat template's <|im_start|>, which plain text does not get, so a chat prompt keeps it)
    assert after_context([1, 7, 8], [1, 5], 1) == [1, 7, 8, 5] and after_context([7, 8], [1, 5], 1) == [7, 8, 1, 5]
