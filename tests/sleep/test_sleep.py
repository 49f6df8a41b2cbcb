"""The sleep cycle end to end on a tiny random model: Knowledge Seeding lowers the teacher's KL to
the student on the replay set, every loss term runs and logs its metrics, the shared-prefix student
forward computes what separate rows compute, a crashed sleep resumes to the same state, stages run
in order, and checkpoints are never unpickled."""

from __future__ import annotations

import dataclasses
import json
import pickle
import random
from functools import partial

import pytest
import torch

from sleepcore.lm import end_of_turn, response_hidden
from sleepcore.sleep import replay, seeding_rollouts
from sleepcore.sleep.config import KnowledgeSeedingConfig, NextTokenConfig, SleepConfig
from sleepcore.sleep.knowledge_seeding import KnowledgeSeeding
from sleepcore.sleep.prompts import split_sentences
from sleepcore.sleep.seeding_rollouts import shared_head
from sleepcore.sleep.sft import NextTokenStage
from sleepcore.sleep.stage import StageContext
from sleepcore.train import OptimizerConfig
from _crash import sleep_until_crash
from _sleepers import DATASET, make_sleeper, seeding


def woken(config, **options):
    sleeper = make_sleeper(config, **options)
    sleeper.wake(DATASET.passages)
    return sleeper


def test_distillation_lowers_the_teachers_kl_on_the_replay_set():
    config = seeding(3e-3, alpha=1.0, on_policy=0.0, steps=25, batch_size=6, max_new_tokens=12, samples_per_prompt=1,
                     prompt_builders=("continuation",))
    sleeper = woken(config)
    summary = sleeper.sleep(progress=False)
    stage = summary["stages"]["seeding"]
    losses = [step["gkd"] for step in stage["history"]]
    assert stage["kl_after"] < 0.5 * stage["kl_before"], stage
    assert sum(losses[-5:]) < sum(losses[:5])
    assert len(sleeper.buffer) == 0 and sleeper.memory.active_slots(0) == [summary["slot"]]


def test_full_objective_runs_every_term_and_logs_json_lines(tmp_path):
    config = seeding(steps=2, batch_size=3, max_new_tokens=8, completions=2, samples_per_prompt=1, alpha=0.5,
                     on_policy=0.5)  # the paper's mix (LTI and on-policy samples on; not the default)
    sleeper = woken(config, output_dir=str(tmp_path), checkpoint_every=1, stages=("seeding", "sft"),
                    sft=NextTokenConfig(steps=2))
    summary = sleeper.sleep(progress=False)
    metrics = (tmp_path / "sleep-000" / "seeding" / "metrics.jsonl").read_text().splitlines()
    lines = [json.loads(line) for line in metrics]
    assert [line["step"] for line in lines] == [1, 2]
    for line in lines:
        assert set(line) >= {"loss", "gkd", "lti", "reward", "reward_std", "zero_advantage_fraction", "kl_teacher",
                             "tokens", "forward_tokens", "seconds", "tokens_per_s", "lr", "grad_norm", "sleep"}
        assert 0.0 <= line["reward"] <= 1.0 and line["gkd"] >= 0.0 and line["reward_std"] >= 0.0
        assert 0.0 <= line["zero_advantage_fraction"] <= 1.0
        assert line["tokens"] > 0 and line["forward_tokens"] > 0
    seeding_summary, sft = summary["stages"]["seeding"], summary["stages"]["sft"]
    assert seeding_summary["replay_samples"] > 0 and seeding_summary["prepare_forward_tokens"] > 0
    assert all(step["forward_tokens"] == 0 and step["tokens"] > 0 for step in sft["history"])
    assert len(sleeper.buffer) == 0 and sleeper.memory.active_slots(0) == [summary["slot"]]


