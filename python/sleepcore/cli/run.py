"""Wake on documents and sleep on a schedule, with any supported model.

The documents are read in order; every documents_per_sleep of them the model wakes on them and
sleeps once (Knowledge Seeding into a new expert of one memory level). It writes each sleep's
checkpoints and metrics.jsonl (under sleep-000/, ...), memory.safetensors and report.json to the
output directory. Documents: a .txt (blank-line-separated documents), a .jsonl ({"text": ...} per
line) or a folder of both.

Under torchrun (``torchrun --nproc-per-node N -m sleepcore.cli run --config FILE``) the same run is
data parallel over the ranks (:mod:`sleepcore.distributed`); rank 0 writes the report and memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sleepcore import validation
from sleepcore.cli.options import add_config_arguments, configure
from sleepcore.distributed import world
from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
from sleepcore.models import DEFAULT_MODEL, load_model_or_tiny
from sleepcore.rollout import Engine
from sleepcore.sleep.config import SleepConfig
from sleepcore.sleep.sleeper import Sleeper

EXAMPLE = """\
output_dir = "runs/biographies"      # checkpoints, metrics.jsonl per sleep, memory.safetensors, report.json
[model]
name = "smollm2-135m-instruct"       # a packaged default, a local Hugging Face directory, or "tiny"
[documents]
path = "notes/"                      # .txt (blank-line-separated), .jsonl ({"text": ...}) or a folder of both
[schedule]
documents_per_sleep = 20             # wake on this many documents, then sleep; until all are consumed
[memory]                             # one memory level (LevelConfig fields); each sleep takes a slot
rank = 16
slots = 4
[sleep]                              # SleepConfig fields (its output_dir is the run's)
seed = 0
[sleep.seeding]                      # KnowledgeSeedingConfig fields
steps = 12
"""


@dataclass
class ModelChoice:
    """``[model]``: a packaged default, a local Hugging Face directory, or ``"tiny"``."""

    name: str = DEFAULT_MODEL

    def __post_init__(self):
        validation.text("model.name", self.name)


@dataclass
class DocumentSource:
    """``[documents]``: ``path`` of a .txt, a .jsonl or a folder of both (required by the run)."""

    path: str | None = None

    def __post_init__(self):
        if self.path is not None:
            validation.text("documents.path", self.path)


@dataclass
class Schedule:
    """``[schedule]``: wake on ``documents_per_sleep`` documents, then sleep (None: all in one sleep)."""

    documents_per_sleep: int | None = None

    def __post_init__(self):
        validation.integer("schedule.documents_per_sleep", self.documents_per_sleep, minimum=1, optional=True)


@dataclass
class RunConfig:
    """What ``sleepcore run`` does (the TOML of :data:`EXAMPLE`): ``sleep.output_dir`` is replaced by
    ``output_dir``, and the memory has the one level ``memory``."""

    output_dir: str = "sleepcore-run"
    model: ModelChoice = field(default_factory=ModelChoice)
    documents: DocumentSource = field(default_factory=DocumentSource)
    schedule: Schedule = field(default_factory=Schedule)
    memory: LevelConfig = field(default_factory=LevelConfig)
    sleep: SleepConfig = field(default_factory=SleepConfig)

    def __post_init__(self):
        validation.text("output_dir", self.output_dir)
        for name, kind in (("model", ModelChoice), ("documents", DocumentSource), ("schedule", Schedule),
                           ("memory", LevelConfig), ("sleep", SleepConfig)):
            validation.instance(name, getattr(self, name), kind, what=f"a [{name}] table")


def read_documents(path: str | os.PathLike | None) -> list[str]:
    """Documents from a .txt (separated by blank lines), a .jsonl (one {"text": ...} per line) or a
    folder holding such files (sorted by name)."""
    if path is None:
        raise ValueError("documents.path is required: a .txt, a .jsonl or a folder of both")
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".txt", ".jsonl"))
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"documents.path {str(path)!r} does not exist")
    documents = []
    for file in files:
        if file.suffix == ".jsonl":
            documents += _jsonl_texts(file)
        elif file.suffix == ".txt":
            documents += [part.strip() for part in file.read_text().split("\n\n")]
        else:
            raise ValueError(f"documents.path {str(file)!r}: only .txt and .jsonl files are read")
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise ValueError(f"documents.path {str(path)!r} holds no documents (.txt or .jsonl with text)")
    return documents


def _jsonl_texts(file: Path) -> list[str]:
    texts = []
    for number, line in enumerate(file.read_text().splitlines(), 1):
        if line.strip():
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(f"{file}:{number}: each line must be a JSON object with a string 'text'")
            texts.append(record["text"])
    return texts


def run_schedule(config: RunConfig, *, progress: bool = True, device: torch.device | None = None) -> dict:
    """Runs the configured wake/sleep schedule with the model on ``device`` (None: where it loads);
    returns the report (also ``report.json``, written by rank 0 of a distributed run)."""
    documents = read_documents(config.documents.path)
    per_sleep = config.schedule.documents_per_sleep or len(documents)
    output = Path(config.output_dir)
    sleep_config = dataclasses.replace(config.sleep, output_dir=str(output))
    model, tokenizer = load_model_or_tiny(config.model.name, documents)
    if device is not None:
        model.to(device)
    memory = ContinuumMemory.wrap(model, MemoryConfig(levels=(config.memory,)))
    sleeper = Sleeper(model, tokenizer, memory, sleep_config, engine=Engine(model, tokenizer))
    sleeps = []
    for start in range(0, len(documents), per_sleep):
        sleeper.wake(documents[start:start + per_sleep])
        summary = sleeper.sleep(progress=progress)
        sleeps.append({key: value for key, value in summary.items() if key != "history"})
    report = {"documents": len(documents), "sleeps": sleeps}
    if world.is_main():
        output.mkdir(parents=True, exist_ok=True)
        memory.save(output / "memory.safetensors")
        (output / "report.json").write_text(json.dumps(report, indent=2))
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "sleep.seeding.steps=5")
    parser.add_argument("--model", help="model.name: a packaged name, a local folder or 'tiny'")
    parser.add_argument("--documents", help="documents.path: a .txt, a .jsonl or a folder of both")
    parser.add_argument("--documents-per-sleep", type=int, help="schedule.documents_per_sleep (default: all)")
    parser.add_argument("--output-dir", help="checkpoints, metrics, memory.safetensors, report.json "
                                             "(default sleepcore-run)")


def run_config(args: argparse.Namespace) -> RunConfig:
    """The run's config: the defaults, then the file, the flags and ``--set``."""
    flags = {"output_dir": args.output_dir, "model.name": args.model, "documents.path": args.documents,
             "schedule.documents_per_sleep": args.documents_per_sleep}
    return configure(args, flags, RunConfig())


def run(args: argparse.Namespace) -> int:
    device = world.init_from_environment()  # under torchrun: the process group and this rank's device
    with world.process_group():
        run_schedule(run_config(args), device=device)
    return 0
