"""WakeBuffer: what a sleep leaves for later sleeps' rehearsal, bounded by a uniform reservoir."""

import random

import pytest

from sleepcore.sleep.buffer import WakeBuffer
from sleepcore.sleep.config import KnowledgeSeedingConfig


def test_consolidated_drops_documents_and_keeps_new_prompts_once_in_order():
    buffer = WakeBuffer(earlier=["a", "b"], earlier_seen=2)
    buffer.add(["a document"], questions=[["asked?"]])
    after = buffer.consolidated(["c", "a", "c", "d"], capacity=10, rng=random.Random(0))
    assert after.documents == [] and after.questions == [] and len(after) == 0
    assert after.earlier == ["a", "b", "c", "d"] and after.earlier_seen == 4
    assert buffer.earlier == ["a", "b"]  # the buffer it came from is left as it was


def test_consolidated_past_capacity_keeps_a_uniform_sample_of_every_sleep():
    sleeps = [[f"sleep {n} prompt {i}" for i in range(10)] for n in range(3)]
    kept, trials = [0, 0, 0], 2000
    for seed in range(trials):
        rng, buffer = random.Random(seed), WakeBuffer()
        for replayed in sleeps:
            buffer = buffer.consolidated(replayed, capacity=10, rng=rng)
        assert len(buffer.earlier) == 10 == len(set(buffer.earlier)) and buffer.earlier_seen == 30
        for n, replayed in enumerate(sleeps):
            kept[n] += sum(text in replayed for text in buffer.earlier)
    # each of the 30 prompts is kept with probability 10/30: every sleep keeps 10/3 on average (thinning the
    # union at each sleep instead would leave the first sleep 2.5 and the last 5)
    for total in kept:
        assert abs(total / trials - 10 / 3) < 0.15


def test_state_round_trip_keeps_the_reservoir_count():
    buffer = WakeBuffer().consolidated([str(i) for i in range(7)], capacity=3, rng=random.Random(1))
    again = WakeBuffer.from_state(buffer.state())
    assert again == buffer and again.earlier_seen == 7
    old_checkpoint = {"documents": [], "questions": [], "earlier": ["x", "y"]}  # written before the count existed
    assert WakeBuffer.from_state(old_checkpoint).earlier_seen == 2


def test_rehearsal_capacity_must_be_positive():
    with pytest.raises(ValueError, match="rehearsal_capacity"):
        KnowledgeSeedingConfig(rehearsal_capacity=0)


def test_consolidated_keeps_the_learnt_dream_questions_in_their_own_reservoir():
    pairs = [[[1, i], [2, i]] for i in range(6)]
    buffer = WakeBuffer(earlier=["a"], earlier_seen=1)
    after = buffer.consolidated(["b"], capacity=10, rng=random.Random(0), dreams=pairs[:4] + pairs[:1],
                                dreams_capacity=3)
    assert after.earlier == ["a", "b"] and after.earlier_seen == 2  # the prompts' reservoir is its own
    assert after.earlier_dreams_seen == 4 and len(after.earlier_dreams) == 3  # a repeated pair counts once
    assert all(pair in pairs[:4] for pair in after.earlier_dreams)
    again = after.consolidated([], capacity=10, rng=random.Random(1), dreams=[tuple(map(tuple, p)) for p in pairs])
    # capacity defaults to `capacity`; the pair the first reservoir dropped is counted again, as a prompt would be
    assert again.earlier_dreams_seen == 7 and sorted(again.earlier_dreams) == sorted(pairs)
    assert WakeBuffer.from_state(again.state()) == again
    assert WakeBuffer.from_state({"documents": [], "questions": [], "earlier": []}).earlier_dreams == []
