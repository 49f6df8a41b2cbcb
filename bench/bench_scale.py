"""Scaling a sleep out (issue 13, part 4): a Knowledge Seeding sleep on 1 and 2 CPU ranks at the
same global batch, and on paper the memory per GPU of an 8B model trained on 8 GPUs.

**Measured.** ``torchrun --nproc-per-node N`` (gloo, ``--threads`` OpenMP threads per rank) runs
one Knowledge Seeding stage of a fresh expert (SmolLM2-135M-Instruct, one memory level of rank 16,
fp32): the replay set from ``--people`` biographies (continuation prompts, one teacher sample each,
sampled by the ranks in blocks), then ``--warmup + --steps`` steps of ``--batch`` sequences, the
global batch, split over the ranks (:mod:`sleepcore.distributed`). It prints per world size the
trained tokens/s over the timed steps (tokens that receive a gradient, summed over ranks, over the
slowest rank's step time), seconds per step, the preparation's seconds, and the scaling efficiency
``tokens/s(N) / (N * tokens/s(1))``; rows go to ``bench/results/scale-<device>.csv`` with the load
average. On a shared 2-core machine two ranks compete with everything else for the cores: read
the efficiency as a floor, and compare rows of one run only.

**Projected** (:func:`memory_projection`, printed by every run): bytes per GPU of an 8B model
(Llama-3-8B) with FSDP2 on 8 GPUs, bf16 weights, the default memory (2 levels x 4 slots of rank 64
in every layer), the trained expert's fp32 master and AdamW moments sharded, ``--tokens-per-gpu``
trained tokens per GPU per micro-batch, in two designs: the frozen base replicated (what
``sleepcore.distributed`` does) and the base sharded too (FSDP2 on every layer; not implemented).
Saved activations are estimated per token and layer as ``5H + 2 * kv_dim + 3I`` bf16 values (the
norms' inputs, q, k, v, the attention output, the MLP input the experts read, the gate, up and
SiLU outputs; the frozen linear layers' inputs are not needed for a gradient of the input), or
``2H`` per layer (plus one whole layer) with activation checkpointing (which sleepcore does not
switch on; Hugging Face's ``gradient_checkpointing_enable`` would). Assumed besides: the fused
losses' chunk of :data:`LOSS_CHUNK_ROWS` rows of fp32 logits and their gradient, and
:data:`RUNTIME_OVERHEAD` for the CUDA context, NCCL buffers and allocator slack. The rollout
engine's KV cache stays allocated through training and rollouts, so it gets what the larger of the
two peaks leaves. With 4096 trained tokens per GPU the replicated design peaks at about 38 GB in
training and leaves about 42 GB for the KV cache (some 320k tokens): an 8B model fits an 80 GB GPU
without activation checkpointing (23 GB with it). Sharding the base lowers the training peak to
about 24 GB, but the colocated rollout needs the whole model gathered (18 GB over the shard), so
the KV room grows by 14 GB, not more. A 70B model (140 GB in bf16) does not fit replicated: it
needs the base sharded, which ``sleepcore.distributed`` does not do yet.

Usage: ``python bench/bench_scale.py [--ranks 1 2] [--batch 8] [--steps 3] [--warmup 1] [--threads 1]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from sleepcore.benchmarks import harness
from sleepcore.benchmarks.shapes import BODIES, HEADS, BodyShape

MODEL = "smollm2-135m-instruct"
GB = 1e9
GPU_BYTES = 80 * GB
LOSS_CHUNK_ROWS = 1024
RUNTIME_OVERHEAD = 3 * GB


# ---------------------------------------------------------------------- the projection
def memory_projection(body: BodyShape, gpus: int, tokens: int, *, levels: int = 2, slots: int = 4, rank: int = 64,
                      checkpointing: bool = False) -> dict[str, dict[str, float]]:
    """Bytes per GPU by part for the ``"replicated"`` and ``"sharded"`` base designs (see the module
    docstring); each design also has its ``training`` and ``rollout`` peaks, and the room left for
    the rollout engine's KV cache, which stays allocated through both (bytes and tokens)."""
    hidden, layers, kv_dim = body.hidden, body.layers, body.kv_heads * body.head_dim
    base = 2 * body.parameters
    expert = 2 * rank * hidden * layers  # A and B of one expert, every layer
    full_layer = 5 * hidden + 2 * kv_dim + 3 * body.intermediate  # saved values per token and layer
    saved = layers * 2 * hidden + full_layer if checkpointing else layers * full_layer
    kept = {"memory experts (bf16, whole between steps)": 2 * levels * slots * expert,
            "trained expert: fp32 master + AdamW moments (sharded)": 12 * expert / gpus,
            "CUDA context, NCCL, allocator slack (assumed)": RUNTIME_OVERHEAD}
    step = {"trained expert: bf16 gradient + fp32 shard": 2 * expert + 4 * expert / gpus,
            f"activations ({tokens} tokens{', checkpointed' if checkpointing else ''})": 2 * tokens * saved,
            "fused losses: fp32 hidden states (student, teacher) + a logit chunk":
                8 * tokens * hidden + 2 * 4 * LOSS_CHUNK_ROWS * HEADS[body.head].vocab}
    kv_token = 2 * layers * kv_dim * 2
    designs = {}
    for design, resident, gathered in (("replicated", base, 0.0), ("sharded", base / gpus, base / layers)):
        training = resident + gathered + sum(kept.values()) + sum(step.values())
        rollout = resident + (base if design == "sharded" else 0.0) + sum(kept.values())
        room = GPU_BYTES - max(training, rollout)
        designs[design] = {"frozen base, bf16 (sharded: its shard)": resident,
                           "  + one layer gathered in training": gathered, **kept, **step,
                           "PEAK in training": training, "PEAK in a rollout": rollout,
                           "left for the KV cache": room, "KV cache tokens": room / kv_token}
    return designs


