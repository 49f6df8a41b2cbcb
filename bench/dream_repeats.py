"""Instrument (issue 12): how often a dream generator repeats its questions across a document's
dreams, from a finished ``sleepcore eval knowledge`` run's saved files (no model is run).

Two counts per run folder:

* ``meta-training``: for each ReST-EM round of each generator (``generators/<name>/round-*/dreams.json``),
  the questions the dreams ask (:func:`~sleepcore.sleep.dreams.dream_questions`, per dream) and how
  many of them are distinct within their document; and the lines of the round's rewarded dreams
  (what its ReST-EM update learns) and how many are left once each document's rewarded dreams lose
  the lines an earlier one wrote (:func:`~sleepcore.sleep.dreams.without_repeated_lines`, what it
  learns with ``generator_distinct_lines``);
* ``sleep``: for each Dreaming row given with ``--method``, the last sleep's kept question items
  (the Dreaming stage's fixed-answer items, from its last checkpoint, the rehearsed consolidation
  items left out) and how many distinct closed-book prompts they hold.

    python bench/dream_repeats.py RUN_DIR [--method sleep --method dreaming-round0] [--budget 16] [--out OUT.json]
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

from sleepcore.sleep.dreams import dream_lines, dream_questions, without_repeated_lines


def meta_training(run: Path) -> list[dict]:
    """Per generator and round: questions asked over each document's dreams, distinct within it."""
    rows = []
    for path in sorted(run.glob("generators/*/round-*/dreams.json")):
        documents = json.loads(path.read_text())["dreams"]
        asked = [[q for dream in own for q in dream_questions(dream["text"])] for own in documents]
        rewarded = [[dream["text"] for dream in own if dream["reward"]] for own in documents]
        rows.append({"generator": path.parts[-3], "round": path.parts[-2], "questions": sum(map(len, asked)),
                     "distinct": sum(len(set(own)) for own in asked),
                     "rewarded_lines": sum(len(dream_lines(text)) for own in rewarded for text in own),
                     "rewarded_new_lines": sum(len(dream_lines(text)) for own in rewarded
                                               for text in without_repeated_lines(own) if text is not None)})
    return rows


def sleep_items(run: Path, method: str, budget: str) -> dict:
    """The last sleep's kept question items of ``method``'s Dreaming stage and their distinct prompts."""
    sleeps = sorted(glob.glob(str(run / method / f"x{budget}" / "sleep-*")))
    if not sleeps:
        raise FileNotFoundError(f"no {method}/x{budget}/sleep-* under {run}: is --method a Dreaming row of this run?")
    step = sorted(glob.glob(f"{sleeps[-1]}/dreaming/step-*"))[-1]
    stage = json.loads(Path(step, "state.json").read_text())["stage"]
    own = stage["replay"][:len(stage["replay"]) - stage["report"].get("rehearsed", 0)]
    prompts = [tuple(item["student_prompt"]) for item in own if item["fixed"]]
    return {"method": method, "sleep": Path(sleeps[-1]).name, "question_items": len(prompts),
            "distinct": len(set(prompts))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--method", action="append", default=[])
    parser.add_argument("--budget", default="16")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = {"run": str(args.run), "meta_training": meta_training(args.run),
              "sleep": [sleep_items(args.run, method, args.budget) for method in args.method]}
    for row in report["meta_training"]:
        print(f"{row['generator']:6s} {row['round']}: {row['distinct']} distinct of {row['questions']} questions "
              f"({row['distinct'] / max(row['questions'], 1):.2f}); rewarded dreams' lines {row['rewarded_lines']}, "
              f"{row['rewarded_new_lines']} new within their document")
    for row in report["sleep"]:
        print(f"{row['method']:18s} {row['sleep']}: {row['distinct']} distinct of {row['question_items']} question items")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
