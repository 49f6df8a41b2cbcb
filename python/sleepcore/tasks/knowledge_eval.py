"""Closed-book QA on the biographies.

Answers are greedy through the rollout engine and end at the first newline or EOS. Questions use
``lm.qa_prompt`` (the tokenizer's chat template when it has one), the format sleep's
replay questions use too. The in-context ceiling puts the person's passage (and, for 2-hop
questions, the employer's passage) before the question; closed-book puts nothing.

Per question set (1-hop, 2-hop): EM, token F1 and "contains" (:mod:`sleepcore.tasks.metrics`;
contains is the primary score, since a small model answers in sentences), each question's contains
(``contains_each``, for the teachable subset), the greedy answers themselves (``answers``: a score
of 0 can be a wrong fact or a right one said too slowly for ``ANSWER_TOKENS``), the gold answer's teacher-forced
log-probability after the same prompt (:mod:`sleepcore.tasks.knowledge_metrics`), ``swapped``:
the fraction of answers that miss their gold but contain another person's value of the same
attribute (a fact stored without its owner: after a sleep, many answers give one value, such as
the same occupation, to every person), ``errors``: the wrong answers by what they hold (another
person's value, the same person's value of another attribute, or neither), and ``dominant`` /
``dominant_share``: the gold value that the most answers contain, of any question of the set, and
the fraction that do (measured after dreaming on SmolLM2-135M: one company name in 29 of 70
answers, against 7 for the in-context teacher, whose repeats are right answers shared by several
people).

Binding (a value told to its owner's question, not just learnt): several people share a birth
city, employer or university, so answering each attribute's most common value scores
``prior_contains`` (0.23-0.24 on the suite's 10-person groups) without knowing who is asked.
``unique_contains`` counts only the questions whose answer is the person's alone, and
``choice_accuracy`` ranks each gold answer by log-probability against the other people's answers
to the same question (chance: ``choice_chance``), said as the whole answer;
``sentence_choice_accuracy`` ranks them said inside a sentence that names the person first, the
form a model trained on sentence answers binds in.
"""

from __future__ import annotations

from sleepcore.rollout import Engine, SamplingParams
from sleepcore.lm import ANSWER_TOKENS, gold_logprobs, newline_ids, qa_examples, qa_prompt
from sleepcore.tasks.biographies import BiographyDataset
from sleepcore.tasks.knowledge_metrics import logprob_scores
from sleepcore.tasks.metrics import aggregate, contains_match


