"""The sleep cycle end to end on a tiny random model: Knowledge Seeding lowers the teacher's KL to
the student on the replay set, every loss term runs, and a crashed sleep resumes to the same state."""

from __future__ import annotations

import json

import pytest
import torch

from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
from sleepcore.models import tiny_model
from sleepcore.rollout import Engine
from sleepcore.sleep import hidden_states, knowledge_seeding
from sleepcore.sleep.config import KnowledgeSeedingConfig, SleepConfig
from sleepcore.sleep.sleeper import Sleeper
from sleepcore.tasks.biographies import BiographyConfig, generate_biographies
from _crash import sleep_until_crash

DATASET = generate_biographies(BiographyConfig(num_people=3, seed=1))


def make_sleeper(seeding: KnowledgeSeedingConfig, **options) -> Sleeper:
    model, tokenizer = tiny_model(DATASET.passages + DATASET.company_passages, seed=0)
    with torch.no_grad():  # a random model barely reads its context: sharpen it so the teacher differs
        model.get_output_embeddings().weight.mul_(20.0)
    torch.manual_seed(0)
    memory = ContinuumMemory.wrap(model, MemoryConfig(levels=(LevelConfig(rank=8, slots=2, period=1024),)))
    config = SleepConfig(seeding=seeding, max_prompts=6, **options)
    sleeper = Sleeper(model, tokenizer, memory, config, engine=Engine(model, tokenizer, kv_memory_bytes=32 << 20))
    sleeper.wake(DATASET.passages)
    return sleeper


def test_distillation_lowers_the_teachers_kl_on_the_replay_set():
    seeding = KnowledgeSeedingConfig(alpha=1.0, on_policy=0.0, steps=25, batch_size=6, max_new_tokens=12,
                                     learning_rate=3e-3, samples_per_prompt=1)
    sleeper = make_sleeper(seeding, prompt_builders=("continuation",))
    summary = sleeper.sleep(progress=False)
    losses = [step["gkd"] for step in summary["history"]]
    assert summary["kl_after"] < 0.5 * summary["kl_before"], summary
    assert sum(losses[-5:]) < sum(losses[:5])
    assert sleeper.buffer == [] and sleeper.memory.active_slots(0) == [summary["slot"]]


