"""``LevelConfig.router = "gate"``: a learnt per-token gate ``2 * sigmoid(w . x / sqrt(d) + b)`` on each
expert of a level, checked against a plain fp32 reference (forward and gradients), plus its
creation at exactly 1, persistence, training and validation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from _tiny_models import tiny_model
from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig

# level 0 gated (rank 4, odd slot count), level 1 a plain sum of rank 8: mixed in one product
GATED = MemoryConfig(levels=(LevelConfig(rank=4, slots=3, period=8, router="gate"),
                             LevelConfig(rank=8, slots=2, period=64)))
D = 32  # the tiny models' hidden size


def _ids(seed=3, shape=(2, 9)):
    return torch.randint(3, 131, shape, generator=torch.Generator().manual_seed(seed))


def _randomise(memory, seed=0):
    """Random B and router weights on every active expert (A is already random)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mlp in memory.layers.values():
            for level in mlp.levels:
                for slot, active in enumerate(level.active):
                    if active:
                        for parameter in level.parameters_of(slot)[1:]:
                            parameter.copy_(torch.randn(parameter.shape, generator=generator))


def _gated_memory(family="llama"):
    model = tiny_model(family)
    memory = ContinuumMemory.wrap(model, GATED)
    for level in (0, 0, 1):
        memory.new_expert(level)
    _randomise(memory)
    return model, memory


def _reference(mlp, config, x):
    """``base(x) + sum_e s_e g_e(x) B_e A_e x`` in fp32, expert by expert."""
    out = mlp.base(x)
    for level_index, level in enumerate(config.levels):
        slots = mlp.levels[level_index]
        for slot, active in enumerate(slots.active):
            if not active:
                continue
            term = (level.alpha / level.rank) * (x @ slots.A[slot].T @ slots.B[slot].T)
            if level.router == "gate":
                logit = x @ slots.gate_weight[slot] / math.sqrt(x.shape[-1]) + slots.gate_bias[slot]
                term = term * (2 * torch.sigmoid(logit)).unsqueeze(-1)
            out = out + term
    return out


@pytest.mark.parametrize("shape", [(2, 5), (1, 7), (3,)])
def test_forward_and_gradients_match_the_reference(shape):
    model, memory = _gated_memory()
    mlp = memory.layers[1]
    parameters = mlp.levels[0].parameters_of(1) + mlp.levels[1].parameters_of(0)
    for parameter in parameters:
        parameter.requires_grad_(True)
    x = torch.randn(*shape, D, requires_grad=True)
    grad_output = torch.randn(*shape, D)
    got = mlp(x)
    expected = _reference(mlp, memory.config, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(got, [x, *parameters], grad_output)
    expected_grads = torch.autograd.grad(expected, [x, *parameters], grad_output)
    assert len(parameters) == 6  # level 0 slot 1: A, B, w, b; level 1 slot 0: A, B
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_a_new_gated_expert_starts_as_the_plain_sum():
    """Router weights and bias start at 0, so the gate is exactly 1: the same function and the same
    gradients on A and B as an ungated expert with the same A and B."""
    plain = MemoryConfig(levels=(LevelConfig(rank=4, slots=3, period=8), LevelConfig(rank=8, slots=2, period=64)))
    outputs, grads = [], []
    for config in (GATED, plain):
        model = tiny_model("llama")
        memory = ContinuumMemory.wrap(model, config)
        slot = memory.new_expert(0, seed=5)
        with torch.no_grad():
            for mlp in memory.layers.values():
                mlp.levels[0].B[slot].fill_(0.01)
        parameters = memory.trainable(0, slot)
        logits = model(_ids()).logits
        logits.square().mean().backward()
        outputs.append(logits.detach())
        grads.append([p.grad for p in parameters[:2]])
    assert torch.equal(outputs[0], outputs[1])
    for g, e in zip(grads[0], grads[1]):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_new_expert_and_reset_zero_the_router_and_keep_the_function():
    model, memory = _gated_memory()
    before = model(_ids()).logits.detach()
    memory.deactivate(0, 0)
    _randomise(memory, seed=9)  # writes into active slots only: slot 0 keeps its router
    memory.activate(0, 0)
    with torch.no_grad():  # a reused slot must not keep an old router
        for mlp in memory.layers.values():
            mlp.levels[0].gate_bias[2].fill_(3.0)
    slot = memory.new_expert(0)
    assert slot == 2
    assert all(mlp.levels[0].gate_bias[2].item() == 0 and mlp.levels[0].gate_weight[2].abs().sum() == 0
               for mlp in memory.layers.values())
    memory.reset(0)
    assert all(p.abs().sum() == 0 for mlp in memory.layers.values() for p in mlp.levels[0].parameters())
    assert not torch.equal(before, model(_ids()).logits.detach())  # level 1's expert is still on


def test_a_closed_gate_switches_its_expert_off_per_token():
    model, memory = _gated_memory()
    mlp = memory.layers[0]
    x = torch.randn(2, 4, D)
    with torch.no_grad():
        memory.deactivate(1, 0)
        for slot in memory.active_slots(0):
            mlp.levels[0].gate_bias[slot].fill_(-60.0)
        torch.testing.assert_close(mlp(x), mlp.base(x), rtol=0, atol=1e-6)


def test_trainable_and_parameter_count_hold_the_router():
    model, memory = _gated_memory()
    chosen = memory.trainable(0, 1)
    assert len(chosen) == 4 * len(memory.layers)
    model(_ids()).logits.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in chosen)
    counts = memory.parameter_count()
    per_expert = (2 * 4 * D + D + 1) * len(memory.layers)
    assert counts[0] == {"active_experts": 2, "active_parameters": 2 * per_expert,
                         "allocated_parameters": 3 * per_expert}
    assert counts[1]["allocated_parameters"] == 2 * (2 * 8 * D) * len(memory.layers)


