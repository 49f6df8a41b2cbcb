"""Selecting dreams by gradient importance (METHOD.md §4, step 2).

A dream's importance is the gradient of its SFT loss (mean next-token NLL over its lines) with
respect to a fresh inner-loop adapter, scalarised as its norm (default) or its cosine with the
document's gradient. All dreams of a document (and the document, for the cosine) get one adapter
each of :func:`~sleepcore.memory.batched.batched_adapters`, all with the same initial weights, and
one forward and one backward over the sum of the per-adapter mean losses
(:meth:`~sleepcore.train.batched.BatchedRuntime.next_token_loss`): since a sequence's output
depends on its own adapter only, adapter ``k``'s gradient is exactly dream ``k``'s gradient alone,
so no per-sample gradient trick is needed at LoRA size. The ``top_k`` dreams by score are kept,
plus ``random_kept`` of the others drawn at random.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from sleepcore.memory.batched import batched_adapters
from sleepcore.sleep.dream_config import DreamingConfig
from sleepcore.train import OptimizerConfig
from sleepcore.train.batched import BatchedRuntime
from sleepcore.validation import choice, integer

Examples = list[tuple[list[int], list[int]]]


@dataclass
class Selection:
    """The kept dreams' indices (the top ones by score first, then the random ones) and every dream's score."""

    kept: list[int]
    scores: list[float]


def dream_gradient_scores(model, memory, dreams: list[Examples], pad_id: int, *, score: str = "norm",
                          document: Examples | None = None, rank: int | None = None, alpha: float | None = None,
                          optimizer: OptimizerConfig | None = None, seed: int = 0) -> list[float]:
    """Each dream's gradient score on a fresh adapter (see the module docstring).

    Args:
        dreams: per dream its ``(prompt ids, response ids)`` examples (may be empty: score 0).
        score: ``"norm"`` (L2 norm of the adapter gradient) or ``"cosine"`` (with ``document``'s).
        document: the document's examples (needed by ``"cosine"``).
        rank, alpha: the adapter's (see :func:`batched_adapters`); optimizer: its ``compute_dtype``
            sets the forward's precision.
        seed: the adapter's initial ``A`` (the same for every dream).

    Returns one float per dream. ``ValueError`` for an unknown score or a cosine without a document.
    """
    choice("score", score, ("norm", "cosine"))
    integer("seed", seed)
    if score == "cosine" and not document:
        raise ValueError("score='cosine' needs the document's examples (document)")
    groups = list(dreams) + ([document] if score == "cosine" else [])
    if not any(groups[:len(dreams)]):
        return [0.0] * len(dreams)
    with batched_adapters(memory, len(groups), rank=rank, alpha=alpha,
                          generator=torch.Generator().manual_seed(seed)) as adapters:
        with torch.no_grad():
            for parameter in adapters.A.values():
                parameter.copy_(parameter[0].clone().expand_as(parameter))  # one initial adapter for all
        runtime = BatchedRuntime(model, adapters, optimizer)
        loss, _ = runtime.next_token_loss(groups, pad_id)
        loss.backward()
        squares = torch.zeros(len(groups), dtype=torch.float64)
        dots = torch.zeros(len(groups), dtype=torch.float64)
        for parameter in adapters.parameters():
            if parameter.grad is None:
                continue
            flat = parameter.grad.reshape(len(groups), -1).double().cpu()
            squares += flat.square().sum(1)
            if score == "cosine":
                dots += flat @ flat[-1]
            parameter.grad = None
    norms = squares.sqrt()
    if score == "norm":
        return norms[:len(dreams)].tolist()
    denominator = (norms[:len(dreams)] * norms[-1]).clamp_min(1e-30)
    return (dots[:len(dreams)] / denominator).tolist()


def keep(scores: list[float], top_k: int, random_kept: int, rng: random.Random) -> list[int]:
    """The indices of the ``top_k`` highest scores (ties: the earlier dream), then ``random_kept`` of
    the rest drawn with ``rng``. ``ValueError`` when ``top_k + random_kept`` exceeds the dreams."""
    integer("top_k", top_k, minimum=0)
    integer("random_kept", random_kept, minimum=0)
    if top_k + random_kept > len(scores):
        raise ValueError(f"top_k + random_kept ({top_k} + {random_kept}) exceeds the {len(scores)} dreams")
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    top, rest = order[:top_k], sorted(order[top_k:])
    return top + rng.sample(rest, random_kept)


def select_dreams(model, memory, dreams: list[Examples], document: Examples, pad_id: int, config: DreamingConfig,
                  *, seed: int) -> Selection:
    """The kept dreams of one document by ``config.selection`` (``"random"``: no gradient, scores 0,
    ``top_k + random_kept`` drawn at random) and :func:`keep`."""
    rng = random.Random(f"select/{seed}")
    if config.selection == "random":
        return Selection(sorted(rng.sample(range(len(dreams)), config.kept)), [0.0] * len(dreams))
    scores = dream_gradient_scores(model, memory, dreams, pad_id, score=config.selection, document=document,
                                   rank=config.inner_rank, alpha=config.inner_alpha, optimizer=config.optimizer,
                                   seed=seed)
    return Selection(keep(scores, config.top_k, config.random_kept, rng), scores)
