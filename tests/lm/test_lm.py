"""sleepcore.lm: prompt-masked next-token loss against a plain-logits reference, response hidden
states, and tokenisation without a second BOS."""

from __future__ import annotations

import pytest
import torch

from sleepcore.lm import (Branch, as_examples, encode, end_of_turn, final_hidden, gold_logprobs, next_token_loss,
                          next_token_sum, pad_id, response_hidden, tree_attention_mask, tree_batch)
from sleepcore.models import tiny_model
from _tiny_models import CHATML, CONFIGS, random_prompts, tiny_model as family_model

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


def test_end_of_turn_is_what_closes_an_answer():
    """A chat template's closing special token (not the newline after it); a line break without one."""
    _, tokenizer = tiny_model(CORPUS, seed=0)
    assert tokenizer.decode(end_of_turn(tokenizer)) == "\n"
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    assert end_of_turn(tokenizer) == [tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_bad_examples_are_refused():
    _, tokenizer = tiny_model(CORPUS, seed=0)
    with pytest.raises(TypeError, match="texts"):
        as_examples(tokenizer, "one string")
    with pytest.raises(ValueError, match="prompt"):
        as_examples(tokenizer, [([], [5, 6])])
    with pytest.raises(ValueError, match="texts\\[0\\] token"):
        as_examples(tokenizer, [[3, -1]])


@pytest.mark.parametrize("width_multiple", [1, 16])
@pytest.mark.parametrize("family", list(CONFIGS) + ["gemma3-eager"])
def test_token_trees_give_each_path_its_plain_forward(family, width_multiple):
    """Branches that fork mid-parent, siblings beside a response, an empty branch, several roots in
    one row and a padded row (every row padded, with a width multiple): every branch's predicting
    rows equal a plain causal forward over its path (response_hidden of that path alone), for every
    supported family (gemma3: sliding window 5, so the window applies on the trees' positions;
    eager attention takes the additive mask)."""
    model = family_model(family.removesuffix("-eager"))
    if family.endswith("-eager"):
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == "eager"
    prompt, response, other = random_prompts([5, 7, 4])
    completions = [[11, 12, 13], [14], [], [15, 16]]
    trees = [[Branch(prompt), Branch(response, 0)] + [Branch(c, 1, 3) for c in completions],
             [Branch(prompt), Branch(response, 0), Branch(other, 0)] + [Branch(c, 2) for c in completions],
             [Branch(prompt[:2]), Branch([7, 8], 0), Branch(other), Branch([9], 2, 1)]]
    paths = {(0, 1): (prompt, response), (1, 1): (prompt, response), (1, 2): (prompt, other),
             (2, 1): (prompt[:2], [7, 8]), (2, 3): (other[:1], [9])}
    for j, c in enumerate(completions):
        paths[(0, 2 + j)] = (prompt + response[:3], c)
        paths[(1, 3 + j)] = (prompt + other, c)
    batch = tree_batch(trees, 0, model.device, width_multiple=width_multiple)
    assert batch.width == {1: 22, 16: 32}[width_multiple]  # the longest tree (the second) holds 22 tokens
    with torch.no_grad():
        hidden = final_hidden(model, batch.input_ids, tree_attention_mask(model, batch), batch.position_ids)
        hidden = hidden.reshape(-1, hidden.shape[-1])
        assert batch.tokens == sum(len(b.tokens) for tree in trees for b in tree) < batch.input_ids.numel()
        for (tree, branch), (before, tokens) in paths.items():
            rows = batch.rows(tree, branch)
            assert len(rows) == len(tokens)
            if tokens:
                want = response_hidden(model, [before], [tokens], 0)
                torch.testing.assert_close(hidden[rows], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="empty context"):
        batch.rows(2, 2)  # a root: nothing before its first token
    with pytest.raises(ValueError, match=r"trees\[0\]\[1\].fork"):
        tree_batch([[Branch([1, 2]), Branch([3], 0, 5)]], 0, "cpu")
    with pytest.raises(ValueError, match=r"trees\[0\]\[0\].parent"):
        tree_batch([[Branch([1, 2], 0)]], 0, "cpu")
    with pytest.raises(ValueError, match="width_multiple"):
        tree_batch(trees, 0, "cpu", width_multiple=0)


@pytest.mark.parametrize("family", list(CONFIGS))
def test_gold_logprobs_shares_a_prompt_across_its_answers(family):
    """Answers after one prompt scored as one token tree (the prompt computed once) give each
    token's log-probability of one padded row per example: runs of a shared prompt, a prompt that
    comes back after another, an empty answer, batches that cut between groups (gemma3: sliding
    window 5, shorter than the prompts)."""
    model = family_model(family)
    tokenizer = type("Tokenizer", (), {"pad_token_id": 0, "eos_token_id": 1})()
    first, second = random_prompts([9, 6])
    answers = random_prompts([3, 1, 4, 2, 5], seed=2) + [[]]
    examples = [(first, a) for a in answers[:3]] + [(second, a) for a in answers[3:]] + [(first, answers[4])]
    want = gold_logprobs(model, tokenizer, examples, share_prompts=False)
    assert [len(row) for row in want] == [len(a) for _, a in examples]
    for batch_size in (1, 2, 16):
        got = gold_logprobs(model, tokenizer, examples, batch_size=batch_size)
        assert [len(row) for row in got] == [len(row) for row in want]
        for have, expected in zip(got, want):
            torch.testing.assert_close(torch.tensor(have), torch.tensor(expected), rtol=1e-5, atol=1e-5)
