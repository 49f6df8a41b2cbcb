"""Rewards of the Learning-to-Imitate term (METHOD.md section 3(b)).

A student completion ``d_hat`` of a teacher prefix is scored against the teacher's own
continuation ``d`` by ``r = gamma * r_sem + (1 - gamma) * r_abs``:

* ``r_abs = 1 - z / max(|d_hat|, |d|)`` when the Levenshtein distance ``z <= z0 * max(|d_hat|, |d|)``,
  else 0 (``z0`` is a fraction of the longer length; two empty sequences give 1);
* ``r_sem`` in [0, 1] comes from a pluggable judge, by default :func:`normalized_exact_match`
  (the model itself as the judge: :class:`sleepcore.sleep.judge.ModelJudge`).

Distances come from the compiled core (``_C.levenshtein_tokens`` / ``_C.levenshtein_codepoints``,
csrc/text/levenshtein.cpp): banded, batched over pairs with OpenMP, without the GIL.
"""

from __future__ import annotations

import math
import operator
import re
import string
from collections.abc import Callable, Sequence

import numpy as np
import torch

from sleepcore._core import _C, cpu_threads

__all__ = ["levenshtein", "normalized_exact_match", "imitation_reward"]

_UNITS = ("token", "char")


def _check_unit(unit) -> None:
    if unit not in _UNITS:
        raise ValueError(f"unit must be 'token' or 'char', got {unit!r}")


def _check_batch(items, name: str) -> None:
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple of sequences, got {type(items).__name__}")


def _token_array(seq, name: str) -> np.ndarray:
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
    array = np.asarray(seq)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold ints, got elements of dtype {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return array.astype(np.int64, copy=False)


def _flat_tokens(batch, name: str) -> tuple[np.ndarray, np.ndarray]:
    pieces = [_token_array(seq, f"{name}[{i}]") for i, seq in enumerate(batch)]
    offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum([len(piece) for piece in pieces], out=offsets[1:])
    flat = np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)
    return np.ascontiguousarray(flat, dtype=np.int64), offsets


def _flat_codepoints(batch, name: str) -> tuple[np.ndarray, np.ndarray]:
    for i, text in enumerate(batch):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] must be a str for unit='char', got {type(text).__name__}")
    offsets = np.zeros(len(batch) + 1, dtype=np.int64)
    np.cumsum([len(text) for text in batch], out=offsets[1:])
    # len(str) counts code points, and UTF-32 has one 4-byte unit per code point.
    flat = np.frombuffer("".join(batch).encode("utf-32-le", "surrogatepass"), dtype="<u4")
    return np.ascontiguousarray(flat, dtype=np.uint32), offsets


def _flatten(a, b, unit: str, names: tuple[str, str]):
    _check_unit(unit)
    _check_batch(a, names[0])
    _check_batch(b, names[1])
    if len(a) != len(b):
        raise ValueError(f"{names[0]} and {names[1]} must have the same length, got {len(a)} and {len(b)}")
    flatten = _flat_tokens if unit == "token" else _flat_codepoints
    return flatten(a, names[0]), flatten(b, names[1])


def _max_distance_array(max_distance, pairs: int) -> np.ndarray:
    def one(value, name: str) -> int:
        if value is None:
            return -1
        if isinstance(value, bool):
            raise TypeError(f"{name} must be an int or None, got bool")
        try:
            value = operator.index(value)
        except TypeError:
            raise TypeError(f"{name} must be an int or None, got {type(value).__name__}") from None
        if value < 0:
            raise ValueError(f"{name} must be >= 0 (or None for no bound), got {value}")
        return value

    if isinstance(max_distance, (list, tuple)):
        if len(max_distance) != pairs:
            raise ValueError(f"max_distance has {len(max_distance)} entries for {pairs} pairs")
        values = [one(value, f"max_distance[{i}]") for i, value in enumerate(max_distance)]
    else:
        values = [one(max_distance, "max_distance")] * pairs
    return np.asarray(values, dtype=np.int64).reshape(pairs)


