"""Rollout benchmark: ``sleepcore.rollout.Engine`` against Hugging Face ``generate`` on the same
model, prompts and sampling settings, each provider in its own process, run by
:mod:`sleepcore.benchmarks.driver` in its one mode, ``forward`` (one ``generate`` call; there is
no backward). The model and prompts are the inputs (in the memory baseline); the engine, its KV
cache and a 2-token warm-up generation are the provider's setup. Tokens/s is the generated tokens
over the median wall time of the call. One call by default (``--reps``; the engine's prefix cache
does not outlive a call, so repeated calls are alike).

Cases:

* ``cpu``: SmolLM2-135M-Instruct (the packaged weights, fp32), 16 prompts of about 200 tokens,
  ``n=8`` samples of 128 new tokens each, temperature 1.0, top-p 0.95 (issue 4's target case);
* ``small``: a tiny random Llama with the same workload shape, for a quick check;
* ``gpu-decode``: SmolLM2-135M's architecture with random bf16 weights on CUDA; batches of 64 and
  256 distinct 512-token prompts, 128 new tokens, sleepcore only. Decode tokens/s comes from the
  difference of a 128-token and a 1-token run, and the KV bandwidth is the KV bytes the decode
  steps read over that time, against the card's peak.

Every completion runs to ``max_tokens`` (EOS ignored in both providers) so the token counts agree.

Run ``python bench/bench_rollout.py --case cpu``. Rows go to ``bench/results/rollout-<device>.csv``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from sleepcore.benchmarks import driver
from sleepcore.benchmarks.driver import Benchmark, Run

PROVIDERS = ("hf_generate", "sleepcore")
_WORDS = ("the river carried light over stones while old maps described a city of glass and quiet engines that "
          "learned to sleep each night dreaming of numbers gardens rivers teachers music winter and distant "
          "mountains where people built libraries bridges and patient machines").split()


@dataclass(frozen=True)
class RolloutCase:
    name: str
    model: str            # "packaged:<name>" or "random:<architecture>"
    prompts: int
    prompt_tokens: int    # mean prompt length; lengths vary by +-10%
    samples: int
    new_tokens: int
    dtype: str
    device: str


CASES = {
    "small": RolloutCase("small", "random:tiny-llama", 8, 64, 4, 32, "float32", "cpu"),
    "cpu": RolloutCase("cpu", "packaged:smollm2-135m-instruct", 16, 200, 8, 128, "float32", "cpu"),
    "gpu-decode-64": RolloutCase("gpu-decode-64", "random:smollm2-135m", 64, 512, 1, 128, "bfloat16", "cuda"),
    "gpu-decode-256": RolloutCase("gpu-decode-256", "random:smollm2-135m", 256, 512, 1, 128, "bfloat16", "cuda"),
}
_ARCHITECTURES = {  # transformers LlamaConfig fields
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_theta=100000.0, tie_word_embeddings=True),
    "tiny-llama": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024),
}
_PEAK_BANDWIDTH = {"h100": 3.35e12, "h200": 4.8e12, "a100": 2.0e12}  # bytes/s, SXM parts


def load(case: RolloutCase):
    """``(model, vocab_size)`` in the case's dtype and device, in eval mode."""
    kind, name = case.model.split(":", 1)
    dtype = getattr(torch, case.dtype)
    if kind == "packaged":
        from sleepcore.models import load_model

        model, _tokenizer = load_model(name, dtype=dtype, device=case.device)
    else:
        from transformers import AutoModelForCausalLM, LlamaConfig

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(LlamaConfig(**_ARCHITECTURES[name])).to(case.device, dtype).eval()
    return model, model.get_output_embeddings().weight.shape[0]


def build_prompts(case: RolloutCase, vocab_size: int, seed: int = 0) -> list[list[int]]:
    """Seeded prompts of ``prompt_tokens`` +-10% ids: word-like id runs drawn from a small set of
    the vocabulary (so the packaged model sees plausible token statistics) plus random ids."""
    rng = random.Random(seed)
    word_ids = [rng.randrange(100, vocab_size) for _ in _WORDS]
    prompts = []
    for _ in range(case.prompts):
        length = round(case.prompt_tokens * rng.uniform(0.9, 1.1))
        prompts.append([rng.choice(word_ids) if rng.random() < 0.8 else rng.randrange(100, vocab_size)
                        for _ in range(length)])
    return prompts


def build_inputs(case: RolloutCase):
    """``(model, prompts)``: the case's model in eval mode and its seeded prompts."""
    model, vocab_size = load(case)
    return model, build_prompts(case, vocab_size)


