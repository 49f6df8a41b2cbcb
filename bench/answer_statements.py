"""Instrument (issue 12): how much of a row's closed-book "contains" its answers' first statement
carries, from the greedy answers a ``sleepcore eval knowledge`` run saved (no model is run).

The suite's answers end at the first line break, and a row trained on statements (SEAL's dreams,
learnt as written) answers with several on one line ("X works for A. X's hometown is B. X's
employer is C."). "contains" credits the gold answer anywhere in that line. Per row, for the last
sleep's 1-hop questions, this prints:

* ``contains``: as the suite scored it (recomputed from the answers, as a check);
* ``first``: contains on the answer's first statement only (up to the first ". ", "! " or "? ");
* ``several``: the answers holding two or more distinct gold values of the question's attribute
  among the sleep's people (the answer names several people's values: a list, not an answer);
* ``statements``: the mean number of statements per answer.

    python bench/answer_statements.py OUT.json RUN_DIR[:label] ...

``RUN_DIR`` is an output folder holding ``knowledge.json``; its people are rebuilt from the saved
config (``suite.sleeps``, ``suite.seed``). Prints one line per row and writes them all to ``OUT.json``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from sleepcore.tasks.knowledge_eval import attribute_values
from sleepcore.tasks.knowledge_suite import KnowledgeSuiteConfig, sleep_groups
from sleepcore.tasks.metrics import contains_match

STATEMENT_END = re.compile(r"(?<=[.!?])\s+")


def statements(answer: str) -> list[str]:
    """The answer's statements: split after ".", "!" or "?" followed by a space (never empty)."""
    return [part for part in STATEMENT_END.split(answer.strip()) if part] or [""]


def row_scores(answers: list[str], questions: list) -> dict:
    """``contains``, ``first``, ``several`` and ``statements`` of ``answers`` to ``questions`` (in order)."""
    values = attribute_values(questions)
    parts = [statements(answer) for answer in answers]
    return {"questions": len(questions),
            "contains": sum(contains_match(a, q.answer) for a, q in zip(answers, questions)) / len(questions),
            "first": sum(contains_match(p[0], q.answer) for p, q in zip(parts, questions)) / len(questions),
            "several": sum(sum(contains_match(a, v) > 0 for v in own) >= 2
                           for a, own in zip(answers, values)) / len(questions),
            "statements": sum(map(len, parts)) / len(parts)}


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    out, rows = Path(argv[0]), []
    for spec in argv[1:]:
        folder, _, label = spec.partition(":")
        report = json.loads((Path(folder) / "knowledge.json").read_text())
        config = report["config"]
        questions = sleep_groups(KnowledgeSuiteConfig(sleeps=tuple(config["sleeps"]), seed=config["seed"]))[-1].questions
        for method, entry in report["results"].items():
            one_hop = entry["sleeps"][-1]["one_hop"]
            scores = row_scores(one_hop["answers"], questions)
            if abs(scores["contains"] - one_hop["contains"]) > 1e-9:
                raise ValueError(f"{folder} {method}: recomputed contains {scores['contains']} differs from the "
                                 f"saved {one_hop['contains']}: the people rebuilt are not the run's")
            row = {"run": label or folder, "method": method, **scores}
            rows.append(row)
            print(json.dumps(row))
    out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
