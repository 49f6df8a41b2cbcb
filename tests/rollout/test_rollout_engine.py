"""Engine end to end on tiny random models: greedy equals HF ``generate``, log-probs and returned
hidden states equal the trainer's, preemption and prefix caching change nothing, hooks apply, bad
input is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from _tiny_models import CONFIGS, KV_BYTES, hf_greedy, random_prompts, tiny_model
from transformers import AutoModelForCausalLM

from sleepcore.ops import fused_linear_logprobs
from sleepcore.rollout import Engine, SamplingParams

@pytest.mark.parametrize("family", list(CONFIGS))
@pytest.mark.parametrize("block_size,max_batch_tokens", [(16, 4096), (4, 7)])
def test_greedy_matches_hf_generate(family, block_size, max_batch_tokens):
    model = tiny_model(family)
    prompts = random_prompts([1, 9, 23, 40])
    engine = Engine(model, block_size=block_size, kv_memory_bytes=KV_BYTES, max_batch_tokens=max_batch_tokens)
    outputs = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=12), progress=False)
    for prompt, output in zip(prompts, outputs):
        completion = output.completions[0]
        assert completion.token_ids == hf_greedy(model, prompt, 12)
        ended_on_eos = completion.token_ids[-1] in engine.eos_token_ids
        assert completion.finish_reason == ("stop" if ended_on_eos else "length")
        assert output.prompt_token_ids == prompt


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_logprobs_and_hidden_states_equal_the_trainers(family):
    model = tiny_model(family)
    prompts = random_prompts([6, 19, 33], seed=2)
    engine = Engine(model, block_size=8, kv_memory_bytes=KV_BYTES)
    params = [SamplingParams(n=3, temperature=0.7, top_p=0.9, max_tokens=10, seed=5, ignore_eos=True),
              SamplingParams(n=2, temperature=1.3, top_k=20, max_tokens=10, seed=6, ignore_eos=True),
              SamplingParams(n=1, temperature=0.0, max_tokens=10, ignore_eos=True)]
    outputs = engine.generate(prompts, params, progress=False, return_hidden=True)
    head = model.get_output_embeddings().weight
    for prompt, output, param in zip(prompts, outputs, params):
        assert len(output.completions) == param.n
        for completion in output.completions:
            sequence = torch.tensor([prompt + completion.token_ids])
            with torch.no_grad():
                hidden = model.base_model(input_ids=sequence).last_hidden_state[0]
            targets = sequence[0, 1:]
            expected, _ = fused_linear_logprobs(hidden[:-1], head, targets, temperature=param.temperature or 1.0,
                                                return_entropy=False)
            got = torch.tensor(completion.logprobs)
            torch.testing.assert_close(got, expected[len(prompt) - 1:], atol=1e-5, rtol=0)
            assert completion.hidden.dtype == torch.float32 and completion.hidden.device.type == "cpu"
            torch.testing.assert_close(completion.hidden, hidden[len(prompt) - 1:-1], atol=1e-5, rtol=1e-4)
            truncated = torch.tensor(completion.truncated_logprobs)
            if param.temperature > 0:
                assert (truncated >= got - 1e-6).all() and (truncated <= 0).all()


def test_preemption_under_memory_pressure_changes_nothing():
    model = tiny_model("llama")
    prompts = random_prompts([5, 30, 17, 44, 9], seed=3)
    params = SamplingParams(n=3, temperature=1.0, top_p=0.95, max_tokens=24, seed=11, ignore_eos=True)
    roomy = Engine(model, block_size=4, kv_memory_bytes=KV_BYTES)
    expected = roomy.generate(prompts, params, progress=False, return_hidden=True)
    assert roomy.stats["preemptions"] == 0
    bytes_per_block = roomy.kv_cache.bytes_per_block
    tight = Engine(model, block_size=4, kv_memory_bytes=30 * bytes_per_block)
    got = tight.generate(prompts, params, progress=False, return_hidden=True)
    assert tight.stats["preemptions"] > 0
    for want, have in zip(expected, got):
        for a, b in zip(want.completions, have.completions):
            assert a.token_ids == b.token_ids
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)
            assert b.hidden.shape == (len(b.token_ids), model.config.hidden_size)
            torch.testing.assert_close(a.hidden, b.hidden, atol=1e-5, rtol=1e-4)
    assert all(c.hidden is None for o in roomy.generate(prompts[:1], params, progress=False) for c in o.completions)


def test_seeded_request_is_independent_of_the_batch():
    model = tiny_model("qwen2")
    prompts = random_prompts([12, 7, 25], seed=4)
    params = SamplingParams(n=2, temperature=1.0, top_k=30, max_tokens=15, seed=99, ignore_eos=True)
    engine = Engine(model, kv_memory_bytes=KV_BYTES)
    together = engine.generate(prompts, params, progress=False)
    alone = engine.generate([prompts[1]], params, progress=False)
    assert alone[0].completions[0].token_ids == together[1].completions[0].token_ids
    assert alone[0].completions[1].token_ids == together[1].completions[1].token_ids
    # samples of one request, and requests sharing a seed, draw independently
    assert together[1].completions[0].token_ids != together[1].completions[1].token_ids
    assert together[0].completions[0].token_ids[:5] != together[2].completions[0].token_ids[:5]


def test_prefix_cache_hits_give_identical_outputs():
    model = tiny_model("llama")
    shared = random_prompts([24], seed=5)[0]
    prompts = [shared + [7, 8, 9], shared + [10], shared]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    cached = Engine(model, block_size=8, kv_memory_bytes=KV_BYTES, max_num_seqs=1)
    plain = Engine(model, block_size=8, kv_memory_bytes=KV_BYTES, enable_prefix_caching=False)
    got = cached.generate(prompts, params, progress=False)
    want = plain.generate(prompts, params, progress=False)
    assert cached.stats["prefix_hits"] >= 4  # 3 blocks for the 2nd prompt, 2 (not 3: last block recomputed) for the 3rd
    assert plain.stats["prefix_hits"] == 0
    assert [o.completions[0].token_ids for o in got] == [o.completions[0].token_ids for o in want]


def test_forward_hooks_and_step_hooks_apply():
    model = tiny_model("llama")
    prompt = random_prompts([10], seed=6)[0]
    mlp = model.model.layers[1].mlp
    handle = mlp.register_forward_hook(lambda module, args, output: output * 3.0)
    engine = Engine(model, kv_memory_bytes=KV_BYTES)
    steps = []
    step_handle = engine.add_step_hook(lambda eng, batch: steps.append(batch.input_ids.numel()))
    hooked = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=6), progress=False)
    assert hooked[0].completions[0].token_ids == hf_greedy(model, prompt, 6)
    assert steps == [10, 1, 1, 1, 1, 1]
    handle.remove()
    step_handle.remove()
    engine.generate([prompt], SamplingParams(max_tokens=2), progress=False)
    assert len(steps) == 6


def test_stop_tokens_and_top_k_one():
    model = tiny_model("qwen3")
    prompt = random_prompts([8], seed=7)[0]
    engine = Engine(model, kv_memory_bytes=KV_BYTES)
    greedy = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True),
                             progress=False)[0].completions[0].token_ids
    top1 = engine.generate([prompt], SamplingParams(temperature=1.0, top_k=1, max_tokens=10, ignore_eos=True, seed=1),
                           progress=False)[0].completions[0].token_ids
    assert top1 == greedy
    stop = greedy[3]
    stopped = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=10, stop_token_ids=[stop],
                                                       ignore_eos=True), progress=False)[0].completions[0]
    assert stopped.token_ids == greedy[:greedy.index(stop) + 1]
    assert stopped.finish_reason == "stop"


def test_model_context_length_ends_with_length():
    model = tiny_model("llama")
    engine = Engine(model, kv_memory_bytes=KV_BYTES)
    prompt = random_prompts([250], seed=8)[0]
    completion = engine.generate([prompt], SamplingParams(max_tokens=50, ignore_eos=True),
                                 progress=False)[0].completions[0]
    assert len(completion.token_ids) == 6 and completion.finish_reason == "length"


def test_bad_input_is_refused_with_a_clear_error():
    model = tiny_model("llama")
    engine = Engine(model, kv_memory_bytes=KV_BYTES)
    with pytest.raises(TypeError, match="wrap a single prompt"):
        engine.generate("hello")
    with pytest.raises(ValueError, match="no tokenizer"):
        engine.generate(["hello"])
    with pytest.raises(ValueError, match=r"prompts\[1\] holds 131"):
        engine.generate([[1, 2], [131]])
    with pytest.raises(TypeError, match=r"prompts\[0\]"):
        engine.generate([[]])
    with pytest.raises(ValueError, match="context is 256"):
        engine.generate([list(range(3, 131)) * 2])
    with pytest.raises(ValueError, match="params has 1 entries for 2 prompts"):
        engine.generate([[1], [2]], [SamplingParams()])
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(TypeError, match="max_tokens"):
        SamplingParams(max_tokens=2.5)
    for kwargs, name in (({"temperature": -1.0}, "temperature"), ({"min_p": 1.0}, "min_p"), ({"n": 0}, "n"),
                         ({"top_k": -1}, "top_k"), ({"stop_token_ids": [3, -1]}, r"stop_token_ids\[1\]"),
                         ({"temperature": float("nan")}, "temperature")):
        with pytest.raises(ValueError, match=f"^{name} must"):
            SamplingParams(**kwargs)
    for kwargs, name in (({"top_p": True}, "top_p"), ({"temperature": "1"}, "temperature"), ({"seed": 1.0}, "seed"),
                         ({"ignore_eos": 1}, "ignore_eos"), ({"stop_token_ids": 7}, "stop_token_ids"),
                         ({"stop_token_ids": [2.0]}, r"stop_token_ids\[0\]")):
        with pytest.raises(TypeError, match=f"^{name} must"):
            SamplingParams(**kwargs)
    numpy_params = SamplingParams(top_k=np.int64(4), stop_token_ids=[np.int64(2)])
    assert numpy_params == SamplingParams(top_k=4, stop_token_ids=(2,)) and type(numpy_params.top_k) is int
    with pytest.raises(TypeError, match="^block_size"):
        Engine(model, block_size=16.0)
    with pytest.raises(TypeError, match="^enable_prefix_caching"):
        Engine(model, enable_prefix_caching=None)
    with pytest.raises(TypeError, match="^hook must be callable"):
        engine.add_step_hook(None)
    with pytest.raises(ValueError, match="kv_memory_bytes"):
        Engine(model, kv_memory_bytes=100)
    with pytest.raises(ValueError, match="dtype"):
        Engine(model, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="block_size"):
        Engine(model, block_size=0)
    gpt2 = AutoModelForCausalLM.from_config(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="not supported"):
        Engine(gpt2)
    tight = Engine(model, block_size=4, kv_memory_bytes=3 * engine.kv_cache.bytes_per_block // 4)
    assert tight.kv_cache.num_blocks == 3
    with pytest.raises(ValueError, match="needs 5 KV blocks"):
        tight.generate([list(range(3, 20))], SamplingParams(max_tokens=1))
    with pytest.raises(ValueError, match="lower max_tokens"):
        tight.generate([[5, 6]], SamplingParams(max_tokens=12))
    assert len(tight.generate([[5, 6]], SamplingParams(max_tokens=11), progress=False)[0].completions[0].token_ids) \
        <= 11
