"""Learning to dream's tasks and rewards (METHOD.md §4, steps 4-5): a meta-training task
``(C, tau)`` is a document with its questions and gold answers (:class:`DreamTask`, checked by
:func:`check_tasks`); :func:`assign_rewards` turns the adapted models' closed-book scores into the
0/1 rewards that ReST-EM trains the generator on.
"""

from __future__ import annotations

from dataclasses import dataclass

from sleepcore.sleep.dream_config import REWARD_RULES
from sleepcore.validation import choice, instance, number, text


@dataclass(frozen=True)
class DreamTask:
    """A meta-training task ``(C, tau)``: a ``document`` and its ``questions`` as (question, gold answer) pairs."""

    document: str
    questions: tuple[tuple[str, str], ...]


def check_tasks(tasks) -> list[DreamTask]:
    """``tasks`` as a list of :class:`DreamTask`; ``ValueError``/``TypeError`` name the bad field."""
    if not isinstance(tasks, (list, tuple)):
        raise TypeError(f"tasks must be a list of DreamTask, got {type(tasks).__name__}")
    if not tasks:
        raise ValueError("tasks must not be empty (no documents to dream about)")
    for index, task in enumerate(tasks):
        instance(f"tasks[{index}]", task, DreamTask)
        text(f"tasks[{index}].document", task.document)
        if not task.questions:
            raise ValueError(f"tasks[{index}].questions must not be empty (the reward asks them)")
        for position, pair in enumerate(task.questions):
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise TypeError(f"tasks[{index}].questions[{position}] must be a (question, answer) pair")
            text(f"tasks[{index}].questions[{position}] question", pair[0])
            text(f"tasks[{index}].questions[{position}] answer", pair[1])
    return list(tasks)


def assign_rewards(records: list[list[dict]], base: list[float], rule: str, done: list[dict] | None = None, *,
                   margin: float = 0.0, base_questions: list[list[float]] | None = None) -> float:
    """Sets ``reward`` (0/1) on every kept dream of ``records`` (per task, dicts with ``kept`` and
    ``score``: None until its inner loop ran) by ``rule``: ``"improves"`` rewards each dream whose
    score beats its task's ``base`` by more than ``margin``; ``"best_of_m"`` only the best scored
    dream of each task (the first of equal scores) when it does; ``"covers"`` the fewest dreams of
    each task that together cover the questions any of them covers, where a dream covers question
    ``q`` when its ``question_scores[q]`` beats ``base_questions[task][q]`` by more than ``margin``
    (greedy set cover: the dream covering the most questions not yet covered, ties to the higher
    score, then the earlier dream; so a document's rewarded dreams teach different facts, not the
    same easy one many times). Returns the mean reward over ``done`` (default: all kept)."""
    choice("rule", rule, REWARD_RULES)
    number("margin", margin, minimum=0.0)
    if rule == "covers" and base_questions is None:
        raise ValueError("base_questions is required by rule = 'covers' (the baseline's score per question)")
    for t, own in enumerate(records):
        scored = [r for r in own if r["kept"] and r["score"] is not None]
        for r in scored:
            r["reward"] = int(rule == "improves" and r["score"] > base[t] + margin)
        if rule == "best_of_m" and scored:
            best = max(scored, key=lambda r: r["score"])
            best["reward"] = int(best["score"] > base[t] + margin)
        if rule == "covers":
            _reward_cover(scored, base_questions[t], margin)
    done = done if done is not None else [r for own in records for r in own if r["kept"]]
    return sum(r["reward"] for r in done) / max(1, len(done))


def _reward_cover(scored: list[dict], base: list[float], margin: float) -> None:
    """``"covers"`` for one task's scored dreams (see :func:`assign_rewards`)."""
    covers = []
    for r in scored:
        if len(r["question_scores"]) != len(base):
            raise ValueError(f"a dream has {len(r['question_scores'])} question scores, its task {len(base)}")
        covers.append({q for q, (value, floor) in enumerate(zip(r["question_scores"], base)) if value > floor + margin})
    covered: set[int] = set()
    while True:
        gains = [(len(own - covered), r["score"], -k) for k, (r, own) in enumerate(zip(scored, covers))]
        if not gains or max(gains)[0] == 0:
            return
        k = -max(gains)[2]
        scored[k]["reward"] = 1
        covered |= covers[k]
