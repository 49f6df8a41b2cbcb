"""Next-token (SFT) loss with prompt masking: the loss is on the response tokens only.

An example is ``(prompt, response)`` token ids. Its loss is

    sum_{t < len(response)} -log p(response[t] | prompt + response[:t]),

and a batch's loss is the sum over examples divided by a token count ``N``: the batch's own
response-token count by default, or the count of the whole (accumulated, all-rank) batch, which
keeps gradient accumulation exact. A plain text is the example ``(text[:1], text[1:])``: every
token but the first is learned. Computed by ``ops.fused_linear_logprobs`` on the final hidden states
at the response positions, so no ``N x V`` logits are formed.
"""

from __future__ import annotations

import torch

from sleepcore.lm.hidden import final_hidden, response_hidden
from sleepcore.lm.tokens import encode, head_weight, pad_id
from sleepcore.ops import fused_linear_logprobs
from sleepcore.validation import instance, integer, non_empty

IGNORE_INDEX = -100


def as_examples(tokenizer, items) -> list[tuple[list[int], list[int]]]:
    """``(prompt ids, response ids)`` pairs from a non-empty list of strings (a text: every token but
    the first is the response), token id lists (likewise) or ``(prompt, response)`` pairs of strings
    or id lists. Examples with an empty response are dropped; ValueError when none is left."""
    instance("texts", items, (list, tuple), what="a list of strings, token id lists or (prompt, response) pairs")
    non_empty("texts", items)
    examples = []
    for index, item in enumerate(items):
        if isinstance(item, tuple) and len(item) == 2:
            prompt, response = (_ids(tokenizer, part, f"texts[{index}]") for part in item)
            if not prompt:
                raise ValueError(f"texts[{index}]: the prompt must have at least one token")
        else:
            ids = _ids(tokenizer, item, f"texts[{index}]")
            prompt, response = ids[:1], ids[1:]
        if response:
            examples.append((prompt, response))
    if not examples:
        raise ValueError("texts hold no example with a response token (texts need 2 tokens or more)")
    return examples


def _ids(tokenizer, value, name: str) -> list[int]:
    if isinstance(value, str):
        return encode(tokenizer, value)
    instance(name, value, (list, tuple), what="a string or a list of token ids")
    for token in value:
        integer(f"{name} token", token, minimum=0)
    return list(value)


def next_token_sum(model, examples, pad_id: int, *, forward=final_hidden) -> tuple[torch.Tensor, int]:
    """Summed response-token NLL (a float32 scalar with grad) of ``examples`` and their token count."""
    prompts, responses = [p for p, _ in examples], [r for _, r in examples]
    hidden = response_hidden(model, prompts, responses, pad_id, forward=forward)  # [N, H]
    targets = torch.tensor([t for r in responses for t in r], device=hidden.device)
    logp, _ = fused_linear_logprobs(hidden, head_weight(model), targets, return_entropy=False)
    return -logp.sum(), targets.numel()


@torch.no_grad()
def next_token_loss(model, tokenizer, texts, *, batch_size: int = 4) -> float:
    """Mean response-token NLL (nats per token) of ``texts`` (see :func:`as_examples`) under ``model``."""
    integer("batch_size", batch_size, minimum=1)
    examples = as_examples(tokenizer, texts)
    total, tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        loss, count = next_token_sum(model, examples[start:start + batch_size], pad_id(tokenizer))
        total, tokens = total + float(loss), tokens + count
    return total / tokens
