"""Rewards of the Learning-to-Imitate term (METHOD.md section 3(b)).

A student completion ``d_hat`` of a teacher prefix is scored against the teacher's own
continuation ``d`` by ``r = gamma * r_sem + (1 - gamma) * r_abs``:

* ``r_abs = 1 - z / max(|d_hat|, |d|)`` when the Levenshtein distance ``z <= z0 * max(|d_hat|, |d|)``,
  else 0 (``z0`` is a fraction of the longer length; two empty sequences give 1);
* ``r_sem`` in [0, 1] comes from a pluggable judge, by default :func:`normalized_exact_match`
  (the model itself as the judge: :class:`sleepcore.sleep.judge.ModelJudge`).

Distances come from rapidfuzz (``Levenshtein.distance`` with ``score_cutoff``), not our own kernel:
bench/bench_reward.py, one KS step's 32 pairs of ~40 tokens on a shared 2-core EPYC: rapidfuzz 19-22 us,
the former C++ banded kernel 150-900 us (8-41x slower); the whole reward is < 3e-5 of an 83 s KS step.
"""

from __future__ import annotations

import math
import re
import string
from array import array
from collections.abc import Callable, Sequence

import numpy as np
import torch
from rapidfuzz.distance import Levenshtein

from sleepcore import validation

__all__ = ["levenshtein", "normalized_exact_match", "imitation_reward"]

_UNITS = ("token", "char")


def _check_batch(items, name: str) -> None:
    validation.instance(name, items, (list, tuple), what="a list or tuple of sequences")


def _int64_array(seq, name: str) -> np.ndarray:
    if isinstance(seq, torch.Tensor):
        if seq.dtype.is_floating_point or seq.dtype.is_complex or seq.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer token ids, got a {seq.dtype} tensor")
        if seq.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got a tensor of shape {tuple(seq.shape)}")
        return seq.detach().to("cpu", torch.int64).numpy()
    if isinstance(seq, str):
        raise TypeError(f"{name} is a str: pass unit='char' to compare strings, or token ids for unit='token'")
    if not isinstance(seq, (list, tuple, np.ndarray)):
        raise TypeError(f"{name} must be a list, tuple or tensor of ints, got {type(seq).__name__}")
    if len(seq) == 0:
        return np.empty(0, dtype=np.int64)
    values = np.asarray(seq)
    if values.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold ints, got elements of dtype {values.dtype}")
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {values.shape}")
    return values.astype(np.int64, copy=False)


def _token_ids(seq, name: str) -> array:
    """The int64 ids' bits as unsigned 64-bit ints: rapidfuzz compares an ``array`` exactly, while
    it hashes Python ints (and hash(2**61 - 1) == hash(0))."""
    if type(seq) in (list, tuple) and set(map(type, seq)) <= {int}:
        try:
            return array("Q", array("q", seq).tobytes())
        except OverflowError:
            pass  # beyond int64: the general path wraps uint64 ids as before
    return array("Q", np.ascontiguousarray(_int64_array(seq, name)).tobytes())


def _sequences(a, b, unit: str, names: tuple[str, str]) -> tuple[list, list]:
    validation.choice("unit", unit, _UNITS)
    _check_batch(a, names[0])
    _check_batch(b, names[1])
    if len(a) != len(b):
        raise ValueError(f"{names[0]} and {names[1]} must have the same length, got {len(a)} and {len(b)}")
    if unit == "token":
        return ([_token_ids(seq, f"{names[0]}[{i}]") for i, seq in enumerate(a)],
                [_token_ids(seq, f"{names[1]}[{i}]") for i, seq in enumerate(b)])
    for name, batch in zip(names, (a, b)):
        for i, text in enumerate(batch):
            if not isinstance(text, str):
                raise TypeError(f"{name}[{i}] must be a str for unit='char', got {type(text).__name__}")
    return list(a), list(b)  # rapidfuzz compares str by Unicode code point


