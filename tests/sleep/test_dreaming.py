"""Dreaming (issue 12) on tiny models: the config refuses bad input by field, selection keeps k + b
and its batched gradient scores equal per-dream separate gradients, noise is an engine step hook,
a Sleeper runs seeding then dreaming, and Dreamer.fit runs ReST-EM rounds, resumes to the same
result and writes its metrics."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random

import pytest
import torch

from sleepcore.configuration import from_dict
from sleepcore.lm import (as_examples, encode, end_of_turn, gold_logprobs, pad_id, qa_examples, qa_prompt,
                          response_hidden)
from sleepcore.lm.answers import answer_ids
from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
from sleepcore.memory.batched import batched_adapters
from sleepcore.models import tiny_model
from sleepcore.rollout import Engine, SamplingParams
from sleepcore.sleep.buffer import WakeBuffer
from sleepcore.sleep.config import SleepConfig
from sleepcore.sleep.dream_config import DreamingConfig
from sleepcore.sleep.dream_selection import dream_gradient_scores, keep, select_dreams
from sleepcore.sleep.dream_tasks import DreamTask, assign_rewards, check_tasks
from sleepcore.sleep.dreaming import DreamingStage, balanced_questions, distinct_questions, spread_by_answer
from sleepcore.sleep.dreamer import Dreamer
from sleepcore.sleep.dreams import (Dream, answered_examples, asked_questions, dream_examples, dream_lines,
                                    dream_questions, load_generator, save_generator, without_repeated_lines, write_dreams)
from sleepcore.sleep.extractive import answer_span, restates_question
from sleepcore.sleep.inner_loop import answer_with_adapters, gold_logprobs_with_adapters
from sleepcore.sleep.paraphrases import QUESTION_REWRITE_EXAMPLES
from sleepcore.sleep.prompts import (after_context, document_reader, named_entities, names_entity, split_sentences,
                                     with_context)
from sleepcore.sleep.replay import ReplaySample
from sleepcore.sleep.rest_em import rewarded_pairs
from sleepcore.sleep.sft import NextTokenStage
from sleepcore.sleep.stage import StageContext
from sleepcore.train import OptimizerConfig
from sleepcore.train.batched import BatchedRuntime
from _sleepers import DATASET, make_sleeper, seeding

FP32 = OptimizerConfig(compute_dtype="float32")


def tiny_dreaming(**options) -> DreamingConfig:
    values = dict(dreams_per_document=4, top_k=1, random_kept=1, max_new_tokens=16, inner_rank=4, inner_epochs=2,
                  inner_learning_rate=0.05, rounds=2, generator_steps=2, generator_batch_size=2, steps=3,
                  batch_size=4, min_questions=0, optimizer=FP32)  # a tiny model's dreams hold few questions
    return DreamingConfig(**{**values, **options})


@pytest.fixture
def wrapped():
    model, tokenizer = tiny_model(DATASET.passages + DATASET.company_passages, seed=0)
    torch.manual_seed(0)
    memory = ContinuumMemory.wrap(model, MemoryConfig(levels=(LevelConfig(rank=4, slots=2),)))
    return model, tokenizer, memory, Engine(model, tokenizer, kv_memory_bytes=32 << 20)


def tasks(count: int = 3) -> list[DreamTask]:
    return [DreamTask(passage, tuple((q.text, q.answer) for q in DATASET.questions_of(person)[:2]))
            for passage, person in zip(DATASET.passages[:count], DATASET.people)]


# ---------------------------------------------------------------------- config and input
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


QUESTION_DREAMS = ("Where was {name} born? In a city.\nWhat does {name} do?\n{name} likes tea.\nWhy?",
                   "{name} works hard.\nWhich company employs {name}? None.\nWhere did she work?")


def question_dreams(documents: list[str]) -> list[list[Dream]]:
    """Two dreams per document with questions about the document's own person in them (a random
    tiny model writes none)."""
    people = [next(person for person in DATASET.people if person.name in document) for document in documents]
    return [[Dream(index, k, [1], [1], text.format(name=person.name)) for k, text in enumerate(QUESTION_DREAMS)]
            for index, person in enumerate(people)]


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


# ---------------------------------------------------------------------- writing and selection
def test_noise_is_an_engine_step_hook_and_is_removed(wrapped):
    model, tokenizer, memory, engine = wrapped
    calls = []
    real = memory.resample_noise
    memory.resample_noise = lambda: calls.append(1) or real()
    documents = DATASET.passages[:2]
    noisy = write_dreams(engine, tokenizer, memory, documents, tiny_dreaming(noise_scale=200.0), seed=3)
    quiet = write_dreams(engine, tokenizer, memory, documents, tiny_dreaming(noise=False), seed=3)
    assert len(calls) > 2 and not engine._step_hooks
    assert all(mlp.noise is None for mlp in memory.layers.values())
    assert [len(own) for own in noisy] == [4, 4] and [d.prompt for d in noisy[0]] == [0, 0, 1, 2]
    assert [d.token_ids for own in noisy for d in own] != [d.token_ids for own in quiet for d in own]
    again = write_dreams(engine, tokenizer, memory, documents, tiny_dreaming(noise_scale=200.0), seed=3)
    assert [d.token_ids for own in again for d in own] == [d.token_ids for own in noisy for d in own]


def _dream_sets(tokenizer):
    rng = random.Random(0)
    words = " ".join(DATASET.passages).split()
    return [[as_examples(tokenizer, [" ".join(rng.sample(words, rng.randint(3, 9)))])[0]
             for _ in range(rng.randint(1, 3))] for _ in range(5)]


def test_batched_gradient_scores_equal_separate_per_dream_gradients(wrapped):
    model, tokenizer, memory, _ = wrapped
    dreams, pad = _dream_sets(tokenizer), pad_id(tokenizer)
    document = as_examples(tokenizer, [DATASET.passages[0]])
    batched = dream_gradient_scores(model, memory, dreams, pad, score="norm", rank=4, optimizer=FP32, seed=5)
    cosine = dream_gradient_scores(model, memory, dreams, pad, score="cosine", document=document, rank=4,
                                   optimizer=FP32, seed=5)

    def gradient(examples):
        with batched_adapters(memory, 1, rank=4, generator=torch.Generator().manual_seed(5)) as adapters:
            loss, _ = BatchedRuntime(model, adapters, FP32).next_token_loss([examples], pad)
            loss.backward()
            return torch.cat([p.grad.reshape(-1) for p in adapters.parameters()]).double()

    separate = [gradient(examples) for examples in dreams]
    norms = [g.norm().item() for g in separate]
    assert batched == pytest.approx(norms, rel=1e-5)
    assert sorted(range(5), key=lambda i: -batched[i]) == sorted(range(5), key=lambda i: -norms[i])
    reference = gradient(document)
    cosines = [(g @ reference / (g.norm() * reference.norm())).item() for g in separate]
    assert cosine == pytest.approx(cosines, rel=1e-5, abs=1e-7)


def test_selection_keeps_top_k_plus_b_random(wrapped):
    model, tokenizer, memory, _ = wrapped
    scores = [0.1, 0.9, 0.5, 0.9, 0.2, 0.3]
    kept = keep(scores, 2, 2, random.Random(0))
    assert kept[:2] == [1, 3] and len(set(kept)) == 4 and set(kept[2:]) <= {0, 2, 4, 5}
    with pytest.raises(ValueError, match="exceeds"):
        keep(scores, 5, 2, random.Random(0))
    dreams = _dream_sets(tokenizer)
    document = as_examples(tokenizer, [DATASET.passages[0]])
    for selection in ("norm", "cosine", "random"):
        config = tiny_dreaming(dreams_per_document=5, top_k=2, random_kept=1, selection=selection)
        chosen = select_dreams(model, memory, dreams, document, pad_id(tokenizer), config, seed=1)
        assert len(chosen.kept) == 3 and len(set(chosen.kept)) == 3 and len(chosen.scores) == 5
        if selection != "random":
            best = sorted(range(5), key=lambda i: (-chosen.scores[i], i))[:2]
            assert chosen.kept[:2] == best


# ---------------------------------------------------------------------- the stage in a sleep
@pytest.mark.parametrize("expert, objective", [("consolidated", "sft"), ("new", "sft"), ("consolidated", "distill")])
def test_a_sleeper_runs_seeding_then_dreaming(tmp_path, expert, objective):
    config = seeding(steps=2, batch_size=3, max_new_tokens=8, completions=2, samples_per_prompt=1)
    sleeper = make_sleeper(config, stages=("seeding", "dreaming"), output_dir=str(tmp_path), checkpoint_every=1,
                           dreaming=tiny_dreaming(expert=expert, objective=objective))
    sleeper.wake(DATASET.passages)
    summary = sleeper.sleep(progress=False)
    dreaming = summary["stages"]["dreaming"]
    assert dreaming["steps"] == 3 and dreaming["dreams"] == 12 and dreaming["kept"] == 6
    assert dreaming["examples"] >= 3 and dreaming["tokens"] > 0 and dreaming["samples"]
    slot = summary["slot"] if expert == "consolidated" else 1 - summary["slot"]
    assert dreaming["expert"] == [0, slot]
    assert sorted(sleeper.memory.active_slots(0)) == sorted({summary["slot"], slot})
    lines = (tmp_path / "sleep-000" / "dreaming" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["stage"] for line in lines] == ["dreaming"] * 3
    if objective == "distill":
        assert dreaming["dream_kl_before"] > 0 and math.isfinite(dreaming["dream_kl_after"])
        assert dreaming["prepare_forward_tokens"] > 0
        assert all(math.isfinite(json.loads(line)["kl_teacher"]) for line in lines)


@pytest.mark.parametrize("objective", ["distill", "sft"])
def test_dreaming_rehearses_the_consolidation_replay_also_after_a_resume(tmp_path, monkeypatch, objective):
    """With ``rehearse_consolidation`` the dreaming stage's items are its dreams' items, then
    Knowledge Seeding's replay samples of the same sleep (as pairs for "sft"), also when the sleep
    resumes after a finished seeding stage; the summary's examples and KL count the dreams alone."""
    import sleepcore.sleep.dreaming as dreaming_module
    config = seeding(steps=2, batch_size=3, max_new_tokens=8, completions=2, samples_per_prompt=1)
    dreaming = tiny_dreaming(objective=objective, rehearse_consolidation=True)
    seen = []
    real_prepare = dreaming_module.DreamingStage.prepare

    def spy(stage, buffer, **kwargs):
        seen.append([tuple(item.student_prompt) for item in stage.rehearsal])
        real_prepare(stage, buffer, **kwargs)
        seen.append(stage.items)

    monkeypatch.setattr(dreaming_module.DreamingStage, "prepare", spy)
    replay = []
    for attempt in range(2):  # the second attempt resumes: seeding finished, dreaming not started
        if attempt:
            import shutil
            shutil.rmtree(tmp_path / "sleep-000" / "dreaming")
        sleeper = make_sleeper(config, stages=("seeding", "dreaming"), output_dir=str(tmp_path), dreaming=dreaming)
        sleeper.wake(DATASET.passages)
        summary = sleeper.sleep(progress=False)
        rehearsed, items = seen[-2], seen[-1]
        replay.append(rehearsed)
        dreamt = summary["stages"]["dreaming"]
        assert dreamt["rehearsed"] == len(rehearsed) > 0 and len(items) == dreamt["examples"] + len(rehearsed)
        tail = items[dreamt["examples"]:]
        if objective == "distill":
            assert all(isinstance(item, ReplaySample) and item.teacher_hidden is not None for item in tail)
            assert [tuple(item.student_prompt) for item in tail] == rehearsed
        else:
            assert [tuple(prompt) for prompt, _ in tail] == rehearsed
    assert replay[0] == replay[1]  # the finished seeding stage's replay, loaded from its checkpoint


