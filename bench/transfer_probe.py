"""Where consolidation loses a fact (issue 11): fitting the replay, or carrying it to a new phrasing.

Knowledge Seeding trains on the *wake* phrasing of each fact (the question asked while awake) with
the in-context teacher's answer; the suite then asks the *evaluation* phrasing closed-book. This
instrument splits the closed-book score of a saved memory into three measured steps, per 1-hop fact
of one sleep group:

- ``teacher``: the in-context teacher answers the wake phrasing right (what replay could carry);
- ``fit``: the memory answers the wake phrasing right closed-book, over all facts and over the
  facts the teacher answers (``fit | teacher``): how much of the replay the expert holds;
- ``transfer``: the memory answers the evaluation phrasing right, over the facts it answers in
  the wake phrasing (``eval | fit``) and over those it does not (``eval | not fit``).

``swapped`` (another person's value of the same attribute, :func:`knowledge_eval.swapped_rate`)
is given for both phrasings. Answers are the suite's (greedy, ``lm.ANSWER_TOKENS``, first line).

    python bench/transfer_probe.py runs/eval/ks/x4/sleep-000/seeding/step-000066/memory.safetensors \\
        --sleeps 10 --group 0
"""

from __future__ import annotations

import argparse

from rescore_answers import add_suite_arguments, suite_group
from sleepcore.lm import qa_prompt
from sleepcore.tasks.biographies import Question
from sleepcore.tasks.knowledge_eval import answer, swapped_rate
from sleepcore.tasks.metrics import contains_match


def phrasing(group, index: int) -> list[Question]:
    """The 1-hop questions of ``group`` in question phrasing ``index`` (0: evaluation, 1: wake)."""
    return [Question(fact.questions[index], fact.value, person.name, fact.attribute, 1)
            for person in group.people for fact in person.facts]


def rate(hits: list[bool], given: list[bool] | None = None) -> str:
    """``hits`` as a fraction with its count, over the facts where ``given`` holds."""
    kept = [h for h, g in zip(hits, given or [True] * len(hits)) if g]
    return f"{sum(kept) / max(len(kept), 1):.3f} ({sum(kept)}/{len(kept)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("memories", nargs="+", help="memory.safetensors files of suite runs on the same people")
    add_suite_arguments(parser, sleeps="10")
    args = parser.parse_args()

    suite, tokenizer, group = suite_group(args, "transfer-probe")
    evaluation, wake = phrasing(group, 0), phrasing(group, 1)

    def answers(questions, in_context: bool) -> tuple[list[str], list[bool]]:
        prompts = [qa_prompt(tokenizer, q.text, group.passage_of(q.person) if in_context else None)
                   for q in questions]
        texts = answer(suite.engine, tokenizer, prompts)
        return texts, [contains_match(text, q.answer) for text, q in zip(texts, questions)]

    suite._reset()
    _, teacher = answers(wake, in_context=True)
    print(f"{len(wake)} facts; teacher (in context, wake phrasing) {rate(teacher)}", flush=True)
    for path in args.memories:
        suite._reset()
        suite.memory.load(path)
        wake_texts, fit = answers(wake, in_context=False)
        eval_texts, right = answers(evaluation, in_context=False)
        print(f"{path}\n  fit {rate(fit)}  fit | teacher {rate(fit, teacher)}  eval {rate(right)}\n"
              f"  eval | fit {rate(right, fit)}  eval | not fit {rate(right, [not f for f in fit])}\n"
              f"  swapped: wake {swapped_rate(wake_texts, wake):.3f}  eval {swapped_rate(eval_texts, evaluation):.3f}",
              flush=True)


if __name__ == "__main__":
    main()
