"""What a caller asks the engine for (:class:`SamplingParams`) and what it gets back
(:class:`RequestOutput` holding one :class:`CompletionOutput` per sample)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sleepcore import validation
from sleepcore.ops.sampling import sampling_parameter

__all__ = ["SamplingParams", "CompletionOutput", "RequestOutput"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample the completions of one prompt.

    Args:
        n: completions per prompt (>= 1). They share the prompt's KV blocks (``fork``).
        temperature: >= 0; 0 is greedy (argmax).
        top_k: keep the k most likely tokens (0 = off).
        top_p: keep the smallest most-likely set with mass >= top_p, in (0, 1] (1 = off).
        min_p: keep tokens with ``p >= min_p * max p``, in [0, 1) (0 = off).
        max_tokens: new tokens per completion (>= 1).
        stop_token_ids: ids that end a completion (the stop token is kept in the output).
        ignore_eos: when False, the model's EOS ids (``generation_config.eos_token_id``) also stop.
        seed: int, or None to draw one from torch's global generator. Sample ``i`` of a request
            uses a stream derived from ``(seed, i)``, so its tokens depend on nothing else in the
            batch (nor on preemption).

    Filters compose as in FlashInfer: top-k, then top-p on the renormalised top-k set, then min-p.
    A field of the wrong type raises ``TypeError``, one out of range ``ValueError``, naming the field.
    """

    n: int = 1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    max_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None

    def __post_init__(self):
        set_field = object.__setattr__
        set_field(self, "n", validation.integer("n", self.n, minimum=1))
        for name in ("temperature", "top_k", "top_p", "min_p"):
            set_field(self, name, sampling_parameter(name, getattr(self, name)))
        set_field(self, "max_tokens", validation.integer("max_tokens", self.max_tokens, minimum=1))
        if isinstance(self.stop_token_ids, (str, bytes)) or not hasattr(self.stop_token_ids, "__iter__"):
            raise TypeError(f"stop_token_ids must be a sequence of ints, got {self.stop_token_ids!r}")
        set_field(self, "stop_token_ids", tuple(validation.integer(f"stop_token_ids[{i}]", token, minimum=0)
                                                for i, token in enumerate(self.stop_token_ids)))
        validation.boolean("ignore_eos", self.ignore_eos)
        set_field(self, "seed", validation.integer("seed", self.seed, optional=True))


@dataclass
class CompletionOutput:
    """One sampled continuation.

    ``token_ids`` are the new tokens (a stop token included); ``logprobs[i]`` is
    ``log softmax(logits / T)[token_ids[i]]`` over the full vocabulary (T = 1 when greedy), from
    the row kernel behind ``ops.fused_linear_logprobs``; ``truncated_logprobs[i]`` is the token's
    log-prob under the renormalised top-k/top-p/min-p distribution it was drawn from (0 when
    greedy). ``finish_reason`` is ``"stop"`` (stop or EOS token) or ``"length"`` (``max_tokens`` or
    the model's context length). ``text`` is the decoded completion when the engine has a tokenizer.
    ``hidden`` (with ``Engine.generate(..., return_hidden=True)``, else None): fp32 CPU
    ``[len(token_ids), H]``, row ``i`` the final hidden state (after the final norm, before the
    head) that ``token_ids[i]`` was sampled from, so a caller needing the sampling model's states on
    its own samples (a teacher's, for distillation) runs no second forward.
    """

    index: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    truncated_logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    text: str | None = None
    hidden: torch.Tensor | None = None


@dataclass
class RequestOutput:
    """The completions of one prompt, in sample order (``completions[i].index == i``)."""

    request_index: int
    prompt_token_ids: list[int]
    completions: list[CompletionOutput]
    prompt: str | None = None
