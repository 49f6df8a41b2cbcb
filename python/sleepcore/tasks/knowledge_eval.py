"""Closed-book QA on the biographies.

Answers are greedy through the rollout engine and end at the first newline or EOS. Questions use
``lm.qa_prompt`` (the tokenizer's chat template when it has one), the format sleep's
replay questions use too. The in-context ceiling puts the person's passage (and, for 2-hop
questions, the employer's passage) before the question; closed-book puts nothing.
"""

from __future__ import annotations

from sleepcore.rollout import Engine, SamplingParams
from sleepcore.lm import qa_prompt
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