def answer(engine: Engine, tokenizer, prompts: list[str], *, progress: bool = False,
           max_tokens: int = ANSWER_TOKENS) -> list[str]:
    """Greedy answers of at most ``max_tokens`` tokens, ended at the first line break, stripped."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, stop_token_ids=newline_ids(tokenizer))
    outputs = engine.generate(prompts, params, progress=progress)
    return [(output.completions[0].text or "").strip() for output in outputs]


ERROR_KINDS = ("other_person", "other_attribute", "other")


def answer_kinds(predictions: list[str], questions: list) -> list[str]:
    """Per prediction, ``"right"`` (it contains its question's gold answer) or what the wrong answer
    holds (the first kind that fits): ``"other_person"``, another person's gold of the same
    ``attribute`` (a value stored without its owner); ``"other_attribute"``, the same person's gold
    of another attribute (the right person's fact told for the wrong question, e.g. the occupation
    for "which company"); ``"other"``, neither (a value no one has, a near miss such as a wrong
    day, or an echo of the question). The other questions of ``questions`` stand for the people's
    facts, so pass a whole question set."""
    if len(predictions) != len(questions):
        raise ValueError(f"predictions has {len(predictions)} answers for {len(questions)} questions")
    by_attribute: dict[str, set[str]] = {}
    by_person: dict[str, dict[str, str]] = {}
    for question in questions:
        by_attribute.setdefault(question.attribute, set()).add(question.answer)
        by_person.setdefault(question.person, {})[question.attribute] = question.answer

    def kind(prediction: str, q) -> str:
        if contains_match(prediction, q.answer):
            return "right"
        if any(contains_match(prediction, other) for other in by_attribute[q.attribute] - {q.answer}):
            return "other_person"
        if any(contains_match(prediction, value) for attribute, value in by_person[q.person].items()
               if attribute != q.attribute and value != q.answer):
            return "other_attribute"
        return "other"

    return [kind(prediction, q) for prediction, q in zip(predictions, questions)]


def error_modes(predictions: list[str], questions: list) -> dict[str, float]:
    """The wrong answers by kind (:func:`answer_kinds`), each as a fraction of all ``predictions``;
    with the right answers' fraction they sum to 1."""
    kinds = answer_kinds(predictions, questions)
    return {name: kinds.count(name) / max(len(kinds), 1) for name in ERROR_KINDS}


def swapped_rate(predictions: list[str], questions: list) -> float:
    """Fraction of ``predictions`` that miss their question's gold answer but contain the gold of
    another question with the same ``attribute`` and a different answer (:func:`error_modes`'
    ``other_person``)."""
    return error_modes(predictions, questions)["other_person"]


def dominant_value(predictions: list[str], questions: list) -> tuple[str | None, float]:
    """The gold answer (of any of ``questions``) that the most ``predictions`` contain, and the
    fraction of ``predictions`` that contain it; ``(None, 0.0)`` when none contains any. Ties go to
    the first value in question order."""
    values = list(dict.fromkeys(q.answer for q in questions))
    counts = [sum(contains_match(prediction, value) for prediction in predictions) for value in values]
    best = max(range(len(values)), key=counts.__getitem__, default=None)
    if best is None or counts[best] == 0:
        return None, 0.0
    return values[best], counts[best] / len(predictions)


def attribute_values(questions: list) -> list[list[str]]:
    """Per question, the distinct gold answers of the questions of its ``attribute`` in the set, its
    own first, the others in question order."""
    by_attribute: dict[str, list[str]] = {}
    for question in questions:
        by_attribute.setdefault(question.attribute, [])
        if question.answer not in by_attribute[question.attribute]:
            by_attribute[question.attribute].append(question.answer)
    return [[q.answer] + [v for v in by_attribute[q.attribute] if v != q.answer] for q in questions]


def binding_scores(contains_each: list[int], questions: list) -> dict:
    """How much of "contains" needs the person, from the gold answers alone: ``unique_contains``,
    contains over the ``unique_count`` questions whose gold answer no other person of the set shares
    for that attribute (only a model that binds the value to its owner answers those), and
    ``prior_contains``, what answering every question with its attribute's most common gold answer
    in the set would score (no binding at all; ties go to the first in question order)."""
    counts: dict[tuple[str, str], int] = {}
    for q in questions:
        counts[q.attribute, q.answer] = counts.get((q.attribute, q.answer), 0) + 1
    unique = [counts[q.attribute, q.answer] == 1 for q in questions]
    common: dict[str, str] = {}
    for q in questions:
        best = common.get(q.attribute)
        if best is None or counts[q.attribute, q.answer] > counts[q.attribute, best]:
            common[q.attribute] = q.answer
    prior = [contains_match(common[q.attribute], q.answer) for q in questions]
    hits = [c for c, u in zip(contains_each, unique) if u]
    return {"unique_contains": sum(hits) / max(len(hits), 1), "unique_count": len(hits),
            "prior_contains": sum(prior) / max(len(prior), 1)}


def _answer_totals(model, tokenizer, prompts: list[str], answers: list[list[str]]) -> list[list[float]]:
    """Per prompt, each of its ``answers``' total log-probability after it (one batched pass)."""
    examples = qa_examples(tokenizer, [p for p, own in zip(prompts, answers) for _ in own],
                           [answer for own in answers for answer in own])
    totals = iter([sum(row) for row in gold_logprobs(model, tokenizer, examples)])
    return [[next(totals) for _ in own] for own in answers]


def _first_ranked_first(scores: list[list[float]]) -> float:
    """The fraction of rows whose first score is strictly above all of the row's others."""
    wins = [own[0] > max(own[1:], default=float("-inf")) for own in scores]
    return sum(wins) / max(len(wins), 1)


def choice_scores(model, tokenizer, prompts: list[str], questions: list, gold: list[float]) -> dict:
    """Closed-book multiple choice by log-probability: ``choice_accuracy``, the fraction of questions
    whose own gold answer has strictly the highest total log-probability after the prompt among its
    attribute's values in the set (:func:`attribute_values`: other people's answers to the same
    question), and ``choice_chance``, its expectation for a model that cannot tell them apart
    (the mean of 1 / the number of values). Gold log-probs that rise for every value of an
    attribute at once leave it at chance; only binding a value to its owner raises it. ``gold``:
    each question's gold answer's total log-probability, already computed by the caller. The value
    is scored as the whole answer, right after the prompt: a model trained to answer in sentences
    binds inside the sentence, which :func:`sentence_choice_scores` measures."""
    others = [own[1:] for own in attribute_values(questions)]
    scores = [[own] + row for own, row in zip(gold, _answer_totals(model, tokenizer, prompts, others))]
    return {"choice_accuracy": _first_ranked_first(scores),
            "choice_chance": sum(1 / (len(own) + 1) for own in others) / max(len(others), 1)}


def sentence_choice_scores(model, tokenizer, prompts: list[str], questions: list, sentences: list[str]) -> dict:
    """``sentence_choice_accuracy``: :func:`choice_scores` with every candidate said in a sentence,
    ``sentences[i]`` (one that states question i's gold answer, ``Fact.answer_sentence``) with the
    gold value replaced by each of the attribute's values; chance is ``choice_chance``. Measured on
    SmolLM2-135M (10 people, seed 1): SFT on the wake questions with these sentences as answers
    answered 0.414 closed-book ("contains"; 9 of the 30 answers no one else shares) while the bare
    value right after the prompt ranked first only 0.229 of the time (chance 0.182)."""
    candidates = [[sentence.replace(own[0], value) for value in own]
                  for sentence, own in zip(sentences, attribute_values(questions))]
    return {"sentence_choice_accuracy": _first_ranked_first(_answer_totals(model, tokenizer, prompts, candidates))}


def evaluate(engine: Engine, tokenizer, dataset: BiographyDataset, *, in_context: bool = False,
             progress: bool = False) -> dict:
    """Per question set (``one_hop``, ``two_hop``): ``contains``, ``em``, ``f1``, ``count``,
    ``contains_each``, ``answers`` (the greedy answers, in question order), ``swapped``
    (:func:`swapped_rate`), ``errors`` (:func:`error_modes`), ``dominant`` and ``dominant_share``
    (:func:`dominant_value`), ``unique_contains`` / ``unique_count`` / ``prior_contains`` (:func:`binding_scores`),
    ``choice_accuracy`` / ``choice_chance`` (:func:`choice_scores`), for the 1-hop set
    ``sentence_choice_accuracy`` (:func:`sentence_choice_scores`) and the gold answer's
    ``logp_token`` / ``logp_answer``, all under ``engine.model`` as it is (its active experts)."""
    def context(question):
        if not in_context:
            return None
        passage = dataset.passage_of(question.person)
        return passage + "\n" + dataset.company_passage_of(question.person) if question.hops == 2 else passage

    scores = {}
    for name, questions in (("one_hop", dataset.questions), ("two_hop", dataset.two_hop_questions)):
        prompts = [qa_prompt(tokenizer, q.text, context(q)) for q in questions]
        golds = [q.answer for q in questions]
        predictions = answer(engine, tokenizer, prompts, progress=progress)
        logprobs = gold_logprobs(engine.model, tokenizer, qa_examples(tokenizer, prompts, golds))
        gold_totals = [sum(row) for row in logprobs]
        matched = aggregate(predictions, golds)
        errors = error_modes(predictions, questions)
        contains_each = [int(contains_match(p, g)) for p, g in zip(predictions, golds)]
        scores[name] = {"contains": matched.pop("contains"), **matched, **logprob_scores(logprobs),
                        "contains_each": contains_each, **binding_scores(contains_each, questions),
                        **choice_scores(engine.model, tokenizer, prompts, questions, gold_totals),
                        **(sentence_choice_scores(engine.model, tokenizer, prompts, questions,
                                                  [dataset.fact_of(q).answer_sentence for q in questions])
                           if name == "one_hop" else {}),
                        "swapped": errors["other_person"], "errors": errors,
                        **dict(zip(("dominant", "dominant_share"), dominant_value(predictions, questions))),
                        "answers": predictions}
    return scores
