"""The fast memory level learning online during wake (test-time training) and the memory teacher, on
a tiny random model: updates every C_1 tokens train one fast expert alone and lower the next-token
loss; a memory-teacher sleep seeds from the fast level without documents, then resets it; a
crashed memory-teacher sleep resumes to the uninterrupted state."""

from __future__ import annotations

import pytest
import torch

from sleepcore.lm import as_examples, next_token_loss
from sleepcore.sleep.config import NextTokenConfig, SleepConfig
from sleepcore.sleep import knowledge_seeding
from sleepcore.sleep.sleeper import Sleeper
from sleepcore.train import OptimizerConfig
from _crash import sleep_until_crash
from _sleepers import DATASET, make_sleeper as make_tiny_sleeper, seeding

PERIOD = 64  # C_1 in tokens; the three passages hold about 300
FAST = dict(wake_updates=True, wake_period=PERIOD, wake_learning_rate=1e-2)
MEMORY_TEACHER = dict(FAST, teacher="memory", receiver_level=1, wake_learning_rate=3e-3)
SEEDING = seeding(1e-2, alpha=1.0, on_policy=0.0, steps=40, batch_size=6, max_new_tokens=12, samples_per_prompt=1)


def make_sleeper(seeding_config=SEEDING, **options) -> Sleeper:
    return make_tiny_sleeper(seeding_config, levels=2, **options)


def parameters(sleeper: Sleeper) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in sleeper.model.named_parameters()}


def token_count(sleeper: Sleeper, documents: list[str]) -> int:
    return sum(len(sleeper.tokenizer(document)["input_ids"]) for document in documents)


def test_without_wake_updates_the_memory_is_untouched():
    sleeper = make_sleeper()
    before = parameters(sleeper)
    assert sleeper.wake(DATASET.passages) == 0
    assert sleeper.fast is None and sleeper.memory.active_slots(0) == []
    for name, parameter in sleeper.model.named_parameters():
        assert torch.equal(parameter, before[name]), name


def test_fast_level_trains_every_period_on_its_own_slot():
    sleeper = make_sleeper(**FAST)
    total = token_count(sleeper, DATASET.passages)
    assert total > 2 * PERIOD
    loss_before = next_token_loss(sleeper.model, sleeper.tokenizer, DATASET.passages)
    before = parameters(sleeper)
    assert sleeper.wake(DATASET.passages) == total // PERIOD
    fast = sleeper.fast
    assert fast.updates == total // PERIOD and fast.pending_tokens == total % PERIOD
    assert sleeper.memory.active_slots(0) == [fast.slot] and sleeper.memory.active_slots(1) == []
    expert = {f"levels.0.{matrix}.{fast.slot}" for matrix in "AB"}
    for name, parameter in sleeper.model.named_parameters():
        changed = not torch.equal(parameter, before[name])
        assert changed == any(name.endswith(suffix) for suffix in expert), name
    assert next_token_loss(sleeper.model, sleeper.tokenizer, DATASET.passages) < loss_before - 0.1


def test_the_count_carries_across_wake_calls():
    whole, piecewise = make_sleeper(**FAST), make_sleeper(**FAST)
    torch.manual_seed(0)  # the fast expert's A is drawn from the global RNG
    whole.wake(DATASET.passages)
    torch.manual_seed(0)
    updates = sum(piecewise.wake(document) for document in DATASET.passages)
    assert updates == whole.fast.updates and piecewise.fast.window == whole.fast.window
    want = dict(whole.model.named_parameters())
    for name, parameter in piecewise.model.named_parameters():
        assert torch.equal(parameter, want[name]), name


def test_memory_teacher_seeds_without_documents_then_resets_the_fast_level(monkeypatch):
    sleeper = make_sleeper(**MEMORY_TEACHER)
    sleeper.wake(DATASET.passages)
    seen = []
    real_sample_replay = knowledge_seeding.sample_replay

    def recording(tokenizer, engine, prompts, *args, **options):
        seen.extend(prompts)
        return real_sample_replay(tokenizer, engine, prompts, *args, **options)

    monkeypatch.setattr(knowledge_seeding, "sample_replay", recording)
    summary = sleeper.sleep(progress=False)
    seeded = summary["stages"]["seeding"]
    assert seen and all(prompt.teacher == prompt.student for prompt in seen)
    assert not any(document in prompt.teacher for prompt in seen for document in DATASET.passages)
    assert summary["fast_updates"] == -(-token_count(sleeper, DATASET.passages) // PERIOD)  # the pending window too
    assert seeded["kl_after"] < 0.5 * seeded["kl_before"], seeded
    memory = sleeper.memory
    assert memory.active_slots(0) == [] and memory.active_slots(1) == [summary["slot"]]
    assert all(not mlp.levels[0].B[slot].any() for mlp in memory.layers.values() for slot in range(2))
    assert sleeper.fast.slot is None and sleeper.fast.window == [] and len(sleeper.buffer) == 0


def test_interrupted_memory_teacher_sleep_resumes_to_the_uninterrupted_state(tmp_path, monkeypatch):
    seeding_config = seeding(3e-3, steps=5, batch_size=3, max_new_tokens=8, completions=2, samples_per_prompt=1)

    def woken(directory):
        sleeper = make_sleeper(seeding_config, output_dir=str(tmp_path / directory), checkpoint_every=2,
                               **MEMORY_TEACHER)
        sleeper.wake(DATASET.passages)
        return sleeper

    reference = woken("reference")
    reference.sleep(progress=False)
    crashing = woken("crash")
    sleep_until_crash(monkeypatch, crashing)  # after the step-2 checkpoint and step 3
    resumed = woken("crash")
    resumed.sleep(progress=False)
    want = dict(reference.model.named_parameters())
    for name, parameter in resumed.model.named_parameters():
        assert torch.equal(parameter, want[name]), name
    assert resumed.memory.active_slots(0) == [] and resumed.fast.window == []


def test_bad_wake_configuration_and_input_are_refused():
    with pytest.raises(ValueError, match="receiver_level"):
        SleepConfig(teacher="memory", wake_updates=True, receiver_level=0, wake_level=0)
    with pytest.raises(ValueError, match="wake_updates"):
        SleepConfig(teacher="memory", receiver_level=1)
    for field, value, error in (("wake_updates", 1, TypeError), ("wake_level", -1, ValueError),
                                ("wake_period", 0, ValueError), ("wake_steps", 0, ValueError),
                                ("wake_learning_rate", 0.0, ValueError), ("wake_batch_size", 2.5, TypeError)):
        with pytest.raises(error, match=field):
            SleepConfig(**{field: value})
    with pytest.raises(ValueError, match="wake_level"):
        make_sleeper(wake_updates=True, wake_level=2)
    with pytest.raises(ValueError, match="receiver_level"):
        make_sleeper(receiver_level=2)
    sleeper = make_sleeper()
    with pytest.raises(ValueError, match="texts"):
        as_examples(sleeper.tokenizer, [])
    with pytest.raises(ValueError, match="2 tokens or more"):
        as_examples(sleeper.tokenizer, [[5]])
    with pytest.raises(ValueError, match="steps"):
        NextTokenConfig(steps=0)
    with pytest.raises(ValueError, match="learning_rate"):
        NextTokenConfig(optimizer=OptimizerConfig(learning_rate=-1.0))
