"""Dreamer (ReST-EM meta-training, issue 12) on tiny models: rounds, metrics, resume to the same
result, reward rules, the inner loop's adapters, and the generator's training pairs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sleepcore.lm import encode, gold_logprobs, qa_examples, qa_prompt
from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
from sleepcore.memory.batched import batched_adapters
from sleepcore.models import tiny_model
from sleepcore.rollout import Engine
from sleepcore.sleep.dream_tasks import assign_rewards
from sleepcore.sleep.dreamer import Dreamer
from sleepcore.sleep.dreams import (answered_examples, dream_examples, dream_questions, load_generator,
                                    without_repeated_lines)
from sleepcore.sleep.inner_loop import answer_with_adapters, gold_logprobs_with_adapters
from sleepcore.sleep.prompts import after_context, named_entities, with_context
from sleepcore.sleep.rest_em import rewarded_pairs
from sleepcore.sleep.sft import NextTokenStage
from sleepcore.train.batched import BatchedRuntime

from _dreamers import tiny_dreaming, tasks, question_dreams
from _sleepers import DATASET


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
