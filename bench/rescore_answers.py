"""Closed-book "contains" of a saved knowledge-suite memory under several answer-length rules.

The knowledge suite judges greedy answers of at most ``lm.ANSWER_TOKENS`` tokens ending at the
first line break. This script evaluates the same questions again for one sleep group of a suite
run, with the base model, the in-context teacher and the saved memory, under four rules: 16 and 32
tokens ending at a line break, and 48 tokens ending at the end of turn (first line, or the first
two when the first is a lead-in ending in ":"; and the whole text). It is how the 16-token cap was
found to cut sentence answers before the fact (README, Benchmarks, issue 11).

    python bench/rescore_answers.py runs/eval/ks/x4/sleep-001/seeding/step-000292/memory.safetensors \\
        --sleeps 1,50 --group 1
    python bench/rescore_answers.py none --sleeps 1,50 --group 1      # base and in-context only
"""

from __future__ import annotations

import argparse

from sleepcore.lm import qa_prompt
from sleepcore.models import load_model
from sleepcore.rollout import SamplingParams
from sleepcore.tasks.knowledge_eval import answer
from sleepcore.tasks.knowledge_suite import KnowledgeSuite, KnowledgeSuiteConfig
from sleepcore.tasks.metrics import contains_match


def first_answer(text: str) -> str:
    """The first non-empty line, joined with the next when it is a lead-in ending in ":"."""
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if not lines:
        return ""
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]


def add_suite_arguments(parser: argparse.ArgumentParser, *, sleeps: str) -> None:
    """``--model``, ``--sleeps``, ``--group`` and ``--seed``: which suite run's people to ask about."""
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--sleeps", default=sleeps, help="the run's suite.sleeps, comma-separated")
    parser.add_argument("--group", type=int, default=-1, help="which sleep's people to ask about")
    parser.add_argument("--seed", type=int, default=0, help="the run's suite.seed")


def suite_group(args, name: str):
    """``(suite, tokenizer, group)`` for :func:`add_suite_arguments`' arguments: the suite of that
    run (its engine and memory, no output written) and the people of sleep ``args.group``."""
    model, tokenizer = load_model(args.model)
    config = KnowledgeSuiteConfig(sleeps=[int(n) for n in args.sleeps.split(",")], methods=["ks"], seed=args.seed)
    suite = KnowledgeSuite(model, tokenizer, config, name, progress=False)
    return suite, tokenizer, suite.groups[args.group]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("memory", help="a memory.safetensors of the suite run, or 'none'")
    add_suite_arguments(parser, sleeps="1,50")
    parser.add_argument("--skip-untrained", action="store_true", help="no base and in-context rows")
    args = parser.parse_args()

    suite, tokenizer, group = suite_group(args, "rescore-answers")
    questions, golds = group.questions, [q.answer for q in group.questions]

    def contains(answers):
        return sum(contains_match(answer, gold) for answer, gold in zip(answers, golds)) / len(golds)

    def score(label: str, in_context: bool) -> None:
        prompts = [qa_prompt(tokenizer, q.text, group.passage_of(q.person) if in_context else None) for q in questions]
        cut16 = answer(suite.engine, tokenizer, prompts, max_tokens=16)
        cut32 = answer(suite.engine, tokenizer, prompts, max_tokens=32)
        params = SamplingParams(temperature=0.0, max_tokens=48)  # to the end of turn
        long = [output.completions[0].text or "" for output in suite.engine.generate(prompts, params, progress=False)]
        print(f"{label:10s} 16/line {contains(cut16):.3f}  32/line {contains(cut32):.3f}  "
              f"48/first-line {contains([first_answer(t) for t in long]):.3f}  "
              f"48/all {contains([t.strip() for t in long]):.3f}", flush=True)

    suite._reset()
    if not args.skip_untrained:
        score("base", False)
        score("in-context", True)
    if args.memory != "none":
        suite.memory.load(args.memory)
        score("memory", False)


if __name__ == "__main__":
    main()