def _max_distances(max_distance, pairs: int) -> list[int | None]:
    if isinstance(max_distance, (list, tuple)):
        if len(max_distance) != pairs:
            raise ValueError(f"max_distance has {len(max_distance)} entries for {pairs} pairs")
        return [validation.integer(f"max_distance[{i}]", value, minimum=0, optional=True)
                for i, value in enumerate(max_distance)]
    return [validation.integer("max_distance", max_distance, minimum=0, optional=True)] * pairs


def _distances(a: list, b: list, max_distances: list[int | None]) -> list[int]:
    # score_cutoff=k: the exact distance when it is <= k, else k + 1; None: no bound.
    return [Levenshtein.distance(x, y, score_cutoff=k) for x, y, k in zip(a, b, max_distances)]


def levenshtein(a: Sequence, b: Sequence, *, max_distance=None, unit: str = "token") -> list[int]:
    """Levenshtein distances of the pairs ``(a[p], b[p])`` (unit costs for insert, delete, substitute).

    Args:
        a, b: lists (or tuples) of equal length. For ``unit="token"`` each item is a 1-D sequence of
            integer token ids (list, tuple, numpy array or tensor, any device; compared as int64);
            for ``unit="char"`` each item is a ``str``, compared by Unicode code point.
        max_distance: ``None`` (exact distances), an int ``k >= 0``, or one int-or-None per pair.
            With a bound ``k`` (rapidfuzz's ``score_cutoff``) a pair further apart than ``k`` gets
            ``k + 1`` and its search stops early; distances ``<= k`` are exact.
        unit: ``"token"`` or ``"char"``.

    Returns:
        One int per pair (``[]`` for no pairs).

    Raises:
        TypeError: a batch that is not a list/tuple, items of the wrong type, a non-int bound.
        ValueError: different batch lengths, a negative bound, a bad ``unit``, a non-1-D item.
    """
    a, b = _sequences(a, b, unit, ("a", "b"))
    return _distances(a, b, _max_distances(max_distance, len(a)))


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _normalize_answer(text: str) -> str:
    # SQuAD v1.1's normalisation: lowercase, drop punctuation, drop articles, collapse whitespace.
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def normalized_exact_match(prediction: str, reference: str) -> float:
    """1.0 when ``prediction`` and ``reference`` agree after SQuAD-style normalisation, else 0.0.

    Normalisation lowercases, removes ASCII punctuation and the articles a/an/the, and collapses
    whitespace. Raises TypeError when either argument is not a ``str``.
    """
    validation.instance("prediction", prediction, str, what="a str")
    validation.instance("reference", reference, str, what="a str")
    return 1.0 if _normalize_answer(prediction) == _normalize_answer(reference) else 0.0


def _judge_score(score, i: int) -> float:
    try:
        score = float(score)
    except (TypeError, ValueError):
        raise TypeError(f"judge must return a float, got {type(score).__name__} for pair {i}") from None
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"judge must return a score in [0, 1], got {score} for pair {i}")
    return score


def _semantic_rewards(judge, completion_texts, reference_texts, pairs: int) -> list[float]:
    if judge is None:
        judge = normalized_exact_match
    score_pairs = getattr(judge, "score_pairs", None)
    if score_pairs is None and not callable(judge):
        raise TypeError(f"judge must be callable (completion_text, reference_text) -> float, or have "
                        f"score_pairs(completion_texts, reference_texts) -> list of floats, got {type(judge).__name__}")
    for name, texts in (("completion_texts", completion_texts), ("reference_texts", reference_texts)):
        _check_batch(texts, name)
        if len(texts) != pairs:
            raise ValueError(f"{name} must have one text per pair ({pairs}), got {len(texts)}")
    if score_pairs is not None:
        scores = list(score_pairs(list(completion_texts), list(reference_texts)))
        if len(scores) != pairs:
            raise ValueError(f"judge.score_pairs must return one score per pair ({pairs}), got {len(scores)}")
    else:
        scores = [judge(completion, reference) for completion, reference in zip(completion_texts, reference_texts)]
    return [_judge_score(score, i) for i, score in enumerate(scores)]