@pytest.mark.parametrize("objective", ["distill", "sft"])
def test_a_later_sleep_relearns_the_questions_earlier_dreaming_learnt(tmp_path, monkeypatch, objective):
    """With ``rehearse_earlier_dreams`` a sleep's Dreaming leaves its learnt questions (with the
    answers it taught) in the wake buffer, and the next sleep's Dreaming learns that share of them
    beside its own: distilled from the teacher without the new expert and with the earlier one on
    (no document), their answers fixed. A sleep resumed after its stages finished leaves the same."""
    import sleepcore.sleep.dreaming as dreaming_module
    monkeypatch.setattr(dreaming_module, "write_dreams", lambda engine, tokenizer, memory, texts, *a, **k:
                        question_dreams(texts))
    seen = []
    real_prepare = dreaming_module.DreamingStage.prepare

    def spy(stage, buffer, **kwargs):
        real_prepare(stage, buffer, **kwargs)
        seen.append(list(stage.items))

    monkeypatch.setattr(dreaming_module.DreamingStage, "prepare", spy)
    dreaming = tiny_dreaming(objective=objective, answers="span", top_k=1, random_kept=1, dreams_per_document=2,
                             rehearse_earlier_dreams=0.5)
    sleeper = make_sleeper(seeding(steps=1, batch_size=2, max_new_tokens=8, completions=2, samples_per_prompt=1),
                           stages=("seeding", "dreaming"), output_dir=str(tmp_path), dreaming=dreaming)
    sleeper.wake(DATASET.passages[:2])
    first = sleeper.sleep(progress=False)["stages"]["dreaming"]
    learnt = sleeper.buffer.earlier_dreams
    pairs = [[item.student_prompt, item.response] if objective == "distill" else [list(item[0]), list(item[1])]
             for item in seen[0][:first["examples"]]]
    asked = {tuple(encode(sleeper.tokenizer, qa_prompt(sleeper.tokenizer, q))) for own in question_dreams(
        DATASET.passages[:2]) for dream in own for q in dream_questions(dream.text)}
    assert first["rehearsed_dreams"] == 0 and learnt  # nothing earlier to relearn in the first sleep
    assert sorted(learnt) == sorted(pair for pair in pairs if tuple(pair[0]) in asked)  # its questions, not documents

    sleeper.wake(DATASET.passages[2:3])
    summary = sleeper.sleep(progress=False)
    second = summary["stages"]["dreaming"]
    count = second["rehearsed_dreams"]
    assert count == min(len(learnt), math.ceil(0.5 * second["examples"])) > 0
    tail = seen[1][second["examples"]:second["examples"] + count]
    assert len(seen[1]) == second["examples"] + count
    if objective == "sft":
        assert all([list(prompt), list(response)] in learnt for prompt, response in tail)
    else:
        assert all([s.student_prompt, s.response] in learnt and s.teacher_prompt == s.student_prompt and s.fixed
                   for s in tail)
        memory, slot = sleeper.memory, summary["slot"]
        memory.deactivate(0, slot)  # the teacher: the earlier sleep's expert on, this sleep's off
        assert memory.active_slots(0)
        with torch.no_grad():
            fresh = response_hidden(sleeper.model, [s.teacher_prompt for s in tail], [s.response for s in tail],
                                    pad_id(sleeper.tokenizer))
        memory.activate(0, slot)
        torch.testing.assert_close(torch.cat([s.teacher_hidden for s in tail]), fresh, rtol=1e-4, atol=1e-5)
    assert len(sleeper.buffer.earlier_dreams) > len(learnt) and all(p in sleeper.buffer.earlier_dreams for p in learnt)

    if objective == "distill":  # the finished second sleep, resumed from its checkpoints, keeps what it learnt
        after = sleeper.buffer
        again = make_sleeper(seeding(steps=1, batch_size=2, max_new_tokens=8, completions=2, samples_per_prompt=1),
                             stages=("seeding", "dreaming"), output_dir=str(tmp_path), dreaming=dreaming)
        again.sleeps, again.buffer = 1, WakeBuffer.from_state(after.state())
        again.buffer.earlier_dreams, again.buffer.earlier_dreams_seen = learnt, len(learnt)
        again.wake(DATASET.passages[2:3])
        again.sleep(progress=False)
        assert again.buffer.earlier_dreams == after.earlier_dreams


