"""Continuum Memory: wrapping by structure, masked expert slots, gradient isolation, noise, persistence."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from _tiny_models import CONFIGS, tiny_model
from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig, MemoryMLP
from sleepcore.memory import checkpoint

FAMILIES = list(CONFIGS)
SMALL = MemoryConfig(levels=(LevelConfig(rank=4, slots=3, period=8), LevelConfig(rank=8, slots=2, period=64)))


def _ids(seed=3, shape=(2, 9)):
    return torch.randint(3, 131, shape, generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _nudge(memory, level, slot, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mlp in memory.layers.values():
            up = mlp.levels[level].B[slot]
            up.copy_(torch.randn(up.shape, generator=generator) * 0.5)


def _memory_with_experts(family="llama", config=SMALL):
    """A wrapped model with two nudged experts in level 0 and one in level 1."""
    model = tiny_model(family)
    memory = ContinuumMemory.wrap(model, config)
    for level, seed in ((0, 1), (0, 2), (1, 3)):
        _nudge(memory, level, memory.new_expert(level), seed)
    return model, memory


class _CountCalls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("family", FAMILIES)
def test_wrap_leaves_logits_unchanged_and_freezes_base(family):
    model = tiny_model(family)
    ids = _ids()
    reference = _logits(model, ids)
    base_parameters = list(model.parameters())
    memory = ContinuumMemory.wrap(model, MemoryConfig())
    assert sorted(memory.layers) == [0, 1, 2]
    assert all(isinstance(mlp, MemoryMLP) for mlp in memory.layers.values())
    assert torch.equal(_logits(model, ids), reference)
    assert not any(parameter.requires_grad for parameter in base_parameters)
    memory_parameters = [p for mlp in memory.layers.values() for p in mlp.levels.parameters()]
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in memory_parameters}
    assert memory.config.levels[0].rank == 16 and memory.config.levels[0].alpha == 32.0  # small-model default
    assert memory.layers[0].levels[0].A[0].shape == (16, 32) and memory.layers[0].levels[0].B[0].shape == (32, 16)


@pytest.mark.parametrize("family", FAMILIES)
def test_new_expert_keeps_outputs_and_a_nudge_changes_them(family):
    model = tiny_model(family)
    memory = ContinuumMemory.wrap(model, SMALL)
    ids = _ids()
    reference = _logits(model, ids)
    slot = memory.new_expert(0)
    assert slot == 0 and memory.active_slots(0) == [0]
    assert memory.layers[1].levels[0].A[0].abs().sum() > 0
    assert torch.equal(_logits(model, ids), reference)
    _nudge(memory, 0, slot)
    changed = _logits(model, ids)
    assert not torch.allclose(changed, reference)
    memory.deactivate(0, slot)
    assert torch.equal(_logits(model, ids), reference)
    memory.activate(0, slot)
    assert torch.equal(_logits(model, ids), changed)


def test_forward_matches_a_per_expert_sum_across_ranks():
    model, memory = _memory_with_experts()
    mlp = memory.layers[1]
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        expected = mlp.base(x)
        for level, config in enumerate(memory.config.levels):
            for slot in memory.active_slots(level):
                down, up = mlp.levels[level].A[slot], mlp.levels[level].B[slot]
                expected = expected + (config.alpha / config.rank) * (x @ down.T @ up.T)
        torch.testing.assert_close(mlp(x), expected, rtol=1e-5, atol=1e-6)


def test_no_active_expert_costs_only_the_base_call():
    model = tiny_model("llama")
    ids = _ids()
    with _CountCalls() as before:
        _logits(model, ids)
    ContinuumMemory.wrap(model, SMALL)
    with _CountCalls() as after:
        _logits(model, ids)
    assert after.calls == before.calls


def test_only_the_chosen_expert_receives_gradients():
    model, memory = _memory_with_experts()
    chosen = memory.trainable(0, 1)
    assert len(chosen) == 2 * len(memory.layers)
    model(_ids()).logits.square().mean().backward()
    chosen_ids = {id(p) for p in chosen}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in chosen)
    for name, parameter in model.named_parameters():
        if id(parameter) not in chosen_ids:
            assert parameter.grad is None, name
            assert not parameter.requires_grad, name


def test_optimizer_step_over_trainable_changes_only_that_expert():
    model, memory = _memory_with_experts()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    chosen = {id(p) for p in memory.trainable(1, 0)}
    optimizer = torch.optim.AdamW(memory.trainable(1, 0), lr=1e-2, weight_decay=0.1)
    model(_ids()).logits.square().mean().backward()
    optimizer.step()
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]) != (id(parameter) in chosen), name


def test_reset_and_parameter_count():
    model, memory = _memory_with_experts()
    counts = memory.parameter_count()
    per_expert_level0 = 2 * 4 * 32 * 3
    assert counts[0] == {"active_experts": 2, "active_parameters": 2 * per_expert_level0,
                         "allocated_parameters": 3 * per_expert_level0}
    assert counts[1]["active_experts"] == 1
    memory.reset(0)
    assert memory.active_slots(0) == [] and memory.active_slots(1) == [0]
    assert all(p.abs().sum() == 0 for mlp in memory.layers.values() for p in mlp.levels[0].parameters())
    assert memory.parameter_count()[0]["active_experts"] == 0


def test_new_expert_reuses_slots_without_reallocation():
    model = tiny_model("qwen2")
    memory = ContinuumMemory.wrap(model, SMALL)
    storage = [p.data_ptr() for p in model.parameters()]
    assert [memory.new_expert(0) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="level 0 has no free slot: all 3 slots"):
        memory.new_expert(0)
    memory.deactivate(0, 1)
    assert memory.new_expert(0) == 1
    assert [p.data_ptr() for p in model.parameters()] == storage


def test_a_seeded_new_expert_is_the_same_whatever_the_global_rng():
    """A seed fixes every layer's A (the run-to-run noise of session 18 came from unseeded experts);
    another seed or none draws another A; B starts at zero either way."""
    def expert(global_seed, slot_seed):
        memory = ContinuumMemory.wrap(tiny_model("llama"), SMALL)
        torch.manual_seed(global_seed)
        slot = memory.new_expert(0, seed=slot_seed)
        layers = [memory.layers[layer].levels[0] for layer in sorted(memory.layers)]
        assert all(level.B[slot].abs().sum() == 0 for level in layers)
        return torch.cat([level.A[slot].flatten() for level in layers])

    first = expert(0, 7)
    assert torch.equal(first, expert(1, 7))
    assert not torch.equal(first, expert(0, 8))
    assert not torch.equal(expert(0, None), expert(1, None))
    assert abs(first.std().item() - SMALL.init_std) < 0.2 * SMALL.init_std
    with pytest.raises(TypeError, match="seed must be an int"):
        ContinuumMemory.wrap(tiny_model("llama"), SMALL).new_expert(0, seed=1.5)


def test_save_load_round_trip_is_exact(tmp_path):
    model, memory = _memory_with_experts("gemma3")
    memory.deactivate(0, 0)
    memory.state["step"] = {"tokens": 4096, "level_1": 3}
    ids = _ids()
    reference = _logits(model, ids)
    path = tmp_path / "memory.safetensors"
    memory.save(path)
    assert sorted(os.listdir(tmp_path)) == ["memory.safetensors"]

    fresh_model = tiny_model("gemma3")
    fresh = ContinuumMemory.wrap(fresh_model, SMALL)
    fresh.load(path)
    assert torch.equal(_logits(fresh_model, ids), reference)
    assert fresh.active_slots(0) == [1] and fresh.active_slots(1) == [0]
    assert fresh.state == {"step": {"tokens": 4096, "level_1": 3}}
    for name, parameter in memory.layers[2].named_parameters():
        assert torch.equal(parameter, fresh.layers[2].get_parameter(name)), name


def test_load_rejects_mismatched_config_and_shapes(tmp_path):
    model, memory = _memory_with_experts()
    path = tmp_path / "memory.safetensors"
    memory.save(path)
    other = ContinuumMemory.wrap(tiny_model("llama"), MemoryConfig(levels=(LevelConfig(rank=4, slots=3, period=8),)))
    with pytest.raises(ValueError, match="memory config mismatch"):
        other.load(path)
    wider_config = CONFIGS["llama"]()
    wider_config.hidden_size = 48
    from transformers import AutoModelForCausalLM
    wider = ContinuumMemory.wrap(AutoModelForCausalLM.from_config(wider_config), SMALL)
    with pytest.raises(ValueError, match="shape mismatch"):
        wider.load(path)


@pytest.mark.parametrize("failure", ["writer", "replace"])
def test_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch, failure):
    model, memory = _memory_with_experts()
    path = tmp_path / "memory.safetensors"
    memory.save(path)
    previous = path.read_bytes()
    _nudge(memory, 0, 0, seed=9)

    def broken_writer(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    def broken_replace(source, destination):
        raise OSError("rename failed")

    if failure == "writer":
        monkeypatch.setattr(checkpoint, "save_file", broken_writer)
    else:
        monkeypatch.setattr(checkpoint.os, "replace", broken_replace)
    with pytest.raises(OSError):
        memory.save(path)
    assert path.read_bytes() == previous
    assert sorted(os.listdir(tmp_path)) == ["memory.safetensors"]


def test_switched_off_keeps_the_chosen_experts_and_restores_the_rest():
    model, memory = _memory_with_experts()
    ids = _ids()
    full = _logits(model, ids)
    with memory.switched_off():
        assert memory.active_slots(0) == [] and memory.active_slots(1) == []
    with memory.switched_off(keep=[(0, 1)]):
        assert memory.active_slots(0) == [1] and memory.active_slots(1) == []
        only = _logits(model, ids)
    assert memory.active_slots(0) == [0, 1] and memory.active_slots(1) == [0]
    assert torch.equal(_logits(model, ids), full) and not torch.allclose(only, full)


def test_random_expert_noise_changes_outputs_inside_and_restores_them_after():
    model, memory = _memory_with_experts("qwen3")
    ids = _ids()
    reference = _logits(model, ids)
    with memory.random_expert_noise(scale=20.0, generator=torch.Generator().manual_seed(5)):
        first = _logits(model, ids)
        assert not torch.allclose(first, reference)
        memory.resample_noise()
        assert not torch.allclose(_logits(model, ids), first)
        with pytest.raises(RuntimeError, match="already active"):
            with memory.random_expert_noise():
                pass
    assert torch.equal(_logits(model, ids), reference)
    with memory.random_expert_noise(scale=20.0, generator=torch.Generator().manual_seed(5)):
        assert torch.equal(_logits(model, ids), first)  # same generator seed, same noise
    with pytest.raises(RuntimeError, match="needs an open"):
        memory.resample_noise()
    with pytest.raises(ValueError, match="^scale"):
        with memory.random_expert_noise(scale=0.0):
            pass
    with pytest.raises(TypeError, match="^scale"):
        with memory.random_expert_noise(scale="big"):
            pass


def test_generate_with_active_memory_matches_uncached_generation():
    model, memory = _memory_with_experts("llama")
    ids = _ids(shape=(1, 6))
    kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=6, pad_token_id=0)
    cached = model.generate(ids, **kwargs)
    uncached = model.generate(ids, use_cache=False, **kwargs)
    assert cached.shape == (1, 12)
    assert torch.equal(cached, uncached)


def test_layer_subset_and_unwrap():
    model = tiny_model("llama")
    originals = [layer.mlp for layer in model.model.layers]
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    memory = ContinuumMemory.wrap(model, MemoryConfig(layers=(0,)))
    assert list(memory.layers) == [0]
    assert isinstance(model.model.layers[0].mlp, MemoryMLP)
    assert [layer.mlp for layer in model.model.layers[1:]] == originals[1:]
    with pytest.raises(ValueError, match="already wrapped"):
        ContinuumMemory.wrap(model, MemoryConfig())
    assert memory.unwrap() is model
    assert [layer.mlp for layer in model.model.layers] == originals
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    with pytest.raises(RuntimeError, match="unwrapped"):
        memory.new_expert(0)


def test_errors_name_the_bad_argument():
    model = tiny_model("qwen2")
    with pytest.raises(ValueError, match=r"layers \[3\] out of range: the model has 3"):
        ContinuumMemory.wrap(model, MemoryConfig(layers=(0, 3)))
    memory = ContinuumMemory.wrap(model, SMALL)
    with pytest.raises(ValueError, match="level must be"):
        memory.new_expert(2)
    with pytest.raises(ValueError, match="level must be"):
        memory.active_slots(-1)
    with pytest.raises(ValueError, match=r"^slot of level 1 must be an int in \[0, 1\], got 2"):
        memory.activate(1, 2)
    with pytest.raises(ValueError, match="slot of level 0 must be"):
        memory.trainable(0, 5)
    with pytest.raises(TypeError, match="^level must be an int"):
        memory.new_expert(1.0)
    with pytest.raises(TypeError, match="^slot of level 0 must be an int"):
        memory.activate(0, True)
    with pytest.raises(TypeError, match="^config must be"):
        ContinuumMemory.wrap(tiny_model("qwen2"), {"levels": ()})
    with pytest.raises(ValueError, match="no decoder layers"):
        ContinuumMemory.wrap(_ToyModel(with_attention=False), SMALL)
    with pytest.raises(ValueError, match="expected one MLP child"):
        ContinuumMemory.wrap(_ToyModel(with_attention=True), SMALL)
    with pytest.raises(ValueError, match="hidden size"):
        ContinuumMemory.wrap(nn.Sequential(nn.Linear(8, 8)), SMALL)


class _ToyModel(nn.Module):
    """Unsupported structures: layers of plain MLPs (no attention), or attention without an MLP."""

    def __init__(self, with_attention: bool):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        if with_attention:
            attention = lambda: nn.ModuleDict({name: nn.Linear(8, 8) for name in ("q", "k", "v", "o")})
            self.layers = nn.ModuleList(nn.ModuleDict({"attention": attention()}) for _ in range(2))
        else:
            self.layers = nn.ModuleList(nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 8)) for _ in range(2))

    def get_input_embeddings(self):
        return self.embed


@pytest.mark.parametrize("kwargs, field, error", [
    (dict(rank=0), "rank", ValueError), (dict(slots=0), "slots", ValueError), (dict(period=0), "period", ValueError),
    (dict(alpha=-1.0), "alpha", ValueError), (dict(alpha=math.inf), "alpha", ValueError),
    (dict(rank=8.0), "rank", TypeError), (dict(slots=True), "slots", TypeError),
    (dict(period="8"), "period", TypeError), (dict(alpha="2"), "alpha", TypeError),
])
def test_level_config_validation(kwargs, field, error):
    with pytest.raises(error, match=f"^{field} must"):
        LevelConfig(**kwargs)


@pytest.mark.parametrize("kwargs, field, error", [
    (dict(levels=()), "levels", ValueError),
    (dict(levels=(LevelConfig(period=8), LevelConfig(period=8))), "levels", ValueError),
    (dict(layers="some"), "layers", ValueError), (dict(layers=(0, 0)), "layers", ValueError),
    (dict(layers=()), "layers", ValueError), (dict(layers=(-1,)), r"layers\[0\]", ValueError),
    (dict(init_std=0.0), "init_std", ValueError),
    (dict(levels=LevelConfig()), "levels", TypeError), (dict(levels=(LevelConfig(), 3)), r"levels\[1\]", TypeError),
    (dict(layers=5), "layers", TypeError), (dict(layers=(0, 1.0)), r"layers\[1\]", TypeError),
    (dict(init_std=None), "init_std", TypeError),
])
def test_memory_config_validation(kwargs, field, error):
    with pytest.raises(error, match=f"^{field} must"):
        MemoryConfig(**kwargs)


def test_auto_rank_and_alpha():
    assert LevelConfig().resolved(10**9) == LevelConfig(rank=64, alpha=128.0)
    assert LevelConfig().resolved(10**9 - 1) == LevelConfig(rank=16, alpha=32.0)
    assert LevelConfig(rank=8, alpha=8).resolved(10**10).scale == 1.0


def test_rollout_engine_sees_the_memory_and_the_noise_hook():
    from _tiny_models import KV_BYTES, hf_greedy, random_prompts
    from sleepcore.rollout import Engine, SamplingParams

    model, memory = _memory_with_experts("qwen2")
    prompts = random_prompts([5, 9])
    engine = Engine(model, block_size=8, kv_memory_bytes=KV_BYTES)
    greedy = SamplingParams(temperature=0.0, max_tokens=8)
    outputs = engine.generate(prompts, greedy, progress=False)
    with_memory = [hf_greedy(model, prompt, 8) for prompt in prompts]
    assert [output.completions[0].token_ids for output in outputs] == with_memory
    for level in (0, 1):
        for slot in memory.active_slots(level):
            memory.deactivate(level, slot)
    assert [hf_greedy(model, prompt, 8) for prompt in prompts] != with_memory  # the memory matters here
    calls = []
    handle = engine.add_step_hook(lambda engine, batch: (calls.append(1), memory.resample_noise()))
    with memory.random_expert_noise(scale=20.0, generator=torch.Generator().manual_seed(0)):
        engine.generate(prompts, greedy, progress=False)
    handle.remove()
    assert calls


def test_experts_compute_in_their_own_dtype_under_autocast():
    model, memory = _memory_with_experts()
    mlp = next(iter(memory.layers.values()))
    x = torch.randn(2, 5, mlp.levels[0].A[0].shape[1])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = mlp(x)
        base = mlp.base(x)
    assert base.dtype == torch.bfloat16 and out.dtype == torch.float32
    with torch.no_grad():
        expected = base.float()
        for level, config in enumerate(memory.config.levels):
            for slot in memory.active_slots(level):
                down, up = mlp.levels[level].A[slot], mlp.levels[level].B[slot]
                expected = expected + (config.alpha / config.rank) * (x @ down.T @ up.T)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