@pytest.mark.parametrize("alpha,on_policy,tree_tokens", [(0.5, 0.5, 2048), (1.0, 0.0, 2048), (0.5, 0.5, 60)])
def test_shared_prefixes_compute_what_separate_rows_compute(alpha, on_policy, tree_tokens, monkeypatch):
    """The batch as token trees (the prompts' common head once, the LTI completions inside their
    prefix's branch) gives the loss terms and the expert's gradient of the plain computation (each
    sequence in a row of its own with its whole prefix): the paper's mix with on-policy samples, the
    default (distillation of the teacher's samples only), and trees capped small (several per batch)."""
    monkeypatch.setattr(seeding_rollouts, "TREE_TOKENS", tree_tokens)
    config = seeding(steps=1, batch_size=3, max_new_tokens=8, completions=2, samples_per_prompt=1, on_policy=on_policy,
                     alpha=alpha, prompt_builders=("entity_questions",))
    config = dataclasses.replace(config, optimizer=OptimizerConfig(compute_dtype="float32"))
    sleeper = woken(config)
    slot = sleeper.memory.new_expert(0)
    context = StageContext(sleeper.model, sleeper.tokenizer, sleeper.memory, sleeper.engine, 0, slot)
    stages = [KnowledgeSeeding(context, config, share_prefixes=share) for share in (True, False)]
    stages[0].prepare(sleeper.buffer, progress=False)
    expert = sleeper.memory.trainable(0, slot)
    with torch.no_grad():
        for parameter in expert:
            parameter.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(2))
    start = [parameter.detach().clone() for parameter in expert]
    results = []
    for stage in stages:
        with torch.no_grad():
            for parameter, value in zip(expert, start):
                parameter.copy_(value)
        stage.rng, grads = random.Random(5), []
        real = stage.runtime.step
        stage.runtime.step = lambda tokens=0: grads.append([p.grad.clone() for p in expert]) or real(tokens)
        results.append((stage.step(stages[0].items[:3]), grads[0]))
    (shared, shared_grads), (plain, plain_grads) = results
    assert shared_head([item.student_prompt for item in stages[0].items[:3]]) > 2  # the tree shares a head
    assert len(seeding_rollouts._tree_groups(stages[0].items[:3], seeding_rollouts.Rollouts(
        [item.response for item in stages[0].items[:3]], []))) == (1 if tree_tokens == 2048 else 3)
    assert shared["forward_tokens"] == plain["forward_tokens"] and shared["tokens"] == plain["tokens"]
    for key in ("loss", "gkd", "lti", "kl_teacher", "reward", "zero_advantage_fraction"):
        assert shared[key] == (None if plain[key] is None else pytest.approx(plain[key], rel=1e-4, abs=1e-6)), key
    for got, want in zip(shared_grads, plain_grads):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("on_policy,token_selection,labelled", [(0.0, 1.0, "all"), (1.0, 1.0, "all"),
                                                                (0.0, 0.3, "all"), (0.0, 1.0, "fixed")])