def test_full_objective_runs_every_term_and_logs_json_lines(tmp_path):
    seeding = KnowledgeSeedingConfig(steps=2, batch_size=3, max_new_tokens=8, completions=2, samples_per_prompt=1)
    sleeper = make_sleeper(seeding, output_dir=str(tmp_path), checkpoint_every=1)
    summary = sleeper.sleep(progress=False)
    lines = [json.loads(line) for line in (tmp_path / "sleep-000" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    for line in lines:
        assert set(line) >= {"loss", "gkd", "lti", "reward", "kl_teacher", "tokens_per_s"}
        assert 0.0 <= line["reward"] <= 1.0 and line["gkd"] >= 0.0
    assert summary["replay_samples"] > 0


def test_interrupted_sleep_resumes_to_the_uninterrupted_state(tmp_path, monkeypatch):
    seeding = KnowledgeSeedingConfig(steps=5, batch_size=3, max_new_tokens=8, completions=2, samples_per_prompt=1,
                                     learning_rate=3e-3)
    reference = make_sleeper(seeding, output_dir=str(tmp_path / "reference"), checkpoint_every=2)
    reference.sleep(progress=False)

    crashing = make_sleeper(seeding, output_dir=str(tmp_path / "crash"), checkpoint_every=2)
    sleep_until_crash(monkeypatch, crashing)  # after the step-2 checkpoint and step 3, before the step-4 checkpoint
    resumed = make_sleeper(seeding, output_dir=str(tmp_path / "crash"), checkpoint_every=2)
    resumed.sleep(progress=False)

    want = dict(reference.model.named_parameters())
    for name, parameter in resumed.model.named_parameters():
        assert torch.equal(parameter, want[name]), name
    logged = (tmp_path / "crash" / "sleep-000" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in logged] == [1, 2, 3, 4, 5]


def test_wake_questions_are_replayed_and_survive_a_resume(tmp_path, monkeypatch):
    seeding = KnowledgeSeedingConfig(alpha=1.0, steps=2, batch_size=2, max_new_tokens=6, samples_per_prompt=1)
    questions = [[f"What about fact {i}?"] for i in range(len(DATASET.passages))]
    sleeper = make_sleeper(seeding, prompt_builders=("wake_questions",), output_dir=str(tmp_path), checkpoint_every=1)
    sleeper.buffer.clear()  # make_sleeper woke on the passages without questions
    sleeper.asked.clear()
    sleeper.wake(DATASET.passages, questions=questions)
    seen = []
    real_sample = knowledge_seeding.KnowledgeSeeding.sample_replay
    monkeypatch.setattr(knowledge_seeding.KnowledgeSeeding, "sample_replay",
                        lambda self, prompts, **kw: seen.extend(prompts) or real_sample(self, prompts, **kw))
    sleeper.sleep(progress=False)
    assert {p.builder for p in seen} == {"wake_questions"} and len(seen) == len(DATASET.passages)
    for prompt in seen:
        assert f"What about fact {prompt.document}?" in prompt.student
        assert DATASET.passages[prompt.document] in prompt.teacher and DATASET.passages[0] not in prompt.student
    state = torch.load(next((tmp_path / "sleep-000").glob("step-*/state.pt")), weights_only=False)
    assert state["asked"] == questions and sleeper.asked == []
    with pytest.raises(ValueError, match="questions"):
        sleeper.wake(["a document"], questions=[["one?"], ["two?"]])


def test_token_budget_ends_the_sleep_and_cached_teacher_states_match_a_fresh_forward():
    seeding = KnowledgeSeedingConfig(alpha=1.0, on_policy=0.0, steps=50, batch_size=2, max_new_tokens=6,
                                     samples_per_prompt=1, token_budget=15)
    sleeper = make_sleeper(seeding, prompt_builders=("continuation",))
    summary = sleeper.sleep(progress=False)
    tokens = [step["tokens"] for step in summary["history"]]
    assert sum(tokens) >= 15 and sum(tokens[:-1]) < 15 and summary["steps"] == len(tokens) < 50
    seeding_run = knowledge_seeding.KnowledgeSeeding(sleeper.model, sleeper.tokenizer, sleeper.memory,
                                                     sleeper.engine, seeding, level=0, slot=1)
    sleeper.wake(DATASET.passages)
    samples = seeding_run.sample_replay(sleeper._prompts(seeding_run)[:3], progress=False)
    with torch.no_grad(), seeding_run.teacher():
        fresh = hidden_states.response_hidden(sleeper.model, [s.teacher_prompt for s in samples],
                                              [s.response for s in samples], seeding_run.pad_id)
    torch.testing.assert_close(torch.cat([s.teacher_hidden for s in samples]), fresh, rtol=1e-5, atol=1e-5)


def test_bad_input_is_refused():
    sleeper = make_sleeper(KnowledgeSeedingConfig(steps=1))
    with pytest.raises(ValueError, match="non-empty"):
        sleeper.wake([""])
    sleeper.buffer.clear()
    with pytest.raises(ValueError, match="wake buffer is empty"):
        sleeper.sleep(progress=False)
    with pytest.raises(ValueError, match="alpha"):
        KnowledgeSeedingConfig(alpha=1.5)
    with pytest.raises(ValueError, match="unknown sleep config field"):
        SleepConfig.from_dict({"sleepiness": 3})
    with pytest.raises(ValueError, match="teacher"):
        SleepConfig(teacher="oracle")


def test_question_format_uses_the_chat_template_when_there_is_one():
    from sleepcore.sleep.prompts import qa_prompt

    _, tokenizer = tiny_model(DATASET.passages, seed=0)
    assert qa_prompt(tokenizer, " Who? ") == "Question: Who?\nAnswer:"
    assert qa_prompt(tokenizer, "Who?", "Some text.") == "Some text.\n\nQuestion: Who?\nAnswer:"
    tokenizer.chat_template = "{% for m in messages %}<user>{{ m['content'] }}{% endfor %}<assistant>"
    assert qa_prompt(tokenizer, "Who?", "Some text.") == \
        "<user>Some text.\n\nAnswer with a short phrase only.\nQuestion: Who?<assistant>"