def imitation_reward(completions: Sequence, references: Sequence, *, gamma: float = 0.5, z0: float = 0.5,
                     unit: str = "token", judge: Callable[[str, str], float] | None = None,
                     completion_texts: Sequence[str] | None = None,
                     reference_texts: Sequence[str] | None = None) -> list[float]:
    """LTI rewards ``r = gamma * r_sem + (1 - gamma) * r_abs``, one per (completion, reference) pair.

    Args:
        completions, references: equal-length lists of the student's completions ``d_hat`` and the
            teacher's continuations ``d``: token-id sequences for ``unit="token"``, ``str`` for
            ``unit="char"`` (as in :func:`levenshtein`).
        gamma: weight of the semantic reward, in [0, 1].
        z0: distance threshold as a fraction of ``L = max(|d_hat|, |d|)``, in [0, 1]:
            ``r_abs = 1 - z / L`` when ``z <= z0 * L``, else 0; ``L = 0`` gives ``r_abs = 1``. The
            distance is bounded by ``floor(z0 * L)`` per pair, so far-apart pairs stop early.
        unit: ``"token"`` or ``"char"``.
        judge: ``judge(completion_text, reference_text) -> float in [0, 1]``, called per pair; or an
            object with ``score_pairs(completion_texts, reference_texts) -> [float in [0, 1]] * pairs``,
            called once for the batch (e.g. :class:`~sleepcore.sleep.judge.ModelJudge`). Default
            :func:`normalized_exact_match`. Used only when ``gamma > 0``.
        completion_texts, reference_texts: the texts the judge reads. Required when ``gamma > 0``
            and ``unit="token"``; for ``unit="char"`` they default to the strings themselves.

    Returns:
        One float in [0, 1] per pair.

    Raises:
        TypeError / ValueError naming the argument, as in :func:`levenshtein`, for ``gamma`` or
        ``z0`` outside [0, 1], missing or mis-sized texts, a judge that is neither callable nor has
        ``score_pairs``, a score that is not a float or is outside [0, 1], or a batch judge returning
        a number of scores other than the number of pairs.
    """
    gamma = validation.fraction("gamma", gamma)
    z0 = validation.fraction("z0", z0)
    a, b = _sequences(completions, references, unit, ("completions", "references"))
    pairs = len(a)
    longer = [max(len(x), len(y)) for x, y in zip(a, b)]
    # z <= z0 * L  <=>  z <= floor(z0 * L) for an integer z, so the bound is floor(z0 * L).
    bands = [math.floor(z0 * length) for length in longer]
    distances = _distances(a, b, bands)
    r_abs = [1.0 if length == 0 else 1.0 - z / length if z <= band else 0.0
             for z, band, length in zip(distances, bands, longer)]

    if gamma == 0.0:
        return r_abs
    if completion_texts is None and reference_texts is None and unit == "char":
        completion_texts, reference_texts = completions, references
    if completion_texts is None or reference_texts is None:
        raise ValueError("completion_texts and reference_texts are required when gamma > 0 and unit='token' "
                         "(the judge reads texts); pass both, or gamma=0")
    r_sem = _semantic_rewards(judge, completion_texts, reference_texts, pairs)
    return [gamma * semantic + (1.0 - gamma) * absolute for semantic, absolute in zip(r_sem, r_abs)]


def reward_metrics(rewards: list[float], group: int) -> dict:
    """Mean, population std and the fraction of groups with all-equal rewards; None without LTI."""
    if not rewards:
        return {"reward": None, "reward_std": None, "zero_advantage_fraction": None}
    values = torch.tensor(rewards, dtype=torch.float64)
    groups = values.reshape(-1, group)
    flat = (groups == groups[:, :1]).all(dim=1)
    return {"reward": float(values.mean()), "reward_std": float(values.std(correction=0)),
            "zero_advantage_fraction": float(flat.double().mean())}
