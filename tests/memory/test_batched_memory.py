"""The memory layers' batched multi-adapter mode: each sequence runs through its own adapter, exactly
as through an expert slot holding the same weights; hooks come off on exit."""

from __future__ import annotations

import pytest
import torch

from _tiny_models import tiny_model
from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
from sleepcore.memory.batched import batched_adapters

CONFIG = MemoryConfig(levels=(LevelConfig(rank=4, slots=2, period=8),))


def _ids(shape=(4, 7)):
    return torch.randint(3, 131, shape, generator=torch.Generator().manual_seed(5))


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _nudge(adapters, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for B in adapters.B.values():
            B.copy_(torch.randn(B.shape, generator=generator) * 0.5)


def test_zero_adapters_keep_the_model_and_exit_restores_it(seed):
    model = tiny_model("llama")
    memory = ContinuumMemory.wrap(model, CONFIG)
    ids = _ids()
    reference = _logits(model, ids)
    with batched_adapters(memory, 3) as adapters:
        assert adapters.A[0].shape == (3, 4, 32) and adapters.B[0].shape == (3, 32, 4)
        assert adapters.scale == memory.config.levels[0].scale == 2.0
        adapters.set_index(torch.tensor([0, 2, -1, 1]))
        torch.testing.assert_close(_logits(model, ids), reference, rtol=0, atol=1e-6)
        _nudge(adapters)
        assert not torch.allclose(_logits(model, ids), reference)
        assert not any(p is q for p in adapters.parameters() for q in model.parameters())
    assert all(mlp.batched is None for mlp in memory.layers.values())
    assert torch.equal(_logits(model, ids), reference)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_each_sequence_matches_an_expert_with_its_adapter(seed, family):
    model = tiny_model(family)
    memory = ContinuumMemory.wrap(model, CONFIG)
    ids = _ids()
    index = torch.tensor([2, 0, -1, 2])
    with batched_adapters(memory, 3) as adapters:
        _nudge(adapters)
        adapters.set_index(index)
        batched = _logits(model, ids)
        per_token = adapters.rows(torch.zeros(4, 7, 1))
        adapters.set_index(per_token.reshape(4, 7))  # one index per token gives the same
        torch.testing.assert_close(_logits(model, ids), batched, rtol=0, atol=0)
        weights = [adapters.weights(k) for k in range(3)]
    slot = memory.new_expert(0)
    for row, k in enumerate(index.tolist()):
        if k < 0:
            with memory.switched_off():
                torch.testing.assert_close(batched[row], _logits(model, ids[row:row + 1])[0], rtol=1e-5, atol=1e-5)
            continue
        with torch.no_grad():
            for layer, (A, B) in weights[k].items():
                memory.layers[layer].levels[0].A[slot].copy_(A)
                memory.layers[layer].levels[0].B[slot].copy_(B)
        torch.testing.assert_close(batched[row], _logits(model, ids[row:row + 1])[0], rtol=1e-5, atol=1e-5)


def test_gradients_reach_only_the_adapters_used(seed):
    model = tiny_model("llama")
    memory = ContinuumMemory.wrap(model, CONFIG)
    with batched_adapters(memory, 4) as adapters:
        _nudge(adapters)
        adapters.set_index(torch.tensor([1, 3, 1, -1]))
        model(_ids()).logits.square().mean().backward()
        for parameter in adapters.parameters():
            used = parameter.grad.flatten(1).abs().sum(1) > 0
            assert used.tolist() == [False, True, False, True]


def test_bad_use():
    model = tiny_model("llama")
    memory = ContinuumMemory.wrap(model, CONFIG)
    with pytest.raises(ValueError, match="adapters"):
        with batched_adapters(memory, 0):
            pass
    with pytest.raises(TypeError, match="rank"):
        with batched_adapters(memory, 2, rank=2.5):
            pass
    with batched_adapters(memory, 2) as adapters:
        with pytest.raises(RuntimeError, match="set_index"):
            _logits(model, _ids())
        with pytest.raises(TypeError, match="adapter_index"):
            adapters.set_index(torch.zeros(4))
        adapters.set_index(torch.zeros(3, dtype=torch.long))
        with pytest.raises(ValueError, match="one per sequence"):
            _logits(model, _ids())
        with pytest.raises(RuntimeError, match="already open"):
            with batched_adapters(memory, 2):
                pass
        with pytest.raises(ValueError, match="^k"):
            adapters.weights(2)
    assert all(mlp.batched is None for mlp in memory.layers.values())
