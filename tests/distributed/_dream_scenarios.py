"""What the distributed Dreamer tests run, once per rank under ``torchrun`` (and in-process for the
single-process reference): ``python _dream_scenarios.py OUT [--crash-in-round R]``.

The scenario: ``Dreamer.fit`` for 2 ReST-EM rounds on 3 tasks of a tiny random model, 4 dreams per
task (noise redrawn every engine step), 2 kept per task and inner loops in chunks of 2 adapters:
3 chunks, so under 2 ranks rank 0 dreams about 1 task and trains 1 chunk, rank 1 dreams about 2
and trains 2. The reward's metric is a stand-in for "contains" (:func:`parity_metric`), so
that some dreams, not all, are rewarded and the generator trains. Rank 0 writes
``result.json`` (the rounds without their seconds, the base scores, and each rank's
count of the documents it dreamed about and of the inner-loop chunks it trained); the run's own files
(``generator.safetensors``, ``round-*/dreams.json``, ``metrics.jsonl``) are in ``OUT/run``.

``--crash-in-round R`` SIGKILLs rank 1 in its first generator step of round ``R``, after the
round's dreams were written.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import zlib
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sleepcore.distributed import world  # noqa: E402
from sleepcore.sleep import dreamer as dreamer_module  # noqa: E402
from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig  # noqa: E402
from sleepcore.models import tiny_model  # noqa: E402
from sleepcore.rollout import Engine  # noqa: E402
from sleepcore.sleep.dream_config import DreamingConfig  # noqa: E402
from sleepcore.sleep.dream_tasks import DreamTask  # noqa: E402
from sleepcore.sleep.dreamer import Dreamer  # noqa: E402
from sleepcore.sleep.sft import NextTokenStage  # noqa: E402
from sleepcore.train import OptimizerConfig  # noqa: E402
from _sleepers import DATASET  # noqa: E402

# objective "sft": on the tiny model its inner loops reward some but not all dreams in each round,
# which the test needs (the split of work over ranks is the same for either objective)
CONFIG = DreamingConfig(dreams_per_document=4, top_k=1, random_kept=1, max_new_tokens=16, inner_rank=4,
                        inner_epochs=2, inner_learning_rate=0.05, inner_adapters=2, rounds=2, generator_steps=2,
                        generator_batch_size=2, objective="sft", optimizer=OptimizerConfig(compute_dtype="float32"))
TASKS = [DreamTask(passage, tuple((q.text, q.answer) for q in DATASET.questions_of(person)[:2]))
         for passage, person in zip(DATASET.passages, DATASET.people)]


def parity_metric(prediction: str, gold: str) -> float:
    """A stand-in for "contains" on a random model (which never answers right): 1 for an answer
    whose CRC-32 is odd, so that scores vary between tasks and dreams and some dreams are rewarded."""
    return float(zlib.crc32(prediction.encode()) % 2)


def kill_rank_1_in_round(crash_round: int) -> None:
    """SIGKILLs rank 1 at its first generator step of round ``crash_round``."""
    real_rest_em, real_step, current = Dreamer._rest_em, NextTokenStage.step, {"round": None}

    def rest_em(self, round_dir, measured, index, progress):
        current["round"] = index
        return real_rest_em(self, round_dir, measured, index, progress)

    def step(self, batch):
        if current["round"] == crash_round and world.rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(self, batch)

    Dreamer._rest_em, NextTokenStage.step = rest_em, step


@contextmanager
def counted_work():
    """Inside: this rank's counts of the documents it dreams about and of the inner-loop chunks it
    trains (a dict, updated in place)."""
    work, real_write, real_inner_loop = {"documents": 0, "chunks": 0}, dreamer_module.write_dreams, Dreamer._inner_loop

    def write_dreams(engine, tokenizer, memory, documents, *args, **kwargs):
        work["documents"] += len(documents)
        return real_write(engine, tokenizer, memory, documents, *args, **kwargs)

    def inner_loop(self, *args, **kwargs):
        work["chunks"] += 1
        return real_inner_loop(self, *args, **kwargs)

    dreamer_module.write_dreams, Dreamer._inner_loop = write_dreams, inner_loop
    try:
        yield work
    finally:
        dreamer_module.write_dreams, Dreamer._inner_loop = real_write, real_inner_loop


def fit(out: Path) -> None:
    model, tokenizer = tiny_model(DATASET.passages + DATASET.company_passages, seed=0)
    torch.manual_seed(0)
    memory = ContinuumMemory.wrap(model, MemoryConfig(levels=(LevelConfig(rank=4, slots=2),)))
    dreamer = Dreamer(model, tokenizer, memory, CONFIG, metric=parity_metric,
                      output_dir=out / "run", engine=Engine(model, tokenizer, kv_memory_bytes=32 << 20), seed=2)
    with counted_work() as work:
        result = dreamer.fit(TASKS, progress=False)
    work = world.all_gather_objects(work)
    if world.is_main():
        rounds = [{key: value for key, value in record.items() if key != "seconds"} for record in result["rounds"]]
        (out / "result.json").write_text(json.dumps({"rounds": rounds, "base_scores": result["base_scores"],
                                                      "work": work}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--crash-in-round", type=int)
    args = parser.parse_args(argv)
    world.init_from_environment()
    with world.process_group():
        args.out.mkdir(parents=True, exist_ok=True)
        if args.crash_in_round is not None:
            kill_rank_1_in_round(args.crash_in_round)
        fit(args.out)


if __name__ == "__main__":
    main()
