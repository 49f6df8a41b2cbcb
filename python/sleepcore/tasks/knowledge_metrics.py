"""The knowledge suite's measurements beyond answer matching (issue 11, "instruments first").

* **Gold log-probability** (:func:`sleepcore.lm.gold_logprobs`, :func:`logprob_scores`): the teacher-forced
  log-probability of each question's gold answer after the question's prompt (closed-book for every
  row but ``in-context``, which reads its passages). Greedy answers are all or nothing; this moves
  as soon as a fact is partly learned. Reported as ``logp_token`` (the mean over all answer tokens)
  and ``logp_answer`` (the mean over answers of each answer's summed log-probability: the log of
  the probability of writing the whole answer). The answer is tokenised as the model would write
  it after the prompt (:func:`sleepcore.lm.answer_text`).
* **Teachable subset** (:func:`teachable`): the facts the ``in-context`` row answers correctly
  ("contains"). A consolidation method cannot move what its teacher does not know, so each row's
  contains on that subset is the fairer score of how much of the teachable knowledge it stored.
* **Gap closure** (:func:`gap_closure`): ``(method - base) / (in-context - base)`` on contains, the
  fraction of the way from the untouched model to reading the passages; None when the two ends
  are equal.
* **Costs** (:func:`sleep_costs`): tokens that received a gradient (the stage summary's
  ``tokens``), forward-only tokens (sampling and teacher forwards: the summary's
  ``prepare_forward_tokens`` plus every step's ``forward_tokens``, 0 where a stage does not report
  them), and the per-step history in columns (:func:`compact_history`).
"""

from __future__ import annotations

#: Per-step fields kept from a stage's history (those a step reports; the rest are dropped).
HISTORY_FIELDS = ("step", "epoch", "loss", "gkd", "lti", "kl_teacher", "reward", "reward_std",
                  "zero_advantage_fraction", "tokens", "forward_tokens", "seconds", "lr", "grad_norm")


def logprob_scores(per_answer: list[list[float]]) -> dict[str, float]:
    """``logp_token`` (mean over all answer tokens) and ``logp_answer`` (mean over answers of the
    summed log-probability) of :func:`sleepcore.lm.gold_logprobs`' output."""
    tokens = sum(len(values) for values in per_answer)
    return {"logp_token": sum(map(sum, per_answer)) / max(tokens, 1),
            "logp_answer": sum(map(sum, per_answer)) / max(len(per_answer), 1)}


def gap_closure(method: float, base: float, ceiling: float) -> float | None:
    """``(method - base) / (ceiling - base)``; None when ``ceiling == base``."""
    return None if ceiling == base else (method - base) / (ceiling - base)


def teachable(contains_each: list[int], ceiling_each: list[int]) -> dict:
    """Contains on the questions the ceiling answers (``ceiling_each[i] == 1``): ``{"count",
    "contains"}`` (contains None on an empty subset)."""
    if len(contains_each) != len(ceiling_each):
        raise ValueError(f"contains_each and ceiling_each differ in length: {len(contains_each)} and "
                         f"{len(ceiling_each)}")
    chosen = [value for value, known in zip(contains_each, ceiling_each) if known]
    return {"count": len(chosen), "contains": sum(chosen) / len(chosen) if chosen else None}


def add_derived(report: dict) -> None:
    """Adds ``gap_closure`` and ``teachable`` (see the module docstring) to the 1-hop scores of
    every sleep and retention entry of every row (top level and each budget's run), against the
    ``base`` and ``in-context`` rows of the same group. Rows are left as they are when either
    reference row is missing."""
    results = report["results"]
    if "base" not in results or "in-context" not in results:
        return
    base, ceiling = (results[name]["sleeps"] for name in ("base", "in-context"))

    def derive(scores: dict, group: int) -> None:
        one, ceiling_one = scores["one_hop"], ceiling[group]["one_hop"]
        one["gap_closure"] = gap_closure(one["contains"], base[group]["one_hop"]["contains"], ceiling_one["contains"])
        one["teachable"] = teachable(one["contains_each"], ceiling_one["contains_each"])

    for entry in results.values():
        for run in [entry] + entry.get("runs", []):
            for group, scores in enumerate(run["sleeps"]):
                derive(scores, group)
            for scores in run.get("retention", []):
                derive(scores, scores["group"])


def compact_history(history: list[dict]) -> dict[str, list]:
    """A stage's per-step metrics as columns (``{"loss": [...], "tokens": [...], ...}``), keeping
    :data:`HISTORY_FIELDS` that some step reports (None where a step lacks one)."""
    fields = [name for name in HISTORY_FIELDS if any(name in step for step in history)]
    return {name: [step.get(name) for step in history] for name in fields}


#: A sleep summary's own figures that its costs keep (``dreaming``: the Dreaming rows' stages and dreams).
EXTRA_FIELDS = ("kl_before", "kl_after", "replay_samples", "coverage", "examples", "dreaming")


def sleep_costs(summary: dict, budget: int, seconds: float) -> dict:
    """A sleep's budget and costs from its stage summary: ``tokens`` (trained), ``forward_tokens``,
    ``seconds`` (the whole sleep: replay sampling included), ``steps`` and the stage's own figures
    (replay KL before/after, replay samples) where present."""
    forward = summary.get("prepare_forward_tokens", 0) + sum(step.get("forward_tokens", 0) or 0
                                                             for step in summary["history"])
    extra = {key: summary[key] for key in EXTRA_FIELDS if key in summary}
    return {"tokens": summary["tokens"], "forward_tokens": forward, "budget": budget, "train_seconds": seconds,
            "steps": summary["steps"], **extra}