def test_hard_labels_add_the_cross_entropy_on_the_teachers_tokens(on_policy, token_selection, labelled):
    """``hard_label_weight`` adds w * CE(student, teacher's sampled tokens) over the token count to
    the forward KL (loss and expert gradient against full logits in plain torch); on-policy items
    (the student's own samples) get no hard-label term. With ``token_selection`` both terms cover
    only the selected tokens, and so does the token count. With ``hard_label_items = "fixed"`` only
    the items with a fixed response get the hard-label term (here the first of three)."""
    weight, temperature = 0.7, 1.3
    config = seeding(steps=1, batch_size=3, max_new_tokens=8, samples_per_prompt=1, alpha=1.0, on_policy=on_policy,
                     hard_label_weight=weight, hard_label_items=labelled, temperature=temperature,
                     token_selection=token_selection)
    config = dataclasses.replace(config, optimizer=OptimizerConfig(compute_dtype="float32"))
    sleeper = woken(config)
    slot = sleeper.memory.new_expert(0)
    stage = KnowledgeSeeding(StageContext(sleeper.model, sleeper.tokenizer, sleeper.memory, sleeper.engine, 0, slot),
                             config)
    stage.prepare(sleeper.buffer, progress=False)
    expert = sleeper.memory.trainable(0, slot)
    with torch.no_grad():
        for parameter in expert:
            parameter.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(3))
    start = [parameter.detach().clone() for parameter in expert]
    items, grads = stage.items[:3], []
    if labelled == "fixed":
        items = [dataclasses.replace(items[0], fixed=True)] + items[1:]
    real = stage.runtime.step
    stage.runtime.step = lambda tokens=0: grads.append([p.grad.clone() for p in expert]) or real(tokens)
    stage.rng = random.Random(5)
    got = stage.step(items)
    with torch.no_grad():
        for parameter, value in zip(expert, start):
            parameter.copy_(value)
            parameter.grad = None
    if on_policy:  # the student's samples: the plain KL (hard_label_weight 0) on the same draws
        plain = KnowledgeSeeding(StageContext(sleeper.model, sleeper.tokenizer, sleeper.memory, sleeper.engine, 0,
                                              slot), dataclasses.replace(config, hard_label_weight=0.0))
        plain.items, plain.rng = stage.items, random.Random(5)
        plain.runtime.step = lambda tokens=0: grads.append([p.grad.clone() for p in expert]) or real(tokens)
        want = plain.step(items)["loss"]
    else:
        head = stage.head
        student = stage.runtime.response_hidden([s.student_prompt for s in items], [s.response for s in items],
                                                stage.pad_id)
        teacher = torch.cat([s.teacher_hidden for s in items]).float()
        targets = torch.tensor([t for s in items for t in s.response])
        if token_selection < 1:
            trained = torch.cat([s.trained for s in items])
            assert 0 < trained.sum() < trained.numel() and got["tokens"] == trained.sum()
            student, teacher, targets = student[trained], teacher[trained], targets[trained]
        log_q = torch.log_softmax(student @ head.T / temperature, dim=-1)
        log_p = torch.log_softmax(teacher @ head.T / temperature, dim=-1)
        kl = (log_p.exp() * (log_p - log_q)).sum()
        labelled_rows = len(items[0].response) if labelled == "fixed" else targets.numel()
        cross_entropy = -log_q[:labelled_rows].gather(1, targets[:labelled_rows, None]).sum()
        loss = (kl + weight * cross_entropy) / targets.numel()
        loss.backward()
        want = float(loss.detach())
        grads.append([p.grad.clone() for p in expert])
    assert got["loss"] == pytest.approx(want, rel=1e-4)
    for first, second in zip(*grads):
        torch.testing.assert_close(first, second, rtol=1e-3, atol=1e-6)


def test_token_selection_keeps_the_tokens_where_teacher_and_student_differ_most():
    """``token_selection`` trains the given fraction of the replay's response tokens with the
    largest KL(teacher || student) before the first step, drops samples left with none, and the
    selection survives a checkpoint round trip."""
    config = seeding(steps=1, batch_size=3, max_new_tokens=8, samples_per_prompt=1, alpha=1.0, token_selection=0.25)
    sleeper = woken(config)
    slot = sleeper.memory.new_expert(0)
    stage = KnowledgeSeeding(StageContext(sleeper.model, sleeper.tokenizer, sleeper.memory, sleeper.engine, 0, slot),
                             config)
    stage.prepare(sleeper.buffer, progress=False)
    token_kl = torch.cat(stage.token_kl(stage.items))  # the expert is still zero: the KL the selection saw
    trained = torch.cat([sample.trained for sample in stage.items])
    assert all(sample.trained.any() for sample in stage.items)
    assert token_kl[trained].min() >= token_kl[~trained].max()
    assert stage.summary()["trained_fraction"] == pytest.approx(float(trained.double().mean()))
    tensors, state = replay.replay_state(stage.items)
    restored = replay.replay_from_state(tensors, state)
    assert all(torch.equal(a.trained, b.trained) for a, b in zip(stage.items, restored))