def test_knowledge_seedings_fixed_answers_join_the_rehearsal_pool(tmp_path, monkeypatch):
    """With ``rehearse_earlier_seeding`` the questions that a sleep's Knowledge Seeding learnt with a
    fixed answer join the pool of questions later sleeps' Dreaming rehearses, beside the questions
    Dreaming learnt; its sampled items do not, and without the option the pool is Dreaming's alone."""
    import sleepcore.sleep.dreaming as dreaming_module
    from sleepcore.sleep.knowledge_seeding import KnowledgeSeeding
    monkeypatch.setattr(dreaming_module, "write_dreams", lambda engine, tokenizer, memory, texts, *a, **k:
                        question_dreams(texts))
    real_prepare, fixed = KnowledgeSeeding.prepare, []

    def answers_from_the_document(stage, buffer, **kwargs):  # two items as if sentence_questions had made them
        real_prepare(stage, buffer, **kwargs)
        stage.items[:2] = [dataclasses.replace(item, fixed=True) for item in stage.items[:2]]
        fixed.append([[list(item.student_prompt), list(item.response)] for item in stage.items[:2]])

    monkeypatch.setattr(KnowledgeSeeding, "prepare", answers_from_the_document)
    pools = {}
    for joined in (False, True):
        dreaming = tiny_dreaming(objective="distill", answers="span", top_k=1, random_kept=1, dreams_per_document=2,
                                 rehearse_earlier_dreams=0.5, rehearse_earlier_seeding=joined)
        sleeper = make_sleeper(seeding(steps=1, batch_size=2, max_new_tokens=8, completions=2, samples_per_prompt=1),
                               stages=("seeding", "dreaming"), output_dir=str(tmp_path / str(joined)), dreaming=dreaming)
        sleeper.wake(DATASET.passages[:2])
        sleeper.sleep(progress=False)
        pools[joined] = {(tuple(prompt), tuple(response)) for prompt, response in sleeper.buffer.earlier_dreams}
    assert fixed[0] == fixed[1] and len(fixed[0]) == 2  # the same sleep both times
    seeded = {(tuple(prompt), tuple(response)) for prompt, response in fixed[0]}
    assert pools[False] and not pools[False] & seeded  # Dreaming's questions alone
    assert pools[True] == pools[False] | seeded


def test_spread_by_answer_draws_every_answer_once_before_any_twice():
    pool = [[[1, index], [7]] for index in range(6)] + [[[2, index], [8]] for index in range(2)] + [[[3, 0], [9]]]
    for seed in range(5):
        for count in range(len(pool) + 2):
            drawn = spread_by_answer([list(pair) for pair in pool], count, random.Random(seed))
            assert len(drawn) == min(count, len(pool)) and all(pair in pool for pair in drawn)
            assert len({tuple(prompt) for prompt, _ in drawn}) == len(drawn)  # no pair twice
            answers = [tuple(response) for _, response in drawn]
            assert len(set(answers[:3])) == min(count, 3)  # the three answers first
            if count >= 5:  # then the second of each answer that has one
                assert sorted(answers[3:5]) == [(7,), (8,)]
    assert spread_by_answer(pool, 4, random.Random(0)) == spread_by_answer(pool, 4, random.Random(0))
    assert spread_by_answer([], 3, random.Random(0)) == []


def test_a_later_sleep_draws_the_earlier_questions_spread_over_their_answers(tmp_path, monkeypatch):
    """With ``rehearse_draw = "answers"`` the second sleep's rehearsed questions are drawn from the
    whole pool by :func:`spread_by_answer`: as many distinct answers as the count allows."""
    import sleepcore.sleep.dreaming as dreaming_module
    monkeypatch.setattr(dreaming_module, "write_dreams", lambda engine, tokenizer, memory, texts, *a, **k:
                        question_dreams(texts))
    draws = []
    real_spread = dreaming_module.spread_by_answer

    def spy(pool, count, rng):
        drawn = real_spread(pool, count, rng)
        draws.append((len(pool), count, drawn))
        return drawn

    monkeypatch.setattr(dreaming_module, "spread_by_answer", spy)
    dreaming = tiny_dreaming(objective="sft", answers="span", top_k=1, random_kept=1, dreams_per_document=2,
                             rehearse_earlier_dreams=0.5, rehearse_draw="answers")
    sleeper = make_sleeper(seeding(steps=1, batch_size=2, max_new_tokens=8, completions=2, samples_per_prompt=1),
                           stages=("seeding", "dreaming"), output_dir=str(tmp_path), dreaming=dreaming)
    sleeper.wake(DATASET.passages[:2])
    sleeper.sleep(progress=False)
    assert not draws  # nothing earlier to draw from in the first sleep
    pool = [list(pair) for pair in sleeper.buffer.earlier_dreams]
    sleeper.wake(DATASET.passages[2:3])
    second = sleeper.sleep(progress=False)["stages"]["dreaming"]
    (size, count, drawn), = draws
    assert size == len(pool) and count == second["rehearsed_dreams"] == len(drawn) > 0
    assert all(pair in pool for pair in drawn)
    answers = {tuple(response) for _, response in pool}
    assert len({tuple(response) for _, response in drawn}) == min(count, len(answers))


def test_distilled_dreams_are_read_by_the_teacher_after_their_document(wrapped):
    model, tokenizer, memory, engine = wrapped
    documents = DATASET.passages[:2]
    config = tiny_dreaming(objective="distill")
    context = StageContext(model, tokenizer, memory, engine, 0, memory.new_expert(0), seed=3)
    stage = DreamingStage(context, config)
    stage.prepare(documents, progress=False)
    assert stage.items and all(isinstance(sample, ReplaySample) for sample in stage.items)
    assert stage.trainer.config.hard_label_weight == 0.0
    weighted = DreamingStage(context, tiny_dreaming(objective="distill", hard_label_weight=2.0))
    weighted.prepare(documents[:1], progress=False)
    assert weighted.trainer.config.hard_label_weight == 2.0
    bos = tokenizer.bos_token_id
    heads = [encode(tokenizer, with_context(document, "")) for document in documents]
    for sample in stage.items:  # the teacher reads one of the documents, then the student's prompt
        prompt = sample.student_prompt[1:] if sample.student_prompt[:1] == [bos] else sample.student_prompt
        assert any(sample.teacher_prompt == head + prompt for head in heads)
    for document, head in zip(documents, heads):  # and it is the line's own document
        own = [s for s in stage.items if s.student_prompt + s.response == encode(tokenizer, document)]
        assert own and all(s.teacher_prompt[:len(head)] == head for s in own)
    with torch.no_grad(), stage.trainer.teacher():  # the cached states are a plain teacher forward
        fresh = response_hidden(model, [s.teacher_prompt for s in stage.items], [s.response for s in stage.items],
                                pad_id(tokenizer))
    torch.testing.assert_close(torch.cat([s.teacher_hidden for s in stage.items]), fresh, rtol=1e-4, atol=1e-5)

    restored = DreamingStage(context, config)  # a checkpoint round trip keeps the replay and its states
    restored.load_state_dict(*stage.state_dict())
    assert [s.response for s in restored.items] == [s.response for s in stage.items]
    assert torch.equal(torch.cat([s.teacher_hidden for s in restored.items]),
                       torch.cat([s.teacher_hidden for s in stage.items]))

    batch = stage.items[:4]  # a step's loss is the forward KL to those states, before its update
    assert stage.summary()["dream_kl_before"] == stage.trainer.replay_kl(stage.items) > 0
    want = stage.trainer.replay_kl(batch)
    metrics = stage.step(batch)
    assert metrics["kl_teacher"] == pytest.approx(want, rel=1e-4) and metrics["loss"] == pytest.approx(want, rel=1e-4)
    assert stage.trainer.replay_kl(batch) != want  # and the step moved the expert


