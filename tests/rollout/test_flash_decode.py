"""The flash-attn decode path's plumbing, against a stand-in ``flash_attn`` module that implements
``flash_attn_with_kvcache``'s documented semantics in plain PyTorch (flash-attn itself needs a GPU
and a block size that is a multiple of 256; the real library runs in ``gpu_check.sh`` when present)."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
from _tiny_models import KV_BYTES, hf_greedy, random_prompts, tiny_model

from sleepcore.ops import paged_attention
from sleepcore.rollout import flash_decode as flash_decode_module
from sleepcore.rollout import Engine, SamplingParams, model_runner


def reference_flash_attn_with_kvcache(q, k_cache, v_cache, *, cache_seqlens, block_table, softmax_scale, causal,
                                      window_size, softcap):
    """flash-attn's contract: q ``[B, Sq, H, D]``; query i of sequence b sits at position
    ``cache_seqlens[b] - Sq + i`` and sees keys in ``[p - left, p + right]`` (-1 = unbounded),
    causal clipping at p; softcap ``c * tanh(s / c)`` before the softmax."""
    batch, sq, heads, dim = q.shape
    block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    assert cache_seqlens.dtype == torch.int32 and block_table.dtype == torch.int32 and causal
    out = torch.empty_like(q)
    left, right = window_size
    for b in range(batch):
        length = int(cache_seqlens[b])
        blocks = block_table[b, :math.ceil(length / block_size)].long()
        keys = k_cache[blocks].reshape(-1, kv_heads, dim)[:length].float()
        values = v_cache[blocks].reshape(-1, kv_heads, dim)[:length].float()
        for i in range(sq):
            p = length - sq + i
            positions = torch.arange(length)
            allowed = positions <= (p if right < 0 else min(p, p + right))
            if left >= 0:
                allowed &= positions >= p - left
            for h in range(heads):
                scores = keys[:, h // (heads // kv_heads)] @ q[b, i, h].float() * softmax_scale
                if softcap > 0:
                    scores = softcap * torch.tanh(scores / softcap)
                weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), 0)
                out[b, i, h] = (weights @ values[:, h // (heads // kv_heads)]).to(q.dtype)
    return out


@pytest.fixture
def fake_flash_attn(monkeypatch):
    module = types.ModuleType("flash_attn")
    module.flash_attn_with_kvcache = reference_flash_attn_with_kvcache
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    return module


@pytest.mark.parametrize("sliding_window,softcap", [(0, 0.0), (5, 0.0), (0, 20.0), (3, 8.0)])
def test_flash_decode_matches_paged_attention(fake_flash_attn, sliding_window, softcap, seed):
    torch.manual_seed(seed)
    num_blocks, block_size, kv_heads, heads, dim = 12, 4, 2, 6, 8
    k_cache = torch.randn(num_blocks, block_size, kv_heads, dim)
    v_cache = torch.randn_like(k_cache)
    lengths = torch.tensor([1, 7, 13])
    tables = torch.randperm(num_blocks)[:12].view(3, 4).to(torch.int32)
    q = torch.randn(3, heads, dim)
    got = flash_decode_module.flash_decode(q, k_cache, v_cache, tables, lengths, scale=0.3,
                                           sliding_window=sliding_window, softcap=softcap)
    want = paged_attention(q, k_cache, v_cache, tables, lengths, torch.arange(4), scale=0.3,
                           sliding_window=sliding_window, softcap=softcap)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_engine_decode_steps_use_flash_attn_when_enabled(fake_flash_attn, monkeypatch):
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return reference_flash_attn_with_kvcache(*args, **kwargs)

    fake_flash_attn.flash_attn_with_kvcache = counting
    monkeypatch.setattr(model_runner, "flash_decode_available", lambda device, block_size, dtype: True)
    model = tiny_model("gemma3")
    prompts = random_prompts([3, 11])
    engine = Engine(model, kv_memory_bytes=KV_BYTES)
    outputs = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=6), progress=False)
    for prompt, output in zip(prompts, outputs):
        assert output.completions[0].token_ids == hf_greedy(model, prompt, 6)
    assert len(calls) == 5 * 3 and all(shape[:2] == (2, 1) for shape in calls)  # 5 decode steps x 3 layers


def test_flash_decode_needs_cuda_half_precision_and_big_blocks():
    available = flash_decode_module.flash_decode_available
    assert not available(torch.device("cpu"), 256, torch.bfloat16)
    assert not available(torch.device("cuda"), 16, torch.bfloat16)
    assert not available(torch.device("cuda"), 256, torch.float32)
