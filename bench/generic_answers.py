"""Instrument, not a method (issue 12, session 49): what a finished run's sleeps did to the model's
answers to requests that have nothing to do with their documents.

The suite's drift (a KL on generic prompts) says how far the answers moved, not what they became.
This loads each row's memory as its last sleep saved it (the last stage's latest checkpoint of
``<row>/x<budget>/sleep-<last>``) and, with every memory expert off (the base model) and as saved:

* ``general``: greedy closed-book answers to :data:`GENERAL_QUESTIONS` (common knowledge that no
  biography holds, in the suite's short-answer format); ``base_right``, ``right`` and ``kept``: how
  many of the base model's right answers the slept model still gives (a word-boundary match);
* ``generic``: greedy answers (48 tokens) to the suite's drift prompts: mean length in tokens
  with the memory off and on, how many start with the base model's first 8 tokens, and the answers;
* ``asked_in_sleep``: how many of those questions and prompts a sleep's replay held as a prompt
  (its ``student_prompts``; the self-written requests of ``self_instructions`` could hit one).

    python bench/generic_answers.py RUN_DIR [RUN_DIR ...] [--rows ks sleep] [--budget 16] [--out OUT.json]

Runs the model on the CPU (SmolLM2-135M-Instruct, a few minutes per row on 2 cores).
"""

import argparse
import json
import re
from pathlib import Path

import torch
from safetensors import safe_open

from sleepcore.lm import chat_turn, encode, qa_prompt
from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
from sleepcore.models import load_model
from sleepcore.rollout import Engine, SamplingParams
from sleepcore.tasks.knowledge_suite import DRIFT_PROMPTS

#: (question, accepted answers separated by "|"), common knowledge SmolLM2-135M-Instruct mostly
#: answers right closed-book (31 of 40 on 2026-12-07); only its right ones are counted as kept.
GENERAL_QUESTIONS = (
    ("What is the capital of France?", "paris"), ("What is the capital of Japan?", "tokyo"),
    ("What is the capital of Italy?", "rome"), ("What is the capital of Germany?", "berlin"),
    ("What is the capital of Spain?", "madrid"), ("What is the capital of England?", "london"),
    ("What is the capital of Russia?", "moscow"), ("What is the capital of China?", "beijing"),
    ("What is the capital of Egypt?", "cairo"), ("What is the capital of Canada?", "ottawa"),
    ("What is the capital of Australia?", "canberra"), ("Which planet is known as the Red Planet?", "mars"),
    ("What is the largest planet in the solar system?", "jupiter"), ("Who wrote Romeo and Juliet?", "shakespeare"),
    ("Who painted the Mona Lisa?", "vinci"), ("Who developed the theory of relativity?", "einstein"),
    ("What is the chemical symbol for water?", "h2o"), ("What gas do plants absorb from the air?", "carbon dioxide"),
    ("What is the boiling point of water in degrees Celsius?", "100"), ("How many days are in a week?", "7|seven"),
    ("How many legs does a spider have?", "8|eight"), ("What colour is the sky on a clear day?", "blue"),
    ("What is the largest ocean on Earth?", "pacific"), ("What is the longest river in Africa?", "nile"),
    ("On which continent is Brazil?", "south america"), ("What language is spoken in Brazil?", "portuguese"),
    ("What is the tallest mountain in the world?", "everest"), ("What is the currency of the United States?", "dollar"),
    ("What is the main language of Mexico?", "spanish"), ("Which organ pumps blood through the body?", "heart"),
    ("What do bees make?", "honey"), ("What is the opposite of hot?", "cold"),
    ("Which animal is known as the king of the jungle?", "lion"), ("What is the largest mammal?", "whale"),
    ("Who was the first president of the United States?", "washington"),
    ("In which country are the pyramids of Giza?", "egypt"),
)
STAGES = ("dreaming", "seeding", "sft")  # a sleep's last stage first
PREFIX_TOKENS = 8


