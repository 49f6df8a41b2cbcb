"""Batching token sequences through a Hugging Face causal LM: right-padded batches, and the final
hidden states that predict a response (the input of every fused linear loss)."""

from __future__ import annotations

import torch


def padded_batch(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask``, both int64 ``[B, max length]``."""
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, :len(sequence)] = torch.tensor(sequence)
        mask[row, :len(sequence)] = 1
    return ids.to(device), mask.to(device)


def final_hidden(model, input_ids: torch.Tensor, attention_mask, position_ids: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """The last layer's (normed) hidden states ``[B, T, H]`` of the model's body, before the head.
    ``attention_mask``: ``[B, T]`` padding mask, or a prepared 4D mask (see :mod:`sleepcore.lm.tree`)
    with its ``position_ids`` ``[B, T]``. No KV cache is built."""
    return model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False).last_hidden_state


def response_rows(prompts: list[list[int]], responses: list[list[int]], width: int) -> list[int]:
    """Flat row indices into ``[B * width]`` of the positions that predict each response token."""
    return [b * width + len(p) - 1 + t for b, (p, r) in enumerate(zip(prompts, responses)) for t in range(len(r))]


def response_hidden(model, prompts: list[list[int]], responses: list[list[int]], pad_id: int, *,
                    forward=final_hidden) -> torch.Tensor:
    """Final hidden states ``[N, H]`` at the positions that predict the response tokens (N = total
    response length), in order. Every prompt needs at least one token. ``forward(model, ids, mask)``
    is the model call (a training runtime passes its own, e.g. through a sharded wrapper)."""
    ids, mask = padded_batch([p + r for p, r in zip(prompts, responses)], pad_id, model.device)
    hidden = forward(model, ids, mask)
    rows = response_rows(prompts, responses, ids.shape[1])
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, torch.tensor(rows, device=hidden.device))
