"""Closed-book QA on the biographies, and the SFT baseline a sleep is compared with.

Answers are greedy through the rollout engine and end at the first newline or EOS. Questions use
``sleep.prompts.qa_prompt`` (the tokenizer's chat template when it has one), the format sleep's
replay questions use too. The in-context ceiling puts the person's passage (and, for 2-hop
questions, the employer's passage) before the question; closed-book puts nothing.
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from sleepcore.ops import fused_linear_logprobs
from sleepcore.rollout import Engine, SamplingParams
from sleepcore.sleep.knowledge_seeding import padded_batch
from sleepcore.sleep.prompts import qa_prompt
from sleepcore.tasks.biographies import BiographyDataset
from sleepcore.tasks.metrics import aggregate

ANSWER_TOKENS = 16


def newline_ids(tokenizer) -> tuple[int, ...]:
    """Token ids that are exactly a line break (answers stop there)."""
    return tuple(i for i in {tokenizer.convert_tokens_to_ids(t) for t in ("\n", "Ċ", "<0x0A>")}
                 if isinstance(i, int) and i != tokenizer.unk_token_id and tokenizer.decode([i]) == "\n")


def answer(engine: Engine, tokenizer, prompts: list[str], *, progress: bool = False) -> list[str]:
    params = SamplingParams(temperature=0.0, max_tokens=ANSWER_TOKENS, stop_token_ids=newline_ids(tokenizer))
    outputs = engine.generate(prompts, params, progress=progress)
    return [(output.completions[0].text or "").strip() for output in outputs]


def evaluate(engine: Engine, tokenizer, dataset: BiographyDataset, *, in_context: bool = False,
             progress: bool = False) -> dict:
    """EM, token-F1 and containment on the 1-hop questions, and EM/containment on the 2-hop ones."""
    def context(question):
        if not in_context:
            return None
        passage = dataset.passage_of(question.person)
        return passage + "\n" + dataset.company_passage_of(question.person) if question.hops == 2 else passage

    scores = {}
    for name, questions in (("one_hop", dataset.questions), ("two_hop", dataset.two_hop_questions)):
        predictions = answer(engine, tokenizer, [qa_prompt(tokenizer, q.text, context(q)) for q in questions],
                             progress=progress)
        scores[name] = aggregate(predictions, [q.answer for q in questions])
    return scores


def train_on_passages(model, tokenizer, parameters, passages: list[str], *, tokens: int, learning_rate: float,
                      batch_size: int = 4, progress: bool = True) -> int:
    """SFT baseline: next-token loss on the passages, AdamW on ``parameters``, until about ``tokens``
    tokens have been trained (the sleep's budget). Returns the tokens trained."""
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate)
    head = model.get_output_embeddings().weight
    encoded = [tokenizer(p)["input_ids"] for p in passages]
    trained, step = 0, 0
    bar = tqdm(total=tokens, desc="SFT baseline", unit="tok", disable=not progress)
    while trained < tokens:
        batch = [encoded[(step * batch_size + i) % len(encoded)] for i in range(batch_size)]
        step += 1
        ids, mask = padded_batch(batch, tokenizer.pad_token_id or 0, model.device)
        targets = pad_sequence([torch.tensor(sequence[1:] + [-100]) for sequence in batch], batch_first=True,
                               padding_value=-100).to(model.device)
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        logp, _ = fused_linear_logprobs(hidden, head, targets, return_entropy=False)
        count = int((targets != -100).sum())
        loss = -logp.sum() / count
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        trained += count
        bar.update(count)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return trained
