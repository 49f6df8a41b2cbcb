"""What the distributed tests run, once per rank under ``torchrun`` (and in-process for the
single-process references): ``python _scenarios.py SCENARIO OUT [OPTIONS]``.

Scenarios (rank 0 writes the results to ``OUT``):

* ``gradient``: two Knowledge Seeding steps (LTI and on-policy samples on; a stand-in reward that
  varies), on the replay set's first three samples then on its first one (a rank without data);
  the expert's gradients before each update, the replay responses, each rank's token count in the
  first step, the types the fused losses' head and the memory's experts have between steps, the
  error for a parameter that is not an expert's (``gradient.safetensors``, ``gradient.json``);
  plus the pytorch #162338 check: a plain FSDP2 model on gloo with FSDP's default reduction
  (``average.json``);
* ``sleep``: a sleep of two stages (seeding, then SFT on the 3 documents in batches of 2: one
  batch of 1), checkpointing every step; ``--crash-at K`` kills rank 1 (SIGKILL) in its K-th
  seeding step, between two checkpoints, and ``--crash-in-save K`` as it starts writing its
  shards of the K-th checkpoint (rank 0 is then inside the same save);
* ``dreaming``: a sleep of seeding then dreaming (no noise).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sleepcore.distributed import DistributedRuntime, world  # noqa: E402
from sleepcore.sleep.config import NextTokenConfig  # noqa: E402
from sleepcore.sleep.dream_config import DreamingConfig  # noqa: E402
from sleepcore.sleep import knowledge_seeding  # noqa: E402
from sleepcore.sleep.knowledge_seeding import KnowledgeSeeding  # noqa: E402
from sleepcore.sleep.stage import StageContext  # noqa: E402
from sleepcore.train import OptimizerConfig  # noqa: E402
from _sleepers import DATASET, make_sleeper, seeding  # noqa: E402

FP32 = OptimizerConfig(compute_dtype="float32", learning_rate=3e-3)


def fp32(config):
    return dataclasses.replace(config, optimizer=FP32)


def woken(config, **options):
    sleeper = make_sleeper(config, **options)
    sleeper.wake(DATASET.passages)
    return sleeper


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def parity_reward(completions, references, **options) -> list[float]:
    """A stand-in for the imitation reward that differs between completions (the tiny model's
    completions never match the teacher's, so every advantage, and the LTI gradient, would be 0)."""
    return [sum(token % 2 for token in completion) / max(len(completion), 1) for completion in completions]


@contextmanager
def stand_in_reward():
    real, knowledge_seeding.imitation_reward = knowledge_seeding.imitation_reward, parity_reward
    try:
        yield
    finally:
        knowledge_seeding.imitation_reward = real


@stand_in_reward()
def gradient(out: Path) -> None:
    config = fp32(seeding(steps=1, batch_size=3, max_new_tokens=8, completions=2, samples_per_prompt=1,
                          on_policy=0.5, alpha=0.5))
    sleeper = woken(config)
    slot = sleeper.memory.new_expert(0)
    with torch.no_grad():  # a non-zero B, so that every expert tensor has a gradient
        for parameter in sleeper.memory.trainable(0, slot):
            parameter.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(2))
    context = StageContext(sleeper.model, sleeper.tokenizer, sleeper.memory, sleeper.engine, 0, slot)
    stage = KnowledgeSeeding(context, config)
    stage.prepare(sleeper.buffer, progress=False)
    batch = stage.items[:3]
    start, stop = world.block_bounds(len(batch))
    local_tokens = sum(len(sample.response) for sample in batch[start:stop])
    stage.rng, grads = random.Random(5), []
    real = stage.runtime.step
    stage.runtime.step = lambda tokens=0: grads.append([full(p.grad).clone() for p in stage.runtime.parameters]) or real(tokens)
    metrics = [stage.step(batch), stage.step(batch[:1])]  # the second: one item, so rank 1 holds none
    counts = world.all_gather_objects(local_tokens)
    plain = [type(stage.head).__name__] + sorted({type(p).__name__ for p in sleeper.memory.trainable(0, slot)})
    refused = ""
    try:
        DistributedRuntime(sleeper.model, [torch.nn.Parameter(torch.zeros(2))])
    except (RuntimeError, ValueError) as error:
        refused = str(error)
    if world.is_main():
        save_file({f"step{step}.grad{i}": g.contiguous() for step, own in enumerate(grads) for i, g in enumerate(own)},
                  str(out / "gradient.safetensors"))
        (out / "gradient.json").write_text(json.dumps({
            "responses": [sample.response for sample in stage.items], "rank_tokens": counts, "refused": refused, "plain": plain,
            "metrics": [{key: m[key] for key in ("loss", "gkd", "lti", "kl_teacher", "tokens", "reward")}
                        for m in metrics]}))
    if world.active():
        fsdp_default_average(out)