def test_epochs_cover_the_replay_set_before_repeating(monkeypatch):
    config = seeding(alpha=1.0, on_policy=0.0, steps=4, batch_size=2, max_new_tokens=6, samples_per_prompt=1,
                     prompt_builders=("continuation",))
    seen = []
    real = KnowledgeSeeding.step
    monkeypatch.setattr(KnowledgeSeeding, "step", lambda self, batch: seen.append([id(s) for s in batch])
                        or real(self, batch))
    sleeper = woken(config)
    sleeper.sleep(progress=False)
    first_epoch = [sample for batch in seen[:3] for sample in batch]  # 6 continuation prompts, batches of 2
    assert len(first_epoch) == len(set(first_epoch)) == 6


def test_interrupted_sleep_resumes_to_the_uninterrupted_state(tmp_path, monkeypatch):
    config = seeding(3e-3, steps=5, batch_size=3, max_new_tokens=8, completions=2, samples_per_prompt=1)
    reference = woken(config, output_dir=str(tmp_path / "reference"), checkpoint_every=2)
    reference.sleep(progress=False)

    crashing = woken(config, output_dir=str(tmp_path / "crash"), checkpoint_every=2)
    sleep_until_crash(monkeypatch, crashing)  # after the step-2 checkpoint and step 3, before the step-4 checkpoint
    resumed = woken(config, output_dir=str(tmp_path / "crash"), checkpoint_every=2)
    resumed.sleep(progress=False)

    want = dict(reference.model.named_parameters())
    for name, parameter in resumed.model.named_parameters():
        assert torch.equal(parameter, want[name]), name
    logged = (tmp_path / "crash" / "sleep-000" / "seeding" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in logged] == [1, 2, 3, 4, 5]


