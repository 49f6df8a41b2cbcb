"""Which attention the training forwards should run (``OptimizerConfig.train_attention``): the
model's own (SDPA) against transformers' eager attention, paired in one process.

Cases, on SmolLM2-135M-Instruct with its weights frozen and one rank-16 memory expert trained (so the
backward runs through every layer, as in a sleep):

* ``body B x T``: the runtime's forward and backward of ``B`` right-padded rows of ``T`` tokens
  (``LocalRuntime.hidden_states`` under the chosen ``compute_dtype``), for each shape of ``--shapes``;
  each implementation's final hidden states are compared with an fp32 SDPA forward of the same
  batch (RMS error over the reference's RMS);
* ``inner loop``: one :meth:`~sleepcore.train.batched.BatchedRuntime.train_step` of 8 adapters, each
  with ten short lines and one 250-token passage (the shape of SEAL's sequences, the Dreamer's
  inner loop), chunked at 4,096 padded tokens.

Each case runs ``--reps`` times per implementation, alternating which goes first; the table gives
the median seconds and ``model / eager``, the speed-up of eager. Load from other processes slows
both sides of a pair alike, but compare ratios of one run only.

Usage: ``python bench/bench_train_attention.py [--reps 5] [--dtype bfloat16]
[--shapes 16x64,16x128,32x96,8x224,1x416] [--no-inner-loop]``
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
from sleepcore.memory.batched import batched_adapters
from sleepcore.models import load_model
from sleepcore.train import LocalRuntime, OptimizerConfig
from sleepcore.train.batched import BatchedRuntime

MODEL = "smollm2-135m-instruct"
CHOICES = ("model", "eager")


def body_case(model, expert, dtype: str, batch: int, width: int, reps: int, generator) -> dict:
    ids = torch.randint(0, model.config.vocab_size, (batch, width), generator=generator)
    mask = torch.ones_like(ids)
    runtimes = {choice: LocalRuntime(model, expert, OptimizerConfig(compute_dtype=dtype, train_attention=choice))
                for choice in CHOICES}
    with torch.no_grad():
        reference = LocalRuntime(model, expert, OptimizerConfig(compute_dtype="float32")).hidden_states(ids, mask)
    times, errors = {choice: [] for choice in CHOICES}, {}
    for rep in range(reps):
        for choice in (CHOICES if rep % 2 == 0 else CHOICES[::-1]):
            runtime = runtimes[choice]
            started = time.perf_counter()
            hidden = runtime.hidden_states(ids, mask)
            hidden.square().mean().backward()
            times[choice].append(time.perf_counter() - started)
            runtime.zero_grad()
            errors[choice] = float((hidden.detach() - reference).square().mean().sqrt() / reference.square().mean().sqrt())
    return {"case": f"body {batch}x{width}", "times": times, "errors": errors}


def inner_loop_case(model, memory, dtype: str, reps: int) -> dict:
    rng = random.Random(0)

    def example(prompt: int, response: int):
        return ([rng.randrange(100, 40000) for _ in range(prompt)], [rng.randrange(100, 40000) for _ in range(response)])
    examples = [[example(rng.randint(20, 40), rng.randint(15, 40)) for _ in range(10)] + [example(20, 230)]
                for _ in range(8)]
    times = {choice: [] for choice in CHOICES}
    with batched_adapters(memory, len(examples), rank=8, alpha=16.0) as adapters:
        for rep in range(reps):
            for choice in (CHOICES if rep % 2 == 0 else CHOICES[::-1]):
                config = OptimizerConfig(learning_rate=1e-2, compute_dtype=dtype, train_attention=choice)
                runtime = BatchedRuntime(model, adapters, config)
                started = time.perf_counter()
                runtime.train_step(examples, 0, max_tokens=4096)
                times[choice].append(time.perf_counter() - started)
    return {"case": "inner loop K=8", "times": times, "errors": {}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--shapes", default="16x64,16x128,32x96,8x224,1x416")
    parser.add_argument("--no-inner-loop", action="store_true")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes.split(",")]
    torch.manual_seed(0)
    model, _ = load_model(MODEL)
    memory = ContinuumMemory.wrap(model, MemoryConfig(levels=(LevelConfig(rank=16, slots=1),)))
    expert = memory.trainable(0, memory.new_expert(0))
    with torch.no_grad():
        for parameter in expert:
            parameter.normal_(0, 0.02)
    generator = torch.Generator().manual_seed(0)
    rows = [body_case(model, expert, args.dtype, b, t, args.reps, generator) for b, t in shapes]
    if not args.no_inner_loop:
        rows.append(inner_loop_case(model, memory, args.dtype, args.reps))
    print(f"{MODEL}, compute_dtype {args.dtype}, {torch.get_num_threads()} threads, {args.reps} reps (median s)")
    print(f"{'case':16} {'model s':>8} {'eager s':>8} {'model/eager':>11} {'rms err model':>13} {'rms err eager':>13}")
    for row in rows:
        model_s, eager_s = (statistics.median(row["times"][choice]) for choice in CHOICES)
        errors = [f"{row['errors'][choice]:13.2e}" if choice in row["errors"] else f"{'-':>13}" for choice in CHOICES]
        print(f"{row['case']:16} {model_s:8.3f} {eager_s:8.3f} {model_s / eager_s:10.2f}x {' '.join(errors)}")


if __name__ == "__main__":
    main()
