"""Teacher-forced scoring of gold answers: the log-probability of each answer token after its
question's prompt. The knowledge suite reports it (:mod:`sleepcore.tasks.knowledge_metrics`) and
Dreaming's dense reward scores adapted models with it (:mod:`sleepcore.sleep.dreamer`)."""

from __future__ import annotations

import torch

from sleepcore.lm.hidden import response_hidden
from sleepcore.lm.tokens import encode, head_weight, pad_id
from sleepcore.ops import fused_linear_logprobs

LOGPROB_BATCH = 16


def answer_text(prompt: str, answer: str) -> str:
    """``answer`` as the model writes it after ``prompt``: right after a prompt that ends in
    whitespace (a chat template's opened assistant turn ends in a newline), else after one space
    (``...\\nAnswer: Meridale College``)."""
    return answer if not prompt or prompt[-1].isspace() else " " + answer


def answer_ids(tokenizer, prompt: str, answer: str) -> list[int]:
    """Token ids of :func:`answer_text` without special tokens (no BOS in the middle of a turn)."""
    return list(tokenizer(answer_text(prompt, answer), add_special_tokens=False)["input_ids"])


def qa_examples(tokenizer, prompts: list[str], answers: list[str]) -> list[tuple[list[int], list[int]]]:
    """``(prompt ids, gold answer ids)`` per question: the items of the oracle rows and of the
    gold log-probability."""
    return [(encode(tokenizer, prompt), answer_ids(tokenizer, prompt, answer)) for prompt, answer in zip(prompts, answers)]


@torch.no_grad()
def gold_logprobs(model, tokenizer, examples: list[tuple[list[int], list[int]]], *,
                  batch_size: int = LOGPROB_BATCH) -> list[list[float]]:
    """Per example, the log-probability of each answer token given the prompt and the answer's
    earlier tokens (one no-grad forward per batch; no ``N x V`` logits)."""
    head, pad, result = head_weight(model), pad_id(tokenizer), []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        responses = [response for _, response in chunk]
        hidden = response_hidden(model, [prompt for prompt, _ in chunk], responses, pad)
        targets = torch.tensor([t for r in responses for t in r], device=hidden.device)
        logp, _ = fused_linear_logprobs(hidden, head, targets, return_entropy=False)
        result += [rows.tolist() for rows in logp.float().split([len(r) for r in responses])]
    return result
