"""Token masks, reductions and row weights shared by the divergence ops.

Every fused op is computed as a *row-weighted sum*: ``loss = sum_r row_scale[r] * loss[r]``.
The reduction only chooses ``row_scale``:

* ``"sum"``: the keep-mask (1 for kept tokens, 0 for ignored ones);
* ``"batchmean"``: the keep-mask divided by the number of kept tokens, or by
  ``num_items_in_batch`` when given (so micro-batch gradients add up to the full batch's);
* ``"none"``: per-row losses; their gradient reuses the same kernel with
  ``row_scale = grad_output * mask``.

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


def row_scale(mask: torch.Tensor, reduction: str, num_items_in_batch) -> torch.Tensor:
    """float32 ``[rows]`` weights that turn per-row losses into the requested reduction."""
    scale = mask.to(torch.float32)
    if reduction != "batchmean":
        return scale
    if num_items_in_batch is None:
        denominator = scale.sum().clamp_min(1.0)
    elif isinstance(num_items_in_batch, torch.Tensor):
        denominator = num_items_in_batch.to(device=scale.device, dtype=torch.float32).reshape(())
    else:
        denominator = float(num_items_in_batch)
    return scale / denominator
