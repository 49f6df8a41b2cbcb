"""``sleepcore run --config FILE.toml``: wake on documents and sleep on a schedule, with any
supported model.

```toml
output_dir = "runs/biographies"      # checkpoints, metrics.jsonl per sleep, memory.safetensors, report.json
[model]
name = "smollm2-135m-instruct"       # a packaged default, a local Hugging Face directory, or "tiny"
[documents]
path = "notes/"                      # a .txt (blank-line-separated documents), a .jsonl ({"text": ...}) or a folder of both
[schedule]
documents_per_sleep = 20             # wake on this many documents, then sleep; until all are consumed
[memory]                             # one memory level (LevelConfig fields); each sleep takes a slot
rank = 16
slots = 4
[sleep]                              # SleepConfig fields
seed = 0
[sleep.seeding]                      # KnowledgeSeedingConfig fields
steps = 12
```
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
from sleepcore.models import DEFAULT_MODEL, load_model_or_tiny
from sleepcore.rollout import Engine
from sleepcore.sleep.config import SleepConfig
from sleepcore.sleep.sleeper import Sleeper

_SECTIONS = {"output_dir", "model", "documents", "schedule", "memory", "sleep"}


class ConfigError(ValueError):
    """A bad run configuration; the message says which field and what to do."""


def read_documents(path: str | os.PathLike) -> list[str]:
    """Documents from a .txt (separated by blank lines), a .jsonl (one {"text": ...} per line) or a
    folder holding such files (sorted by name)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".txt", ".jsonl"))
    elif path.is_file():
        files = [path]
    else:
        raise ConfigError(f"documents.path {str(path)!r} does not exist")
    documents = []
    for file in files:
        if file.suffix == ".jsonl":
            for number, line in enumerate(file.read_text().splitlines(), 1):
                if line.strip():
                    record = json.loads(line)
                    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                        raise ConfigError(f"{file}:{number}: each line must be a JSON object with a string 'text'")
                    documents.append(record["text"])
        elif file.suffix == ".txt":
            documents += [part.strip() for part in file.read_text().split("\n\n")]
        else:
            raise ConfigError(f"documents.path {str(file)!r}: only .txt and .jsonl files are read")
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise ConfigError(f"documents.path {str(path)!r} holds no documents (.txt or .jsonl with text)")
    return documents


def load_config(path: str | os.PathLike) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    try:
        values = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from None
    unknown = sorted(set(values) - _SECTIONS)
    if unknown:
        raise ConfigError(f"unknown config section(s) {unknown}; known: {sorted(_SECTIONS)}")
    for section in ("model", "documents"):
        if section not in values:
            raise ConfigError(f"the config needs a [{section}] section")
    return values


def _memory_config(values: dict) -> MemoryConfig:
    known = {f.name for f in fields(LevelConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown [memory] field(s) {unknown}; known: {sorted(known)}")
    return MemoryConfig(levels=(LevelConfig(**values),))


def run(config_path: str | os.PathLike, *, progress: bool = True) -> dict:
    """Runs the configured wake/sleep schedule; returns the report (also ``report.json``)."""
    values = load_config(config_path)
    documents = read_documents(values["documents"].get("path", ""))
    per_sleep = values.get("schedule", {}).get("documents_per_sleep", len(documents))
    if not isinstance(per_sleep, int) or per_sleep < 1:
        raise ConfigError(f"schedule.documents_per_sleep must be an int >= 1, got {per_sleep!r}")
    output = Path(values.get("output_dir", "sleepcore-run"))
    try:
        sleep_config = SleepConfig.from_dict({**values.get("sleep", {}), "output_dir": str(output)})
        memory_config = _memory_config(values.get("memory", {}))
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from None
    model, tokenizer = load_model_or_tiny(values["model"].get("name", DEFAULT_MODEL), documents)
    memory = ContinuumMemory.wrap(model, memory_config)
    sleeper = Sleeper(model, tokenizer, memory, sleep_config, engine=Engine(model, tokenizer))
    sleeps = []
    for start in range(0, len(documents), per_sleep):
        sleeper.wake(documents[start:start + per_sleep])
        summary = sleeper.sleep(progress=progress)
        sleeps.append({key: value for key, value in summary.items() if key != "history"})
    output.mkdir(parents=True, exist_ok=True)
    memory.save(output / "memory.safetensors")
    report = {"documents": len(documents), "sleeps": sleeps}
    (output / "report.json").write_text(json.dumps(report, indent=2))
    return report
