"""The training runtime: fp32 masters for low-precision parameters, the schedule, clipping, exact
normalisation under accumulation, epochs without replacement, and safe checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sleepcore.train import EpochBatches, LocalRuntime, OptimizerConfig, load_checkpoint, save_checkpoint
from sleepcore.train.checkpoint import latest_checkpoint


def _runtime(dtype=torch.float32, **options):
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(5, 3, dtype=dtype))
    return weight, LocalRuntime(None, [weight], OptimizerConfig(**options), total_steps=10)


def _quadratic_step(weight, runtime, target):
    runtime.backward(((weight.float() - target) ** 2).sum())
    return runtime.step()


def test_fp32_parameters_match_plain_adamw(seed):
    weight, runtime = _runtime(learning_rate=0.1, weight_decay=0.01)
    reference = torch.nn.Parameter(weight.detach().clone())
    optimizer = torch.optim.AdamW([reference], lr=0.1, weight_decay=0.01)
    target = torch.randn(5, 3)
    for _ in range(3):
        _quadratic_step(weight, runtime, target)
        optimizer.zero_grad()
        ((reference - target) ** 2).sum().backward()
        optimizer.step()
    torch.testing.assert_close(weight, reference, rtol=0, atol=0)
    assert weight.grad is None


def test_bf16_parameters_keep_fp32_masters():
    weight, runtime = _runtime(torch.bfloat16, learning_rate=1e-4)
    start = weight.detach().float().clone()
    for _ in range(5):  # each update is below bf16's resolution at these magnitudes
        _quadratic_step(weight, runtime, torch.zeros(5, 3))
    master = runtime.masters[0]
    assert master.dtype == torch.float32 and not torch.equal(master, start)
    torch.testing.assert_close(weight.float(), master.to(torch.bfloat16).float())


def test_a_new_runtime_drops_a_gradient_it_did_not_compute():
    """A backward before the runtime exists (e.g. the dream selection's, through a trained expert)
    must not leak into its first step."""
    weight = torch.nn.Parameter(torch.ones(3))
    (weight * 5.0).sum().backward()
    runtime = LocalRuntime(None, [weight], OptimizerConfig(learning_rate=0.1))
    assert weight.grad is None
    runtime.backward(weight.sum())
    torch.testing.assert_close(weight.grad, torch.ones(3))


def test_schedule_warmup_and_cosine():
    _, runtime = _runtime(learning_rate=1.0, warmup_steps=2, schedule="cosine", min_learning_rate_ratio=0.1)
    rates = [runtime.learning_rate(step) for step in range(10)]
    assert rates[:3] == [0.5, 1.0, 1.0]
    assert rates[-1] == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * 7 / 8)) / 2)
    assert all(a >= b for a, b in zip(rates[2:], rates[3:]))


def test_cosine_follows_the_token_budget_when_it_ends_the_stage_first():
    """A budget of 100 tokens at 25 per step ends the stage at step 4 of a cap of 1000: the cosine
    reaches its floor there (a schedule over the cap alone would hardly have moved), and the
    tokens trained survive a state round trip."""
    weight = torch.nn.Parameter(torch.randn(5, 3))
    config = OptimizerConfig(learning_rate=1.0, schedule="cosine", min_learning_rate_ratio=0.1)
    runtime = LocalRuntime(None, [weight], config, total_steps=1000, token_budget=100)
    rates = []
    for _ in range(4):
        runtime.backward((weight ** 2).sum())
        rates.append(runtime.step(tokens=25)["lr"])
    assert rates == pytest.approx([0.1 + 0.9 * (1 + math.cos(math.pi * p)) / 2 for p in (0, 0.25, 0.5, 0.75)])
    assert runtime.learning_rate() == pytest.approx(0.1)
    _, state = runtime.state_dict()
    again = LocalRuntime(None, [weight], config, total_steps=1000, token_budget=100)
    again.load_state_dict(runtime.state_dict()[0], state)
    assert again.trained_tokens == 100 and again.learning_rate() == pytest.approx(0.1)


def test_clipping_bounds_the_update_and_reports_the_norm():
    weight, runtime = _runtime(learning_rate=1.0, max_grad_norm=1e-3)
    runtime.backward((weight * 100).sum())
    assert runtime.step()["grad_norm"] == pytest.approx(100 * math.sqrt(15), rel=1e-5)


def test_accumulated_gradient_equals_the_whole_batch(seed):
    """Each micro-batch divides its sum by the whole batch's token count (the runtime's normaliser)."""
    hidden = torch.randn(7, 3)
    weight, runtime = _runtime()
    whole = weight.detach().clone().requires_grad_()
    ((hidden @ whole.T) ** 2).sum().div(7).backward()
    for rows in (slice(0, 3), slice(3, 7)):
        runtime.backward(((hidden[rows] @ weight.T) ** 2).sum() / runtime.token_count(7))
    torch.testing.assert_close(weight.grad, whole.grad)


def test_state_round_trip_resumes_the_same_updates(tmp_path):
    weight, runtime = _runtime(torch.bfloat16, learning_rate=1e-2, warmup_steps=1)
    target = torch.randn(5, 3)
    _quadratic_step(weight, runtime, target)
    tensors, state = runtime.state_dict()
    save_checkpoint(tmp_path, 1, tensors={**tensors, "weight": weight}, state={"runtime": state})
    _quadratic_step(weight, runtime, target)

    loaded, loaded_state = load_checkpoint(latest_checkpoint(tmp_path))
    json.dumps(loaded_state)  # nothing but JSON
    again, resumed = _runtime(torch.bfloat16, learning_rate=1e-2, warmup_steps=1)
    with torch.no_grad():
        again.copy_(loaded["weight"])
    resumed.load_state_dict({k: v for k, v in loaded.items() if k != "weight"}, loaded_state["runtime"])
    _quadratic_step(again, resumed, target)
    assert torch.equal(again, weight) and resumed.steps == runtime.steps == 2


def test_epochs_see_every_item_once_and_resume_in_place():
    batches = EpochBatches(7, 3, seed=5)
    epoch = [i for _ in range(3) for i in batches.next()]
    assert sorted(epoch) == list(range(7)) and batches.epoch == 0
    second = batches.next()
    assert batches.epoch == 1 and len(second) == 3
    resumed = EpochBatches(7, 3, seed=5)
    resumed.load_state_dict(batches.state_dict())
    assert [resumed.next() for _ in range(4)] == [batches.next() for _ in range(4)]
    assert EpochBatches(2, 8).next() in ([0, 1], [1, 0])


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="parameters"):
        LocalRuntime(None, [torch.zeros(2)])
    with pytest.raises(ValueError, match="token_budget"):
        LocalRuntime(None, [torch.nn.Parameter(torch.zeros(2))], token_budget=0)
    with pytest.raises(ValueError, match="schedule"):
        OptimizerConfig(schedule="linear")
    with pytest.raises(TypeError, match="warmup_steps"):
        OptimizerConfig(warmup_steps=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        EpochBatches(3, 0)


def test_compute_dtype_autocasts_the_frozen_base_only(monkeypatch):
    from _tiny_models import random_prompts, tiny_model
    from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
    from sleepcore.train import precision

    model = tiny_model("llama")
    memory = ContinuumMemory.wrap(model, MemoryConfig(levels=(LevelConfig(rank=4, slots=1),)))
    expert = memory.trainable(0, memory.new_expert(0))
    with torch.no_grad():
        for parameter in expert:
            parameter.normal_(0, 0.1)
    prompts, responses = random_prompts([6, 3]), random_prompts([4, 5], seed=2)
    hidden = {}
    for dtype in ("float32", "bfloat16"):
        runtime = LocalRuntime(model, expert, OptimizerConfig(compute_dtype=dtype))
        hidden[dtype] = runtime.response_hidden(prompts, responses, 0)
        hidden[dtype].square().sum().backward()
        assert hidden[dtype].dtype == torch.float32
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in expert)
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
        runtime.zero_grad()
    assert not torch.equal(hidden["float32"], hidden["bfloat16"])
    torch.testing.assert_close(hidden["bfloat16"], hidden["float32"], rtol=0.05, atol=0.05)

    parameter = torch.zeros(1)
    assert precision.autocast_dtype("float32", parameter) is None
    assert precision.autocast_dtype("bfloat16", parameter) is torch.bfloat16
    assert precision.autocast_dtype("bfloat16", parameter.bfloat16()) is None  # a bf16 model computes in bf16
    for flags, want in ((frozenset({"avx512f"}), None), (frozenset({"avx512f", "avx512_bf16"}), torch.bfloat16)):
        monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
        assert precision.autocast_dtype("auto", parameter) is want
    with pytest.raises(ValueError, match="compute_dtype"):
        OptimizerConfig(compute_dtype="half")


def test_forward_pads_the_width_and_cuts_it_back():
    """The runtime computes a batch at a width rounded up to WIDTH_MULTIPLE (few distinct matmul
    shapes under autocast) and returns the hidden states a plain forward gives, at the input's width."""
    from _tiny_models import random_prompts, tiny_model
    from sleepcore.lm import final_hidden, padded_batch
    from sleepcore.train.runtime import WIDTH_MULTIPLE

    model = tiny_model("llama")
    runtime = LocalRuntime(model, [torch.nn.Parameter(torch.zeros(1))], OptimizerConfig(compute_dtype="float32"))
    seen = []
    real = runtime.hidden_states
    runtime.hidden_states = lambda ids, mask, positions=None: seen.append(ids.shape) or real(ids, mask, positions)
    ids, mask = padded_batch(random_prompts([7, 12, 3]), 0, model.device)
    with torch.no_grad():
        got, want = runtime.forward(model, ids, mask), final_hidden(model, ids, mask)
    assert seen == [(3, WIDTH_MULTIPLE)] and got.shape == want.shape == (3, 12, model.config.hidden_size)
    torch.testing.assert_close(got * mask[..., None], want * mask[..., None], rtol=1e-5, atol=1e-5)


