"""Teacher-forced scoring of gold answers: the log-probability of each answer token after its
question's prompt. The knowledge suite reports it (:mod:`sleepcore.tasks.knowledge_metrics`) and
Dreaming's dense reward scores adapted models with it (:mod:`sleepcore.sleep.dreamer`)."""

from __future__ import annotations

import torch

from sleepcore.lm.hidden import final_hidden, response_hidden
from sleepcore.lm.tokens import encode, head_weight, pad_id
from sleepcore.lm.tree import Branch, tree_attention_mask, tree_batch
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
                  batch_size: int = LOGPROB_BATCH, share_prompts: bool = True) -> list[list[float]]:
    """Per example, the log-probability of each answer token given the prompt and the answer's
    earlier tokens (one no-grad forward per batch; no ``N x V`` logits).

    ``share_prompts``: consecutive examples with the same prompt ids form one token tree (the prompt
    once, each answer a branch of it, :mod:`sleepcore.lm.tree`), so scoring k answers after one
    prompt (the suite's multiple choice, k up to the number of people) computes the prompt once;
    ``batch_size`` then counts trees. The results equal one row per example up to floating-point
    rounding. False: one right-padded row per example, as a caller that routes rows needs (e.g.
    per-row adapters)."""
    head, pad, result = head_weight(model), pad_id(tokenizer), []
    if not share_prompts:
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            responses = [response for _, response in chunk]
            hidden = response_hidden(model, [prompt for prompt, _ in chunk], responses, pad)
            result += _token_logprobs(hidden, head, responses)
        return result
    groups: list[tuple[list[int], list[list[int]]]] = []
    for prompt, response in examples:
        if groups and groups[-1][0] == prompt:
            groups[-1][1].append(response)
        else:
            groups.append((prompt, [response]))
    for start in range(0, len(groups), batch_size):
        trees = [[Branch(prompt)] + [Branch(response, 0) for response in responses]
                 for prompt, responses in groups[start:start + batch_size]]
        batch = tree_batch(trees, pad, model.device)
        hidden = final_hidden(model, batch.input_ids, tree_attention_mask(model, batch), batch.position_ids)
        rows = [row for t, tree in enumerate(trees) for b in range(1, len(tree)) for row in batch.rows(t, b)]
        hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, torch.tensor(rows, device=hidden.device))
        result += _token_logprobs(hidden, head, [branch.tokens for tree in trees for branch in tree[1:]])
    return result


def _token_logprobs(hidden: torch.Tensor, head: torch.Tensor, responses: list[list[int]]) -> list[list[float]]:
    """Split per response: the log-probability of each response token from its predicting hidden
    state (``hidden`` ``[sum of lengths, H]``, in order)."""
    targets = torch.tensor([t for r in responses for t in r], device=hidden.device)
    logp, _ = fused_linear_logprobs(hidden, head, targets, return_entropy=False)
    return [rows.tolist() for rows in logp.float().split([len(r) for r in responses])]
