"""Instrument, not a method (issue 12, session 49): what a finished run's sleeps did to the model's
answers to requests that have nothing to do with their documents.

The suite's drift (a KL on generic prompts) says how far the answers moved, not what they became.
This loads each row's memory as its last sleep saved it (the last stage's latest checkpoint of
``<row>/x<budget>/sleep-<last>``) and, with every memory expert off (the base model) and as saved:

* ``general``: greedy closed-book answers to
  :data:`~sleepcore.tasks.general_knowledge.GENERAL_QUESTIONS` (common knowledge that no biography
  holds, in the suite's short-answer format); ``base_right``, ``right`` and ``kept``: how many of
  the base model's right answers the slept model still gives (the suite's ``general_kept`` of
  runs made before it reported it);
* ``generic``: greedy answers (48 tokens) to the suite's drift prompts: mean length in tokens
  with the memory off and on, how many start with the base model's first 8 tokens, and the answers;
* ``stages`` (``--stages``): how many of those right answers are kept after each stage of each
  sleep (session 50: where a sleep loses them);
* ``asked_in_sleep``: how many of those questions and prompts a sleep's replay held as a prompt
  (its ``student_prompts``; the self-written requests of ``self_instructions`` could hit one).

    python bench/generic_answers.py RUN_DIR [RUN_DIR ...] [--rows ks sleep] [--budget 16] [--stages] [--out OUT.json]

Runs the model on the CPU (SmolLM2-135M-Instruct, a few minutes per row on 2 cores).
"""

import argparse
import json
from pathlib import Path

import torch
from safetensors import safe_open

from sleepcore.lm import encode
from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
from sleepcore.models import load_model
from sleepcore.rollout import Engine, SamplingParams
from sleepcore.tasks.general_knowledge import GENERAL_QUESTIONS, general_answers, right_answers
from sleepcore.tasks.knowledge_suite import DRIFT_PROMPTS, drift_prompts

STAGES = ("dreaming", "seeding", "sft")  # a sleep's last stage first
PREFIX_TOKENS = 8


def last_checkpoint(row: Path) -> Path:
    """The latest checkpoint directory of the last stage of the row's last sleep."""
    sleep = sorted(row.glob("sleep-*"))[-1]
    stage = next(sleep / name for name in STAGES if (sleep / name / "LATEST").exists())
    return stage / (stage / "LATEST").read_text().strip()


def replayed_prompts(row: Path) -> set[str]:
    """The student prompts of the last sleep's Knowledge Seeding replay (none without that stage)."""
    states = sorted(sorted(row.glob("sleep-*"))[-1].glob("seeding/step-*/state.json"))
    return set(json.loads(states[-1].read_text())["stage"]["student_prompts"]) if states else set()


def stage_kept(engine, tokenizer, row: Path, base: dict, load) -> list[dict]:
    """``general`` kept after each stage of each sleep of a row (the stage's latest checkpoint,
    loaded by ``load``; a row's checkpoints share one memory config, so ``engine`` stays valid)."""
    base_right, kept = right_answers(base["general"]), []
    for sleep in sorted(row.glob("sleep-*")):
        for stage in reversed(STAGES):  # in the order a sleep runs them
            if (sleep / stage / "LATEST").exists():
                load(sleep / stage / (sleep / stage / "LATEST").read_text().strip() / "memory.safetensors")
                now = right_answers(general_answers(engine, tokenizer))
                kept.append({"sleep": sleep.name, "stage": stage,
                             "kept": sum(b and n for b, n in zip(base_right, now))})
    return kept


def memory_levels(path: Path) -> tuple[LevelConfig, ...]:
    with safe_open(str(path), "pt") as handle:
        saved = json.loads(handle.metadata()["config"])
    return tuple(LevelConfig(rank=level["rank"], slots=level["slots"], period=level.get("period"),
                             alpha=level["alpha"], router=level.get("router", "sum")) for level in saved["levels"])


