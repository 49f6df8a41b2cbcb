"""Instrument, not a method (issue 12): what the wrong closed-book answers of finished runs hold.

Re-reads each row's saved greedy answers (``one_hop.answers`` of ``knowledge.json``, no model
forward) and sorts every answer with :func:`~sleepcore.tasks.knowledge_eval.answer_kinds`: right;
another person's value of the same attribute (``other_person``); the same person's value of
another attribute (``other_attribute``, e.g. the occupation told for "which company"); neither
(``other``: a value no one has, a near-miss date, an echo of the question). Counts are of the
last sleep's questions at each row's largest budget (``--budget`` picks another), with the
attributes the ``other_attribute`` answers were asked about.

    python bench/error_modes.py RUN_DIR [RUN_DIR ...] [--budget 16] [--out OUT.json]

RUN_DIR holds ``knowledge.json`` (its config must have the suite's ``sleeps`` and ``seed``).
"""

import argparse
import collections
import json
from pathlib import Path

from sleepcore.tasks.knowledge_eval import ERROR_KINDS, answer_kinds
from sleepcore.tasks.knowledge_suite import KnowledgeSuiteConfig, sleep_groups


def run_rows(run: Path, budget: float | None) -> list[dict]:
    """One row per method of the run at ``budget`` (None: each row's largest; rows that train nothing,
    such as base and in-context, have no budget and are always there)."""
    report = json.loads((run / "knowledge.json").read_text())
    suite = report["config"]
    questions = sleep_groups(KnowledgeSuiteConfig(sleeps=tuple(suite["sleeps"]), seed=suite["seed"]))[-1].questions
    rows = []
    for method, entry in report["results"].items():
        runs = {r["budget"]: r for r in entry.get("runs", [])} or {None: entry}
        chosen = None if None in runs else max(runs) if budget is None else budget
        if chosen not in runs:
            continue
        answers = runs[chosen]["sleeps"][-1]["one_hop"]["answers"]
        kinds = answer_kinds(answers, questions)
        confused = collections.Counter(q.attribute for kind, q in zip(kinds, questions) if kind == "other_attribute")
        rows.append({"run": str(run), "method": method, "budget": chosen, "questions": len(questions),
                     **{name: kinds.count(name) for name in ("right", *ERROR_KINDS)},
                     "other_attribute_asked": dict(confused)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--budget", type=float, help="budget multiplier (default: each row's largest)")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    rows = [row for run in args.runs for row in run_rows(run, args.budget)]
    print(f"{'run':34s} {'row':20s} {'x':>4s} {'right':>5s} {'other person':>12s} {'other attribute':>15s} "
          f"{'other':>5s}  other attribute asked about")
    for row in rows:
        budget = "-" if row["budget"] is None else format(row["budget"], "g")
        print(f"{Path(row['run']).name[:34]:34s} {row['method']:20s} {budget:>4s} {row['right']:5d} "
              f"{row['other_person']:12d} {row['other_attribute']:15d} {row['other']:5d}  "
              + ", ".join(f"{k} {v}" for k, v in sorted(row["other_attribute_asked"].items())))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
