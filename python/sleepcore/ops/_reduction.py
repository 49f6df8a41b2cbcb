"""Token masks, reductions and row weights shared by the divergence ops.

Every fused op is computed as a *row-weighted sum*: ``loss = sum_r row_scale[r] * loss[r]``.
The reduction only chooses ``row_scale``:

* ``"sum"``: the keep-mask (1 for kept tokens, 0 for ignored ones);
* ``"batchmean"``: the keep-mask divided by the number of kept tokens, or by
  ``num_items_in_batch`` when given (so micro-batch gradients add up to the full batch's);
* ``"none"``: per-row losses; their gradient reuses the same kernel with
  ``row_scale = grad_output * mask``.

:func:`trl_row_scale` gives the weights of TRL's ``generalized_jsd_loss`` reductions instead.
All of it is tensor arithmetic: no ``.item()``, no host sync.
"""

from __future__ import annotations

import torch


def keep_mask(labels: torch.Tensor | None, rows: int, ignore_index: int, device: torch.device) -> torch.Tensor:
    """Boolean ``[rows]``: True for the tokens that count."""
    if labels is None:
        return torch.ones(rows, dtype=torch.bool, device=device)
    labels = labels.reshape(rows)
    return labels if labels.dtype == torch.bool else labels != ignore_index


def _divide(scale: torch.Tensor, denominator) -> torch.Tensor:
    if isinstance(denominator, torch.Tensor):
        denominator = denominator.to(device=scale.device, dtype=torch.float32).reshape(())
    return scale / denominator


def row_scale(mask: torch.Tensor, reduction: str, num_items_in_batch) -> torch.Tensor:
    """float32 ``[rows]`` weights that turn per-row losses into the requested reduction."""
    scale = mask.to(torch.float32)
    if reduction != "batchmean":
        return scale
    return _divide(scale, scale.sum().clamp_min(1.0) if num_items_in_batch is None else num_items_in_batch)


def trl_row_scale(mask: torch.Tensor, reduction: str, num_items_in_batch, *, labelled: bool, batch_size: int,
                  vocab: int) -> torch.Tensor:
    """float32 ``[rows]`` weights of TRL 1.16's ``generalized_jsd_loss`` reductions.

    TRL sums the per-element terms of the kept tokens, then: with ``num_items_in_batch`` every
    scalar reduction divides by it; otherwise ``"batchmean"`` divides by the kept-token count
    (with labels) or by ``batch_size``, the logits' first dimension (without labels: ``B`` for
    ``[B, S, V]``), and ``"mean"`` by the number of elements (kept tokens x ``vocab``). Unlike
    TRL, no kept token gives 0 (TRL's ``"mean"`` gives NaN there). ``"none"`` keeps the mask.
    """
    scale = mask.to(torch.float32)
    if reduction == "none" or (reduction == "sum" and num_items_in_batch is None):
        return scale
    if num_items_in_batch is not None:
        return _divide(scale, num_items_in_batch)
    tokens = scale.sum().clamp_min(1.0) if labelled else max(mask.numel(), 1)
    if reduction == "mean":
        return scale / (tokens * vocab)
    return scale / (tokens if labelled else max(batch_size, 1))