def test_train_attention_switches_only_forwards_with_a_gradient(monkeypatch):
    """``train_attention``: a forward whose backward runs (trees with their prepared mask, and padded
    batches) calls the chosen attention and gives SDPA's values and gradients; a no-grad forward (a
    cached teacher) keeps the model's own; the config is restored afterwards; an unknown name is
    refused."""
    from _tiny_models import random_prompts, tiny_model
    from sleepcore.lm import Branch
    from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.llama import modeling_llama

    model = tiny_model("llama")
    assert model.config._attn_implementation == "sdpa"
    memory = ContinuumMemory.wrap(model, MemoryConfig(levels=(LevelConfig(rank=4, slots=1),)))
    expert = memory.trainable(0, memory.new_expert(0))
    with torch.no_grad():
        for parameter in expert:
            parameter.normal_(0, 0.1)
    called = []

    def spy(name, real):
        return lambda *args, **kwargs: called.append(name) or real(*args, **kwargs)
    monkeypatch.setattr(modeling_llama, "eager_attention_forward", spy("eager", modeling_llama.eager_attention_forward))
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", spy("sdpa", ALL_ATTENTION_FUNCTIONS["sdpa"]))
    prompts, responses = random_prompts([6, 3]), random_prompts([4, 5], seed=2)
    trees = [[Branch(random_prompts([5])[0]), Branch(random_prompts([3], seed=3)[0], parent=0),
              Branch(random_prompts([2], seed=4)[0], parent=0)]]
    results = {}
    for choice in ("eager", "model"):
        runtime = LocalRuntime(model, expert, OptimizerConfig(compute_dtype="float32", train_attention=choice))
        called.clear()
        hidden = runtime.response_hidden(prompts, responses, 0)
        tree_hidden, _ = runtime.tree_hidden(trees, 0)
        (hidden.square().sum() + tree_hidden.square().sum()).backward()
        assert set(called) == {"eager" if choice == "eager" else "sdpa"}
        results[choice] = [hidden, tree_hidden, *(p.grad.clone() for p in expert)]
        runtime.zero_grad()
        called.clear()
        with torch.no_grad():
            runtime.response_hidden(prompts, responses, 0)
            runtime.tree_hidden(trees, 0)
        assert set(called) == {"sdpa"}
        assert model.config._attn_implementation == "sdpa"
    for got, want in zip(results["eager"], results["model"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    with pytest.raises(ValueError, match="train_attention"):
        OptimizerConfig(train_attention="flash")
