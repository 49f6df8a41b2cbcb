"""sleepcore.lm: prompt-masked next-token loss against a plain-logits reference, response hidden
states, and tokenisation without a second BOS."""

from __future__ import annotations

import pytest
import torch

from sleepcore.lm import as_examples, encode, next_token_loss, next_token_sum, pad_id
from sleepcore.models import tiny_model

CORPUS = ["Ada Lovelace wrote the first program.", "The river runs north to the sea.", "Bread needs flour and time."]


def test_next_token_loss_masks_the_prompt(seed):
    model, tokenizer = tiny_model(CORPUS, seed=0)
    examples = as_examples(tokenizer, [("Ada Lovelace", " wrote the first program."), CORPUS[1]])
    total, count = next_token_sum(model, examples, pad_id(tokenizer))
    want, tokens = torch.zeros(()), 0
    for prompt, response in examples:
        ids = torch.tensor([prompt + response])
        logp = model(input_ids=ids).logits.float().log_softmax(-1)[0, len(prompt) - 1:-1]
        want -= logp.gather(1, torch.tensor(response)[:, None]).sum()
        tokens += len(response)
    assert count == tokens == sum(len(r) for _, r in examples)
    torch.testing.assert_close(total, want, rtol=1e-4, atol=1e-4)
    total.backward()  # differentiable
    assert next_token_loss(model, tokenizer, CORPUS[1:]) > 0


def test_encode_adds_no_second_bos():
    class Tokenizer:
        bos_token = "<s>"

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": ([1] if add_special_tokens else []) + [ord(c) for c in text.replace("<s>", "\x01")]}

    assert encode(Tokenizer(), "hi") == [1, ord("h"), ord("i")]
    assert encode(Tokenizer(), "<s>hi") == [1, ord("h"), ord("i")]


def test_bad_examples_are_refused():
    _, tokenizer = tiny_model(CORPUS, seed=0)
    with pytest.raises(TypeError, match="texts"):
        as_examples(tokenizer, "one string")
    with pytest.raises(ValueError, match="prompt"):
        as_examples(tokenizer, [([], [5, 6])])
    with pytest.raises(ValueError, match="texts\\[0\\] token"):
        as_examples(tokenizer, [[3, -1]])
