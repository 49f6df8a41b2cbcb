"""Instrument, not a method (issue 12): how many of the earlier people's facts a sleep's rehearsal
of earlier questions can cover, and how many a draw of n questions covers, drawn at random or
spread over their answers (``DreamingConfig.rehearse_draw``).

For one Dreaming row of a finished ``sleepcore eval knowledge`` run with
``rehearse_earlier_dreams`` on, reads the pool the last sleep drew from (the wake buffer's
``earlier_dreams``, saved with the last sleep's Dreaming checkpoint: the questions earlier sleeps'
Dreaming, and with ``rehearse_earlier_seeding`` Knowledge Seeding, learnt with a fixed answer),
counts the earlier people's facts the whole pool teaches (as ``bench/taught_facts.py`` counts
them: the question names the person and the answer holds the fact's value), then for each draw
count the facts a draw teaches, over ``--repeats`` seeds, for the uniform draw
(``random.Random.sample``) and for :func:`~sleepcore.sleep.dreaming.spread_by_answer`. The run's
own draw count (the report's ``rehearsed_dreams``) is always one of the counts.

    python bench/rehearsal_pool.py RUN_DIR [--method sleep] [--draws 60 81] [--repeats 20] [--out OUT.json]

Decoding uses the tokenizer alone (no model forward).
"""

from __future__ import annotations

import argparse
import glob
import json
import random
import statistics
from pathlib import Path

from transformers import AutoTokenizer

from sleepcore.models import cache_path
from sleepcore.sleep.dreaming import spread_by_answer
from sleepcore.tasks.knowledge_suite import KnowledgeSuiteConfig, sleep_groups
from taught_facts import row_runs, taught_by


def facts_in(pairs: list, tokenizer, people) -> int:
    """How many facts of ``people`` the ``[prompt ids, response ids]`` pairs teach."""
    items = [{"fixed": True, "student_prompt": prompt, "response": response} for prompt, response in pairs]
    return len(taught_by(items, tokenizer, people)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--method", default="sleep", help="the Dreaming row (a folder of RUN_DIR)")
    parser.add_argument("--budget", type=float, help="its budget multiplier (default: its largest)")
    parser.add_argument("--draws", type=int, nargs="*", default=[], help="draw counts besides the run's own")
    parser.add_argument("--repeats", type=int, default=20, help="seeds per draw count and rule")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="the packaged model whose tokenizer decodes")
    parser.add_argument("--out", help="write the counts as JSON here")
    args = parser.parse_args()
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {args.repeats}")
    run = Path(args.run_dir)
    report = json.loads((run / "knowledge.json").read_text())
    suite = report["config"]
    groups = sleep_groups(KnowledgeSuiteConfig(sleeps=tuple(suite["sleeps"]), seed=suite["seed"]))
    if len(groups) < 2:
        raise SystemExit(f"{run}: the run has one sleep, so nothing earlier was rehearsed")
    runs, budget = row_runs(report, args.method, args.budget)
    steps = sorted(glob.glob(str(run / args.method / f"x{budget:g}" / f"sleep-{len(groups) - 1:03d}" / "dreaming"
                                 / "step-*")))
    if not steps:
        raise SystemExit(f"{run}: no Dreaming checkpoint of the {args.method} row's last sleep")
    pool = json.loads((Path(steps[-1]) / "state.json").read_text())["owner"]["buffer"]["earlier_dreams"]
    if not pool:
        raise SystemExit(f"{run}: the last sleep's pool of earlier questions is empty (rehearse_earlier_dreams off?)")
    own = runs[budget]["sleeps"][-1]["dreaming"]["rehearsed_dreams"]
    people = [person for group in groups[:-1] for person in group.people]
    tokenizer = AutoTokenizer.from_pretrained(cache_path(args.model))
    found = {"run": str(run), "method": args.method, "budget": budget, "pool": len(pool),
             "pool_answers": len({tuple(response) for _, response in pool}),
             "facts": sum(len(person.facts) for person in people),
             "pool_facts": facts_in(pool, tokenizer, people), "run_draw": own, "draws": {}}
    print(f"pool {found['pool']} questions, {found['pool_answers']} distinct answers, "
          f"teaching {found['pool_facts']} of the earlier people's {found['facts']} facts")
    for count in sorted({own, *args.draws}):
        count = min(count, len(pool))
        row = {}
        for rule, draw in (("uniform", lambda rng: rng.sample(pool, count)),
                           ("answers", lambda rng: spread_by_answer([list(p) for p in pool], count, rng))):
            taught = [facts_in(draw(random.Random(seed)), tokenizer, people) for seed in range(args.repeats)]
            row[rule] = {"mean": statistics.mean(taught), "min": min(taught), "max": max(taught)}
        found["draws"][count] = row
        print(f"draw {count:4d}: " + "; ".join(f"{rule} {r['mean']:.1f} facts (min {r['min']}, max {r['max']})"
                                               for rule, r in row.items()))
    if args.out:
        Path(args.out).write_text(json.dumps(found, indent=1) + "\n")


if __name__ == "__main__":
    main()
