"""Dreaming's inner loop (METHOD.md §4, steps 3-4): many fresh adapters, one per kept dream, trained
at once by :class:`~sleepcore.train.batched.BatchedRuntime` (each on its dream's lines plus the
document, a few epochs), then asked the document's questions closed-book, each through its own
adapter, in shared greedy decodes (:func:`answer_with_adapters`), or scored on the gold answers'
log-probability in shared teacher-forced forwards (:func:`gold_logprobs_with_adapters`).

The answers are decoded with Hugging Face ``generate`` (left-padded batches, KV cache) rather than
the rollout engine: the engine's packed batch and prefix cache assume one set of weights for
every sequence, while here each row has its own adapter (the per-sequence index of
:func:`~sleepcore.memory.batched.batched_adapters`). Answers stop at a line break or an end of
turn, as in the knowledge evaluation.
"""

from __future__ import annotations

import random

import torch

from sleepcore.lm import ANSWER_TOKENS, encode, end_of_turn, gold_logprobs, newline_ids, pad_id
from sleepcore.memory.batched import BatchedAdapters
from sleepcore.rollout.prompts import eos_token_ids
from sleepcore.train.batched import BatchedRuntime, TeacherPrompt

ANSWER_BATCH = 64

Examples = list[tuple[list[int], list[int]]]


def epoch_batches(examples: list[Examples], *, epochs: int, batch_size: int, max_steps: int | None,
                  rng: random.Random) -> list[list[Examples]]:
    """Per step, per adapter, its batch: each adapter's examples shuffled every epoch and cut into
    batches of ``batch_size``; an adapter that has run out gets an empty list (it is not stepped).
    At most ``max_steps`` steps when set."""
    schedules = []
    for own in examples:
        batches = []
        for _ in range(epochs):
            order = list(range(len(own)))
            rng.shuffle(order)
            batches += [[own[i] for i in order[start:start + batch_size]] for start in range(0, len(order), batch_size)]
        schedules.append(batches[:max_steps] if max_steps is not None else batches)
    steps = max(map(len, schedules), default=0)
    return [[batches[step] if step < len(batches) else [] for batches in schedules] for step in range(steps)]


def train_adapters(runtime: BatchedRuntime, examples: list[Examples], pad: int, *, epochs: int, batch_size: int,
                   max_steps: int | None = None, max_tokens: int | None = None, seed: int = 0,
                   on_step=None, teacher_prompt: TeacherPrompt | None = None) -> list[float]:
    """Trains adapter ``k`` of ``runtime`` on ``examples[k]`` (:func:`epoch_batches`), every adapter in
    each shared step, by next-token NLL or, with ``teacher_prompt``, by forward KL to the teacher
    (:meth:`~sleepcore.train.batched.BatchedRuntime.next_token_loss`). Returns each adapter's mean
    loss over its last step (nan if it never stepped). ``on_step(step, steps)`` is called after
    each step (progress)."""
    plan = epoch_batches(examples, epochs=epochs, batch_size=batch_size, max_steps=max_steps,
                         rng=random.Random(f"inner/{seed}"))
    last = [float("nan")] * len(examples)
    for step, batch in enumerate(plan):
        if not any(batch):
            continue
        losses, _ = runtime.train_step(batch, pad, max_tokens=max_tokens, teacher_prompt=teacher_prompt)
        for k, own in enumerate(batch):
            if own:
                last[k] = float(losses[k])
        if on_step is not None:
            on_step(step + 1, len(plan))
    return last


def stop_token_ids(model, tokenizer) -> list[int]:
    """Ids that end an answer: EOS (the engine's, and the tokenizer's), the end of a chat turn and
    every line-break token."""
    ids = set(eos_token_ids(model, tokenizer)) | set(newline_ids(tokenizer))
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    turn = end_of_turn(tokenizer)
    if turn:
        ids.add(turn[-1])
    return sorted(ids)


@torch.no_grad()
def answer_with_adapters(model, tokenizer, adapters: BatchedAdapters, prompts: list[str], adapter_index: list[int],
                         *, max_new_tokens: int = ANSWER_TOKENS, batch_size: int = ANSWER_BATCH) -> list[str]:
    """Greedy answers of ``prompts[i]`` through adapter ``adapter_index[i]`` (-1: none), cut at the
    first line break and stripped."""
    encoded = [encode(tokenizer, prompt) for prompt in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    pad, stops = pad_id(tokenizer), stop_token_ids(model, tokenizer)
    device = next(model.parameters()).device
    answers = [""] * len(prompts)
    training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(len(encoded[i]) for i in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for row, i in enumerate(rows):  # left padding: every prompt ends at the last column
                ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
                mask[row, width - len(encoded[i]):] = 1
            adapters.set_index(torch.tensor([adapter_index[i] for i in rows], device=device))
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=pad,
                                 temperature=None, top_p=None, top_k=None)
            for row, i in enumerate(rows):
                text = tokenizer.decode(out[row, width:].tolist(), skip_special_tokens=True)
                answers[i] = text.split("\n")[0].strip()
    finally:
        adapters.set_index(None)
        model.train(training)
    return answers


@torch.no_grad()
def gold_logprobs_with_adapters(model, tokenizer, adapters: BatchedAdapters, examples: Examples,
                                adapter_index: list[int], *, batch_size: int = ANSWER_BATCH) -> list[list[float]]:
    """Per ``(prompt ids, answer ids)`` example, each answer token's log-probability (teacher-forced,
    :func:`~sleepcore.lm.gold_logprobs`) through adapter ``adapter_index[i]`` (-1: none)."""
    if len(adapter_index) != len(examples):
        raise ValueError(f"adapter_index must have one entry per example ({len(examples)}), got {len(adapter_index)}")
    device, result, training = next(model.parameters()).device, [], model.training
    model.eval()
    try:
        for start in range(0, len(examples), batch_size):
            adapters.set_index(torch.tensor(adapter_index[start:start + batch_size], device=device))
            result += gold_logprobs(model, tokenizer, examples[start:start + batch_size], batch_size=batch_size,
                                    share_prompts=False)  # one row per example: the adapter index is per row
    finally:
        adapters.set_index(None)
        model.train(training)
    return result
