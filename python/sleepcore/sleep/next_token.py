"""Next-token (SFT) training of chosen parameters on texts: the fast memory level's online updates
during wake (METHOD.md §1) and the SFT baseline a sleep is compared with.

The loss of a batch of sequences ``x[b]`` is the mean negative log-likelihood of every token but
the first,

    loss = -(1 / N) * sum_b sum_{1 <= t < len(x[b])} log p(x[b, t] | x[b, <t]),   N = sum_b (len(x[b]) - 1),

computed by ``ops.fused_linear_logprobs`` on the final hidden states (no ``N x V`` logits). Batches
are right-padded; padded positions are masked out of attention and of the targets, so the pad id
does not matter.
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from sleepcore.ops import fused_linear_logprobs
from sleepcore.sleep.hidden_states import padded_batch

IGNORE = -100


def _sequences(tokenizer, texts) -> list[list[int]]:
    """Token ids of every text of 2 tokens or more (strings are tokenised, id lists kept)."""
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not texts:
        raise ValueError("texts must be a non-empty list of strings or of token id lists")
    sequences = []
    for text in texts:
        if isinstance(text, str):
            sequences.append(tokenizer(text)["input_ids"])
        elif isinstance(text, (list, tuple)) and all(isinstance(i, int) for i in text):
            sequences.append(list(text))
        else:
            raise ValueError(f"texts must hold strings or token id lists, got {type(text).__name__}")
    sequences = [sequence for sequence in sequences if len(sequence) >= 2]
    if not sequences:
        raise ValueError("texts hold no sequence of 2 tokens or more: there is no next token to learn")
    return sequences


def _batch_loss(model, batch: list[list[int]]) -> tuple[torch.Tensor, int]:
    """Mean next-token NLL of ``batch`` (a float32 scalar) and the number of predicted tokens."""
    ids, mask = padded_batch(batch, 0, model.device)
    targets = pad_sequence([torch.tensor(sequence[1:] + [IGNORE]) for sequence in batch], batch_first=True,
                           padding_value=IGNORE).to(model.device)
    hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, T, H]
    logp, _ = fused_linear_logprobs(hidden, model.get_output_embeddings().weight, targets, return_entropy=False)
    count = int((targets != IGNORE).sum())
    return -logp.sum() / count, count


@torch.no_grad()
def next_token_loss(model, tokenizer, texts, *, batch_size: int = 4) -> float:
    """Mean next-token NLL (nats per token, float) of ``texts`` (strings or token id lists) under
    ``model`` as it is now. Raises ``ValueError`` for empty ``texts``."""
    sequences = _sequences(tokenizer, texts)
    total, tokens = 0.0, 0
    for start in range(0, len(sequences), batch_size):
        loss, count = _batch_loss(model, sequences[start:start + batch_size])
        total, tokens = total + float(loss) * count, tokens + count
    return total / tokens


def train_next_token(model, tokenizer, parameters, texts, *, learning_rate: float, tokens: int | None = None,
                     steps: int | None = None, batch_size: int = 4, progress: bool = True,
                     desc: str = "next-token") -> int:
    """AdamW (a fresh one) on ``parameters`` minimising the next-token loss on ``texts``.

    Args:
        model: a Hugging Face causal LM (``base_model`` gives ``[B, T, H]`` hidden states; its output
            embedding ``[V, H]`` is the head). Only ``parameters`` with ``requires_grad`` move.
        tokenizer: turns the string items of ``texts`` into ids.
        texts: strings or token id lists; those under 2 tokens are skipped. Step ``s`` trains on
            ``batch_size`` of them, cycling through the list in order (deterministic).
        tokens, steps: stop once ``tokens`` tokens are trained or after ``steps`` steps, whichever
            comes first; at least one is needed.
        progress, desc: a tqdm bar of the tokens trained.

    Returns the number of tokens trained (predicted targets summed over steps).

    Raises ``ValueError`` naming the argument for bad ``texts``, budgets, ``learning_rate`` or
    ``batch_size``.
    """
    for name, value in (("tokens", tokens), ("steps", steps), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if tokens is None and steps is None:
        raise ValueError("tokens or steps must be given (the training budget)")
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) or not learning_rate > 0:
        raise ValueError(f"learning_rate must be a number > 0, got {learning_rate!r}")
    sequences = _sequences(tokenizer, texts)
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate)
    trained, step = 0, 0
    bar = tqdm(total=tokens, desc=desc, unit="tok", disable=not progress)
    while (tokens is None or trained < tokens) and (steps is None or step < steps):
        batch = [sequences[(step * batch_size + i) % len(sequences)] for i in range(batch_size)]
        step += 1
        loss, count = _batch_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        trained += count
        bar.update(count)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return trained