def print_projection(args) -> None:
    body = BODIES["llama3-8b"]
    for checkpointing in (False, True):
        designs = memory_projection(body, 8, args.tokens_per_gpu, checkpointing=checkpointing)
        print(f"\n{body.model} with FSDP2 on 8 GPUs, per GPU (GB = 1e9 bytes of {GPU_BYTES / GB:.0f} GB):")
        print(f"{'part':66} {'base replicated':>16} {'base sharded':>13}")
        for part in designs["replicated"]:
            shown = [f"{designs[d][part]:,.0f}" if part == "KV cache tokens" else f"{designs[d][part] / GB:.2f}"
                     for d in designs]
            print(f"{part:66} {shown[0]:>16} {shown[1]:>13}")
        room = designs["replicated"]["left for the KV cache"]
        print(f"-> base replicated {'fits' if room > 0 else 'does NOT fit'}: {args.tokens_per_gpu} trained tokens "
              f"per GPU{' (activation checkpointing)' if checkpointing else ''} leave {room / GB:.0f} GB for the "
              f"rollout's KV cache")


# ---------------------------------------------------------------------- the measurement (one rank)
def worker(args) -> None:
    """One rank of a measured run (under torchrun); rank 0 prints the result as a JSON line."""
    from sleepcore.distributed import world
    from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
    from sleepcore.models import load_model_or_tiny
    from sleepcore.rollout import Engine
    from sleepcore.sleep.buffer import WakeBuffer
    from sleepcore.sleep.config import KnowledgeSeedingConfig
    from sleepcore.sleep.knowledge_seeding import KnowledgeSeeding
    from sleepcore.sleep.stage import StageContext, run_stage
    from sleepcore.tasks.biographies import BiographyConfig, generate_biographies
    from sleepcore.tasks.knowledge_suite import documents_of
    from sleepcore.train import OptimizerConfig

    device = world.init_from_environment()
    with world.process_group():
        torch.manual_seed(args.seed)
        documents = documents_of(generate_biographies(BiographyConfig(num_people=args.people, seed=args.seed)))
        model, tokenizer = load_model_or_tiny(args.model, documents)
        if device is not None:
            model.to(device)
        memory = ContinuumMemory.wrap(model, MemoryConfig(levels=(LevelConfig(rank=16, slots=2),)))
        buffer = WakeBuffer()
        buffer.add(documents)
        config = KnowledgeSeedingConfig(
            prompt_builders=("continuation",), prompts_per_document=args.prompts, samples_per_prompt=1,
            max_new_tokens=args.new_tokens, batch_size=args.batch, steps=args.warmup + args.steps,
            optimizer=OptimizerConfig(compute_dtype="float32"))
        slot = memory.new_expert(0)
        stage = KnowledgeSeeding(StageContext(model, tokenizer, memory, Engine(model, tokenizer), 0, slot,
                                              seed=args.seed), config)
        started = time.perf_counter()
        summary = run_stage(stage, buffer, seed=args.seed, progress=False)
        wall = time.perf_counter() - started
        steps = summary["history"][args.warmup:]
        seconds = [step["seconds"] for step in steps]
        if world.is_main():
            print(json.dumps({"ranks": world.world_size(), "replay_samples": len(stage.items),
                              "tokens_per_step": sum(step["tokens"] for step in steps) / len(steps),
                              "tokens_per_s": sum(step["tokens"] for step in steps) / sum(seconds),
                              **harness.quantiles(seconds),
                              "prepare_s": wall - sum(step["seconds"] for step in summary["history"])}))


