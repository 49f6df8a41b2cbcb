"""The Dreaming stage in a Sleeper on tiny models: seeding then dreaming, and the rehearsal of the
consolidation replay and of earlier sleeps' questions (also after a resume)."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest
import torch

from sleepcore.lm import encode, pad_id, qa_prompt, response_hidden
from sleepcore.sleep.buffer import WakeBuffer
from sleepcore.sleep.dreaming import spread_by_answer
from sleepcore.sleep.dreams import dream_questions
from sleepcore.sleep.replay import ReplaySample

from _dreamers import tiny_dreaming, question_dreams
from _sleepers import DATASET, make_sleeper, seeding


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
