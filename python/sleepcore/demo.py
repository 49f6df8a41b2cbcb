"""``sleepcore demo``: a model reads new biographies, sleeps once, and answers closed-book.

It evaluates closed-book QA on the biographies before sleep (base), with the passages in context
(the ceiling), after one sleep of Knowledge Seeding, and after SFT on the passages with the same
number of trained tokens (the baseline), prints a table and writes ``demo.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
from sleepcore.models import DEFAULT_MODEL, load_model_or_tiny
from sleepcore.rollout import Engine
from sleepcore.sleep.config import KnowledgeSeedingConfig, SleepConfig
from sleepcore.sleep.next_token import train_next_token
from sleepcore.sleep.sleeper import Sleeper
from sleepcore.tasks.biographies import BiographyConfig, generate_biographies
from sleepcore.tasks.knowledge_eval import evaluate

DEMO_SEEDING = KnowledgeSeedingConfig(steps=12, batch_size=4, max_new_tokens=40, completions=4,
                                      samples_per_prompt=1, learning_rate=2e-3)
TINY_SEEDING = KnowledgeSeedingConfig(steps=3, batch_size=3, max_new_tokens=8, completions=2, samples_per_prompt=1)


def run_demo(*, tiny: bool = False, people: int | None = None, output_dir: str | os.PathLike = "sleepcore-demo",
             progress: bool = True) -> dict:
    """Runs the demo; returns ``{method: scores}`` and writes ``<output_dir>/demo.json``."""
    started = time.perf_counter()
    dataset = generate_biographies(BiographyConfig(num_people=people or (3 if tiny else 20), seed=0))
    documents = dataset.passages + dataset.company_passages
    model, tokenizer = load_model_or_tiny("tiny" if tiny else DEFAULT_MODEL, documents)
    memory = ContinuumMemory.wrap(model, MemoryConfig(levels=(LevelConfig(slots=2, period=1024),)))
    engine = Engine(model, tokenizer, kv_memory_bytes=(64 if tiny else 1024) << 20)
    output = Path(output_dir)
    shutil.rmtree(output / "sleep", ignore_errors=True)  # a demo starts afresh (its own folder only)
    results = {"base": evaluate(engine, tokenizer, dataset, progress=progress),
               "in-context (ceiling)": evaluate(engine, tokenizer, dataset, in_context=True, progress=progress)}
    config = SleepConfig(seeding=TINY_SEEDING if tiny else DEMO_SEEDING, max_prompts=4 if tiny else 32,
                         output_dir=str(output / "sleep"))
    sleeper = Sleeper(model, tokenizer, memory, config, engine=engine)
    sleeper.wake(documents)
    summary = sleeper.sleep(progress=progress)
    results["sleep (Knowledge Seeding)"] = evaluate(engine, tokenizer, dataset, progress=progress)
    tokens = sum(step["tokens"] for step in summary["history"])
    memory.deactivate(config.receiver_level, summary["slot"])
    sft_slot = memory.new_expert(config.receiver_level)
    train_next_token(model, tokenizer, memory.trainable(config.receiver_level, sft_slot), documents, tokens=tokens,
                     learning_rate=config.seeding.learning_rate, progress=progress, desc="SFT baseline")
    results["SFT on passages (same tokens)"] = evaluate(engine, tokenizer, dataset, progress=progress)
    report = {"model": "tiny random" if tiny else "smollm2-135m-instruct", "people": len(dataset.people),
              "trained_tokens": tokens, "kl_before": summary["kl_before"], "kl_after": summary["kl_after"],
              "seconds": time.perf_counter() - started, "results": results}
    output.mkdir(parents=True, exist_ok=True)
    (output / "demo.json").write_text(json.dumps(report, indent=2))
    print_table(report)
    return report


def print_table(report: dict) -> None:
    print(f"\nclosed-book QA on {report['people']} new biographies, {report['model']} "
          f"({report['trained_tokens']} trained tokens per method, {report['seconds']:.0f} s)")
    print(f"{'method':<32}{'EM':>7}{'F1':>7}{'contains':>10}{'2-hop EM':>10}{'2-hop contains':>16}")
    for method, scores in report["results"].items():
        one, two = scores["one_hop"], scores["two_hop"]
        print(f"{method:<32}{one['em']:>7.3f}{one['f1']:>7.3f}{one['contains']:>10.3f}{two['em']:>10.3f}"
              f"{two['contains']:>16.3f}")
    print(f"teacher KL to the student on the replay set: {report['kl_before']:.4f} before sleep, "
          f"{report['kl_after']:.4f} after")
