"""Instrument, not a method (issue 12): how faithful are the model's dreams to their document?

Writes ``dreams_per_document`` dreams per biography passage with the library's own
:func:`~sleepcore.sleep.dreams.write_dreams` (the default dream prompts, the untrained model) under
several sampling settings, and scores each dream against the person's gold facts:

* ``recall``: the share of the person's fact values (7) that appear in the dream (normalised text);
* ``grounded``: the share of the dream's lines that state at least one of those values;
* ``foreign``: the share of the dream's capitalised words and numbers that occur nowhere in the
  passage (invented names, places, dates; words that start a sentence count too, so it is an
  upper bound on invention).

    python bench/dream_fidelity_probe.py OUT.json [--people 10] [--settings 1.0:noise,1.0,0.5:noise,0.3]

Each setting is ``TEMPERATURE`` with ``:noise`` for the random-expert noise (DreamingConfig's
default scale). Prints one line per setting and prompt; writes the rows and three dreams of the
first person per setting to ``OUT.json``.
"""

import argparse
import json
import re
import time

from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
from sleepcore.models import load_model
from sleepcore.rollout import Engine
from sleepcore.sleep.dream_config import DreamingConfig
from sleepcore.sleep.dreams import dream_lines, write_dreams
from sleepcore.tasks.biographies import BiographyConfig, generate_biographies
from sleepcore.tasks.metrics import normalize_answer

NAME_OR_NUMBER = re.compile(r"\b(?:[A-Z][a-z]+|\d+)\b")


def dream_scores(text: str, passage: str, values: list[str]) -> dict[str, float]:
    """``recall``, ``grounded`` and ``foreign`` (module docstring) of one dream."""
    lines = dream_lines(text) or [""]
    words = NAME_OR_NUMBER.findall(text)
    passage_words = set(NAME_OR_NUMBER.findall(passage))
    return {"recall": sum(value in normalize_answer(text) for value in values) / len(values),
            "grounded": sum(any(value in normalize_answer(line) for value in values) for line in lines) / len(lines),
            "foreign": sum(word not in passage_words for word in words) / max(1, len(words))}


def untrained_dreamer(count: int, seed: int):
    """``(tokenizer, memory, engine, people)``: the packaged model, wrapped with two empty rank-16
    levels (the noise draws its experts' shapes from them), its engine, and people 1..count of
    biography seed ``seed`` (the suite's second group)."""
    model, tokenizer = load_model()
    levels = (LevelConfig(rank=16, slots=1, period=256), LevelConfig(rank=16, slots=1))
    memory = ContinuumMemory.wrap(model, MemoryConfig(levels=levels))
    people = generate_biographies(BiographyConfig(num_people=count + 1, seed=seed)).subset(count, 1)
    return tokenizer, memory, Engine(model, tokenizer), people


def setting(text: str) -> DreamingConfig:
    temperature, _, noise = text.partition(":")
    if noise not in ("", "noise"):
        raise ValueError(f"--settings items are TEMPERATURE or TEMPERATURE:noise, got {text!r}")
    return DreamingConfig(temperature=float(temperature), noise=noise == "noise")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output")
    parser.add_argument("--people", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="biography seed (people 1..N: the suite's second group)")
    parser.add_argument("--settings", default="1.0:noise,1.0,0.5:noise,0.3")
    args = parser.parse_args()
    tokenizer, memory, engine, people = untrained_dreamer(args.people, args.seed)
    rows, examples = [], {}
    for name in args.settings.split(","):
        config = setting(name)
        started = time.perf_counter()
        dreams = write_dreams(engine, tokenizer, memory, people.passages, config, seed=0)
        seconds = time.perf_counter() - started
        per_prompt: dict[int, list[dict]] = {}
        for person, passage, written in zip(people.people, people.passages, dreams):
            values = [normalize_answer(fact.value) for fact in person.facts]
            for dream in written:
                per_prompt.setdefault(dream.prompt, []).append(
                    {**dream_scores(dream.text, passage, values), "tokens": len(dream.token_ids)})
        for prompt, scores in sorted(per_prompt.items()):
            row = {"setting": name, "prompt": prompt, "dreams": len(scores), "seconds": round(seconds, 1),
                   **{key: round(sum(s[key] for s in scores) / len(scores), 3) for key in scores[0]}}
            rows.append(row)
            print(json.dumps(row), flush=True)
        examples[name] = [dream.text for dream in dreams[0][:3]]
    with open(args.output, "w") as file:
        json.dump({"people": args.people, "seed": args.seed, "rows": rows, "examples": examples}, file, indent=1)


if __name__ == "__main__":
    main()
