"""The Dreaming stage's items on tiny models: the teacher reads distilled dreams after their document,
fixed answers, distinct and balanced questions, question rewrites, the trained generator's slot, and
the stage's stopping rules."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch

from sleepcore.lm import encode, pad_id, qa_prompt, response_hidden
from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
from sleepcore.models import tiny_model
from sleepcore.rollout import Engine
from sleepcore.sleep.dreaming import DreamingStage, balanced_questions, distinct_questions
from sleepcore.sleep.dreams import Dream, dream_questions, load_generator, save_generator
from sleepcore.sleep.paraphrases import QUESTION_REWRITE_EXAMPLES
from sleepcore.sleep.prompts import with_context
from sleepcore.sleep.replay import ReplaySample
from sleepcore.sleep.stage import StageContext

from _dreamers import tiny_dreaming, question_dreams
from _sleepers import DATASET, make_sleeper, seeding


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