def right(text: str, accepted: str) -> bool:
    return any(re.search(rf"\b{re.escape(answer)}\b", text.lower()) for answer in accepted.split("|"))


def last_checkpoint(row: Path) -> Path:
    """The latest checkpoint directory of the last stage of the row's last sleep."""
    sleep = sorted(row.glob("sleep-*"))[-1]
    stage = next(sleep / name for name in STAGES if (sleep / name / "LATEST").exists())
    return stage / (stage / "LATEST").read_text().strip()


def replayed_prompts(row: Path) -> set[str]:
    """The student prompts of the last sleep's Knowledge Seeding replay (none without that stage)."""
    states = sorted(sorted(row.glob("sleep-*"))[-1].glob("seeding/step-*/state.json"))
    return set(json.loads(states[-1].read_text())["stage"]["student_prompts"]) if states else set()


def memory_levels(path: Path) -> tuple[LevelConfig, ...]:
    with safe_open(str(path), "pt") as handle:
        saved = json.loads(handle.metadata()["config"])
    return tuple(LevelConfig(rank=level["rank"], slots=level["slots"], period=level.get("period"),
                             alpha=level["alpha"]) for level in saved["levels"])


def greedy(engine, tokenizer, prompts: list[str], tokens: int) -> list[list[int]]:
    outputs = engine.generate([encode(tokenizer, p) for p in prompts], SamplingParams(temperature=0.0, max_tokens=tokens),
                              progress=False)
    return [list(output.completions[0].token_ids) for output in outputs]


def measure(engine, tokenizer, memory, generic_prompts: list[str]) -> dict:
    """Answers with the memory as loaded: ``general`` (texts) and ``generic`` (token ids)."""
    texts = [tokenizer.decode(ids, skip_special_tokens=True)
             for ids in greedy(engine, tokenizer, [qa_prompt(tokenizer, q) for q, _ in GENERAL_QUESTIONS], 24)]
    return {"general": texts, "generic": greedy(engine, tokenizer, generic_prompts, 48)}


def row_report(base: dict, slept: dict, tokenizer, asked: set[str]) -> dict:
    base_right = [right(text, accepted) for text, (_, accepted) in zip(base["general"], GENERAL_QUESTIONS)]
    now_right = [right(text, accepted) for text, (_, accepted) in zip(slept["general"], GENERAL_QUESTIONS)]
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
    args = parser.parse_args()
    model, tokenizer = load_model()[:2]
    engine, memory, base, report = None, None, None, []
    generic_prompts = [chat_turn(tokenizer, text) or f"{text}\n" for text in DRIFT_PROMPTS]
    for run in args.runs:
        for row in args.rows:
            folder = run / row / f"x{args.budget}"
            if not folder.is_dir():
                raise SystemExit(f"{folder} does not exist: is {row!r} a trained row of {run} at x{args.budget}?")
            checkpoint = last_checkpoint(folder)
            if memory is None:
                memory = ContinuumMemory.wrap(model, MemoryConfig(levels=memory_levels(checkpoint / "memory.safetensors")))
                engine = Engine(model, tokenizer)
                with memory.switched_off():
                    base = measure(engine, tokenizer, memory, generic_prompts)
            memory.load(checkpoint / "memory.safetensors")
            slept = measure(engine, tokenizer, memory, generic_prompts)
            asked = replayed_prompts(folder)
            entry = {"run": str(run), "row": row, "checkpoint": str(checkpoint), **row_report(base, slept, tokenizer, asked)}
            report.append(entry)
            g, n = entry["general"], entry["generic"]
            print(f"{run.name:32s} {row:10s} general kept {g['kept']}/{g['base_right']} (right {g['right']}/"
                  f"{g['questions']})  generic tokens {n['base_tokens']:.1f} -> {n['tokens']:.1f}, same start "
                  f"{n['same_start']}/{n['prompts']}  asked in sleep {entry['asked_in_sleep']}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
