"""Instrument, not a method (issue 12): which facts did a sleep's items teach, and which were answered?

For one row of a finished ``sleepcore eval knowledge`` run (its ``output_dir``, with the stages'
checkpoints), reads the last sleep's training items from each stage's last checkpoint (Knowledge
Seeding's replay, Dreaming's items) and counts a fact as **taught** by a stage when one of the
stage's question items with a fixed answer (``ReplaySample.fixed``: an answer taken from the
document) names the person (their first name is in the question) and its answer holds the fact's
value (normalised "contains"). Then, per group of facts (taught by no stage, by seeding only, by
dreaming only, by both), how many the row answers right closed-book after that sleep (the
report's ``contains_each``), and per attribute (birth date, occupation, ...) facts, taught,
right; and the taught facts split by whether an item asked the evaluation's own wording of the
question, and by how many items taught the fact. Fixed items whose answer holds no value of the
person they name are counted as ``untaught items`` (reversed questions, "What is Kaifuholt?", and
spans of another fact).

    python bench/taught_facts.py RUN_DIR --method dreaming-round0 [--budget 16] [--sleep -1] [--out OUT.json]

With ``--retention`` it looks for the first sleep's people in the last sleep's items instead (what that
sleep rehearsed of them with a fixed answer: Dreaming's ``rehearse_earlier_dreams`` questions;
Knowledge Seeding's ``rehearsal`` prompts get the teacher's sampled answers, so they never count),
and splits their facts by whether the last sleep rehearsed them and whether each was answered
right after its own sleep and after the last one (the report's ``retention``).

RUN_DIR holds ``knowledge.json`` and ``<method>/x<budget>/sleep-<n>/<stage>/step-*`` (the run's
config must have the suite's ``sleeps`` and ``seed``, read from ``knowledge.json``). Decoding uses the
tokenizer alone (no model forward).
"""

import argparse
import collections
import glob
import json
import re
from pathlib import Path

from transformers import AutoTokenizer

from sleepcore.models import cache_path
from sleepcore.tasks.knowledge_suite import KnowledgeSuiteConfig, sleep_groups
from sleepcore.tasks.metrics import normalize_answer

STAGES = ("seeding", "dreaming")
#: The attribute a question asks about, guessed from its words (the first pattern that matches; a
#: heuristic for the biographies' seven attributes, and None when no pattern matches).
ASKED = (("first_pet", r"\bpet\b"), ("hobby", r"hobby|hobbies|weekend|free time|spare time|pastime|passion"),
         ("university", r"universit|college|polytechnic|institute|studied|graduat|school|attend"),
         ("employer", r"company|employ|work for|works for|firm"),
         ("occupation", r"occupation|profession|career|work as|works as"),
         ("birth_date", r"\bwhen\b|date|year|birthday"), ("birth_city", r"city|where .*born|hometown|birthplace"))


def asked_attribute(question: str) -> str | None:
    """The attribute ``question`` asks about by :data:`ASKED`, or None."""
    return next((name for name, pattern in ASKED if re.search(pattern, question.lower())), None)


def facts_taught(people, question: str, answer: str) -> set[tuple[str, str]]:
    """The ``(person, attribute)`` facts one question item teaches: the question names the person
    (their first name) and the normalised answer contains the fact's normalised value."""
    answer = normalize_answer(answer)
    return {(person.name, fact.attribute) for person in people for fact in person.facts
            if person.name.split()[0] in question and normalize_answer(fact.value) in answer}


def taught_by(items: list[dict], tokenizer, people) -> tuple[dict, dict]:
    """``(facts taught -> the normalised questions that taught them, counts)`` of one stage's
    checkpointed items; ``counts``: ``fixed_items``, ``untaught_items`` (fixed items teaching no fact)
    and ``other_attribute_items``: fixed items teaching a fact whose question asks, by
    :func:`asked_attribute`, about another attribute ("What is Ada's occupation?" answered with her
    hobby; such an item still counts as teaching the hobby)."""
    taught, counts = {}, {"fixed_items": 0, "untaught_items": 0, "other_attribute_items": 0}
    for item in items:
        if not item["fixed"]:
            continue
        counts["fixed_items"] += 1
        question = tokenizer.decode(item["student_prompt"], skip_special_tokens=True)
        facts = facts_taught(people, question, tokenizer.decode(item["response"], skip_special_tokens=True))
        for fact in facts:
            taught.setdefault(fact, []).append(normalize_answer(question))
        counts["untaught_items"] += not facts
        asked = asked_attribute(question.split("Question:")[-1])
        counts["other_attribute_items"] += bool(facts) and asked is not None and asked not in {a for _, a in facts}
    return taught, counts


def by_teaching(group, right: list[int], questions: dict) -> dict:
    """The taught facts split two ways: whether an item asked the evaluation's own wording of the
    question (its normalised text inside the item's prompt), and how many items taught the fact."""
    splits = collections.defaultdict(lambda: {"facts": 0, "right": 0})
    for question, correct in zip(group.questions, right):
        asked = questions.get((question.person, question.attribute))
        if not asked:
            continue
        wording = normalize_answer(question.text)
        same = "evaluation's wording" if any(wording in prompt for prompt in asked) else "other wordings only"
        count = len(asked)
        items = "1 item" if count == 1 else "2-3 items" if count <= 3 else "4-7 items" if count <= 7 else "8+ items"
        for key in (same, items):
            splits[key]["facts"] += 1
            splits[key]["right"] += correct
    for key, row in sorted(splits.items()):
        print(f"taught in {key:21s} facts {row['facts']:3d}, answered right {row['right']:3d} "
              f"({row['right'] / row['facts']:.2f})")
    return dict(splits)


