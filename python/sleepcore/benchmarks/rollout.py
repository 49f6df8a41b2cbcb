"""Rollout benchmark: ``sleepcore.rollout.Engine`` against Hugging Face ``generate`` on the same
model, prompts and sampling settings, each provider in its own process (peak RSS is its own).

Cases:

* ``cpu``: SmolLM2-135M-Instruct (the packaged weights, fp32), 16 prompts of about 200 tokens,
  ``n=8`` samples of 128 new tokens each, temperature 1.0, top-p 0.95 (issue 4's target case);
* ``small``: a tiny random Llama with the same workload shape, for a quick check;
* ``gpu-decode``: SmolLM2-135M's architecture with random bf16 weights on CUDA; batches of 64 and
  256 distinct 512-token prompts, 128 new tokens, sleepcore only. Decode tokens/s comes from the
  difference of a 128-token and a 1-token run, and the KV bandwidth is the KV bytes the decode
  steps read over that time, against the card's peak.

Every completion runs to ``max_tokens`` (EOS ignored in both providers) so the token counts agree.

Run ``python bench/bench_rollout.py --case cpu``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sleepcore.benchmarks import harness

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


def run_hf_generate(model, prompts, case: RolloutCase) -> dict:
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):  # left padding, as generation needs
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    ids, mask = ids.to(case.device), mask.to(case.device)
    torch.manual_seed(0)
    start = time.perf_counter()
    out = model.generate(ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=0.95, top_k=0,
                         max_new_tokens=case.new_tokens, min_new_tokens=case.new_tokens,
                         num_return_sequences=case.samples, pad_token_id=0)
    _sync(case.device)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "generated_tokens": (out.shape[1] - width) * out.shape[0]}


def run_sleepcore(model, prompts, case: RolloutCase) -> dict:
    from sleepcore.rollout import Engine, SamplingParams

    engine = Engine(model)
    params = SamplingParams(n=case.samples, temperature=1.0, top_p=0.95, max_tokens=case.new_tokens,
                            ignore_eos=True, seed=0)
    engine.generate(prompts[:2], SamplingParams(max_tokens=2, ignore_eos=True), progress=False)  # warm-up
    outputs = engine.generate(prompts, params, progress=False)
    _sync(case.device)
    stats = engine.stats
    tokens = sum(len(c.token_ids) for o in outputs for c in o.completions)
    result = {"seconds": stats["seconds"], "generated_tokens": tokens,
              "prompt_token_reuse": stats["prompt_token_reuse"], "prefix_hit_rate": stats["prefix_hit_rate"],
              "preemptions": stats["preemptions"], "kv_cache_gb": stats["kv_cache_bytes"] / 1e9}
    if case.device == "cuda":
        result.update(_decode_metrics(engine, prompts, case, stats))
    return result


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


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def worker(provider: str, case: RolloutCase) -> dict:
    model, vocab_size = load(case)
    prompts = build_prompts(case, vocab_size)
    if case.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run = run_hf_generate if provider == "hf_generate" else run_sleepcore
    result = run(model, prompts, case)
    return {"provider": provider, **result, "tokens_per_s": result["generated_tokens"] / result["seconds"],
            "peak_bytes": harness.peak_memory_bytes(case.device)}


def print_table(case: RolloutCase, results: list[dict]) -> None:
    ok = [r for r in results if "error" not in r]
    baseline = next((r for r in ok if r["provider"] == "hf_generate"), None)
    print(f"\nrollout {case.name}: {case.model}, {case.prompts} prompts x ~{case.prompt_tokens} tokens, n={case.samples}, "
          f"{case.new_tokens} new tokens, {case.dtype}, T=1.0 top-p 0.95 on {harness.device_name()}; "
          f"baseline = {baseline and baseline['provider']}")
    print(f"{'provider':<13}{'seconds':>9}{'tokens':>8}{'tokens/s':>10}{'x baseline':>12}{'peak GB':>9}"
          f"{'x baseline':>12}{'prompt reuse':>14}{'prefix hits':>13}")
    for r in results:
        if "error" in r:
            print(f"{r['provider']:<13}failed: {r['error']}")
            continue
        speed = r["tokens_per_s"] / baseline["tokens_per_s"] if baseline else float("nan")
        memory = r["peak_bytes"] / baseline["peak_bytes"] if baseline else float("nan")
        reuse = f"{r['prompt_token_reuse']:.3f}" if "prompt_token_reuse" in r else "-"
        hits = f"{r['prefix_hit_rate']:.3f}" if "prefix_hit_rate" in r else "-"
        print(f"{r['provider']:<13}{r['seconds']:>9.2f}{r['generated_tokens']:>8}{r['tokens_per_s']:>10.1f}"
              f"{speed:>12.2f}{r['peak_bytes'] / 1e9:>9.2f}{memory:>12.2f}{reuse:>14}{hits:>13}")
        if "decode_tokens_per_s" in r:
            print(f"{'':<13}decode {r['decode_tokens_per_s']:.0f} tokens/s, KV read {r['kv_read_gb_s']:.0f} GB/s "
                  f"({r['kv_read_fraction_of_peak']:.1%} of the card's peak)")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=sorted(CASES), default="small")
    parser.add_argument("--providers", default=None, help="comma-separated subset of " + ",".join(PROVIDERS))
    parser.add_argument("--csv", type=Path, default=None,
                        help="append rows here (default: bench/results/<device>.csv when ./bench/results exists)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    case = CASES[args.case]
    if args.worker:
        print(json.dumps(worker(args.worker, case)))
        return []
    if case.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"case {args.case!r} needs a CUDA GPU")
    default = "sleepcore" if case.device == "cuda" else ",".join(PROVIDERS)
    results = []
    for provider in (args.providers or default).split(","):
        if provider not in PROVIDERS:
            parser.error(f"unknown provider {provider!r}; choose from {', '.join(PROVIDERS)}")
        print(f"running {provider} ...", flush=True)
        results.append(harness.run_worker(__name__, provider, args.case, [], timeout_s=3600))
    print_table(case, results)
    csv_path = args.csv or (Path("bench/results") / f"{harness.device_name()}.csv"
                            if Path("bench/results").is_dir() else None)
    rows = [{"bench": "rollout", "case": args.case, "model": case.model, "dtype": case.dtype, **r} for r in results]
    if csv_path and rows:
        harness.append_csv(csv_path, rows)
        print(f"appended {len(rows)} rows to {csv_path}")
    return results


if __name__ == "__main__":
    main()
