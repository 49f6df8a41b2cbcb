"""sleepcore.sleep.judge: the model as the semantic judge of the LTI reward (yes/no read off its
next-token distribution), the batch-judge protocol of imitation_reward, and a Knowledge Seeding
step with judge="model"."""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch

from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
from sleepcore.models import tiny_model
from sleepcore.rollout import Engine
from sleepcore.sleep.config import KnowledgeSeedingConfig, SleepConfig
from sleepcore.sleep.judge import NO, YES, ModelJudge
from sleepcore.sleep.rewards import imitation_reward, normalized_exact_match
from sleepcore.sleep.sleeper import Sleeper
from sleepcore.tasks.biographies import BiographyConfig, generate_biographies

DATASET = generate_biographies(BiographyConfig(num_people=3, seed=1))
CORPUS = DATASET.passages + DATASET.company_passages + ["Yes, yes. No, no."] * 20  # yes/no become tokens
A = ["Paris", "the cat sat on the mat", "", "London is big and old", "x", "Yes"]
B = ["paris", "a dog", "", "London", "y z w", "No"]


class Ones(torch.nn.Module):
    """A final norm that outputs ones: every last hidden state is the same, so the head decides."""

    def forward(self, hidden):
        return torch.ones_like(hidden)


def rigged(winner: str):
    model, tokenizer = tiny_model(CORPUS, seed=0)
    model.model.norm = Ones()
    judge = ModelJudge(model, tokenizer)
    with torch.no_grad():  # logit of a token = sum of its head row: +1 for the winner's answers, -1 for the other's
        head = model.get_output_embeddings().weight
        head[judge.answer_ids] = -1.0 / head.shape[1]
        head[judge.answer_ids[:judge.yes_count] if winner == "yes" else judge.answer_ids[judge.yes_count:]] *= -1
    return judge


@pytest.mark.parametrize("winner, score", [("yes", 1.0), ("no", 0.0)])
def test_rigged_head_decides(winner, score):
    judge = rigged(winner)
    assert judge.score_pairs(A, B) == [score] * len(A)
    assert [judge(a, b) for a, b in zip(A, B)] == [score] * len(A)
    assert judge.score_pairs([], []) == []


def test_batches_match_single_pairs_and_enter_the_context():
    model, tokenizer = tiny_model(CORPUS, seed=0)
    entered = []

    @contextmanager
    def context():
        entered.append(torch.is_grad_enabled())
        yield

    judge = ModelJudge(model, tokenizer, context=context, batch_size=4)
    batched = judge.log_odds(A, B)
    assert entered == [False, False]  # 6 pairs in batches of 4, without gradient
    single = torch.cat([judge.log_odds([a], [b]) for a, b in zip(A, B)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)
    assert judge.score_pairs(A, B) == [judge(a, b) for a, b in zip(A, B)] == [float(x > 0) for x in single]
    assert "Text A: Paris\nText B: paris" in judge.prompt(" Paris ", "paris") and judge.prompt("a", "b").endswith(
        "\nAnswer:")  # no chat template: the plain prompt
    with pytest.raises(ValueError, match="same length"):
        judge.log_odds(["a"], [])
    with pytest.raises(TypeError, match="texts"):
        judge("a", None)


def test_errors_at_construction():
    model, tokenizer = tiny_model(DATASET.passages, seed=0)  # this vocab has no "yes" / "no" token
    assert all(len(tokenizer.encode(word, add_special_tokens=False)) > 1 for word in YES + NO)
    with pytest.raises(ValueError, match="single-token answers"):
        ModelJudge(model, tokenizer)
    model, tokenizer = tiny_model(CORPUS, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        ModelJudge(model, tokenizer, batch_size=0)


class BatchExactMatch:
    """A batch judge (score_pairs only) giving normalised exact match; counts its calls."""

    def __init__(self, scores=None):
        self.calls, self.scores = 0, scores

    def score_pairs(self, completion_texts, reference_texts):
        self.calls += 1
        if self.scores is not None:
            return self.scores
        return [normalized_exact_match(a, b) for a, b in zip(completion_texts, reference_texts)]


def test_imitation_reward_calls_a_batch_judge_once():
    tokens, refs = [[1, 2, 3, 4], [1, 2], [5], [7, 8]], [[1, 2, 3, 4], [9, 9], [5, 6], [7, 8]]
    texts, ref_texts = ["Paris", "the Rome", "x", "a b"], ["paris.", "Rome", "y", "b a"]
    judge = BatchExactMatch()
    got = imitation_reward(tokens, refs, gamma=0.5, judge=judge, completion_texts=texts, reference_texts=ref_texts)
    assert judge.calls == 1
    assert got == imitation_reward(tokens, refs, gamma=0.5, completion_texts=texts, reference_texts=ref_texts)
    ok = dict(completion_texts=["a", "b"], reference_texts=["a", "b"])
    with pytest.raises(ValueError, match=r"judge.score_pairs must return one score per pair \(2\), got 1"):
        imitation_reward([[1], [2]], [[1], [2]], judge=BatchExactMatch([1.0]), **ok)
    with pytest.raises(ValueError, match=r"judge must return a score in \[0, 1\], got 1.5 for pair 1"):
        imitation_reward([[1], [2]], [[1], [2]], judge=BatchExactMatch([0.0, 1.5]), **ok)
    with pytest.raises(TypeError, match="judge must return a float, got str for pair 0"):
        imitation_reward([[1], [2]], [[1], [2]], judge=BatchExactMatch(["yes", 1.0]), **ok)


def test_knowledge_seeding_step_with_the_model_judge(monkeypatch):
    calls = []
    real = ModelJudge.score_pairs
    monkeypatch.setattr(ModelJudge, "score_pairs", lambda self, a, b: calls.append(len(a)) or real(self, a, b))
    model, tokenizer = tiny_model(CORPUS, seed=0)
    with torch.no_grad():  # as tests/test_sleep.py's make_sleeper: sharpen the random model
        model.get_output_embeddings().weight.mul_(20.0)
    torch.manual_seed(0)
    memory = ContinuumMemory.wrap(model, MemoryConfig(levels=(LevelConfig(rank=8, slots=2, period=1024),)))
    seeding = KnowledgeSeedingConfig(steps=1, alpha=0.5, batch_size=3, max_new_tokens=8, completions=2,
                                     samples_per_prompt=1, judge="model", max_prompts=6)
    sleeper = Sleeper(model, tokenizer, memory, SleepConfig(seeding=seeding),
                      engine=Engine(model, tokenizer, kv_memory_bytes=32 << 20))
    sleeper.wake(DATASET.passages)
    (step,) = sleeper.sleep(progress=False)["stages"]["seeding"]["history"]
    assert calls == [3 * 2]  # one batched call: batch_size prefixes x completions
    assert 0.0 <= step["reward"] <= 1.0 and math.isfinite(step["lti"])


def test_config_judge_choices():
    assert KnowledgeSeedingConfig().judge == "exact_match" and KnowledgeSeedingConfig(judge="model").judge == "model"
    with pytest.raises(ValueError, match="judge must be one of \\('exact_match', 'model'\\), got 'oracle'"):
        KnowledgeSeedingConfig(judge="oracle")