def stages_of(question, taught: dict) -> str:
    """The stages that taught ``question``'s fact, joined by "+" ("none" when none did)."""
    return "+".join(sorted(taught.get((question.person, question.attribute), ()))) or "none"


def retention_split(group, before: list[int], after: list[int], taught: dict) -> dict:
    """The first sleep's facts by the stages of the last sleep that rehearsed them, each counted as
    right after its own sleep (``before``) and after the last (``after``): kept, lost, gained, never."""
    counts = collections.defaultdict(lambda: {"kept": 0, "lost": 0, "gained": 0, "never": 0})
    for question, was, now in zip(group.questions, before, after):
        counts[stages_of(question, taught)]["kept" if was and now else "lost" if was else "gained" if now else "never"] += 1
    for kind, row in sorted(counts.items()):
        print(f"rehearsed by {kind:17s} " + ", ".join(f"{name} {value:3d}" for name, value in row.items()))
    return dict(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--method", default="dreaming-round0", help="the row (a folder of RUN_DIR)")
    parser.add_argument("--budget", type=float, help="which budget multiplier of the row (default: its largest, "
                                                     "the one the report's table shows)")
    parser.add_argument("--sleep", type=int, default=-1, help="which sleep (default: the last)")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="the packaged model whose tokenizer decodes")
    parser.add_argument("--retention", action="store_true",
                        help="the first sleep's facts: rehearsed by the last sleep, kept or lost (see above)")
    parser.add_argument("--out", help="write the counts as JSON here")
    args = parser.parse_args()
    run = Path(args.run_dir)
    report = json.loads((run / "knowledge.json").read_text())
    suite = report["config"]
    groups = sleep_groups(KnowledgeSuiteConfig(sleeps=tuple(suite["sleeps"]), seed=suite["seed"]))
    index = args.sleep % len(groups)
    if args.retention and index == 0:
        raise SystemExit("--retention: the run has one sleep, or --sleep chose the first")
    group = groups[0] if args.retention else groups[index]
    runs, budget = row_runs(report, args.method, args.budget)
    right = runs[budget]["sleeps"][0 if args.retention else index]["one_hop"]["contains_each"]
    tokenizer = AutoTokenizer.from_pretrained(cache_path(args.model))
    if args.retention:
        print(f"the first sleep's {len(group.people)} people in sleep {index}'s items "
              "(other people's items teach none):")
    taught, stages, questions = {}, {}, {}
    for stage in STAGES:
        steps = sorted(glob.glob(str(run / args.method / f"x{budget:g}" / f"sleep-{index:03d}" / stage / "step-*")))
        if not steps:
            continue
        state = json.loads((Path(steps[-1]) / "state.json").read_text())["stage"]
        if "replay" not in state:  # next-token training on the dreams as written (objective "sft", SEAL's row)
            print(f"{stage:9s} keeps no question items with fixed answers (its dreams are learnt as written)")
            continue
        items = state["replay"]
        facts, counts = taught_by(items, tokenizer, group.people)
        stages[stage] = {**counts, "facts": len(facts)}
        for fact, asked in facts.items():
            taught.setdefault(fact, set()).add(stage)
            questions.setdefault(fact, []).extend(asked)
        print(f"{stage:9s} fixed items {counts['fixed_items']:3d}, teaching no fact {counts['untaught_items']:3d}, "
              f"asking another attribute {counts['other_attribute_items']:3d}, facts taught {len(facts):3d}")
    found = {"run": str(run), "method": args.method, "budget": budget, "sleep": index, "stages": stages}
    if args.retention:
        retained = runs[budget]["retention"][0]["one_hop"]["contains_each"]
        found["retention"] = retention_split(group, right, retained, taught)
    else:
        found.update(counted(group, right, taught, questions))
    if args.out:
        Path(args.out).write_text(json.dumps(found, indent=1) + "\n")


def row_runs(report: dict, method: str, budget: float | None) -> tuple[dict, float]:
    """The ``method`` row's runs of a knowledge report by budget multiplier, and the chosen budget
    (None: the largest, the one the report's table shows); exits naming the budgets the row ran at
    when it did not run at ``budget``."""
    runs = {run["budget"]: run for run in report["results"][method]["runs"]}
    budget = max(runs) if budget is None else budget
    if budget not in runs:
        raise SystemExit(f"--budget {budget:g}: the {method} row ran at {', '.join(f'{b:g}' for b in sorted(runs))}")
    return runs, budget


def counted(group, right: list[int], taught: dict, questions: dict) -> dict:
    """The facts by the stages that taught them, by how they were taught, and per attribute: each
    count with how many of them were answered right (printed as well)."""
    counts = collections.Counter()
    for question, correct in zip(group.questions, right):
        counts[stages_of(question, taught), correct] += 1
    groups_out = {}
    for kind in sorted({kind for kind, _ in counts}):
        total = counts[kind, 0] + counts[kind, 1]
        groups_out[kind] = {"facts": total, "right": counts[kind, 1]}
        right_share = counts[kind, 1] / total
        print(f"taught by {kind:17s} facts {total:3d}, answered right {counts[kind, 1]:3d} ({right_share:.2f})")
    teaching = by_teaching(group, right, questions)
    attributes = {}
    for question, correct in zip(group.questions, right):
        row = attributes.setdefault(question.attribute, {"facts": 0, "taught": 0, "right": 0})
        row["facts"] += 1
        row["taught"] += (question.person, question.attribute) in taught
        row["right"] += correct
    print("per attribute (facts, taught, right): " + ", ".join(
        f"{name} {row['facts']}/{row['taught']}/{row['right']}" for name, row in attributes.items()))
    return {"groups": groups_out, "teaching": teaching, "attributes": attributes}


if __name__ == "__main__":
    main()
