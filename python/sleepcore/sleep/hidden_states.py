"""Batching token sequences through a Hugging Face causal LM: right-padded batches, and the final
hidden states that predict a response (what the fused linear losses take)."""

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


def response_hidden(model, prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> torch.Tensor:
    """Final hidden states ``[N, H]`` at the positions that predict the response tokens (N = total
    response length), in order."""
    ids, mask = padded_batch([p + r for p, r in zip(prompts, responses)], pad_id, model.device)
    hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    rows = [b * ids.shape[1] + len(p) - 1 + t for b, (p, r) in enumerate(zip(prompts, responses))
            for t in range(len(r))]
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, torch.tensor(rows, device=hidden.device))
