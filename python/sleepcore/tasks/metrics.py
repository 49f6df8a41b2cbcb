"""Answer-matching metrics for short-answer question answering, following the SQuAD conventions.

Both strings are normalised first (:func:`normalize_answer`): lowercase, punctuation removed,
the articles "a", "an" and "the" removed, whitespace collapsed. Then

* :func:`exact_match` is the strict SQuAD score: 1.0 only when the normalised strings are equal;
* :func:`token_f1` is the SQuAD bag-of-tokens F1 between the normalised strings;
* :func:`contains_match` is a lenient variant: 1.0 when the normalised gold appears as a whole-token
  span anywhere in the normalised prediction. It credits a small model that answers in a sentence
  ("He studied at Meridale College.") but also one that lists several guesses, so report it next to
  exact match, never instead of it.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from sleepcore import validation

__all__ = ["aggregate", "contains_match", "exact_match", "normalize_answer", "token_f1"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """``text`` lowercased, without ASCII punctuation or articles, words separated by single spaces.

    Raises ``TypeError`` if ``text`` is not a str.
    """
    validation.instance("text", text, str, what="a string")
    without_punctuation = text.lower().translate(_DELETE_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", without_punctuation).split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 if the normalised ``prediction`` equals the normalised ``gold``, else 0.0 (strict SQuAD EM)."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def contains_match(prediction: str, gold: str) -> float:
    """1.0 if the normalised ``gold`` is a whole-token span of the normalised ``prediction``, else 0.0.

    An empty normalised gold only matches an empty normalised prediction, as in :func:`exact_match`.
    """
    normalized_gold = normalize_answer(gold)
    normalized_prediction = normalize_answer(prediction)
    if not normalized_gold:
        return float(not normalized_prediction)
    return float(f" {normalized_gold} " in f" {normalized_prediction} ")


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token F1 between the normalised strings; 1.0 when both are empty, 0.0 when only one is."""
    prediction_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not prediction_tokens or not gold_tokens:
        return float(prediction_tokens == gold_tokens)
    overlap = sum((Counter(prediction_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(prediction_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def aggregate(predictions: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
    """Mean ``em``, ``f1`` and ``contains`` over paired answers, plus their ``count``.

    Raises ``ValueError`` if ``predictions`` and ``golds`` differ in length or are empty.
    """
    if len(predictions) != len(golds):
        raise ValueError(f"predictions and golds must have the same length, got {len(predictions)} "
                         f"and {len(golds)}")
    validation.non_empty("predictions and golds", golds)
    pairs = list(zip(predictions, golds))
    return {
        "em": sum(exact_match(p, g) for p, g in pairs) / len(pairs),
        "f1": sum(token_f1(p, g) for p, g in pairs) / len(pairs),
        "contains": sum(contains_match(p, g) for p, g in pairs) / len(pairs),
        "count": len(pairs),
    }