def test_the_stage_learns_the_teacher_s_answers_to_its_dreams_questions(wrapped, monkeypatch):
    model, tokenizer, memory, engine = wrapped
    import sleepcore.sleep.dreaming as dreaming_module
    documents = DATASET.passages[:2]
    monkeypatch.setattr(dreaming_module, "write_dreams", lambda engine, tokenizer, memory, texts, *a, **k:
                        question_dreams(texts))
    teachers, real = [], dreaming_module.answered_examples

    def spy(*args, teacher, **kwargs):
        teachers.append(teacher)
        return real(*args, teacher=teacher, **kwargs)

    monkeypatch.setattr(dreaming_module, "answered_examples", spy)
    context = StageContext(model, tokenizer, memory, engine, 0, memory.new_expert(0), seed=3)
    stage = DreamingStage(context, tiny_dreaming(answers="teacher", top_k=1, random_kept=1, dreams_per_document=2))
    stage.prepare(documents, progress=False)
    assert teachers == [stage.trainer.teacher]  # the distilled teacher (the trained expert off) answers
    asked = {tuple(encode(tokenizer, qa_prompt(tokenizer, q))): index for index, own in
             enumerate(question_dreams(documents)) for dream in own for q in dream_questions(dream.text)}
    answered = [s for s in stage.items if tuple(s.student_prompt) in asked]
    assert len(answered) >= 2  # the questions, asked closed-book, with the teacher's answers ...
    assert stage.report["questions"] == len({tuple(s.student_prompt) for s in answered})
    assert all("she work" not in tokenizer.decode(s.student_prompt) for s in stage.items)  # names no one
    for sample in answered:  # ... which the teacher reads with its own document in the question's turn
        question = tokenizer.decode(sample.student_prompt).split("Question: ")[-1].split("?")[0] + "?"
        document = documents[asked[tuple(sample.student_prompt)]]
        assert sample.teacher_prompt == encode(tokenizer, qa_prompt(tokenizer, question, document))
        assert len(sample.response) >= 2
    assert not any(sample.fixed for sample in stage.items)  # the teacher's answers are sampled


@pytest.mark.parametrize("writer", ["model", "base"])
def test_the_writer_is_the_model_as_it_is_or_the_base_model(monkeypatch, tmp_path, writer):
    """With ``writer = "base"`` every memory expert but the generator's is off while the dreams are
    written (the consolidated one and an earlier sleep's) and on again afterwards, unchanged; with
    ``"model"`` they write too."""
    model, tokenizer = tiny_model(DATASET.passages + DATASET.company_passages, seed=0)
    memory = ContinuumMemory.wrap(model, MemoryConfig(levels=(LevelConfig(rank=4, slots=3),)))
    engine = Engine(model, tokenizer, kv_memory_bytes=32 << 20)
    import sleepcore.sleep.dreaming as dreaming_module
    earlier, slot = memory.new_expert(0), memory.new_expert(0)
    with torch.no_grad():
        for mlp in memory.layers.values():
            mlp.levels[0].B[earlier].normal_()  # a trained expert: the function depends on it
    before = {layer: mlp.levels[0].B[earlier].clone() for layer, mlp in memory.layers.items()}
    weights = {layer: (torch.randn(4, 64) * 0.1, torch.randn(64, 4) * 0.1) for layer in memory.layers}
    save_generator(tmp_path / "generator.safetensors", weights)
    seen = []

    def write(engine, tokenizer, memory, texts, *args, **kwargs):
        seen.append(memory.active_slots(0))
        return question_dreams(texts)

    monkeypatch.setattr(dreaming_module, "write_dreams", write)
    context = StageContext(model, tokenizer, memory, engine, 0, slot, seed=3)
    config = tiny_dreaming(writer=writer, answers="span", generator_path=str(tmp_path / "generator.safetensors"))
    DreamingStage(context, config).prepare(DATASET.passages[:2], progress=False)
    generator = 2  # the lowest free slot, taken before anything is switched off
    assert seen == [[earlier, slot, generator] if writer == "model" else [generator]]
    assert memory.active_slots(0) == [earlier, slot]
    assert all(torch.equal(mlp.levels[0].B[earlier], before[layer]) for layer, mlp in memory.layers.items())


def test_answers_taken_from_the_document_are_the_fixed_items(wrapped, monkeypatch):
    """With ``answers = "span"`` a question's item is fixed (``hard_label_items = "fixed"`` trains
    cross-entropy on it alone); the dreams' statements and the document are not."""
    model, tokenizer, memory, engine = wrapped
    import sleepcore.sleep.dreaming as dreaming_module
    documents = DATASET.passages[:2]
    monkeypatch.setattr(dreaming_module, "write_dreams", lambda engine, tokenizer, memory, texts, *a, **k:
                        question_dreams(texts))
    context = StageContext(model, tokenizer, memory, engine, 0, memory.new_expert(0), seed=3)
    stage = DreamingStage(context, tiny_dreaming(answers="span", top_k=1, random_kept=1, dreams_per_document=2,
                                                 hard_label_weight=1.0, hard_label_items="fixed"))
    stage.prepare(documents, progress=False)
    assert stage.trainer.config.hard_label_items == "fixed"
    asked = {tuple(encode(tokenizer, qa_prompt(tokenizer, q))) for own in question_dreams(documents) for dream in own
             for q in dream_questions(dream.text)}
    fixed = [sample for sample in stage.items if sample.fixed]
    assert fixed and all(tuple(sample.student_prompt) in asked for sample in fixed)
    assert all(sample.fixed for sample in stage.items if tuple(sample.student_prompt) in asked)
    for document in documents:  # the document itself is distilled, not a fixed answer
        own = [s for s in stage.items if s.student_prompt + s.response == encode(tokenizer, document)]
        assert own and not any(s.fixed for s in own)
    assert math.isfinite(stage.step(stage.items[:4])["loss"])



class LetterTokenizer:
    """Decodes a token id list as its letters (1 -> "a"), for records built by hand."""

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(ord("a") + i - 1) for i in ids) + " "


def test_balanced_questions_ask_every_answer_the_mean_number_of_times():
    asked = [([10 + k], [1]) for k in range(5)] + [([20], [2])] + [([30], [3]), ([31], [3])]
    document = ([99], [7, 7])
    record = {"items": asked + [document], "document": 0,
              "questions": [[list(prompt), [500 + prompt[0]]] for prompt, _ in asked]}
    balanced = balanced_questions(record, LetterTokenizer(), random.Random(0))
    questions, others = balanced["items"][:-1], balanced["items"][-1:]
    assert others == [document]  # the document (and any statement line) stays, last
    counts = {}
    for prompt, response in questions:
        counts[tuple(response)] = counts.get(tuple(response), 0) + 1
    assert counts == {(1,): 3, (2,): 3, (3,): 3}  # ceil(8 / 3 answers)
    assert len({prompt[0] for prompt, response in questions if response == [1]}) == 3  # a subset, no repeat
    assert sorted(prompt[0] for prompt, response in questions if response == [3]) == [30, 30, 31]  # in turn
    assert balanced["questions"] == [[prompt, [500 + prompt[0]]] for prompt, _ in questions]
    assert balanced_questions({**record, "items": [document], "questions": []}, LetterTokenizer(),
                              random.Random(0))["items"] == [document]


def test_distinct_questions_keep_the_first_item_of_each_question():
    asked = [([10], [1]), ([11], [1]), ([10], [1]), ([20], [2, 2]), ([11], [1]), ([10], [1])]
    statement, document = ([40, 41], [5]), ([99], [7, 7])
    record = {"items": asked[:3] + [statement] + asked[3:] + [document], "document": 0, "scores": [0.5],
              "questions": [[list(prompt), [500 + prompt[0]]] for prompt, _ in asked]}
    distinct = distinct_questions(record)
    assert distinct["items"] == [([10], [1]), ([11], [1]), statement, ([20], [2, 2]), document]
    assert distinct["questions"] == [[[10], [510]], [[11], [511]], [[20], [520]]]
    assert distinct["scores"] == [0.5] and distinct["document"] == 0  # the rest of the record as it was
    assert record["items"][2] == ([10], [1])  # the input is not changed