def test_stages_run_in_order_and_a_crash_in_the_second_resumes_after_the_first(tmp_path, monkeypatch):
    config = seeding(steps=2, batch_size=3, max_new_tokens=6, completions=2, samples_per_prompt=1)
    options = dict(stages=("seeding", "sft"), sft=NextTokenConfig(steps=4, batch_size=2), checkpoint_every=1)
    reference = woken(config, output_dir=str(tmp_path / "reference"), **options)
    summary = reference.sleep(progress=False)
    assert list(summary["stages"]) == ["seeding", "sft"] and summary["stages"]["sft"]["steps"] > 0

    crashing = woken(config, output_dir=str(tmp_path / "crash"), **options)
    sleep_until_crash(monkeypatch, crashing, crash_at_call=3, stage=NextTokenStage)
    resumed = woken(config, output_dir=str(tmp_path / "crash"), **options)
    calls = []
    real = KnowledgeSeeding.prepare
    monkeypatch.setattr(KnowledgeSeeding, "prepare", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    again = resumed.sleep(progress=False)
    assert calls == []  # the finished seeding stage is not run again
    assert again["stages"]["seeding"]["kl_after"] == summary["stages"]["seeding"]["kl_after"]
    want = dict(reference.model.named_parameters())
    for name, parameter in resumed.model.named_parameters():
        assert torch.equal(parameter, want[name]), name


def test_a_pickled_checkpoint_is_refused_and_never_unpickled(tmp_path):
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    step = tmp_path / "sleep-000" / "seeding" / "step-000002"
    step.mkdir(parents=True)
    (step / "state.pt").write_bytes(pickle.dumps({"step": 2, "payload": Payload()}))
    (step.parent / "LATEST").write_text(step.name)
    sleeper = woken(seeding(steps=1, max_new_tokens=4, samples_per_prompt=1), output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="pickled checkpoint.*not loaded"):
        sleeper.sleep(progress=False)
    assert not (tmp_path / "pwned").exists()


def test_wake_questions_are_replayed_and_survive_a_resume(tmp_path, monkeypatch):
    config = seeding(alpha=1.0, steps=2, batch_size=2, max_new_tokens=6, samples_per_prompt=1,
                     prompt_builders=("wake_questions",))
    questions = [[f"What about fact {i}?"] for i in range(len(DATASET.passages))]
    sleeper = make_sleeper(config, output_dir=str(tmp_path), checkpoint_every=1)
    sleeper.wake(DATASET.passages, questions=questions)
    seen = []
    real_sample = replay.sample_replay
    monkeypatch.setattr("sleepcore.sleep.knowledge_seeding.sample_replay",
                        lambda tokenizer, engine, prompts, *a, **k: seen.extend(prompts)
                        or real_sample(tokenizer, engine, prompts, *a, **k))
    sleeper.sleep(progress=False)
    assert {p.builder for p in seen} == {"wake_questions"} and len(seen) == len(DATASET.passages)
    for prompt in seen:
        assert f"What about fact {prompt.document}?" in prompt.student
        assert DATASET.passages[prompt.document] in prompt.teacher and DATASET.passages[0] not in prompt.student
    state = json.loads(next((tmp_path / "sleep-000" / "seeding").glob("step-*/state.json")).read_text())
    assert state["owner"]["buffer"]["questions"] == questions and len(sleeper.buffer) == 0
    with pytest.raises(ValueError, match="questions"):
        sleeper.wake(["a document"], questions=[["one?"], ["two?"]])


def test_a_later_sleep_rehearses_what_earlier_sleeps_replayed(tmp_path, monkeypatch):
    config = seeding(alpha=1.0, steps=1, batch_size=2, max_new_tokens=4, samples_per_prompt=1,
                     prompt_builders=("wake_questions", "rehearsal"), rehearsal_share=0.5)
    sleeper = make_sleeper(config, output_dir=str(tmp_path), checkpoint_every=1)
    seen = []
    real_sample = replay.sample_replay
    monkeypatch.setattr("sleepcore.sleep.knowledge_seeding.sample_replay",
                        lambda tokenizer, engine, prompts, *a, **k: seen.append(prompts)
                        or real_sample(tokenizer, engine, prompts, *a, **k))
    sleeper.wake(DATASET.passages, questions=[[f"What about fact {i}?", f"And fact {i}?"] for i in range(3)])
    summary = sleeper.sleep(progress=False)
    assert len(seen) == 2 and seen[1] == []  # the prompts that read a document, then the others: none yet
    first = [p.student for p in seen[0]]
    assert {p.builder for p in seen[0]} == {"wake_questions"}  # nothing earlier to rehearse yet
    assert sorted(sleeper.buffer.earlier) == sorted(first) and len(first) == 6
    assert "student_prompts" not in summary["stages"]["seeding"]
    sleeper.wake(DATASET.passages[:2], questions=[["Who is new?"], ["Where is new?"]])
    sleeper.sleep(progress=False)
    assert {p.builder for p in seen[2]} == {"wake_questions"} and {p.builder for p in seen[3]} == {"rehearsal"}
    rehearsed = seen[3]
    assert len(rehearsed) == 1  # ceil(0.5 x 2 new prompts)
    assert rehearsed[0].student in first and rehearsed[0].teacher == rehearsed[0].student
    assert len(sleeper.buffer.earlier) == 8  # the rehearsed prompt is not stored twice
    state = json.loads(next((tmp_path / "sleep-001" / "seeding").glob("step-*/state.json")).read_text())
    assert sorted(state["owner"]["buffer"]["earlier"]) == sorted(first)


@pytest.mark.parametrize("with_earlier", [False, True])
def test_a_teacher_reading_a_document_does_so_without_earlier_sleeps_experts(with_earlier):
    config = seeding(3e-2, alpha=1.0, on_policy=0.0, steps=3, batch_size=2, max_new_tokens=4, samples_per_prompt=1,
                     prompt_builders=("wake_questions", "rehearsal"), teacher_reads_with_earlier_experts=with_earlier)
    sleeper = make_sleeper(config)
    sleeper.wake(DATASET.passages[:1], questions=[["Where was the first person born?"]])
    earlier = sleeper.sleep(progress=False)["slot"]
    sleeper.wake(DATASET.passages[1:2], questions=[["Where was the second person born?"]])
    new = sleeper.memory.new_expert(0)
    run = KnowledgeSeeding(StageContext(sleeper.model, sleeper.tokenizer, sleeper.memory, sleeper.engine, 0, new),
                           config)
    with run.teacher():
        assert sleeper.memory.active_slots(0) == ([earlier] if with_earlier else [])
    with run.teacher(reading=False):  # rehearsal: the smaller self answers from its weights
        assert sleeper.memory.active_slots(0) == [earlier]
    assert sleeper.memory.active_slots(0) == sorted([earlier, new])
    run.prepare(sleeper.buffer, progress=False)
    reading = next(s for s in run.items if s.teacher_prompt != s.student_prompt)
    recalling = next(s for s in run.items if s.teacher_prompt == s.student_prompt)

    def forward(sample, active, *, trainer=False):  # the engine's plain forward, or the trainer's (its dtype)
        for slot in (earlier, new):
            (sleeper.memory.activate if slot in active else sleeper.memory.deactivate)(0, slot)
        with torch.no_grad():
            hidden = (run.runtime.response_hidden if trainer else partial(response_hidden, sleeper.model))(
                [sample.teacher_prompt], [sample.response], run.pad_id)
        sleeper.memory.activate(0, earlier), sleeper.memory.activate(0, new)
        return hidden

    reader = [earlier] if with_earlier else []
    assert not torch.allclose(forward(reading, [earlier]), forward(reading, []), atol=1e-3)  # the expert matters
    for sample, active in ((reading, reader), (recalling, [earlier])):  # each sampled by the right teacher
        torch.testing.assert_close(sample.teacher_hidden, forward(sample, active), rtol=1e-4, atol=1e-5)
    stripped = [dataclasses.replace(s, teacher_hidden=None) for s in (reading, recalling)]  # on-policy: recomputed
    fresh = run._teacher_hidden(stripped, [s.response for s in stripped], [0, 1])
    expected = torch.cat([forward(reading, reader, trainer=True), forward(recalling, [earlier], trainer=True)])
    torch.testing.assert_close(fresh, expected.to(fresh.dtype), rtol=1e-4, atol=1e-5)


def test_sentence_answers_replay_the_documents_sentence_scored_by_the_teacher():
    config = seeding(alpha=1.0, on_policy=0.0, steps=2, batch_size=2, max_new_tokens=4, samples_per_prompt=2,
                     prompt_builders=("sentence_questions",), sentence_answers="sentence", prompts_per_document=20,
                     questions_per_sentence=3)
    config = KnowledgeSeedingConfig(**{**config.__dict__, "max_prompts": None})
    sleeper = make_sleeper(config)
    sleeper.wake(DATASET.passages[:2])
    name = DATASET.people[0].name
    sampled = []

    def generate(prompts, params, progress=True, return_hidden=False):  # the question writer, never the answers
        sampled.append((params.n, return_hidden))
        completion = lambda i: type("Completion", (), {"text": f" What is fact {i} about {name}?"})()  # noqa: E731
        return [type("Output", (), {"completions": [completion(i)] * params.n})() for i in range(len(prompts))]

    sleeper.engine.generate = generate
    run = KnowledgeSeeding(StageContext(sleeper.model, sleeper.tokenizer, sleeper.memory, sleeper.engine, 0,
                                        sleeper.memory.new_expert(0)), config)
    run.prepare(sleeper.buffer, progress=False)
    assert sampled == [(3, False)]  # questions_per_sentence written per sentence; no answer sampled
    sentences = split_sentences(DATASET.passages[0])
    closing = end_of_turn(sleeper.tokenizer)
    assert len(run.items) == len(sentences)  # one item per distinct question (the other person's are dropped)
    for sample in run.items:
        assert sample.response[-len(closing):] == closing and sample.fixed  # given, not sampled
        assert sleeper.tokenizer.decode(sample.response[:-len(closing)]).strip() in sentences
    assert all(s.fixed for s in replay.replay_from_state(*replay.replay_state(run.items)))  # kept by a checkpoint
    assert run.fixed_questions() == [[s.student_prompt, s.response] for s in run.items]  # all fixed, for rehearsal
    with torch.no_grad(), run.teacher():  # the teacher's states on the sentence, as a plain forward gives them
        fresh = response_hidden(sleeper.model, [s.teacher_prompt for s in run.items], [s.response for s in run.items],
                                run.pad_id)
    torch.testing.assert_close(torch.cat([s.teacher_hidden for s in run.items]), fresh, rtol=1e-4, atol=1e-5)
    assert run.step(run.items[:2])["tokens"] == sum(len(s.response) for s in run.items[:2])  # trains on them


def test_token_budget_ends_the_sleep_and_cached_teacher_states_match_a_fresh_forward():
    config = seeding(alpha=1.0, on_policy=0.0, steps=50, batch_size=2, max_new_tokens=6, samples_per_prompt=1,
                     token_budget=15, prompt_builders=("continuation",))
    sleeper = woken(config)
    stage = sleeper.sleep(progress=False)["stages"]["seeding"]
    tokens = [step["tokens"] for step in stage["history"]]
    assert sum(tokens) >= 15 and sum(tokens[:-1]) < 15 and stage["steps"] == len(tokens) < 50
    sleeper.wake(DATASET.passages)
    context = StageContext(sleeper.model, sleeper.tokenizer, sleeper.memory, sleeper.engine, 0,
                           sleeper.memory.new_expert(0))
    run = KnowledgeSeeding(context, config)
    prompts = replay.replay_prompts(sleeper.buffer, config, sleeper.tokenizer, sleeper.engine, run.teacher, seed=0)
    samples = replay.sample_replay(sleeper.tokenizer, sleeper.engine, prompts[:3], config, run.teacher, run.rng,
                                   progress=False)
    with torch.no_grad(), run.teacher():  # a plain fp32 forward of the teacher (the engine's dtype)
        fresh = response_hidden(sleeper.model, [s.teacher_prompt for s in samples], [s.response for s in samples],
                                run.pad_id)
    torch.testing.assert_close(torch.cat([s.teacher_hidden for s in samples]), fresh, rtol=1e-4, atol=1e-5)


def test_bad_input_is_refused():
    sleeper = make_sleeper(seeding(steps=1))
    with pytest.raises(ValueError, match="non-empty"):
        sleeper.wake([""])
    with pytest.raises(ValueError, match="wake buffer is empty"):
        sleeper.sleep(progress=False)
    with pytest.raises(ValueError, match="alpha"):
        KnowledgeSeedingConfig(alpha=1.5)
    with pytest.raises(ValueError, match="hard_label_weight"):
        KnowledgeSeedingConfig(hard_label_weight=-0.1)
    with pytest.raises(ValueError, match="token_selection"):
        KnowledgeSeedingConfig(token_selection=0.0)
    with pytest.raises(ValueError, match="on_policy"):
        KnowledgeSeedingConfig(token_selection=0.5, on_policy=0.5)
    with pytest.raises(TypeError, match="alpha"):
        KnowledgeSeedingConfig(alpha="high")
    with pytest.raises(ValueError, match="teacher"):
        SleepConfig(teacher="oracle")
    with pytest.raises(ValueError, match="stages"):
        SleepConfig(stages=("seeding", "dance"))
    with pytest.raises(ValueError, match="prompt_builders"):
        KnowledgeSeedingConfig(prompt_builders=("gossip",))


def test_shared_head_leaves_every_prompt_a_token_of_its_own():
    assert shared_head([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert shared_head([[1, 2, 3], [1, 2, 3]]) == 2  # equal prompts: the last token stays in each branch
    assert shared_head([[1, 2], [3, 4]]) == 0
    assert shared_head([[1, 2, 3]]) == 0  # one prompt: nothing to share
