"""The rollout engine on a real GPU: Triton paged attention, KV writes, block copies and the
sampler under the engine, against HF ``generate`` and the trainer's log-probs."""

from __future__ import annotations

import pytest
import torch
from _tiny_models import CONFIGS, KV_BYTES, hf_greedy, random_prompts, tiny_model

from sleepcore.ops import fused_linear_logprobs
from sleepcore.rollout import Engine, SamplingParams

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("family", list(CONFIGS))
def test_greedy_matches_hf_generate_on_cuda(family):
    model = tiny_model(family).cuda()
    prompts = random_prompts([1, 9, 23, 40])
    engine = Engine(model, block_size=8, kv_memory_bytes=KV_BYTES)
    outputs = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=12), progress=False)
    for prompt, output in zip(prompts, outputs):
        assert output.completions[0].token_ids == hf_greedy(model, prompt, 12)


def test_sampled_logprobs_equal_trainer_logprobs_on_cuda():
    model = tiny_model("llama").cuda()
    prompts = random_prompts([6, 19, 33], seed=2)
    engine = Engine(model, block_size=4, kv_memory_bytes=KV_BYTES)
    params = SamplingParams(n=4, temperature=0.8, top_p=0.9, max_tokens=10, seed=5, ignore_eos=True)
    head = model.get_output_embeddings().weight
    for prompt, output in zip(prompts, engine.generate(prompts, params, progress=False)):
        for completion in output.completions:
            sequence = torch.tensor([prompt + completion.token_ids], device="cuda")
            with torch.no_grad():
                hidden = model.base_model(input_ids=sequence).last_hidden_state[0]
            expected, _ = fused_linear_logprobs(hidden[:-1], head, sequence[0, 1:], temperature=0.8,
                                                return_entropy=False)
            torch.testing.assert_close(torch.tensor(completion.logprobs, device="cuda"),
                                       expected[len(prompt) - 1:], atol=1e-4, rtol=0)
    assert engine.stats["copies"] > 0  # forks copied-on-write through the Triton block-copy kernel