def test_save_load_round_trip_keeps_the_router(tmp_path):
    model, memory = _gated_memory("gemma3")
    reference = model(_ids()).logits.detach()
    path = tmp_path / "memory.safetensors"
    memory.save(path)
    fresh_model = tiny_model("gemma3")
    fresh = ContinuumMemory.wrap(fresh_model, GATED)
    fresh.load(path)
    assert torch.equal(fresh_model(_ids()).logits.detach(), reference)
    plain = ContinuumMemory.wrap(tiny_model("gemma3"), MemoryConfig(levels=(
        LevelConfig(rank=4, slots=3, period=8), LevelConfig(rank=8, slots=2, period=64))))
    with pytest.raises(ValueError, match="memory config mismatch"):
        plain.load(path)


def test_a_file_written_before_the_router_existed_loads(tmp_path):
    """Files saved before ``LevelConfig.router`` have no ``router`` in their config: a plain sum."""
    config = MemoryConfig(levels=(LevelConfig(rank=4, slots=3, period=8), LevelConfig(rank=8, slots=2, period=64)))
    model = tiny_model("llama")
    memory = ContinuumMemory.wrap(model, config)
    memory.new_expert(1)
    _randomise(memory)
    path, old = tmp_path / "memory.safetensors", tmp_path / "old.safetensors"
    memory.save(path)
    with safe_open(str(path), "pt") as handle:
        metadata, tensors = handle.metadata(), {name: handle.get_tensor(name) for name in handle.keys()}
    saved = json.loads(metadata["config"])
    for level in saved["levels"]:
        del level["router"]
    save_file(tensors, str(old), metadata={**metadata, "config": json.dumps(saved)})
    fresh_model = tiny_model("llama")
    fresh = ContinuumMemory.wrap(fresh_model, config)
    fresh.load(old)
    assert torch.equal(fresh_model(_ids()).logits.detach(), model(_ids()).logits.detach())


def test_gated_memory_under_torch_compile():
    model, memory = _gated_memory()
    mlp = memory.layers[1]
    x = torch.randn(2, 5, D)
    compiled = torch.compile(mlp, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), mlp(x), rtol=1e-5, atol=1e-6)


def test_router_validation():
    with pytest.raises(ValueError, match="^router must"):
        LevelConfig(router="softmax")
    with pytest.raises(ValueError, match="^router must"):
        LevelConfig(router=None)
