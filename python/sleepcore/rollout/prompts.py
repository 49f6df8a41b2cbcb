"""Normalising what ``Engine.generate`` is given: prompts to token ids, params to one per prompt,
and the model's end-of-sequence ids."""

from __future__ import annotations

import numbers
from collections.abc import Sequence as SequenceABC

from sleepcore.rollout.params import SamplingParams


def _token_list(prompt, index: int, vocab_size: int) -> list[int]:
    if hasattr(prompt, "tolist"):
        prompt = prompt.tolist()
    if not isinstance(prompt, SequenceABC) or not prompt:
        raise TypeError(f"prompts[{index}] must be a string or a non-empty list of token ids, got {prompt!r:.80}")
    for token in prompt:
        if isinstance(token, bool) or not isinstance(token, numbers.Integral) or not 0 <= token < vocab_size:
            raise ValueError(f"prompts[{index}] holds {token!r}, not a token id in [0, {vocab_size})")
    return [int(token) for token in prompt]


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text``. Special tokens (a BOS) are added as the tokenizer does for plain text,
    but not when ``text`` already starts with the BOS token, as chat-template renderings do: a
    second BOS would put the model off its training distribution."""
    bos = getattr(tokenizer, "bos_token", None)
    already = bool(bos) and text.startswith(bos)
    return list(tokenizer(text, add_special_tokens=not already)["input_ids"])


def prompt_token_ids(prompts, tokenizer, vocab_size: int, max_model_len: int) -> list[list[int]]:
    """Token ids of each prompt: strings go through ``tokenizer`` (with its special tokens), id
    lists are checked against the vocabulary. Every prompt must leave room for one new token."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, SequenceABC):
        raise TypeError(f"prompts must be a list of strings or token-id lists (wrap a single prompt in a list), "
                        f"got {type(prompts).__name__}")
    if not prompts:
        raise ValueError("prompts must not be empty")
    result = []
    for index, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            if tokenizer is None:
                raise ValueError(f"prompts[{index}] is a string but the engine has no tokenizer: pass "
                                 "Engine(model, tokenizer) or token ids")
            prompt = encode(tokenizer, prompt)
        ids = _token_list(prompt, index, vocab_size)
        if len(ids) >= max_model_len:
            raise ValueError(f"prompts[{index}] has {len(ids)} tokens; the model's context is {max_model_len}")
        result.append(ids)
    return result


def request_params(params, num_prompts: int) -> list[SamplingParams]:
    """One :class:`SamplingParams` per prompt from None, one instance, or a list of them."""
    if params is None:
        params = SamplingParams()
    if isinstance(params, SamplingParams):
        return [params] * num_prompts
    if not isinstance(params, SequenceABC) or not all(isinstance(p, SamplingParams) for p in params):
        raise TypeError("params must be a SamplingParams or a list of them, one per prompt")
    if len(params) != num_prompts:
        raise ValueError(f"params has {len(params)} entries for {num_prompts} prompts")
    return list(params)


def eos_token_ids(model, tokenizer) -> frozenset[int]:
    """The ids that end a completion unless ``ignore_eos``: the model's generation config, else
    the tokenizer's EOS token."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return frozenset()
    return frozenset([eos] if isinstance(eos, int) else eos)
