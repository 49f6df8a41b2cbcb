"""Dreaming's inner loop: ``K`` small SFT trainings, batched in one model against ``K`` PEFT runs.

Providers (each in its own process, run by :mod:`sleepcore.benchmarks.driver` in its one mode,
``forward``: one call = one optimiser step of each of the K adapters):

* ``peft`` (the reference; what a user would pick): one PEFT LoRA adapter per run on the MLPs'
  linear layers (``gate_proj``, ``up_proj``, ``down_proj``), the K adapters stepped one after the
  other (``set_adapter``, the model's own loss on its padded batch, AdamW per adapter), fp32;
* ``peft_bf16``: the same under bf16 autocast (forward and loss);
* ``sleepcore_fp32``: the memory layers' batched mode (:mod:`sleepcore.memory.batched`: one
  adapter beside each MLP) trained by :meth:`~sleepcore.train.batched.BatchedRuntime.train_step`:
  all adapters' sequences sorted by length and cut into chunks of at most ``max_tokens`` padded
  tokens, one forward and backward per chunk (several adapters each), per-adapter losses,
  clipping and AdamW; fp32;
* ``sleepcore``: the same with the runtime's default ``compute_dtype="auto"`` (the frozen base
  under bf16 autocast where the hardware multiplies bf16 natively, as this benchmark's CPU does;
  adapters, losses and optimiser stay fp32).

Same model (fp32), rank, alpha (``2 r``), learning rate and sequences: each adapter trains on its
own ``sequences`` plain texts of ``min_tokens..max_tokens`` ids (every token but the first is
learned, as a dream line or its document in SEAL's sequence builder). Tokens/s counts trained
tokens. PEFT's adapters sit on three linear layers per MLP and sleepcore's beside the whole MLP;
both cost under 3% of the frozen base's FLOPs at rank 16.

Cases ``k1``, ``k4``, ``k8``, ``k16``: SmolLM2-135M-Instruct (the packaged weights) on CPU;
``gpu-k64``: K = 64 on CUDA; ``small``: a tiny random Llama for a quick check. Run
``python bench/bench_dream.py`` (all CPU cases). Rows go to ``bench/results/dream-<device>.csv``.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import torch

from sleepcore.benchmarks import driver
from sleepcore.benchmarks.driver import Benchmark, Run
from sleepcore.benchmarks.rollout import load

PROVIDERS = ("peft", "peft_bf16", "sleepcore_fp32", "sleepcore")
PEFT_TARGETS = ("gate_proj", "up_proj", "down_proj")
LEARNING_RATE = 1e-4


@dataclass(frozen=True)
class DreamCase:
    name: str
    model: str         # "packaged:<name>" or "random:<architecture>" (see sleepcore.benchmarks.rollout)
    adapters: int      # K
    sequences: int     # per adapter and step
    min_tokens: int
    max_tokens: int
    rank: int
    chunk_tokens: int  # sleepcore's max_tokens: padded tokens per forward
    dtype: str
    device: str


_SMOLLM = "packaged:smollm2-135m-instruct"
CASES = {
    "small": DreamCase("small", "random:tiny-llama", 4, 2, 8, 24, 8, 64, "float32", "cpu"),
    **{f"k{k}": DreamCase(f"k{k}", _SMOLLM, k, 4, 24, 104, 16, 1024, "float32", "cpu") for k in (1, 4, 8, 16)},
    "gpu-k64": DreamCase("gpu-k64", "random:smollm2-135m", 64, 4, 24, 104, 16, 16384, "float32", "cuda"),
}


def build_inputs(case: DreamCase):
    """``(model, data)``: the case's model and ``data[k]``, adapter k's ``(prompt, response)`` id pairs."""
    model, vocab = load(case)
    rng = random.Random(0)
    data = []
    for _ in range(case.adapters):
        texts = [[rng.randrange(100, vocab) for _ in range(rng.randint(case.min_tokens, case.max_tokens))]
                 for _ in range(case.sequences)]
        data.append([(text[:1], text[1:]) for text in texts])
    return model, data


def _trained_tokens(data) -> int:
    return sum(len(response) for batch in data for _, response in batch)


def make_run(provider: str, case: DreamCase, inputs, options) -> Run:
    model, data = inputs
    model.train()
    if provider.startswith("peft"):
        return peft_run(model, data, case, provider == "peft_bf16")
    return sleepcore_run(model, data, case, "float32" if provider == "sleepcore_fp32" else "auto")


def peft_run(model, data, case: DreamCase, bf16: bool) -> Run:
    from peft import LoraConfig, get_peft_model

    from sleepcore.lm import padded_batch
    from sleepcore.train.precision import autocast

    config = LoraConfig(r=case.rank, lora_alpha=2 * case.rank, lora_dropout=0.0, target_modules=list(PEFT_TARGETS))
    names = [f"adapter{k}" for k in range(case.adapters)]
    peft_model = get_peft_model(model, config, adapter_name=names[0])
    for name in names[1:]:
        peft_model.add_adapter(name, config)
    optimizers, batches = [], []
    for name, batch in zip(names, data):
        parameters = [p for n, p in peft_model.named_parameters() if f".{name}." in n]
        optimizers.append(torch.optim.AdamW(parameters, lr=LEARNING_RATE))
        ids, mask = padded_batch([p + r for p, r in batch], 0, case.device)
        batches.append((ids, mask, ids.masked_fill(mask == 0, -100)))

    def call():
        for name, optimizer, (ids, mask, labels) in zip(names, optimizers, batches):
            peft_model.set_adapter(name)
            with autocast(torch.bfloat16 if bf16 else None, ids.device):
                loss = peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return {"trained_tokens": _trained_tokens(data)}

    return Run(call)


def sleepcore_run(model, data, case: DreamCase, compute_dtype: str) -> Run:
    from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
    from sleepcore.memory.batched import batched_adapters
    from sleepcore.train import OptimizerConfig
    from sleepcore.train.batched import BatchedRuntime

    memory = ContinuumMemory.wrap(model, MemoryConfig(levels=(LevelConfig(rank=case.rank, slots=1),)))
    context = contextlib.ExitStack()  # kept by call(): the adapters stay on for the worker's life
    adapters = context.enter_context(batched_adapters(memory, case.adapters))
    runtime = BatchedRuntime(model, adapters, OptimizerConfig(learning_rate=LEARNING_RATE, compute_dtype=compute_dtype))

    def call():
        assert context and all(mlp.batched is not None for mlp in memory.layers.values())
        runtime.train_step(data, 0, max_tokens=case.chunk_tokens)
        return {"trained_tokens": _trained_tokens(data)}

    return Run(call)


def _case_fields(case: DreamCase, options) -> dict:
    return {"model": case.model, "dtype": case.dtype, "adapters": case.adapters, "sequences": case.sequences,
            "min_tokens": case.min_tokens, "max_tokens": case.max_tokens, "rank": case.rank,
            "chunk_tokens": case.chunk_tokens}


def _describe(case: DreamCase) -> str:
    return (f"dream {case.name}: {case.model}, K={case.adapters} adapters x {case.sequences} sequences of "
            f"{case.min_tokens}-{case.max_tokens} tokens, rank {case.rank}, one step of each adapter per call")


BENCHMARK = Benchmark(
    "dream", "sleepcore.benchmarks.dream", CASES, PROVIDERS, build_inputs, make_run, _describe, _case_fields,
    modes=("forward",), throughput=("trained_tokens", "tokens_per_s"), reference=("peft",), warmup=1, reps=3,
    default_providers=lambda case: ("peft", "sleepcore") if case.device == "cuda" else PROVIDERS,
    table_fields=())


def summarise(rows: list[dict]) -> None:
    """Print trained tokens/s per case and provider, and each provider's ratio to ``peft`` in the same case."""
    providers = [p for p in PROVIDERS if any(r["provider"] == p for r in rows)]
    print("\ntrained tokens/s (ratio to peft)\n" + f"{'case':<8}" + "".join(f"{p:>24}" for p in providers))
    for case in dict.fromkeys(r["case"] for r in rows):
        rate = {r["provider"]: r.get("tokens_per_s") for r in rows if r["case"] == case}
        cells = [f"{rate[p]:>14.1f} ({rate[p] / rate['peft']:.2f}x)" if rate.get(p) and rate.get("peft")
                 else f"{'-':>24}" for p in providers]
        print(f"{case:<8}" + "".join(f"{cell:>24}" for cell in cells))


def main(argv: list[str] | None = None) -> list[dict]:
    return driver.main(BENCHMARK, argv, __doc__.split("\n\n")[0])


if __name__ == "__main__":
    main()
