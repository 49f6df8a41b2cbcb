"""The model as the semantic judge of the Learning-to-Imitate reward (METHOD.md section 3(b)).

``r_sem`` is 1 when the judge says a student completion and the teacher's continuation mean the
same, else 0. :class:`ModelJudge` asks the model itself, one question per pair, and reads the
answer off its next-token distribution instead of sampling it.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from sleepcore.lm import chat_turn, encode, final_hidden, head_weight, pad_id, padded_batch
from sleepcore.validation import integer

__all__ = ["ModelJudge"]

QUESTION = "Do these two texts say the same thing? Answer yes or no."
YES = (" yes", "yes", " Yes", "Yes")
NO = (" no", "no", " No", "No")


def _single_token_ids(tokenizer, words) -> list[int]:
    encoded = [tokenizer.encode(word, add_special_tokens=False) for word in words]
    return sorted({ids[0] for ids in encoded if len(ids) == 1} - {tokenizer.unk_token_id})


class ModelJudge:
    """``r_sem`` from the model: 1.0 when it answers "yes" to "same meaning?", else 0.0.

    The question for a pair ``(a, b)`` is::

        Do these two texts say the same thing? Answer yes or no.
        Text A: <a>
        Text B: <b>

    as one user turn with the assistant's turn opened (:func:`~sleepcore.lm.chat_turn`),
    or, without a chat template, followed by ``"\\nAnswer:"``. One no-grad forward per
    ``batch_size`` questions (right-padded, int64 ``[B, T]``) gives the final hidden state at each
    question's last token, ``[B, H]``; through the output embedding's rows of the answer tokens it
    gives ``log P(yes) = logsumexp(yes logits)`` and ``log P(no)`` likewise (the softmax's
    normaliser cancels). The answer tokens are those of " yes", "yes", " Yes", "Yes" (and the same
    for no) that the tokenizer encodes as one token. The rule: ``r_sem = 1.0`` when
    ``P(yes) > P(no)``, else 0.0.

    Args:
        model, tokenizer: a Hugging Face causal LM (``model.base_model(...).last_hidden_state``,
            ``get_output_embeddings()``) and its tokenizer.
        context: a callable returning a context manager, entered around every forward (Knowledge
            Seeding passes its ``teacher``: the judge is the smaller self). None: no context.
        batch_size: questions per forward, an int >= 1.

    Raises:
        ValueError: ``batch_size`` < 1, or a tokenizer with no single-token "yes" or "no".
    """

    def __init__(self, model, tokenizer, *, context=None, batch_size: int = 16):
        integer("batch_size", batch_size, minimum=1)
        yes, no = _single_token_ids(tokenizer, YES), _single_token_ids(tokenizer, NO)
        if not yes or not no:
            raise ValueError(f"ModelJudge needs single-token answers, but the tokenizer encodes none of "
                             f"{YES if not yes else NO} as one token")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.context = context if context is not None else nullcontext
        self.pad_id, self.head = pad_id(tokenizer), head_weight(model)
        self.answer_ids = torch.tensor(yes + no, device=self.head.device)
        self.yes_count = len(yes)

    def prompt(self, a: str, b: str) -> str:
        """The question about one pair, as text."""
        if not isinstance(a, str) or not isinstance(b, str):
            raise TypeError(f"the judge compares texts, got {type(a).__name__} and {type(b).__name__}")
        content = f"{QUESTION}\nText A: {a.strip()}\nText B: {b.strip()}"
        chat = chat_turn(self.tokenizer, content)
        return chat if chat is not None else f"{content}\nAnswer:"

    @torch.no_grad()
    def log_odds(self, completion_texts: list[str], reference_texts: list[str]) -> torch.Tensor:
        """``log P(yes) - log P(no)`` per pair: fp32 ``[N]`` on CPU. Raises ValueError for lists of
        different lengths."""
        if len(completion_texts) != len(reference_texts):
            raise ValueError(f"completion_texts and reference_texts must have the same length, got "
                             f"{len(completion_texts)} and {len(reference_texts)}")
        questions = [encode(self.tokenizer, self.prompt(a, b)) for a, b in zip(completion_texts, reference_texts)]
        out = torch.empty(len(questions))
        for start in range(0, len(questions), self.batch_size):
            chunk = questions[start:start + self.batch_size]
            ids, mask = padded_batch(chunk, self.pad_id, self.model.device)
            with self.context():
                hidden = final_hidden(self.model, ids, mask)
            last = hidden[torch.arange(len(chunk), device=hidden.device), mask.sum(1) - 1]  # [B, H]
            logits = (last @ self.head[self.answer_ids].T).float()  # [B, yes + no]
            yes, no = logits[:, :self.yes_count], logits[:, self.yes_count:]
            out[start:start + len(chunk)] = (yes.logsumexp(1) - no.logsumexp(1)).cpu()
        return out

    def score_pairs(self, completion_texts: list[str], reference_texts: list[str]) -> list[float]:
        """``r_sem`` of every pair: 1.0 where ``P(yes) > P(no)``, else 0.0."""
        return [1.0 if odds > 0 else 0.0 for odds in self.log_odds(completion_texts, reference_texts).tolist()]

    def __call__(self, completion_text: str, reference_text: str) -> float:
        """``r_sem`` of one pair."""
        return self.score_pairs([completion_text], [reference_text])[0]