def make_run(provider: str, case: RolloutCase, inputs, options) -> Run:
    model, prompts = inputs
    return (hf_generate_run if provider == "hf_generate" else sleepcore_run)(model, prompts, case)


def hf_generate_run(model, prompts, case: RolloutCase) -> Run:
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):  # left padding, as generation needs
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    ids, mask = ids.to(case.device), mask.to(case.device)

    def call():
        torch.manual_seed(0)
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=0.95, top_k=0,
                                 max_new_tokens=case.new_tokens, min_new_tokens=case.new_tokens,
                                 num_return_sequences=case.samples, pad_token_id=0)
        return {"generated_tokens": (out.shape[1] - width) * out.shape[0]}

    return Run(call)


def sleepcore_run(model, prompts, case: RolloutCase) -> Run:
    from sleepcore.rollout import Engine, SamplingParams

    engine = Engine(model)
    params = SamplingParams(n=case.samples, temperature=1.0, top_p=0.95, max_tokens=case.new_tokens,
                            ignore_eos=True, seed=0)
    engine.generate(prompts[:2], SamplingParams(max_tokens=2, ignore_eos=True), progress=False)  # warm-up

    def call():
        outputs = engine.generate(prompts, params, progress=False)
        return {"generated_tokens": sum(len(c.token_ids) for o in outputs for c in o.completions)}

    def report(_output) -> dict:
        stats = engine.stats
        result = {key: stats[key] for key in ("prompt_token_reuse", "prefix_hit_rate", "preemptions")}
        result["kv_cache_gb"] = stats["kv_cache_bytes"] / 1e9
        if case.device == "cuda":
            result.update(_decode_metrics(engine, prompts, case, stats))
        return result

    return Run(call, report=report)


def _decode_metrics(engine, prompts, case: RolloutCase, full_stats: dict) -> dict:
    """Decode tokens/s and KV read bandwidth from a full run minus a prefill-only (1-token) run."""
    from sleepcore.rollout import SamplingParams

    engine.generate(prompts, SamplingParams(max_tokens=1, ignore_eos=True), progress=False)
    decode_seconds = full_stats["seconds"] - engine.stats["seconds"]
    decode_tokens = full_stats["generated_tokens"] - engine.stats["generated_tokens"]
    cache = engine.kv_cache
    bytes_per_token = cache.bytes_per_block // engine.block_size
    # step t (1..new_tokens-1) of a sequence reads the KV of len(prompt) + t tokens
    kv_tokens = sum(len(p) * (case.new_tokens - 1) + case.new_tokens * (case.new_tokens - 1) // 2 for p in prompts)
    bandwidth = kv_tokens * bytes_per_token / decode_seconds
    name = torch.cuda.get_device_name().lower()
    peak = next((value for key, value in _PEAK_BANDWIDTH.items() if key in name), float("nan"))
    return {"decode_tokens_per_s": decode_tokens / decode_seconds, "kv_read_gb_s": bandwidth / 1e9,
            "kv_read_fraction_of_peak": bandwidth / peak}


def _case_fields(case: RolloutCase, options) -> dict:
    return {"model": case.model, "dtype": case.dtype, "prompts": case.prompts, "prompt_tokens": case.prompt_tokens,
            "samples": case.samples, "new_tokens": case.new_tokens}


def _describe(case: RolloutCase) -> str:
    return (f"rollout {case.name}: {case.model}, {case.prompts} prompts x ~{case.prompt_tokens} tokens, "
            f"n={case.samples}, {case.new_tokens} new tokens, {case.dtype}, T=1.0 top-p 0.95")


BENCHMARK = Benchmark(
    "rollout", "sleepcore.benchmarks.rollout", CASES, PROVIDERS, build_inputs, make_run, _describe, _case_fields,
    modes=("forward",), throughput=("generated_tokens", "tokens_per_s"), reference=("hf_generate",), warmup=0, reps=1,
    default_providers=lambda case: ("sleepcore",) if case.device == "cuda" else PROVIDERS,
    table_fields=("prompt_token_reuse", "prefix_hit_rate", "preemptions", "kv_cache_gb", "decode_tokens_per_s",
                  "kv_read_gb_s", "kv_read_fraction_of_peak"))


def main(argv: list[str] | None = None) -> list[dict]:
    return driver.main(BENCHMARK, argv, __doc__.split("\n\n")[0])


if __name__ == "__main__":
    main()
