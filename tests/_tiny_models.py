"""Tiny random causal LMs of the four supported families, prompts, and HF greedy decoding: the
shared fixtures of the rollout-engine tests."""

from __future__ import annotations

import torch
import transformers
from transformers import AutoModelForCausalLM

_COMMON = dict(vocab_size=131, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=256)
CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**_COMMON),
    "qwen2": lambda: transformers.Qwen2Config(**_COMMON),
    "qwen3": lambda: transformers.Qwen3Config(**_COMMON, head_dim=16),
    "gemma3": lambda: transformers.Gemma3TextConfig(
        **_COMMON, head_dim=16, sliding_window=5, layer_types=["sliding_attention", "full_attention",
                                                               "sliding_attention"]),
}
KV_BYTES = 1 << 21
#: A ChatML template (add its two special tokens to a tokenizer before setting it).
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_model(family: str, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(CONFIGS[family]()).eval()
    # random init gives near-uniform logits; sharpen them so greedy/top-p choices are decisive
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(40.0)
    return model


def random_prompts(lengths, vocab=131, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (length,), generator=generator).tolist() for length in lengths]


def hf_greedy(model, prompt, max_new_tokens):
    """HF greedy decoding of one prompt: stops after an EOS token, like the engine without
    ``ignore_eos`` (``min_new_tokens`` would instead mask EOS, which the engine never does)."""
    ids = torch.tensor([prompt], device=model.device)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
                         pad_token_id=0)
    return out[0, len(prompt):].tolist()