def _stage_on_dreams(wrapped, monkeypatch, texts, **options) -> DreamingStage:
    """A Dreaming stage prepared on the first person's passage, its two kept dreams being ``texts``
    (``{name}``: the person's name), with span answers and ``options``."""
    model, tokenizer, memory, engine = wrapped
    import sleepcore.sleep.dreaming as dreaming_module
    dreams = [[Dream(0, k, [1], [1], text.format(name=DATASET.people[0].name)) for k, text in enumerate(texts)]]
    monkeypatch.setattr(dreaming_module, "write_dreams", lambda *a, **k: dreams)
    context = StageContext(model, tokenizer, memory, engine, 0, memory.new_expert(0), seed=3)
    stage = DreamingStage(context, tiny_dreaming(**{**dict(answers="span", top_k=2, random_kept=0, dreams_per_document=2,
                                                        min_questions=0), **options}))
    stage.prepare(DATASET.passages[:1], progress=False)
    return stage


def test_the_stage_learns_a_question_asked_by_several_dreams_once(wrapped, monkeypatch):
    texts = ("Where was {name} born?\nWhat was the name of {name}'s first pet?",
             "Where was {name} born?\nIn which city was {name} born?")
    prompts = {}
    for distinct in (False, True):
        stage = _stage_on_dreams(wrapped, monkeypatch, texts, distinct_questions=distinct)
        prompts[distinct] = [tuple(sample.student_prompt) for sample in stage.items if sample.fixed]
        assert stage.report["questions"] == len(prompts[distinct])
    assert len(prompts[False]) > len(set(prompts[False]))  # both dreams ask where the person was born
    assert sorted(prompts[True]) == sorted(set(prompts[False]))  # each question once, none lost
    # min_questions counts the questions as selected: the option changes what is learnt, not whether
    wrapped[2].deactivate(0, stage.context.slot)  # the fixture's level has two slots
    stage = _stage_on_dreams(wrapped, monkeypatch, texts, distinct_questions=True, min_questions=len(prompts[False]))
    assert stage.skipped is None and stage.report["kept_questions"] == len(prompts[False])
    assert sorted(tuple(sample.student_prompt) for sample in stage.items if sample.fixed) == sorted(prompts[True])


def test_the_stage_balances_its_question_items_by_answer(wrapped, monkeypatch):
    texts = ("Where was {name} born?\nIn which city was {name} born?\nWhere was {name} born, which city?",
             "What was the name of {name}'s first pet?")
    counts = {}
    for balance in (False, True):
        stage = _stage_on_dreams(wrapped, monkeypatch, texts, balance_answers=balance)
        answers = [tuple(sample.response) for sample in stage.items if sample.fixed]
        counts[balance] = sorted(answers.count(answer) for answer in set(answers))
    assert len(set(counts[False])) > 1  # the dreams ask about some answers more often than others
    assert len(set(counts[True])) == 1 and len(counts[True]) == len(counts[False])
    assert counts[True][0] == math.ceil(sum(counts[False]) / len(counts[False]))


class Completion:
    def __init__(self, text):
        self.text = text


class Output:
    def __init__(self, texts):
        self.completions = [Completion(text) for text in texts]


def test_the_stage_learns_each_kept_question_also_in_the_base_model_s_rewrites(wrapped, monkeypatch):
    """``question_rewrites``: the base model (memory off) rewrites every distinct kept question once,
    ``question_rewrites`` samples each; a rewrite's misspelt name is put right, and a new rewrite that
    names the question's entities and that the document answers with the question's answer is
    learnt right after its question, with that fixed answer and its own teacher prompt (the document
    in its turn); the original, a rewrite without the name and one asking for another fact are not."""
    model, tokenizer, memory, engine = wrapped
    import sleepcore.sleep.dreaming as dreaming_module
    person, document = DATASET.people[0], DATASET.passages[0]
    first, last = person.name.split()
    misspelt = f"{first} {last[:-2]}{'x' if last[-2] != 'x' else 'y'}{last[-1]}"
    asked = f"Where was {person.name} born?"
    dreams = [[Dream(0, 0, [1], [1], f"{asked}\n{asked}"), Dream(0, 1, [1], [1], "No question.")]]
    monkeypatch.setattr(dreaming_module, "write_dreams", lambda *a, **k: dreams)
    rewrites = [f"In what place was {misspelt} born? Lyon.\nmore", f"where was {person.name} born ?",
                "Where was she born?", f"{person.name} was born where?", f"When was {person.name} born?",
                "no question mark"]
    calls = []

    def generate(prompts, params, progress=True, **_):
        calls.append((list(prompts), params, memory.active_slots(0)))
        return [Output(rewrites[:params.n]) for _ in prompts]
    monkeypatch.setattr(engine, "generate", generate)
    items = {}
    for count in (0, len(rewrites)):
        context = StageContext(model, tokenizer, memory, engine, 0, memory.new_expert(0), seed=3)
        stage = DreamingStage(context, tiny_dreaming(answers="span", top_k=2, random_kept=0, dreams_per_document=2,
                                                     question_rewrites=count))
        stage.prepare([document], progress=False)
        items[count] = [sample for sample in stage.items if sample.fixed]
        assert stage.report["question_rewrites"] == (0 if count == 0 else 2)
    assert len(calls) == 1  # off: the engine is not asked
    prompts, params, active = calls[0]
    assert prompts == [QUESTION_REWRITE_EXAMPLES.replace("{question}", asked)] and params.n == len(rewrites)
    assert active == []  # the base model rewrites (the new expert is on outside)
    (question,) = items[0]
    assert [tuple(sample.student_prompt) for sample in items[len(rewrites)]] == [
        tuple(encode(tokenizer, qa_prompt(tokenizer, text)))
        for text in (asked, f"In what place was {person.name} born?", f"{person.name} was born where?")]
    assert all(sample.response == question.response for sample in items[len(rewrites)])
    assert items[len(rewrites)][2].teacher_prompt == encode(
        tokenizer, qa_prompt(tokenizer, f"{person.name} was born where?", document))


def test_question_rewrites_run_through_the_engine(wrapped, monkeypatch):
    """The rewrites sampled by the real engine (a tiny random model's are rarely usable): the stage
    runs and every rewrite item it adds is a question of its document with a kept question's answer."""
    model, tokenizer, memory, engine = wrapped
    import sleepcore.sleep.dreaming as dreaming_module
    monkeypatch.setattr(dreaming_module, "write_dreams", lambda engine, tokenizer, memory, texts, *a, **k:
                        question_dreams(texts))
    context = StageContext(model, tokenizer, memory, engine, 0, memory.new_expert(0), seed=3)
    stage = DreamingStage(context, tiny_dreaming(answers="span", question_rewrites=2))
    stage.prepare(DATASET.passages[:2], progress=False)
    added = stage.report["question_rewrites"]
    assert isinstance(added, int) and added >= 0 and stage.report["questions"] > added
    assert len([sample for sample in stage.items if sample.fixed]) == stage.report["questions"]


def test_the_model_reads_the_questions_the_words_cannot_place(wrapped, monkeypatch):
    """``sentence_finder = "words_then_model"``: the stage answers more of its dreams' questions."""
    model, tokenizer, memory, engine = wrapped
    import sleepcore.sleep.dreaming as dreaming_module
    documents = DATASET.passages[:2]
    monkeypatch.setattr(dreaming_module, "write_dreams", lambda engine, tokenizer, memory, texts, *a, **k:
                        question_dreams(texts))
    fixed = {}
    for finder in ("words", "words_then_model"):
        context = StageContext(model, tokenizer, memory, engine, 0, memory.new_expert(0), seed=3)
        stage = DreamingStage(context, tiny_dreaming(answers="span", top_k=2, random_kept=0, dreams_per_document=2,
                                                     sentence_finder=finder))
        stage.prepare(documents, progress=False)
        fixed[finder] = sum(sample.fixed for sample in stage.items)
        memory.reset(0)
    # at most "What does X do?" and "Which company employs X?" more per document (their words place neither)
    assert fixed["words"] < fixed["words_then_model"] <= fixed["words"] + 2 * len(documents)