def _distances(flat_a, flat_b, max_distances: np.ndarray, unit: str) -> np.ndarray:
    (a, a_offsets), (b, b_offsets) = flat_a, flat_b
    pairs = len(a_offsets) - 1
    out = np.zeros(pairs, dtype=np.int64)
    if pairs:
        kernel = _C.levenshtein_tokens if unit == "token" else _C.levenshtein_codepoints
        kernel(a.ctypes.data, a_offsets.ctypes.data, b.ctypes.data, b_offsets.ctypes.data, pairs,
               max_distances.ctypes.data, out.ctypes.data, cpu_threads())
    return out


def levenshtein(a: Sequence, b: Sequence, *, max_distance=None, unit: str = "token") -> list[int]:
    """Levenshtein distances of the pairs ``(a[p], b[p])`` (unit costs for insert, delete, substitute).

    Args:
        a, b: lists (or tuples) of equal length. For ``unit="token"`` each item is a 1-D sequence of
            integer token ids (list, tuple, numpy array or tensor, any device); for ``unit="char"``
            each item is a ``str``, compared by Unicode code point.
        max_distance: ``None`` (exact distances), an int ``k >= 0``, or one int-or-None per pair.
            With a bound ``k`` only the band ``|i - j| <= k`` is computed (O(k * min length)), and a
            pair further apart than ``k`` gets ``k + 1``; distances ``<= k`` are exact.
        unit: ``"token"`` or ``"char"``.

    Returns:
        One int per pair (``[]`` for no pairs).

    Raises:
        TypeError: a batch that is not a list/tuple, items of the wrong type, a non-int bound.
        ValueError: different batch lengths, a negative bound, a bad ``unit``, a non-1-D item.
    """
    flat_a, flat_b = _flatten(a, b, unit, ("a", "b"))
    max_distances = _max_distance_array(max_distance, len(a))
    return _distances(flat_a, flat_b, max_distances, unit).tolist()


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
    if not isinstance(prediction, str):
        raise TypeError(f"prediction must be a str, got {type(prediction).__name__}")
    if not isinstance(reference, str):
        raise TypeError(f"reference must be a str, got {type(reference).__name__}")
    return 1.0 if _normalize_answer(prediction) == _normalize_answer(reference) else 0.0


def _unit_interval(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(value).__name__}")
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


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
            distance runs in the band ``floor(z0 * L)`` of each pair, so far-apart pairs stop early.
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
    gamma = _unit_interval(gamma, "gamma")
    z0 = _unit_interval(z0, "z0")
    flat_a, flat_b = _flatten(completions, references, unit, ("completions", "references"))
    pairs = len(completions)
    longer = np.maximum(np.diff(flat_a[1]), np.diff(flat_b[1]))
    # z <= z0 * L  <=>  z <= floor(z0 * L) for an integer z, so the band is floor(z0 * L).
    bands = np.floor(z0 * longer.astype(np.float64)).astype(np.int64)
    distances = _distances(flat_a, flat_b, bands, unit)
    with np.errstate(divide="ignore", invalid="ignore"):
        r_abs = np.where(longer == 0, 1.0, np.where(distances <= bands, 1.0 - distances / longer, 0.0))

    if gamma == 0.0:
        return r_abs.tolist()
    if completion_texts is None and reference_texts is None and unit == "char":
        completion_texts, reference_texts = completions, references
    if completion_texts is None or reference_texts is None:
        raise ValueError("completion_texts and reference_texts are required when gamma > 0 and unit='token' "
                         "(the judge reads texts); pass both, or gamma=0")
    r_sem = np.asarray(_semantic_rewards(judge, completion_texts, reference_texts, pairs), dtype=np.float64)
    return (gamma * r_sem + (1.0 - gamma) * r_abs).tolist()