def measure(ranks: int, args) -> dict:
    """Runs :func:`worker` on ``ranks`` ranks; returns rank 0's result (or ``{"error": ...}``)."""
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    arguments = ["--standalone", "--nproc-per-node", str(ranks), str(Path(__file__).resolve()), "--worker",
                 "--model", args.model, "--people", str(args.people), "--prompts", str(args.prompts),
                 "--new-tokens", str(args.new_tokens), "--batch", str(args.batch), "--steps", str(args.steps),
                 "--warmup", str(args.warmup), "--seed", str(args.seed)]
    return harness.run_worker("torch.distributed.run", arguments, timeout_s=args.timeout)


def run(args) -> list[dict]:
    rows, loads = [], [os.getloadavg()[0]]
    for ranks in args.ranks:
        result = measure(ranks, args)
        loads.append(os.getloadavg()[0])
        if "error" in result:
            raise RuntimeError(f"{ranks} rank(s) failed: {result['error']}")
        rows.append({"bench": "scale", "case": f"seeding-b{args.batch}-n{args.new_tokens}", "model": args.model,
                     "provider": f"{ranks}-rank", "ranks": ranks, "threads_per_rank": args.threads,
                     "load_average": round(sum(loads[-2:]) / 2, 2), "steps": args.steps, **result,
                     "note": "shared machine: other measurements were running"})
    single = next((row["tokens_per_s"] for row in rows if row["ranks"] == 1), None)
    print(f"{'ranks':>5} {'tok/s':>8} {'s/step':>16} {'prepare s':>9} {'efficiency':>10} {'load':>5}")
    for row in rows:
        row["scaling_efficiency"] = row["tokens_per_s"] / (row["ranks"] * single) if single else None
        efficiency = f"{row['scaling_efficiency']:.2f}" if single else "-"
        print(f"{row['ranks']:5d} {row['tokens_per_s']:8.1f} {row['median_s']:7.2f} ({row['p20_s']:.2f}-"
              f"{row['p80_s']:.2f}) {row['prepare_s']:9.1f} {efficiency:>10} {row['load_average']:5.2f}")
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", default=MODEL, help="a packaged model, a local folder, or 'tiny'")
    parser.add_argument("--people", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=8, help="continuation prompts per document")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--batch", type=int, default=8, help="the global batch (sequences per step)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads per rank")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--tokens-per-gpu", type=int, default=4096, help="of the 8B projection")
    parser.add_argument("--projection-only", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    if not args.projection_only:
        rows = run(args)
        path = args.csv or harness.results_path("scale", Path(__file__).parent / "results")
        harness.append_csv(path, rows)
        print(f"appended to {path}")
    print_projection(args)


if __name__ == "__main__":
    sys.exit(main())
