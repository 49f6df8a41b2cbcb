"""Token ids, the pad id and the output head of a Hugging Face causal LM."""

from __future__ import annotations

from sleepcore.rollout.prompts import encode  # the engine tokenises prompts with it too

__all__ = ["encode", "newline_ids", "pad_id", "head_weight"]


def newline_ids(tokenizer) -> tuple[int, ...]:
    """Token ids that are exactly a line break (short answers stop there)."""
    return tuple(i for i in {tokenizer.convert_tokens_to_ids(t) for t in ("\n", "Ċ", "<0x0A>")}
                 if isinstance(i, int) and i != tokenizer.unk_token_id and tokenizer.decode([i]) == "\n")


def pad_id(tokenizer) -> int:
    """The pad id, or the EOS id when the tokenizer has no pad token. Padded positions are masked
    everywhere in sleepcore, so the value only has to be a valid id."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def head_weight(model):
    """The output embedding's weight ``[V, H]`` (the ``lm_head`` the fused losses take)."""
    return model.get_output_embeddings().weight