def fsdp_default_average(out: Path) -> None:
    """pytorch issue 162338: FSDP2 on gloo summed gradients where it should average them. Each rank
    backpropagates ``sum(model(x_r))`` with FSDP's default reduction; the gradient of rank 0's shard
    must be the mean of the ranks' gradients."""
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2, bias=False)
    inputs = torch.randn(world.world_size(), 4)
    expected = inputs.mean(0).expand(2, 4)  # d/dW of sum(W @ x) is x in every row
    fully_shard(model, mesh=world.mesh("cpu"))
    model(inputs[world.rank()]).sum().backward()
    got = model.weight.grad.full_tensor()
    if world.is_main():
        (out / "average.json").write_text(json.dumps({"got": got.tolist(), "expected": expected.tolist(),
                                                      "torch": torch.__version__}))


def kill_rank_1_at_call(owner, name: str, call: int) -> None:
    """Replaces ``owner.name`` by a function that SIGKILLs rank 1 at its ``call``-th call."""
    real, calls = getattr(owner, name), []

    def crashing(*args, **kwargs):
        calls.append(1)
        if len(calls) == call and world.rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(owner, name, crashing)


def sleep(out: Path, crash_at: int | None, crash_in_save: int | None) -> None:
    config = fp32(seeding(steps=4, batch_size=3, max_new_tokens=8, samples_per_prompt=1))
    sleeper = woken(config, stages=("seeding", "sft"), sft=NextTokenConfig(steps=3, batch_size=2, optimizer=FP32),
                    output_dir=str(out / "run"), checkpoint_every=1)
    if crash_at is not None:
        kill_rank_1_at_call(KnowledgeSeeding, "step", crash_at)
    if crash_in_save is not None:
        kill_rank_1_at_call(dcp, "save", crash_in_save)
    summary = sleeper.sleep(progress=False)
    finish(out, sleeper, summary)


def dreaming(out: Path) -> None:
    config = fp32(seeding(steps=2, batch_size=3, max_new_tokens=8, samples_per_prompt=1))
    dream = DreamingConfig(dreams_per_document=4, top_k=1, random_kept=1, max_new_tokens=16, inner_rank=4, steps=3,
                           batch_size=4, noise=False, optimizer=FP32)
    sleeper = woken(config, stages=("seeding", "dreaming"), dreaming=dream)
    finish(out, sleeper, sleeper.sleep(progress=False))


def finish(out: Path, sleeper, summary: dict) -> None:
    if world.is_main():
        sleeper.memory.save(out / "memory.safetensors")
        stages = {name: {key: value for key, value in stage.items() if key != "history"} | {
            "history": [{key: step[key] for key in ("step", "loss", "tokens")} for step in stage["history"]]}
                  for name, stage in summary["stages"].items()}
        (out / "summary.json").write_text(json.dumps(stages))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=("gradient", "sleep", "dreaming"))
    parser.add_argument("out", type=Path)
    parser.add_argument("--crash-at", type=int)
    parser.add_argument("--crash-in-save", type=int)
    args = parser.parse_args(argv)
    world.init_from_environment()
    with world.process_group():
        args.out.mkdir(parents=True, exist_ok=True)
        if args.scenario == "gradient":
            gradient(args.out)
        elif args.scenario == "sleep":
            sleep(args.out, args.crash_at, args.crash_in_save)
        else:
            dreaming(args.out)


if __name__ == "__main__":
    main()
