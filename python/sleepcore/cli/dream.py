"""Dreaming: train the dream generator by ReST-EM on biography documents (`sleepcore dream train`).

Meta-training tasks are the passages of generated training people with their 1-hop questions and
gold answers (keep them apart from the people you evaluate on: another tasks.seed or range). The
generator is one expert of a one-level memory ([generator]); each round writes dreams, selects
them by gradient importance, trains one adapter per kept dream, rewards the dreams whose adapter
answers the document's questions better closed-book ("contains"; or, with dreaming.reward_score =
"gold_log_prob", gives the gold answers a higher log-probability) than the unadapted model (or,
with dreaming.reward_baseline = "document", than an adapter trained on the document alone) and
fine-tunes the generator on them. Writes metrics.jsonl (one line per round),
round-<r>/dreams.json (every dream with its scores), checkpoints (an interrupted run resumes),
generator.safetensors and report.json to the output directory. Use the generator at sleep time with [sleep.dreaming] generator_path.

Runs unchanged under torchrun (torchrun --nproc-per-node N -m sleepcore.cli dream train --config
FILE.toml): each rank dreams about its block of the documents and trains its block of the inner
loops, and the result is the single-process one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sleepcore import validation
from sleepcore.cli.options import add_config_arguments, configure, describe
from sleepcore.cli.run import ModelChoice
from sleepcore.distributed import world
from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
from sleepcore.models import load_model_or_tiny
from sleepcore.rollout import Engine
from sleepcore.sleep.dream_config import DreamingConfig
from sleepcore.sleep.dream_tasks import DreamTask
from sleepcore.sleep.dreamer import Dreamer
from sleepcore.tasks.biographies import BiographyConfig, generate_biographies
from sleepcore.tasks.metrics import contains_match
from sleepcore.train import atomic_write_text

TRAIN_EXAMPLE = """\
output_dir = "runs/dreamer"          # checkpoints, metrics.jsonl, round-*/dreams.json, generator.safetensors
seed = 0
[model]
name = "smollm2-135m-instruct"       # a packaged default, a local Hugging Face directory, or "tiny"
[tasks]                              # training people (disjoint from the people you evaluate on)
seed = 1000
people = 20
start = 0
[generator]                          # the generator's expert (one memory level; slots = 1)
rank = 16
slots = 1
[dreaming]                           # DreamingConfig fields (generator_level is 0 here)
dreams_per_document = 6
top_k = 2
random_kept = 1
rounds = 2
"""


@dataclass
class TaskSource:
    """``[tasks]``: ``people`` generated people from index ``start`` of the biographies with ``seed``."""

    seed: int = 1000
    people: int = 20
    start: int = 0

    def __post_init__(self):
        validation.integer("tasks.seed", self.seed)
        validation.integer("tasks.people", self.people, minimum=1)
        validation.integer("tasks.start", self.start, minimum=0)


@dataclass
class DreamTrainConfig:
    """What ``sleepcore dream train`` does (the TOML of :data:`TRAIN_EXAMPLE`)."""

    output_dir: str = "sleepcore-dreamer"
    seed: int = 0
    model: ModelChoice = field(default_factory=ModelChoice)
    tasks: TaskSource = field(default_factory=TaskSource)
    generator: LevelConfig = field(default_factory=lambda: LevelConfig(rank=16, slots=1))
    dreaming: DreamingConfig = field(default_factory=DreamingConfig)

    def __post_init__(self):
        validation.text("output_dir", self.output_dir)
        validation.integer("seed", self.seed)
        for name, kind in (("model", ModelChoice), ("tasks", TaskSource), ("generator", LevelConfig),
                           ("dreaming", DreamingConfig)):
            validation.instance(name, getattr(self, name), kind, what=f"a [{name}] table")


def dream_tasks(source: TaskSource) -> tuple[list[DreamTask], list[str]]:
    """The meta-training tasks (passage, 1-hop questions) and every passage (the tiny model's corpus)."""
    dataset = generate_biographies(BiographyConfig(num_people=source.start + source.people, seed=source.seed))
    dataset = dataset.subset(source.people, source.start)
    tasks = [DreamTask(passage, tuple((q.text, q.answer) for q in dataset.questions if q.person == person.name))
             for person, passage in zip(dataset.people, dataset.passages)]
    return tasks, dataset.passages + dataset.company_passages


def train_generator(config: DreamTrainConfig, *, progress: bool = True, device: torch.device | None = None) -> dict:
    """Runs (or resumes) the meta-training with the model on ``device`` (None: where it loads);
    returns the report (also ``report.json``, written by rank 0 of a distributed run)."""
    tasks, corpus = dream_tasks(config.tasks)
    model, tokenizer = load_model_or_tiny(config.model.name, corpus)
    if device is not None:
        model.to(device)
    memory = ContinuumMemory.wrap(model, MemoryConfig(levels=(config.generator,)))
    dreaming = dataclasses.replace(config.dreaming, generator_level=0)
    dreamer = Dreamer(model, tokenizer, memory, dreaming, metric=contains_match, output_dir=config.output_dir,
                      engine=Engine(model, tokenizer), seed=config.seed)
    report = dreamer.fit(tasks, progress=progress)
    if world.is_main():
        atomic_write_text(Path(config.output_dir) / "report.json", json.dumps(report, indent=2))
    return report


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "dreaming.rounds=1")
    parser.add_argument("--model", help="model.name: a packaged name, a local folder or 'tiny'")
    parser.add_argument("--output-dir", help="checkpoints, metrics, generator.safetensors (default sleepcore-dreamer)")


def train_config(args: argparse.Namespace) -> DreamTrainConfig:
    """The command's config: the defaults, then the file, the flags and ``--set``."""
    return configure(args, {"model.name": args.model, "output_dir": args.output_dir}, DreamTrainConfig())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = actions.add_parser("train", help="meta-train the dream generator (ReST-EM)",
                               formatter_class=argparse.RawDescriptionHelpFormatter,
                               description=describe(__doc__, TRAIN_EXAMPLE))
    train.set_defaults(label="dream train")
    add_train_arguments(train)


def run(args: argparse.Namespace) -> int:
    device = world.init_from_environment()  # under torchrun: the process group and this rank's device
    with world.process_group():
        train_generator(train_config(args), device=device)
    return 0