def test_a_dreaming_stage_without_an_answered_question_warns(wrapped, monkeypatch):
    """Dreams that hold no answerable question leave only statements and documents to learn: the
    stage says so instead of training on them silently."""
    model, tokenizer, memory, engine = wrapped
    import sleepcore.sleep.dreaming as dreaming_module
    statements = lambda engine, tokenizer, memory, texts, *a, **k: [  # noqa: E731
        [Dream(index, k, [1], [1], "The answer is: Zaibiwick") for k in range(2)] for index in range(len(texts))]
    monkeypatch.setattr(dreaming_module, "write_dreams", statements)
    context = StageContext(model, tokenizer, memory, engine, 0, memory.new_expert(0), seed=3)
    stage = DreamingStage(context, tiny_dreaming(answers="span", top_k=1, random_kept=1, dreams_per_document=2))
    with pytest.warns(RuntimeWarning, match="no kept dream holds a question"):
        stage.prepare(DATASET.passages[:2], progress=False)
    assert stage.report["questions"] == 0 and stage.items


def test_the_stage_writes_with_a_trained_generator_in_a_released_slot(tmp_path, monkeypatch):
    sleeper = make_sleeper(seeding(), stages=("dreaming",), dreaming=tiny_dreaming())
    weights = {layer: (torch.randn(8, 64) * 0.1, torch.randn(64, 8) * 0.1) for layer in sleeper.memory.layers}
    save_generator(tmp_path / "generator.safetensors", weights, info={"rounds": 1})
    loaded = load_generator(tmp_path / "generator.safetensors")
    assert all(torch.equal(loaded[k][0], weights[k][0]) for k in weights)
    seen = []
    import sleepcore.sleep.dreaming as dreaming_module
    real_write = dreaming_module.write_dreams

    def spy(engine, tokenizer, memory, *args, **kwargs):
        seen.append(memory.active_slots(0))
        return real_write(engine, tokenizer, memory, *args, **kwargs)

    monkeypatch.setattr(dreaming_module, "write_dreams", spy)
    generator = str(tmp_path / "generator.safetensors")
    sleeper.config = dataclasses.replace(sleeper.config, dreaming=tiny_dreaming(generator_path=generator))
    sleeper.wake(DATASET.passages)
    summary = sleeper.sleep(progress=False)
    assert seen == [[1]] and sleeper.memory.active_slots(0) == [summary["slot"]]  # the base model writes
    with pytest.raises(FileNotFoundError, match="generator_path"):
        load_generator(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("expert", ["consolidated", "new"])
def test_too_few_answered_questions_train_nothing_and_a_resume_skips_again(tmp_path, monkeypatch, expert):
    """Below ``min_questions`` the stage trains nothing (a few answers learnt alone become the answer
    to every question), says why, leaves the experts as they were, and is finished on resume."""
    import sleepcore.sleep.dreaming as dreaming_module
    monkeypatch.setattr(dreaming_module, "write_dreams", lambda engine, tokenizer, memory, texts, *a, **k:
                        question_dreams(texts))
    dreaming = tiny_dreaming(answers="span", expert=expert, min_questions=1000)
    sleeper = make_sleeper(seeding(), stages=("dreaming",), dreaming=dreaming, output_dir=str(tmp_path))
    sleeper.wake(DATASET.passages[:2])
    with pytest.warns(RuntimeWarning, match="min_questions = 1000"):
        summary = sleeper.sleep(progress=False)
    dreaming_summary = summary["stages"]["dreaming"]
    assert dreaming_summary["questions"] > 0 and "fewer than min_questions" in dreaming_summary["skipped"]
    assert (dreaming_summary["steps"], dreaming_summary["tokens"], dreaming_summary["examples"]) == (0, 0, 0)
    untrained = [p for slot in range(2) for p in sleeper.memory.trainable(0, slot)[1::2]]  # every B
    assert all(not p.any() for p in untrained)  # a new expert's B is 0, and nothing trained it
    assert sleeper.memory.active_slots(0) == [summary["slot"]]  # a "new" expert is not left on
    resumed = make_sleeper(seeding(), stages=("dreaming",), dreaming=dreaming, output_dir=str(tmp_path))
    resumed.wake(DATASET.passages[:2])
    monkeypatch.setattr(dreaming_module, "write_dreams", None)  # finished: nothing is written again
    assert resumed.sleep(progress=False)["stages"]["dreaming"] == dreaming_summary
    enough = tiny_dreaming(answers="span", expert=expert, min_questions=dreaming_summary["questions"])
    sleeper = make_sleeper(seeding(), stages=("dreaming",), dreaming=enough)
    monkeypatch.setattr(dreaming_module, "write_dreams", lambda engine, tokenizer, memory, texts, *a, **k:
                        question_dreams(texts))
    sleeper.wake(DATASET.passages[:2])
    assert sleeper.sleep(progress=False)["stages"]["dreaming"]["steps"] > 0  # at the floor it trains


def test_max_epochs_ends_the_dreaming_stage_after_that_many_passes(monkeypatch):
    import sleepcore.sleep.dreaming as dreaming_module
    monkeypatch.setattr(dreaming_module, "write_dreams", lambda engine, tokenizer, memory, texts, *a, **k:
                        question_dreams(texts))
    sleeper = make_sleeper(seeding(), stages=("dreaming",),
                           dreaming=tiny_dreaming(answers="span", steps=50, batch_size=2, max_epochs=2))
    sleeper.wake(DATASET.passages[:2])
    dreaming = sleeper.sleep(progress=False)["stages"]["dreaming"]
    per_epoch = -(-dreaming["examples"] // 2)
    assert dreaming["steps"] == 2 * per_epoch < 50  # two whole passes, not the 50-step cap
    assert [m["epoch"] for m in dreaming["history"]] == [0] * per_epoch + [1] * per_epoch


# ---------------------------------------------------------------------- meta-training
def _changed_answer_metric(model, tokenizer, memory):
    """A stand-in for "contains" on a random model: 1 when the answer differs from the unadapted one."""
    prompts = [qa_prompt(tokenizer, q) for task in tasks() for q, _ in task.questions]
    with batched_adapters(memory, 1, rank=4) as adapters:
        base = set(answer_with_adapters(model, tokenizer, adapters, prompts, [-1] * len(prompts)))
    return lambda prediction, gold: float(prediction not in base)


def _fit(wrapped, root, rounds, **options):
    model, tokenizer, memory, engine = wrapped
    dreamer = Dreamer(model, tokenizer, memory, tiny_dreaming(rounds=rounds, **options),
                      metric=_changed_answer_metric(model, tokenizer, memory), output_dir=root, engine=engine, seed=2)
    return dreamer, dreamer.fit(tasks(), progress=False)


def _weights(memory, slot):
    return torch.cat([p.detach().reshape(-1) for p in memory.trainable(0, slot)])


def test_dreamer_fit_runs_two_rounds_and_writes_metrics(wrapped, tmp_path):
    dreamer, result = _fit(wrapped, tmp_path, 2)
    rounds = result["rounds"]
    assert [r["round"] for r in rounds] == [0, 1] and all(r["kept"] == 6 and r["dreams"] == 12 for r in rounds)
    # ReST-EM trains generator_epochs (2) epochs of batch 2 over the rewarded dreams, at most 2 steps
    assert rounds[0]["rewarded"] > 0 and rounds[0]["generator_steps"] == min(2, rounds[0]["rewarded"])
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [0, 1] and {"reward", "base_score", "adapted_score"} <= set(lines[0])
    generator = load_generator(result["generator"])
    memory = dreamer.memory
    assert all(torch.equal(generator[k][1], memory.layers[k].levels[0].B[dreamer.slot]) for k in generator)
    assert dreamer.slot not in memory.active_slots(0)
    saved = json.loads((tmp_path / "round-00" / "dreams.json").read_text())
    assert sum(d["kept"] for own in saved["dreams"] for d in own) == 6



def test_the_dreamer_reads_with_the_model_when_configured(wrapped, tmp_path, monkeypatch):
    import sleepcore.sleep.dreamer as dreamer_module
    readers = []

    def answered(*args, **options):
        readers.append(options["reader"])
        return answered_examples(*args, **options)
    monkeypatch.setattr(dreamer_module, "answered_examples", answered)
    _fit(wrapped, tmp_path, 1, sentence_finder="words_then_model")
    assert readers and all(callable(reader) for reader in readers)

def test_dreamer_resumes_to_the_same_result(tmp_path, monkeypatch):
    fresh = lambda: tiny_model(DATASET.passages + DATASET.company_passages, seed=0)  # noqa: E731

    def wrapped_again():
        model, tokenizer = fresh()
        memory = ContinuumMemory.wrap(model, MemoryConfig(levels=(LevelConfig(rank=4, slots=2),)))
        return model, tokenizer, memory, Engine(model, tokenizer, kv_memory_bytes=32 << 20)

    torch.manual_seed(0)
    straight, result = _fit(wrapped_again(), tmp_path / "a", 2)
    straight_rng = torch.get_rng_state()
    torch.manual_seed(0)
    _fit(wrapped_again(), tmp_path / "b", 1)  # stopped after round 1 ...
    real_step, calls = NextTokenStage.step, {"n": 0}

    def crash(self, batch):  # ... and crashed in round 2's generator update
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_step(self, batch)

    monkeypatch.setattr(NextTokenStage, "step", crash)
    with pytest.raises(KeyboardInterrupt):
        _fit(wrapped_again(), tmp_path / "b", 2)
    monkeypatch.setattr(NextTokenStage, "step", real_step)
    torch.manual_seed(123)  # the checkpoint's generator state, not this one, must carry on
    resumed, again = _fit(wrapped_again(), tmp_path / "b", 2)
    assert torch.equal(torch.get_rng_state(), straight_rng)
    strip = lambda rounds: [{k: v for k, v in r.items() if k != "seconds"} for r in rounds]  # noqa: E731
    assert strip(again["rounds"]) == strip(result["rounds"])
    assert torch.equal(_weights(resumed.memory, resumed.slot), _weights(straight.memory, straight.slot))


def test_dreamer_fit_with_the_teacher_answering_the_dreams_questions(wrapped, tmp_path, monkeypatch):
    import sleepcore.sleep.dreamer as dreamer_module
    monkeypatch.setattr(dreamer_module, "write_dreams", lambda engine, tokenizer, memory, texts, *a, **k:
                        question_dreams(texts))
    _, tokenizer, _, _ = wrapped
    _, result = _fit(wrapped, tmp_path, 1, answers="teacher", dreams_per_document=2, top_k=1, random_kept=1,
                     answers_restate_question=False)  # a random model's answers restate nothing
    assert result["rounds"][0]["kept"] == 6
    saved = json.loads((tmp_path / "round-00" / "dreams.json").read_text())
    for own in saved["dreams"]:
        for record in own:
            document = tasks()[record["document"]].document
            texts = dream_questions(record["text"], named_entities(document))
            asked = [encode(tokenizer, qa_prompt(tokenizer, q)) for q in texts]
            trained = [prompt for prompt, _ in record["examples"]]  # its questions first, asked closed-book,
            assert trained[:len(asked)] == asked  # and the teacher reads each with the document in its turn
            assert record["questions"] == [[p, encode(tokenizer, qa_prompt(tokenizer, q, document))]
                                           for p, q in zip(asked, texts)]


def test_reward_rules():
    def records():
        return [[{"kept": True, "score": 0.5}, {"kept": True, "score": 1.0}, {"kept": False, "score": None},
                 {"kept": True, "score": 1.0}],
                [{"kept": True, "score": 0.0}, {"kept": True, "score": 0.2}]]

    improves = records()
    assert assign_rewards(improves, [0.5, 0.2], "improves") == pytest.approx(2 / 5)
    assert [[r.get("reward") for r in own] for own in improves] == [[0, 1, None, 1], [0, 0]]
    best = records()
    assert assign_rewards(best, [0.5, 0.1], "best_of_m") == pytest.approx(2 / 5)
    assert [[r.get("reward") for r in own] for own in best] == [[0, 1, None, 0], [0, 1]]
    with pytest.raises(ValueError, match="rule"):
        assign_rewards(records(), [0, 0], "best")
    margin = records()  # beating the baseline by 0.5 exactly is not beating it by more than 0.5
    assert assign_rewards(margin, [0.5, -1.0], "improves", margin=0.5) == pytest.approx(2 / 5)
    assert [[r.get("reward") for r in own] for own in margin] == [[0, 0, None, 0], [1, 1]]
    assert assign_rewards(records(), [0.5, 0.1], "best_of_m", margin=0.5) == 0.0
    with pytest.raises(ValueError, match="margin"):
        assign_rewards(records(), [0, 0], "improves", margin=-1.0)


def test_the_covers_reward_pays_the_fewest_dreams_that_cover_what_any_dream_covers():
    def dream(score, per_question, kept=True):
        return {"kept": kept, "score": score, "question_scores": per_question}

    base = [[0.0, 0.0, 0.0, 0.0], [1.0, 1.0]]
    records = [[dream(0.9, [1.0, 1.0, 0.0, 0.0]),  # covers 0, 1
                dream(0.8, [1.0, 0.0, 0.0, 0.0]),  # 0 only: nothing new after the first
                dream(0.5, [0.0, 0.0, 1.0, 0.0]),  # 2: new
                dream(0.7, [0.0, 0.0, 0.0, 1.0], kept=False),  # not kept: never rewarded
                dream(0.6, [0.0, 0.0, 1.0, 0.0])],  # 2 again, at a higher score than the other
               [dream(0.0, [0.5, 1.0])]]  # covers nothing: beats no question's baseline
    mean = assign_rewards(records, [0.0, 0.0], "covers", base_questions=base)
    assert [[r.get("reward") for r in own] for own in records] == [[1, 0, 0, None, 1], [0]]
    assert mean == pytest.approx(2 / 5)
    # ties on new questions go to the higher score; the margin applies per question
    tied = [[dream(0.1, [0.5, 0.0]), dream(0.2, [0.0, 0.5])]]
    assign_rewards(tied, [0.0], "covers", base_questions=[[0.0, 0.0]])
    assert [r["reward"] for r in tied[0]] == [1, 1]
    tied = [[dream(0.1, [0.5, 0.5]), dream(0.2, [0.5, 0.5])]]
    assign_rewards(tied, [0.0], "covers", base_questions=[[0.0, 0.0]])
    assert [r["reward"] for r in tied[0]] == [0, 1]
    assign_rewards(tied, [0.0], "covers", base_questions=[[0.0, 0.0]], margin=0.5)
    assert [r["reward"] for r in tied[0]] == [0, 0]
    with pytest.raises(ValueError, match="base_questions"):
        assign_rewards(tied, [0.0], "covers")
    with pytest.raises(ValueError, match="question scores"):
        assign_rewards(tied, [0.0], "covers", base_questions=[[0.0]])


def test_gold_logprobs_through_adapters_equal_each_adapter_alone(wrapped):
    model, tokenizer, memory, _ = wrapped
    pairs = [(q, gold) for task in tasks() for q, gold in task.questions]
    examples = qa_examples(tokenizer, [qa_prompt(tokenizer, q) for q, _ in pairs], [gold for _, gold in pairs])
    index = [-1, 0, 1, 2, 0, 2]
    plain = gold_logprobs(model, tokenizer, examples)
    with batched_adapters(memory, 3, rank=4, generator=torch.Generator().manual_seed(1)) as adapters:
        with torch.no_grad():  # B starts at 0: give every adapter an effect
            for B in adapters.B.values():
                B.normal_(0.0, 0.3)
        shared = gold_logprobs_with_adapters(model, tokenizer, adapters, examples, index, batch_size=4)
        alone = [gold_logprobs_with_adapters(model, tokenizer, adapters, [example], [k])[0]
                 for example, k in zip(examples, index)]
        with pytest.raises(ValueError, match="adapter_index"):
            gold_logprobs_with_adapters(model, tokenizer, adapters, examples, index[:2])
    for got, want in zip(shared, alone):
        assert got == pytest.approx(want, abs=1e-4)
    assert shared[0] == pytest.approx(plain[0], abs=1e-4)  # -1: no adapter
    assert any(abs(a - b) > 1e-3 for got, want in zip(shared[1:], plain[1:]) for a, b in zip(got, want))


def test_document_baseline_scores_an_adapter_trained_on_the_document(wrapped, tmp_path):
    model, tokenizer, memory, engine = wrapped
    scores = {}
    for baseline in ("unadapted", "document"):
        config = tiny_dreaming(reward_score="gold_log_prob", reward_baseline=baseline, inner_epochs=8,
                               inner_adapters=2, objective="sft")
        dreamer = Dreamer(model, tokenizer, memory, config, metric=lambda p, g: 0.0, output_dir=tmp_path / baseline,
                          engine=engine, seed=2)
        scores[baseline], per_question = dreamer.base_scores(tasks())
        assert [len(own) for own in per_question] == [len(task.questions) for task in tasks()]
    prompts = [[qa_prompt(tokenizer, q) for q, _ in task.questions] for task in tasks()]
    for task, own, score in zip(tasks(), prompts, scores["unadapted"]):
        values = gold_logprobs(model, tokenizer, qa_examples(tokenizer, own, [gold for _, gold in task.questions]))
        assert score == pytest.approx(sum(map(sum, values)) / sum(map(len, values)), abs=1e-4)
    # training on the passage that states the answers raises their log-probability
    assert all(d > u for d, u in zip(scores["document"], scores["unadapted"]))


def test_dreamer_fit_with_the_dense_reward_against_the_document(wrapped, tmp_path):
    _, result = _fit(wrapped, tmp_path, 1, reward_score="gold_log_prob", reward_baseline="document",
                     reward="best_of_m")
    (summary,) = result["rounds"]
    assert all(score < 0 for score in result["base_scores"]) and summary["adapted_score"] < 0
    assert summary["rewarded"] <= summary["documents"]
    saved = json.loads((tmp_path / "round-00" / "dreams.json").read_text())
    for own, base in zip(saved["dreams"], result["base_scores"]):
        kept = [d for d in own if d["kept"]]
        best = max(kept, key=lambda d: d["score"])
        assert [d["reward"] for d in kept] == [int(d is best and d["score"] > base) for d in kept]


def test_dreamer_fit_with_the_covers_reward(wrapped, tmp_path):
    _, result = _fit(wrapped, tmp_path, 1, reward_score="gold_log_prob", reward_baseline="document",
                     reward="covers")
    saved = json.loads((tmp_path / "round-00" / "dreams.json").read_text())
    for own, task, base in zip(saved["dreams"], tasks(), result["base_question_scores"]):
        assert len(base) == len(task.questions)
        kept = [d for d in own if d["kept"]]
        for d in kept:  # the score is the token-weighted mean of the questions' own scores: within their range
            assert len(d["question_scores"]) == len(task.questions)
            assert min(d["question_scores"]) - 1e-6 <= d["score"] <= max(d["question_scores"]) + 1e-6
        covered = [{q for q, (v, b) in enumerate(zip(d["question_scores"], base)) if v > b} for d in kept]
        rewarded = [c for d, c in zip(kept, covered) if d["reward"]]
        assert set().union(*covered) == set().union(*rewarded)  # every question some dream covers is covered
        assert all(c for c in rewarded)  # and no rewarded dream covers nothing


def test_without_repeated_lines_keeps_each_line_once_per_document():
    texts = ["Where was Ada born?\nWhat did Ada study?", "no question here", "1. where was ada born?\n\nWhen did Ada die?",
             "- What did Ada study?\nWhen did Ada die?", "What did Ada write?\nWhat did Ada write?"]
    kept = without_repeated_lines(texts)
    assert kept[0] is texts[0] and kept[1] is texts[1]  # nothing repeated: the same text
    assert kept[2] == "When did Ada die?"  # list marker and case ignored; the blank line goes too
    assert kept[3] is None  # every line written before
    assert kept[4] == "What did Ada write?"  # a line repeated inside one text
    assert without_repeated_lines([]) == []


def test_rest_em_learns_each_rewarded_dream_without_lines_an_earlier_one_wrote(wrapped):
    tokenizer = wrapped[1]
    stop = tokenizer.eos_token_id
    assert stop is not None

    def record(text, reward, stopped=True):
        return {"text": text, "reward": reward, "prompt_ids": [7, len(text)],
                "token_ids": encode(tokenizer, text) + ([stop] if stopped else [])}
    first = [record("Who is Ada?\nWhere was Ada born?", 1), record("Who is Ada?\nWhen did Ada die?", 0),
             record("Where was Ada born?\nWhat did Ada study?", 1), record("- who is ada?", 1),
             record("Where was Ada born?\nWhat did Ada write?", 1, stopped=False)]
    second = [record("Who is Ada?", 1)]  # another document: its lines are its own
    rewarded = [r for own in (first, second) for r in own if r["reward"]]
    assert rewarded_pairs([first, second], tokenizer) == [(r["prompt_ids"], r["token_ids"]) for r in rewarded]
    assert rewarded_pairs([first, second], tokenizer, distinct_lines=True) == [
        (first[0]["prompt_ids"], first[0]["token_ids"]),  # the first rewarded dream as sampled
        (first[2]["prompt_ids"], encode(tokenizer, "What did Ada study?") + [stop]),  # the unrewarded dream counts not
        (first[4]["prompt_ids"], encode(tokenizer, "What did Ada write?")),  # no stop token when it had none
        (second[0]["prompt_ids"], second[0]["token_ids"])]  # first[3] repeats only: left out


def test_dreamer_fit_trains_the_generator_on_distinct_lines_when_configured(wrapped, tmp_path, monkeypatch):
    import sleepcore.sleep.rest_em as rest_em_module
    calls = []

    def spy(records, tokenizer, **options):
        calls.append((options, rewarded_pairs(records, tokenizer, **options)))
        return calls[-1][1]
    monkeypatch.setattr(rest_em_module, "rewarded_pairs", spy)
    _, result = _fit(wrapped, tmp_path, 1, generator_distinct_lines=True)
    assert [options for options, _ in calls] == [{"distinct_lines": True}]
    pairs = calls[0][1]
    assert pairs and len(pairs) <= result["rounds"][0]["rewarded"]
    assert result["rounds"][0]["generator_steps"] == min(2, math.ceil(2 * len(pairs) / 2))


@pytest.mark.parametrize("objective", ["sft", "distill"])
def test_the_inner_loop_learns_dreams_as_the_sleep_does(wrapped, tmp_path, monkeypatch, objective):
    model, tokenizer, memory, engine = wrapped
    calls = []
    real = BatchedRuntime.next_token_loss

    def spy(self, examples, pad, **kwargs):
        calls.append((examples, kwargs.get("teacher_prompt")))
        return real(self, examples, pad, **kwargs)

    monkeypatch.setattr(BatchedRuntime, "next_token_loss", spy)
    config = tiny_dreaming(objective=objective, inner_epochs=1, inner_adapters=2)
    dreamer = Dreamer(model, tokenizer, memory, config, metric=lambda p, g: 0.0, output_dir=tmp_path, engine=engine)
    chosen = tasks(2)
    examples = [dream_examples(tokenizer, f"Line one about {k}.\nLine two.", task.document) for k, task in enumerate(chosen)]
    dreamer._inner_loop(examples, chosen, seed=0)
    assert calls
    for batch, teacher_prompt in calls:
        if objective == "sft":
            assert teacher_prompt is None
            continue
        for k, own in enumerate(batch):  # each adapter's teacher reads its own task's document first
            context = encode(tokenizer, with_context(chosen[k].document, ""))
            for prompt, _ in own:
                assert teacher_prompt(k, prompt) == after_context(context, prompt, tokenizer.bos_token_id)
    assert after_context([1, 8], [1, 5], 1) == [1, 8, 5] and after_context([7], [5], None) == [7, 5]

