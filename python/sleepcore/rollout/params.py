"""What a caller asks the engine for (:class:`SamplingParams`) and what it gets back
(:class:`RequestOutput` holding one :class:`CompletionOutput` per sample)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

__all__ = ["SamplingParams", "CompletionOutput", "RequestOutput"]


def _integer(name: str, value, minimum: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"SamplingParams.{name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"SamplingParams.{name} must be >= {minimum}, got {value}")
    return int(value)


def _real(name: str, value, in_range, rule: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"SamplingParams.{name} must be a finite number, got {value!r}")
    if not in_range(value):
        raise ValueError(f"SamplingParams.{name} must be {rule}, got {value}")
    return float(value)


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
        set_field(self, "n", _integer("n", self.n, 1))
        set_field(self, "temperature", _real("temperature", self.temperature, lambda v: v >= 0, ">= 0"))
        set_field(self, "top_k", _integer("top_k", self.top_k, 0))
        set_field(self, "top_p", _real("top_p", self.top_p, lambda v: 0 < v <= 1, "in (0, 1]"))
        set_field(self, "min_p", _real("min_p", self.min_p, lambda v: 0 <= v < 1, "in [0, 1)"))
        set_field(self, "max_tokens", _integer("max_tokens", self.max_tokens, 1))
        if isinstance(self.stop_token_ids, (str, bytes)) or not hasattr(self.stop_token_ids, "__iter__"):
            raise TypeError(f"SamplingParams.stop_token_ids must be a sequence of ints, got {self.stop_token_ids!r}")
        set_field(self, "stop_token_ids",
                  tuple(_integer("stop_token_ids[]", t, 0) for t in self.stop_token_ids))
        if not isinstance(self.ignore_eos, bool):
            raise TypeError(f"SamplingParams.ignore_eos must be a bool, got {self.ignore_eos!r}")
        if self.seed is not None:
            set_field(self, "seed", _integer("seed", self.seed, None))


@dataclass
class CompletionOutput:
    """One sampled continuation.

    ``token_ids`` are the new tokens (a stop token included); ``logprobs[i]`` is
    ``log softmax(logits / T)[token_ids[i]]`` over the full vocabulary (T = 1 when greedy), from
    the row kernel behind ``ops.fused_linear_logprobs``; ``truncated_logprobs[i]`` is the token's
    log-prob under the renormalised top-k/top-p/min-p distribution it was drawn from (0 when
    greedy). ``finish_reason`` is ``"stop"`` (stop or EOS token) or ``"length"`` (``max_tokens`` or
    the model's context length). ``text`` is the decoded completion when the engine has a tokenizer.
    """

    index: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    truncated_logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    text: str | None = None


@dataclass
class RequestOutput:
    """The completions of one prompt, in sample order (``completions[i].index == i``)."""

    request_index: int
    prompt_token_ids: list[int]
    completions: list[CompletionOutput]
    prompt: str | None = None