def greedy(engine, tokenizer, prompts: list[str], tokens: int) -> list[list[int]]:
    outputs = engine.generate([encode(tokenizer, p) for p in prompts], SamplingParams(temperature=0.0, max_tokens=tokens),
                              progress=False)
    return [list(output.completions[0].token_ids) for output in outputs]


def measure(engine, tokenizer, generic_prompts: list[str]) -> dict:
    """Answers with the memory as loaded: ``general`` (texts) and ``generic`` (token ids)."""
    return {"general": general_answers(engine, tokenizer), "generic": greedy(engine, tokenizer, generic_prompts, 48)}


def row_report(base: dict, slept: dict, tokenizer, asked: set[str]) -> dict:
    base_right, now_right = right_answers(base["general"]), right_answers(slept["general"])
    lengths = lambda answers: sum(len(a) for a in answers) / len(answers)  # noqa: E731
    return {
        "general": {"questions": len(GENERAL_QUESTIONS), "base_right": sum(base_right), "right": sum(now_right),
                    "kept": sum(b and n for b, n in zip(base_right, now_right)),
                    "answers": [{"question": q, "base": b, "slept": s}
                                for (q, _), b, s in zip(GENERAL_QUESTIONS, base["general"], slept["general"])]},
        "generic": {"prompts": len(DRIFT_PROMPTS), "base_tokens": lengths(base["generic"]),
                    "tokens": lengths(slept["generic"]),
                    "same_start": sum(a[:PREFIX_TOKENS] == b[:PREFIX_TOKENS]
                                      for a, b in zip(slept["generic"], base["generic"])),
                    "answers": [{"prompt": p, "base": tokenizer.decode(b, skip_special_tokens=True),
                                 "slept": tokenizer.decode(s, skip_special_tokens=True)}
                                for p, b, s in zip(DRIFT_PROMPTS, base["generic"], slept["generic"])]},
        "asked_in_sleep": sum(any(text in prompt for prompt in asked)
                              for text in [q for q, _ in GENERAL_QUESTIONS] + list(DRIFT_PROMPTS)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--rows", nargs="+", default=["ks", "sleep"])
    parser.add_argument("--budget", default="16")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--stages", action="store_true", help="also the general answers kept after every stage")
    args = parser.parse_args()
    model, tokenizer = load_model()[:2]
    engine, memory, levels, base, report = None, None, None, None, []
    generic_prompts = drift_prompts(tokenizer)

    def load(path: Path) -> None:  # (re)wraps the model when a run's memory has other levels
        nonlocal engine, memory, levels, base
        saved = memory_levels(path)
        if saved != levels:
            if memory is not None:
                memory.unwrap()
            memory, levels = ContinuumMemory.wrap(model, MemoryConfig(levels=saved)), saved
            engine = Engine(model, tokenizer)
        if base is None:
            base = measure(engine, tokenizer, generic_prompts)  # no expert active yet: the base model
        memory.load(path)

    for run in args.runs:
        for row in args.rows:
            folder = run / row / f"x{args.budget}"
            if not folder.is_dir():
                raise SystemExit(f"{folder} does not exist: is {row!r} a trained row of {run} at x{args.budget}?")
            checkpoint = last_checkpoint(folder)
            load(checkpoint / "memory.safetensors")
            slept = measure(engine, tokenizer, generic_prompts)
            asked = replayed_prompts(folder)
            entry = {"run": str(run), "row": row, "checkpoint": str(checkpoint), **row_report(base, slept, tokenizer, asked)}
            if args.stages:
                entry["stages"] = stage_kept(engine, tokenizer, folder, base, load)
            report.append(entry)
            g, n = entry["general"], entry["generic"]
            print(f"{run.name:32s} {row:10s} general kept {g['kept']}/{g['base_right']} (right {g['right']}/"
                  f"{g['questions']})  generic tokens {n['base_tokens']:.1f} -> {n['tokens']:.1f}, same start "
                  f"{n['same_start']}/{n['prompts']}  asked in sleep {entry['asked_in_sleep']}")
            for stage in entry.get("stages", []):
                print(f"    after {stage['sleep']} {stage['stage']:9s} general kept {stage['kept']}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
